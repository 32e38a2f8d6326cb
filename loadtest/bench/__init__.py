"""The fan-out benchmark: chanfleet against the reference chapter's stock setup and a ceiling.

`python -m loadtest.bench --out docs/benchmarks.md` (see `cli.py`); the figures and how to
read them are in docs/benchmarks.md.
"""
