"""``python -m changeclip`` is the ``changeclip`` command."""

from changeclip.cli import main

raise SystemExit(main())
