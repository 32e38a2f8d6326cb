"""python -m loadtest.bench: see loadtest/bench/cli.py."""

from loadtest.bench.cli import main

raise SystemExit(main())
