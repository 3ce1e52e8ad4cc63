"""Optimisations applied to a loaded model after construction: module swaps, never flags in forward.

``optimize(backbone)`` picks matmul kernels for the hardware the model sits on. On CPU every
``nn.Linear`` becomes a :class:`CpuLinear` (same weight tensors, no copy), and an fp32 tied
embedding a :class:`CpuTiedEmbedding`, which choose per call:

* **fp32**: oneDNN's inner product on the plain weight instead of MKL's sgemm (see :func:`linear`):
  prefill 1.6x faster on up-projections, decode 1.35x on up-projections and the LM head, batched
  decode 3-4x.
* **bf16 weights on a CPU without fast bf16** (no AVX512-BF16/AMX): torch emulates bf16 matmuls,
  so a 266 x 2048 x 16384 prefill GEMM runs at ~18 GFLOP/s against ~120 in fp32, while a one-row
  GEMV in bf16 is as fast per byte as fp32 (twice as fast per weight). Up to ``GEMV_MAX_ROWS`` rows
  the native bf16 kernel runs; above, slices of the weight are upcast into a small reused fp32
  scratch buffer (~15-20 ms per 33M weights in all) and multiplied in fp32: prefill ~4-6x faster,
  batched decode (5-16 rows) up to 1.6x.
  Weights stay bf16.

On the same CPUs a bf16 decoder's attention (scores, soft-cap, softmax, weighted sum) becomes an
:class:`UpcastAttention`, which runs it in fp32: torch's bf16 attention is emulated there too, 1 ms
per decode call against 0.1 ms in fp32, and Gemma 2's soft-capped prefill 250 ms per layer against
19 ms (``q``, ``k``, ``v`` are a few hundred KB, so the casts cost next to nothing).

Where bf16 is fast (AMX) bf16 stays on torch's own kernels; GPUs are left alone. The numbers behind
each threshold come from ``python -m benchmarks.floors``.
"""

from __future__ import annotations

import functools
import threading

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.text import Attention, TiedEmbedding
from engine.runtime.devices import cpu_has_fast_bf16

# Up to this many rows torch's native bf16 GEMV wins (it reads half the bytes of fp32); from 5-6
# rows its emulated bf16 arithmetic costs more than converting slices and running fp32 (PaliGemma
# 3B decoder shapes, bf16 weights: 8 rows 608 ms native vs 370 ms converted; 4 rows 300 vs 319).
GEMV_MAX_ROWS = 4
SCRATCH_BYTES = 32 * 1024**2  # weights converted for a matmul pass through this much memory at a time
# ... except for a few rows (batched decode), where slices this small stay in the last-level cache
# between the conversion and the GEMV (8 rows: 370 ms against 592 ms with 32 MiB); prefill-sized
# GEMMs prefer the larger slices (266 rows: 983 ms with 32 MiB, 1163 ms with 8 MiB).
SMALL_SCRATCH_BYTES = 8 * 1024**2
SMALL_ROWS = 16

_local = threading.local()  # one scratch buffer per thread, so concurrent forwards never share one


def scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused buffer of ``shape``: fresh allocations of this size (100+ MB) are served by mmap and
    page-faulted in on every call, which costs as much as the conversion itself. Valid until the
    next call on this thread with the same dtype and device."""
    buffers = _local.__dict__.setdefault("buffers", {})
    numel = 1
    for d in shape:
        numel *= d
    key = (torch.device(device), dtype)
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False), torch.no_grad():
            buf = torch.empty(numel, dtype=dtype, device=device)
        buffers[key] = buf
    return buf[:numel].view(shape)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Autograd is recording and one of ``tensors`` takes part (training): avoid scratch buffers."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


@functools.cache
def _slow_bf16_cpu() -> bool:
    return not cpu_has_fast_bf16()


def matmul_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype large matmuls should run in for activations of ``dtype`` on ``device``."""
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and _slow_bf16_cpu():
        return torch.float32
    return dtype


@functools.cache
def _onednn_linear():
    """oneDNN's inner product (the op torch.compile's CPU backend emits), or None where this torch
    build lacks it or it fails on a tiny call; then plain F.linear is used."""
    if not torch.backends.mkldnn.is_available():
        return None
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is None:
        return None
    try:
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        if not torch.equal(op(x, w, None, "none", [], ""), F.linear(x, w)):
            return None
    except (RuntimeError, NotImplementedError):
        return None
    return op


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, except fp32 on CPU, which runs oneDNN's inner product on the plain weight: against
    torch's default (MKL sgemm) it is 1.6x faster at prefill shapes, 1.35x at one-row decode of
    up-projections and the LM head, and 3-4x at batched decode (2-64 rows), where MKL is slow on
    AMD CPUs (benchmarks/floors.py). Same math; only the summation order differs."""
    if (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and not needs_grad(x, weight)
    ):
        op = _onednn_linear()
        if op is not None:
            return op(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def converted_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """x float[M, K] (in ``dtype``) @ weight[N, K].T for a weight stored in another dtype (bf16 or
    int8): slices of its rows are converted into the scratch buffer and multiplied one at a time,
    so the buffer stays under SCRATCH_BYTES whatever the layer size. ``scale`` float[N] (int8 rows)
    multiplies the output columns, which is cheaper than scaling the weight."""
    n, k = weight.shape
    budget = SMALL_SCRATCH_BYTES if x.shape[0] <= SMALL_ROWS else SCRATCH_BYTES
    step = max(1, budget // (k * torch.empty(0, dtype=dtype).element_size()))
    if step >= n:
        y = linear(x, scratch((n, k), dtype, weight.device).copy_(weight), bias)
    else:
        y = torch.empty(x.shape[0], n, dtype=dtype, device=x.device)
        for i in range(0, n, step):
            w = scratch((min(step, n - i), k), dtype, weight.device).copy_(weight[i : i + step])
            y[:, i : i + step] = linear(x, w, None if bias is None else bias[i : i + step])
    return y if scale is None else y.mul_(scale.to(dtype))


class CpuLinear(nn.Module):
    """nn.Linear on CPU with the kernel chosen per call from the shape (see the module docstring):
    bf16 weights on a CPU without fast bf16 compute large matmuls in fp32 via a scratch copy."""

    def __init__(self, layer: nn.Linear, compute_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight, self.bias = layer.weight, layer.bias  # the same tensors: no copy
        self.compute_dtype = compute_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if weight.dtype == self.compute_dtype:
            return linear(x, weight, bias)
        if x.numel() <= GEMV_MAX_ROWS * self.in_features:  # decode: the native low-precision GEMV
            return F.linear(x, weight, bias)
        bias = None if bias is None else bias.to(self.compute_dtype)
        if needs_grad(x, weight):
            return F.linear(x.to(self.compute_dtype), weight.to(self.compute_dtype), bias).to(x.dtype)
        rows = x.reshape(-1, self.in_features).to(self.compute_dtype)
        y = converted_linear(rows, weight, self.compute_dtype, bias)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, compute_dtype={self.compute_dtype}"


class CpuTiedEmbedding(TiedEmbedding):
    """The tied embedding whose LM head picks its kernel like :class:`CpuLinear`: in fp32 oneDNN
    (the 1-2 GB head is read 1.35x faster at one row, 4x faster at four); bf16 on a CPU without
    fast bf16: the native GEMV up to ``GEMV_MAX_ROWS`` rows, converted fp32 slices above."""

    compute_dtype = torch.float32

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if weight.dtype == self.compute_dtype:
            return linear(hidden, weight)
        if hidden.numel() <= GEMV_MAX_ROWS * weight.shape[1] or needs_grad(hidden, weight):
            return F.linear(hidden, weight)
        rows = hidden.reshape(-1, weight.shape[1]).to(self.compute_dtype)
        y = converted_linear(rows, weight, self.compute_dtype)
        return y.to(hidden.dtype).view(*hidden.shape[:-1], weight.shape[0])


class UpcastAttention(Attention):
    """Attention whose core runs in fp32 and returns the model's dtype (projections unchanged)."""

    @classmethod
    def wrap(cls, attn: Attention) -> UpcastAttention:
        new = cls.__new__(cls)
        new.__dict__.update(attn.__dict__)  # the same projections and settings: nothing is copied
        return new

    def attend(self, q, k, v, mask) -> torch.Tensor:
        return super().attend(q.float(), k.float(), v.float(), mask).to(q.dtype)


def swap_linears(module: nn.Module, make) -> int:
    """Replace every nn.Linear below ``module`` by ``make(linear)`` (None keeps it); returns the count."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            new = make(child)
            if new is not None:
                setattr(module, name, new)
                count += 1
        else:
            count += swap_linears(child, make)
    return count


def _cpu_compute_dtype(weight: torch.Tensor) -> torch.dtype | None:
    """The dtype a CPU kernel swap should compute ``weight``'s matmuls in, or None to keep torch's
    own: fp32 weights (oneDNN) and low-precision weights on CPUs that emulate them."""
    compute = matmul_dtype(weight.device, weight.dtype)
    if weight.device.type == "cpu" and (compute == torch.float32 or compute != weight.dtype):
        return compute
    return None


def optimize(backbone: nn.Module) -> nn.Module:
    """Apply the optimisations that pay off for this model's dtype and device (in place)."""

    def swap(layer: nn.Linear) -> nn.Module | None:
        compute = _cpu_compute_dtype(layer.weight)
        return None if compute is None else CpuLinear(layer, compute)

    swap_linears(backbone, swap)
    lm = backbone.language_model
    for layer in lm.layers:
        attn = layer.self_attn
        if type(attn) is Attention and matmul_dtype(attn.o_proj.weight.device, lm.dtype) != lm.dtype:
            layer.self_attn = UpcastAttention.wrap(attn)
    embed = lm.embed_tokens
    compute = _cpu_compute_dtype(embed.weight) if type(embed) is TiedEmbedding else None
    if compute is not None:
        n, d = embed.num_embeddings, embed.embedding_dim
        with torch.device("meta"):  # a placeholder weight: no N(0, 1) init (seconds of one-off imports)
            fast = CpuTiedEmbedding(n, d, _weight=torch.empty(n, d))
        fast.weight = embed.weight  # the same parameter: nothing is copied
        fast.compute_dtype = compute
        lm.embed_tokens = fast
    return backbone
