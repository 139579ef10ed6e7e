"""Benchmarks: each prints its figures and merges them into docs/benchmarks.json and docs/benchmarks.md."""
