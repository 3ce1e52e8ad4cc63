"""Test-only helpers: tiny tokenizers, tiny random checkpoints, fake servers."""
