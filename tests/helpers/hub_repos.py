"""A stand-in model repository for the download tests (tests/checkpoints/test_hub*.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from safetensors.numpy import save

PRESET = "pali_gemma2_mix_3b_224"
REPO = "google/paligemma2-3b-mix-224"
WANTED = ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json")
TOKEN = "hf_fake_valid_token"


def checkpoint_files(weights: int = 20_000, **extra: bytes) -> dict[str, bytes]:
    """Small stand-ins for a repo's files; only names and bytes matter to the download code."""
    tensors = {"embed": np.arange(weights, dtype=np.float32), "norm": np.ones(8, dtype=np.float32)}
    return {
        "config.json": b'{"model_type": "paligemma"}',
        "model.safetensors": save(tensors),
        "tokenizer.model": b"\x0a\x05dummy-sentencepiece",
        "tokenizer_config.json": b"{}",
        "README.md": b"# not downloaded: pali does not need it",
        ".gitattributes": b"*.safetensors filter=lfs",
        **extra,
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same_files(folder: Path, files: dict[str, bytes], names=WANTED) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    for name in names:
        assert (folder / name).read_bytes() == files[name], name
