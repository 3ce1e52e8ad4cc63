"""Benchmarks against transformers on full-size random-weight checkpoints (not part of the test run)."""
