"""`python -m harness.accuracy ...`: the same as `python -m harness accuracy ...`."""

from .cli import main

raise SystemExit(main())
