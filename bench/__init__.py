"""Benchmarks; each module runs as a script (see bench/README.md)."""
