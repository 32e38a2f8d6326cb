"""python -m loadtest.storm: see loadtest/storm/cli.py."""

from loadtest.storm.cli import main

raise SystemExit(main())
