"""Benchmarks and probes for a GPU machine (bench/gpu/README.md): run as scripts."""
