"""Subcommands of the ``changeclip`` command line (one module per verb, all thin)."""
