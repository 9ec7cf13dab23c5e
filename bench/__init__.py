"""Benchmarks: `make bench` runs bench/run.py (see the README, Performance)."""
