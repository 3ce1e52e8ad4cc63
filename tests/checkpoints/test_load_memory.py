"""How the loader uses memory (engine.checkpoints.reader, engine.runtime.memory): CPU weights are
read into memory of their own, large ones on huge pages where the kernel offers them, through one
small buffer (never a second copy of a shard, not even as mapped file pages), casting on the way;
tensors a file misaligns for their dtype are copied."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from engine.checkpoints.reader import TensorReader
from engine.checkpoints.weights import load_backbone
from engine.errors import CheckpointError
from engine.model.config import load_config
from engine.runtime.memory import HUGE_PAGE, empty_weight, huge_pages_available
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


def _vm_flags(address: int) -> list[str]:
    """VmFlags of the mapping that holds ``address`` (Linux /proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_same_dtype_is_memory_mapped_and_casts_are_not(checkpoints):
    path = checkpoints.checkpoint(SPEC, dtype=torch.bfloat16)

    def in_file(t: torch.Tensor) -> bool:
        return any(lo <= t.data_ptr() < hi and name.endswith(".safetensors") for lo, hi, name in _file_mappings())

    model = load_backbone(path, load_config(path), torch.bfloat16)
    assert in_file(model.get_parameter("language_model.layers.0.mlp.up_proj.weight"))
    assert not in_file(model.language_model.norm.weight)  # kept in fp32, so cast: memory of its own
    model = load_backbone(path, load_config(path), torch.float32)
    assert not any(in_file(t) for t in model.state_dict().values())


@pytest.mark.skipif(not huge_pages_available(), reason="needs Linux transparent huge pages (madvise or always)")
def test_large_weights_are_on_huge_page_mappings():
    big = empty_weight((1024, 1024), torch.float32)  # 4 MiB
    assert big.data_ptr() % HUGE_PAGE == 0
    assert "hg" in _vm_flags(big.data_ptr())  # MADV_HUGEPAGE was applied to its mapping
    big.fill_(1.5)
    assert big.sum().item() == 1.5 * 1024 * 1024
    tail = empty_weight((HUGE_PAGE + 4096,), torch.uint8)  # whole huge pages advised, the tail not
    assert "hg" in _vm_flags(tail.data_ptr()) and "hg" not in _vm_flags(tail.data_ptr() + HUGE_PAGE)
    small = empty_weight((16, 16), torch.float32)
    assert "hg" not in _vm_flags(small.data_ptr())


def test_reader_reads_and_casts_exactly(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setattr("engine.checkpoints.reader.READ_CHUNK_BYTES", 1000)  # many reads per tensor
    tensors = {"a": torch.randn(300, 7), "b": torch.randn(5).bfloat16(), "c": torch.arange(40, dtype=torch.int8)}
    save_file(tensors, tmp_path / "x.safetensors")
    with TensorReader(tmp_path / "x.safetensors") as reader:
        assert torch.equal(reader.read_into("a", empty_weight((300, 7), torch.float32)), tensors["a"])
        assert torch.equal(reader.read_into("a", torch.empty(300, 7, dtype=torch.bfloat16)), tensors["a"].bfloat16())
        assert torch.equal(reader.read_into("b", torch.empty(5)), tensors["b"].float())
        assert torch.equal(reader.read_into("c", torch.empty(40, dtype=torch.int8)), tensors["c"])
        assert reader.dtype("b") == torch.bfloat16
        with pytest.raises(ValueError, match="holds"):
            reader.read_into("a", torch.empty(10))


def test_truncated_file_is_named(tmp_path, checkpoints):
    path = checkpoints.checkpoint(SPEC)
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(truncated|re-download)"):
        load_backbone(broken, load_config(broken), torch.float32)
    (broken / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_backbone(broken, load_config(broken), torch.float32)


@pytest.mark.parametrize("chunk_bytes", [1, 300, 10**9])
def test_cast_in_slices_is_exact(checkpoints, monkeypatch, chunk_bytes):
    monkeypatch.setattr("engine.checkpoints.reader.READ_CHUNK_BYTES", chunk_bytes)
    path = checkpoints.checkpoint(SPEC)  # fp32 on disk
    model = load_backbone(path, load_config(path), torch.bfloat16)
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        embed = f.get_tensor("language_model.model.embed_tokens.weight")
        patch = f.get_tensor("vision_tower.vision_model.embeddings.patch_embedding.weight")  # 4-D
    assert torch.equal(model.language_model.embed_tokens.weight, embed.bfloat16())
    assert torch.equal(model.vision_tower.patch_embedding.weight, patch.bfloat16())


@pytest.mark.parametrize("shift", [1, 2, 4, 8])
def test_tensors_misaligned_for_their_dtype_are_copied_the_rest_stay_mapped(checkpoints, tmp_path, shift):
    """A file whose data section starts off a boundary (headers have arbitrary lengths): a tensor
    that lands off its element alignment is copied before any kernel sees it; one that is
    element-aligned stays memory-mapped (dense kernels need no more; the kernel battery in
    tests/runtime/test_kernel_safety.py checks them at every offset)."""
    from safetensors.torch import load_file

    from tests.helpers.checkpoints import write_safetensors_at

    src = checkpoints.checkpoint(SPEC)
    path = tmp_path / "ckpt"
    shutil.copytree(src, path)
    original = load_file(str(src / "model.safetensors"))
    write_safetensors_at(path / "model.safetensors", original, shift)
    model = load_backbone(path, load_config(path), torch.float32)
    state = model.state_dict()
    reference = load_backbone(src, load_config(src), torch.float32).state_dict()
    mapped = 0
    for name, t in state.items():
        assert t.data_ptr() % t.element_size() == 0, name
        assert torch.equal(t, reference[name]), name
        mapped += any(lo <= t.data_ptr() < hi and n.endswith(".safetensors") for lo, hi, n in _file_mappings())
    if shift % 4 == 0:
        assert mapped  # fp32 tensors at 4- or 8-byte offsets are used in place
    else:
        assert not mapped  # every fp32 tensor sits at an odd or 2-mod-4 address: all copied
