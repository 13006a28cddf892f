"""Benchmarks of the two-party engine (the `comet-bench` command)."""
