"""Benchmarks: `make bench` runs bench/run.py (see the README, Performance).

- run.py       the command: options, the run in order, bench/results.json, `--show [--markdown]`
- phases.py    the measured phases: ceiling, naive, service (idle, bursts, large bulk, memory)
- loads.py     what runs alongside a phase: transactional load, Test Connection, memory sampler
- figures.py   samples to figures: percentiles, pooled runs, ratios, TARGETS, checks, the table
- workload.py  what is sent and where: realms, templates, context, the service's environment
- harness.py   the processes the bench owns: Redis, workers, their memory and CPU
- sink.py      the SMTP sinks; ceiling.py and naive.py the two baselines
"""
