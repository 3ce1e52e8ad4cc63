"""int8 weight-only quantization: the kernels against plain dequantized matmuls, a quantized tiny
model against the fp32 one, and the on-disk cache (round trip, invalidation, corrupt file)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine.causal_lm import PaliGemmaCausalLM
from engine.checkpoints.weights import load_backbone
from engine.generate import generate_tokens
from engine.model.config import load_config
from engine.model.text import TiedEmbedding
from engine.runtime.capabilities import AMX, AVX2
from engine.runtime.int4 import Int4TiedEmbedding
from engine.runtime.int4 import kernel_safe as int4_kernel_safe
from engine.runtime.optimize import matmul_dtype
from engine.runtime.quantize import (
    PACK_MAX_ROWS,
    Int8Linear,
    Int8TiedEmbedding,
    QuantizeError,
    dequantize,
    packed_kernel_safe,
    quantize_backbone,
    quantize_rows,
)
from engine.samplers import greedy
from tests.helpers.checkpoints import TinySpec

SPEC = TinySpec()
SPEC2 = TinySpec(family="gemma2", kv_heads=2)
CPU = torch.device("cpu")
CPUS = pytest.mark.parametrize("cpu", [AVX2, AMX], ids=["avx2", "amx"])  # both, on any host


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(0, -2).double(), b.flatten(0, -2).double(), dim=-1)


def test_rows_round_within_half_a_step():
    w = torch.randn(64, 96) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different scales
    w[5] = 0.0
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.bfloat16
    err = (dequantize(q, scale, torch.float32) - w).abs()
    # half a step, plus the clamp when the bf16 scale rounded below absmax / 127
    bound = scale.float()[:, None] * 0.5 + w.abs().amax(1, keepdim=True) * 2**-8
    assert bool((err <= bound).all())
    assert bool((dequantize(q, scale, torch.float32)[5] == 0).all())
    assert int(q.abs().max()) == 127


@CPUS
@pytest.mark.parametrize("rows", [1, 3, PACK_MAX_ROWS, PACK_MAX_ROWS + 1, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_matches_dequantized_matmul(rows, dtype, cpu):
    torch.manual_seed(0)
    linear = nn.Linear(96, 80).to(dtype)
    quant = Int8Linear.from_linear(linear, dtype, matmul_dtype(CPU, dtype, cpu))
    x = torch.randn(2, rows, 96, dtype=dtype)
    expected = F.linear(x.double(), dequantize(quant.weight, quant.scale, torch.float64), linear.bias.double())
    with torch.inference_mode():
        got = quant(x)
    assert got.dtype == dtype and got.shape == (2, rows, 80)
    # the int8 kernel rounds activations to bf16; bf16 outputs round to 8 bits
    tol = 2e-2 if dtype == torch.bfloat16 or 2 * rows <= PACK_MAX_ROWS else 1e-5
    assert (got.double() - expected).abs().max().item() <= tol * expected.abs().max().item()


def test_tied_embedding_lookup_and_head():
    torch.manual_seed(0)
    emb = TiedEmbedding(300, 64)
    quant = Int8TiedEmbedding.from_embedding(emb, torch.float32, torch.float32)
    dense = dequantize(quant.weight, quant.scale, torch.float32)
    ids = torch.tensor([[0, 5, 299], [7, 7, 1]])
    with torch.inference_mode():
        assert torch.equal(quant(ids), F.embedding(ids, dense))
        assert quant.dtype == torch.float32
        for rows in (1, PACK_MAX_ROWS * 4):  # int8 kernel, then the sliced dequantized head
            h = torch.randn(rows, 64)
            ref = F.linear(h.double(), dense.double())
            assert (quant.attend(h).double() - ref).abs().max().item() <= 1e-2 * ref.abs().max().item()


def _inputs(spec, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(2, 3, spec.image_size, spec.image_size, generator=g) * 2 - 1
    ids = torch.randint(5, 1500, (2, 12), generator=g)
    ids[:, 0] = 2
    return pixels, ids


@pytest.mark.parametrize("spec", [SPEC, SPEC2], ids=["pg1", "pg2"])
def test_quantized_model_is_the_dequantized_model(checkpoints, spec, monkeypatch):
    """Plumbing: every swapped module (vision, projector, decoder, tied embedding and head) computes
    what the fp32 model computes with the dequantized weights put back in."""
    path = checkpoints.checkpoint(spec)
    quant = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8")
    dense = load_backbone(path, load_config(path), torch.float32)
    modules = dict(dense.named_modules())
    swapped = 0
    for name, module in quant.backbone.named_modules():
        if isinstance(module, (Int8Linear, Int8TiedEmbedding)):
            modules[name].weight.data = dequantize(module.weight, module.scale, torch.float32)
            swapped += 1
    assert swapped == sum(isinstance(m, nn.Linear) for m in modules.values()) + 1
    pixels, ids = _inputs(spec)
    with torch.inference_mode():
        expected = dense(pixels, ids)
        # At these tiny shapes the vision rows take the int8 kernel, which rounds activations to bf16
        # (bf16 weights throughout give min 0.990 on this model).
        assert _cosine(quant.backbone(pixels, ids), expected).min().item() >= 0.995
        monkeypatch.setattr("engine.runtime.quantize.PACK_MAX_ROWS", 0)  # dequantized fp32 matmuls only
        assert (quant.backbone(pixels, ids) - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("spec", [SPEC, SPEC2], ids=["pg1", "pg2"])
def test_quantized_model_tracks_fp32(checkpoints, spec):
    """Stated tolerance on tiny random models (hidden 64, weights drawn at twice the unit gain, so
    errors grow layer by layer): mean logit cosine similarity >= 0.99 and >= 0.95 at every position.
    For scale, bf16 weights give mean 0.998 / min 0.990 here and int8 mean 0.994 / min 0.971; the
    full-size figures are in benchmarks/README.md."""
    path = checkpoints.checkpoint(spec)
    plain = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu")
    quant = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8")
    assert isinstance(quant.backbone.language_model.embed_tokens, Int8TiedEmbedding)
    assert quant.dtype == torch.float32
    pixels, ids = _inputs(spec)
    with torch.inference_mode():
        cos = _cosine(plain.backbone(pixels, ids), quant.backbone(pixels, ids))
    assert cos.mean().item() >= 0.99 and cos.min().item() >= 0.95
    prompts = [[2, 40, 41, 4], [2, 50, 4]]
    assert [len(t) for t in generate_tokens(quant.backbone, pixels, prompts, [6, 3], greedy)] == [6, 3]


def _quant_files(root):
    return sorted((root / "quantized").glob("*.safetensors")) if (root / "quantized").exists() else []


@pytest.mark.parametrize(
    "level",
    [pytest.param(level, marks=pytest.mark.isolated(env={"PALI_CPU": level})) for level in ("avx2", "amx")],
)
def test_cache_round_trip(checkpoints, tmp_path, level):
    """Runs the packed int8 and int4 kernels on the memory-mapped cache: in its own process (int8's
    crashed whole runs on AVX512 CPUs when the cache was misaligned), with each CPU level's choices."""
    path = checkpoints.checkpoint(SPEC)
    for mode, head_type in (("int8", Int8TiedEmbedding), ("int4", Int4TiedEmbedding)):
        root = tmp_path / mode
        first = PaliGemmaCausalLM.from_preset(path, dtype="bfloat16", device="cpu", quantize=mode, cache_dir=root)
        files = _quant_files(root)
        assert len(files) == 1
        second = PaliGemmaCausalLM.from_preset(path, dtype="bfloat16", device="cpu", quantize=mode, cache_dir=root)
        assert _quant_files(root) == files  # read, not rebuilt
        s1, s2 = first.backbone.state_dict(), second.backbone.state_dict()
        assert s1.keys() == s2.keys()
        for k in s1:
            assert s1[k].dtype == s2[k].dtype and torch.equal(s1[k], s2[k]), (mode, k)
        assert second.dtype == torch.bfloat16
        head = second.backbone.language_model.embed_tokens
        assert isinstance(head, head_type)
        assert head.compute_dtype == (torch.bfloat16 if level == "amx" else torch.float32)
        if mode == "int8":
            assert packed_kernel_safe(head.weight, head.scale)  # the cache hands the fast kernel aligned rows
        else:
            assert head.kernel and int4_kernel_safe(head.weight, head.scales_zeros)
        pixels = torch.rand(1, 3, SPEC.image_size, SPEC.image_size) * 2 - 1
        run = [[2, 40, 41, 4]], [5], greedy
        assert generate_tokens(first.backbone, pixels, *run) == generate_tokens(second.backbone, pixels, *run), mode


def test_cache_goes_where_downloads_go(checkpoints, tmp_path, monkeypatch):
    """The quantized cache follows the download cache: "~" in cache_dir expands, and without one
    $PALI_CACHE_DIR decides, as it does for downloads."""
    path = checkpoints.checkpoint(SPEC, seed=5)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir="~/pali")
    assert len(_quant_files(tmp_path / "home" / "pali")) == 1
    monkeypatch.setenv("PALI_CACHE_DIR", str(tmp_path / "env-cache"))
    PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8")
    assert len(_quant_files(tmp_path / "env-cache")) == 1


def test_cache_keyed_on_source_and_dtype(checkpoints, tmp_path):
    path = checkpoints.checkpoint(SPEC, seed=3)
    PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir=tmp_path)
    PaliGemmaCausalLM.from_preset(path, dtype="bfloat16", device="cpu", quantize="int8", cache_dir=tmp_path)
    assert len(_quant_files(tmp_path)) == 2
    weights = path / "model.safetensors"
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a re-downloaded file
    PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir=tmp_path)
    assert len(_quant_files(tmp_path)) == 3


def test_corrupt_cache_is_named(checkpoints, tmp_path):
    path = checkpoints.checkpoint(SPEC)
    PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir=tmp_path)
    (cache,) = _quant_files(tmp_path)
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.raises(QuantizeError, match="delete it to rebuild") as info:
        PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", quantize="int8", cache_dir=tmp_path)
    assert str(cache) in str(info.value)


def test_unknown_mode():
    with pytest.raises(QuantizeError, match="int8, int4"):
        quantize_backbone(nn.Module(), "int3")  # type: ignore[arg-type]  # refused before use
