"""Benchmarks, each runnable as `python -m polar_jax.bench.<name>`; each prints a table."""
