"""Optimisations applied to a loaded model after construction: module swaps, never flags in forward.

``optimize(backbone, cpu)`` picks matmul kernels for the device the model sits on and, on CPU, for
the capabilities ``cpu`` describes (default :func:`engine.runtime.capabilities.cpu_capabilities`;
tests pass both kinds). Every choice is made here, once; the swapped modules only look at the
shape of each call. On CPU:

* **fp32** weights: every ``nn.Linear`` becomes a :class:`CpuLinear` and the tied embedding a
  :class:`CpuTiedEmbedding` (the same tensors, no copy), which run oneDNN's inner product
  (:func:`engine.runtime.kernels.linear`).
* **bf16 weights on a CPU without fast bf16** (no AVX512-BF16/AMX): torch emulates bf16 matmuls, so
  prefill-sized GEMMs are several times slower than fp32, while a one-row GEMV in bf16 is as fast
  per byte as fp32 (twice as fast per weight). Up to ``GEMV_MAX_ROWS`` rows the native bf16 kernel
  runs; above, slices of the weight are upcast into a small reused fp32 scratch buffer and
  multiplied in fp32. Weights stay bf16. The decoder's attention core becomes an
  :class:`UpcastAttention` (fp32 scores, soft-cap, softmax and weighted sum): torch's bf16
  attention is emulated there too, and ``q``, ``k``, ``v`` are small, so the casts cost next to nothing.
* **bf16 on a CPU with AVX512-BF16/AMX**: torch's own kernels (oneDNN's AMX/AVX512 paths) are left
  alone, unless ``bf16_kernel="prepacked"`` (``PALI_BF16_KERNEL``): then linears and the LM head read
  weights oneDNN reordered once (engine.runtime.prepacked; opt-in until measured on such a CPU).

GPUs are left alone. The measurements behind each threshold are in benchmarks/RESULTS.md
(``python -m benchmarks.floors`` reproduces them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.backbone import PaliGemmaBackbone
from engine.model.text import Attention, DecoderLayer, TiedEmbedding
from engine.runtime.capabilities import CpuCapabilities, cpu_capabilities
from engine.runtime.kernels import converted_linear, linear, needs_grad
from engine.runtime.prepacked import PrepackedBf16Linear, PrepackedTiedEmbedding, bf16_kernel_choice, prepack_available

# Up to this many rows torch's native bf16 GEMV wins (it reads half the bytes of fp32); from 5-6
# rows its emulated bf16 arithmetic costs more than converting slices and running fp32 (PaliGemma
# 3B decoder shapes on an AVX2 CPU; benchmarks/RESULTS.md).
GEMV_MAX_ROWS = 4


def matmul_dtype(device: torch.device, dtype: torch.dtype, cpu: CpuCapabilities) -> torch.dtype:
    """The dtype large matmuls should run in for activations of ``dtype`` on ``device``."""
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16) and not cpu.fast_bf16:
        return torch.float32
    return dtype


class CpuLinear(nn.Module):
    """nn.Linear on CPU with the kernel chosen per call from the shape (see the module docstring):
    bf16 weights on a CPU without fast bf16 compute large matmuls in fp32 via a scratch copy."""

    weight: torch.Tensor
    bias: torch.Tensor | None

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
        up_bias = None if bias is None else bias.to(self.compute_dtype)
        if needs_grad(x, weight):
            return F.linear(x.to(self.compute_dtype), weight.to(self.compute_dtype), up_bias).to(x.dtype)
        rows = x.reshape(-1, self.in_features).to(self.compute_dtype)  # (M, K)
        y = converted_linear(rows, weight, self.compute_dtype, up_bias)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, compute_dtype={self.compute_dtype}"


class CpuTiedEmbedding(TiedEmbedding):
    """The tied embedding whose LM head picks its kernel like :class:`CpuLinear`: in fp32 oneDNN;
    bf16 on a CPU without fast bf16: the native GEMV up to ``GEMV_MAX_ROWS`` rows, converted fp32
    slices above."""

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


def swap_linears(module: nn.Module, make: Callable[[nn.Linear], nn.Module | None]) -> int:
    """Replace every nn.Linear below ``module`` by ``make(linear)`` (None or the layer itself keeps
    it); returns the count replaced."""
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear:
            new = make(child)
            if new is not None and new is not child:
                setattr(module, name, new)
                count += 1
        else:
            count += swap_linears(child, make)
    return count


def _cpu_compute_dtype(weight: torch.Tensor, cpu: CpuCapabilities) -> torch.dtype | None:
    """The dtype a CPU kernel swap should compute ``weight``'s matmuls in, or None to keep torch's
    own: fp32 weights (oneDNN) and low-precision weights on CPUs that emulate them."""
    compute = matmul_dtype(weight.device, weight.dtype, cpu)
    if weight.device.type == "cpu" and (compute == torch.float32 or compute != weight.dtype):
        return compute
    return None


def cpu_linear(layer: nn.Linear, cpu: CpuCapabilities) -> nn.Module:
    """``layer`` swapped for the CPU kernel that suits its dtype on ``cpu`` (itself if none does)."""
    compute = _cpu_compute_dtype(layer.weight, cpu)
    return layer if compute is None else CpuLinear(layer, compute)


def cpu_tied_embedding(embed: TiedEmbedding, cpu: CpuCapabilities) -> TiedEmbedding:
    """The tied embedding with its LM head on the CPU kernel that suits it (itself if none does)."""
    compute = _cpu_compute_dtype(embed.weight, cpu) if type(embed) is TiedEmbedding else None
    if compute is None:
        return embed
    n, d = embed.num_embeddings, embed.embedding_dim
    with torch.device("meta"):  # a placeholder weight: no N(0, 1) init (seconds of one-off imports)
        fast = CpuTiedEmbedding(n, d, _weight=torch.empty(n, d))
    fast.weight = cast(nn.Parameter, embed.weight)  # the same parameter: nothing is copied
    fast.compute_dtype = compute
    return fast


def _prepacked(cpu: CpuCapabilities, bf16_kernel: str | None) -> bool:
    return cpu.fast_bf16 and bf16_kernel_choice(bf16_kernel) == "prepacked" and prepack_available()


def _swap_linear(layer: nn.Linear, cpu: CpuCapabilities, prepacked: bool) -> nn.Module:
    w = layer.weight
    if prepacked and w.device.type == "cpu" and w.dtype == torch.bfloat16:
        return PrepackedBf16Linear(layer)
    return cpu_linear(layer, cpu)


def optimize(
    backbone: PaliGemmaBackbone, cpu: CpuCapabilities | None = None, bf16_kernel: str | None = None
) -> PaliGemmaBackbone:
    """Apply the optimisations that pay off for this model's dtype and device (in place), on CPU
    for the capabilities ``cpu`` (default: :func:`cpu_capabilities`). ``bf16_kernel``: "native" or
    "prepacked" for bf16 weights on CPUs with fast bf16 (default: ``PALI_BF16_KERNEL``, else native)."""
    cpu = cpu_capabilities() if cpu is None else cpu
    prepacked = _prepacked(cpu, bf16_kernel)
    swap_linears(backbone, lambda layer: _swap_linear(layer, cpu, prepacked))
    lm = backbone.language_model
    for layer in lm.layers:
        attn = cast(DecoderLayer, layer).self_attn
        if type(attn) is Attention and matmul_dtype(attn.o_proj.weight.device, lm.dtype, cpu) != lm.dtype:
            layer.self_attn = UpcastAttention.wrap(attn)
    embed = lm.embed_tokens
    if isinstance(embed, TiedEmbedding):
        w = embed.weight
        if prepacked and type(embed) is TiedEmbedding and w.device.type == "cpu" and w.dtype == torch.bfloat16:
            lm.embed_tokens = PrepackedTiedEmbedding.wrap(embed)
        else:
            lm.embed_tokens = cpu_tied_embedding(embed, cpu)
    return backbone
