"""Runnable experiments: condensation benchmarks, class-incremental and federated runs."""
