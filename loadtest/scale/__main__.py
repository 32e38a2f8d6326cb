"""python -m loadtest.scale."""

from .cli import main

raise SystemExit(main())
