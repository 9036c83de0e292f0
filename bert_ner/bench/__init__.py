"""Benchmarks of the served model: export, load, throughput, latency, memory -> results.md/.png."""
