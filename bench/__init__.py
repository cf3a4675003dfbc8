"""Benchmarks (``make bench``): numbers next to the raw ceiling measured in the same run."""
