"""How the loader uses memory: zero-copy when the checkpoint already has the target dtype, and casts
read a slice at a time through short-lived file handles (never a second copy of a shard)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.config import load_config
from engine.weights import load_backbone
from tests.helpers.checkpoints import TinySpec

SPEC = TinySpec()


def _file_mappings() -> list[tuple[int, int, str]]:
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6:
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            out.append((lo, hi, parts[5]))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_same_dtype_is_memory_mapped(checkpoints):
    path = checkpoints.checkpoint(SPEC, dtype=torch.bfloat16)
    model = load_backbone(path, load_config(path), torch.bfloat16)
    maps = _file_mappings()
    weight = model.language_model.layers[0].mlp.up_proj.weight
    assert any(lo <= weight.data_ptr() < hi and name.endswith(".safetensors") for lo, hi, name in maps)
    norm = model.language_model.norm.weight  # kept in fp32, so cast: ordinary memory
    assert not any(lo <= norm.data_ptr() < hi and name.endswith(".safetensors") for lo, hi, name in maps)


@pytest.mark.parametrize("chunk_bytes", [1, 300, 10**9])
def test_cast_in_slices_is_exact(checkpoints, monkeypatch, chunk_bytes):
    monkeypatch.setattr("engine.weights.CAST_CHUNK_BYTES", chunk_bytes)
    path = checkpoints.checkpoint(SPEC)  # fp32 on disk
    model = load_backbone(path, load_config(path), torch.bfloat16)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        embed = f.get_tensor("language_model.model.embed_tokens.weight")
        patch = f.get_tensor("vision_tower.vision_model.embeddings.patch_embedding.weight")  # 4-D
    assert torch.equal(model.language_model.embed_tokens.weight, embed.bfloat16())
    assert torch.equal(model.vision_tower.patch_embedding.weight, patch.bfloat16())
