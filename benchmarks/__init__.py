"""Benchmarks: eventstore next to its baselines (raw PostgreSQL, the eventsourcing library), same run.

Run ``python -m benchmarks [--quick] [--only append,latency,catchup,rebuild] [--out DIR]``.
Every measurement runs several times, interleaved with its baselines (A/B/A/B),
against a private PostgreSQL 18 started for the run with default durability
settings. The results are a markdown table of medians (min-max) with ratios to
the baseline measured in the same run, and a JSON file of the raw samples.
See docs/performance.md for the latest table and how to read it.
"""
