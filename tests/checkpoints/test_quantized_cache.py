"""The quantized-weights cache on disk: every tensor on a 64-byte boundary, versions detected (a
cache of the old, misaligned layout is rebuilt, never read), misaligned tensors copied before a
kernel sees them, and the generic aligned safetensors writer it uses."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open

from engine.causal_lm import PaliGemmaCausalLM
from engine.checkpoints.aligned_file import ALIGNMENT, is_padding, write_aligned
from engine.checkpoints.quantized_cache import CACHE_VERSION, read_metadata
from engine.runtime.quantize import Int8Linear, Int8TiedEmbedding, packed_kernel_safe
from tests.helpers.checkpoints import TinySpec

SPEC = TinySpec()


def _header(path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return 8 + length, json.loads(f.read(length))


def _cache(root):
    (path,) = sorted((root / "quantized").glob("*.safetensors"))
    return path


def test_aligned_writer_puts_every_tensor_on_a_boundary_and_reads_back(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.int8": torch.randint(-127, 128, (7, 13), dtype=torch.int8, generator=g),  # 91 bytes: odd
        "b.bf16": torch.randn(5, generator=g).bfloat16(),
        "c.f32": torch.randn(3, 3, generator=g),
        "d.bool": torch.tensor([True, False, True]),
        "e.empty": torch.empty(0, 4),
    }
    path = write_aligned(tmp_path / "x.safetensors", tensors, {"k": "v"})
    data_start, header = _header(path)
    assert data_start % ALIGNMENT == 0
    assert header["__metadata__"] == {"k": "v", "pali_alignment": str(ALIGNMENT)}
    for name in tensors:
        assert header[name]["data_offsets"][0] % ALIGNMENT == 0, name
    with safe_open(str(path), framework="pt") as f:  # any safetensors reader accepts the layout
        names = [k for k in f.keys() if not is_padding(k)]
        assert sorted(names) == sorted(tensors)
        for name in names:
            t = f.get_tensor(name)
            assert torch.equal(t, tensors[name]), name
            if t.numel():
                assert t.data_ptr() % ALIGNMENT == 0, name  # memory-mapped in place, aligned
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_cache_is_aligned_versioned_and_feeds_the_packed_kernel(checkpoints, tmp_path):
    path = checkpoints.checkpoint(SPEC)
    PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir=tmp_path)
    cache = _cache(tmp_path)
    meta = read_metadata(cache)
    assert meta is not None
    assert meta["pali_cache_version"] == str(CACHE_VERSION) and meta["pali_alignment"] == "64"
    data_start, header = _header(cache)
    assert all(v["data_offsets"][0] % 64 == 0 for k, v in header.items() if k != "__metadata__" and not is_padding(k))
    lm = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir=tmp_path)
    quantized = [m for m in lm.backbone.modules() if isinstance(m, (Int8Linear, Int8TiedEmbedding))]
    assert quantized
    for m in quantized:
        assert m.weight.data_ptr() % 64 == 0 and m.scale.data_ptr() % 64 == 0
        assert packed_kernel_safe(m.weight, m.scale) == (m.weight.shape[1] % 16 == 0)


def _write_packed(path, state: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """A safetensors file with tensors packed back to back after an odd-sized first one and an
    odd header length, as safetensors' own writer may place them: every tensor off its boundary."""
    names = ["__pali_pad__.odd", *sorted(state)]
    tensors = {"__pali_pad__.odd": torch.zeros(3, dtype=torch.uint8), **state}
    codes = {torch.int8: "I8", torch.uint8: "U8", torch.bfloat16: "BF16", torch.float32: "F32"}
    header: dict[str, object] = {"__metadata__": meta}
    offset = 0
    for name in names:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * ((-(8 + len(text)) % 64) + 5)  # data starts 5 bytes past a boundary
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name in names:
            f.write(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def _write_version_1(path, state: dict[str, torch.Tensor]) -> None:
    """What pali wrote before: no alignment, version 1 in the metadata."""
    _write_packed(path, state, {"format": "pt", "pali_quantize": "int8", "pali_cache_version": "1"})


def test_a_cache_of_the_old_layout_is_rebuilt_not_read(checkpoints, tmp_path):
    path = checkpoints.checkpoint(SPEC)
    first = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir=tmp_path)
    cache = _cache(tmp_path)
    state = {k: v.contiguous() for k, v in first.backbone.state_dict().items()}
    _write_version_1(cache, state)  # an old cache under the name the current key gives
    old_sibling = cache.with_name(cache.name.rsplit("-", 1)[0] + "-0123456789abcdef01234567.safetensors")
    _write_version_1(old_sibling, state)  # and one from before, under its old key
    again = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir=tmp_path)
    assert (read_metadata(cache) or {}).get("pali_cache_version") == str(CACHE_VERSION)  # rebuilt in place
    assert not old_sibling.exists()  # unreadable by this version: removed
    for k, v in again.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_misaligned_tensors_in_a_current_cache_are_copied(checkpoints, tmp_path):
    """Belt and braces: a file that says it is current but puts tensors off their boundaries (a
    foreign or hand-edited file) is never handed to the packed kernel as it lies."""
    path = checkpoints.checkpoint(SPEC)
    first = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir=tmp_path)
    cache = _cache(tmp_path)
    state = {k: v.contiguous() for k, v in first.backbone.state_dict().items()}
    meta = {"format": "pt", "pali_quantize": "int8", "pali_cache_version": str(CACHE_VERSION), "pali_alignment": "64"}
    _write_packed(cache, state, meta)
    with safe_open(str(cache), framework="pt") as f:
        int8 = [f.get_tensor(k) for k in f.keys() if f.get_slice(k).get_dtype() == "I8"]
        assert int8 and all(t.data_ptr() % 64 for t in int8)  # the file really misplaces them
    lm = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir=tmp_path)
    for m in lm.backbone.modules():
        if isinstance(m, (Int8Linear, Int8TiedEmbedding)):
            assert m.weight.data_ptr() % 64 == 0, "a misaligned int8 weight was kept"
    for k, v in lm.backbone.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_int4_cache_is_keyed_on_the_packing_layout(checkpoints, tmp_path, monkeypatch):
    """int4 bytes depend on the layout torch's kernel set packs in (AVX512, AVX2 and portable kernels
    differ): a cache written under one layout is never read under another, e.g. from a cache
    directory shared between two kinds of machine."""
    import engine.runtime.quantize as quantize
    from engine.runtime.int4 import Int4Linear
    from engine.runtime.int4_format import KNOWN_LAYOUTS, kernel_layout

    path = checkpoints.checkpoint(SPEC, seed=7)
    here = kernel_layout()
    assert here is not None, f"torch {torch.__version__} packs int4 in no layout pali knows"
    PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int4", cache_dir=tmp_path)
    (first,) = sorted((tmp_path / "quantized").glob("*.safetensors"))
    assert (read_metadata(first) or {}).get("pali_layout") == f"{here.name}-g128"
    other = next(lay for lay in KNOWN_LAYOUTS if lay != here)
    monkeypatch.setattr(quantize, "kernel_layout", lambda: other)  # as another CPU's torch would pack
    lm = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int4", cache_dir=tmp_path)
    files = sorted((tmp_path / "quantized").glob("*.safetensors"))
    assert len(files) == 2 and first in files  # a second file; the first is still there, unread
    (second,) = [f for f in files if f != first]
    assert (read_metadata(second) or {}).get("pali_layout") == f"{other.name}-g128"
    layouts = {m.layout for m in lm.backbone.modules() if isinstance(m, Int4Linear)}
    assert layouts == {other}


VARIED = [
    TinySpec(text_extra=(("vocab_size", 1601),)),
    TinySpec(text_extra=(("vocab_size", 1617),)),
    TinySpec(hidden=40, text_extra=(("vocab_size", 1650),)),  # K = 40: rows not a multiple of 16
    TinySpec(hidden=56, vision_hidden=40, text_extra=(("vocab_size", 1700),)),
    TinySpec(family="gemma2", kv_heads=2, text_extra=(("vocab_size", 1731),)),
]


@pytest.fixture
def varied_checkpoints(checkpoints):
    """Built here, in the parent process; the isolated child finds them on disk."""
    return [checkpoints.checkpoint(spec) for spec in VARIED]


@pytest.mark.isolated
def test_quantized_captions_never_crash_and_repeat_exactly(varied_checkpoints, tmp_path):
    """The issue's check: `pali caption IMG -p CKPT --quantize int8` five times in a row on five
    tiny checkpoints whose vocabulary sizes (so tensor offsets) and widths differ, some with rows
    that are not a multiple of 16 bytes; every run gives the first run's text. In its own process:
    before the fix this crashed on AVX512 CPUs from the second run on."""
    from PIL import Image
    from typer.testing import CliRunner

    from pali_cli.app import app

    image = tmp_path / "img.png"
    Image.new("RGB", (30, 20), (200, 40, 90)).save(image)
    for spec, ckpt in zip(VARIED, varied_checkpoints, strict=True):
        args = ["caption", str(image), "-p", str(ckpt), "--quantize", "int8", "--max-tokens", "12", "--json"]
        args += ["--cache-dir", str(tmp_path / "cache")]
        outputs = []
        for _ in range(5):
            result = CliRunner().invoke(app, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            record = json.loads(result.stdout.strip().splitlines()[-1])
            outputs.append((record["text"], record["tokens"]))
        assert outputs == [outputs[0]] * 5, (spec, outputs)


@pytest.mark.isolated
def test_int4_captions_never_crash_and_repeat_exactly(varied_checkpoints, tmp_path):
    """`pali caption --quantize int4` three times on checkpoints with widths int4 can and cannot
    group (the latter fall back to int8): every run, from the cache after the first, gives the first
    run's text."""
    from PIL import Image
    from typer.testing import CliRunner

    from pali_cli.app import app

    image = tmp_path / "img.png"
    Image.new("RGB", (30, 20), (20, 140, 90)).save(image)
    for ckpt in (varied_checkpoints[0], varied_checkpoints[2], varied_checkpoints[4]):
        args = ["caption", str(image), "-p", str(ckpt), "--quantize", "int4", "--max-tokens", "12", "--json"]
        args += ["--cache-dir", str(tmp_path / "cache")]
        outputs = []
        for _ in range(3):
            result = CliRunner().invoke(app, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            record = json.loads(result.stdout.strip().splitlines()[-1])
            outputs.append((record["text"], record["tokens"]))
        assert outputs == [outputs[0]] * 3, (ckpt, outputs)
    assert len(list((tmp_path / "cache" / "quantized").glob("*int4*.safetensors"))) == 3
