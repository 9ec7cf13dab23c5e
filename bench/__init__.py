"""Benchmarks: `make bench` runs bench/run.py (see docs/parts/performance.md)."""
