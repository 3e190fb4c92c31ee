"""The ``changeclip`` Processing provider and its algorithms."""
