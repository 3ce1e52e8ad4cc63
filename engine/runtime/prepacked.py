"""bf16 linears on oneDNN with weights reordered once into its blocked layout (opt-in, AVX512-BF16/AMX).

On CPUs with native bf16, torch's ``F.linear`` hands oneDNN the plain weight, and a one-row decode
GEMV then streams bf16 weights at ~12 GB/s of the ~20-25 the memory gives (PERF_NOTES: an AMX
guest; fp32 GEMV reaches ~20). Inductor's CPU freezing pass instead reorders each weight once
(``torch.ops.mkldnn._reorder_linear_weight``) and calls ``torch.ops.mkldnn._linear_pointwise`` on
it; :class:`PrepackedBf16Linear` and :class:`PrepackedTiedEmbedding` do the same as module swaps.

Not the default anywhere: it has not been measured on such a CPU yet (the machine this was written
on is AVX2-only, where oneDNN refuses to prepack bf16 weights), and it costs memory: the blocked
copy is extra, the plain weight stays (memory-mapped) for the embedding lookup, ``state_dict`` and
training. ``PALI_BF16_KERNEL=prepacked`` turns it on where the CPU has fast bf16 and oneDNN accepts;
``python -m benchmarks.bf16_gemv`` measures whether it should become the default there.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import InputError
from engine.model.text import TiedEmbedding
from engine.runtime.kernels import needs_grad

ENV_VAR = "PALI_BF16_KERNEL"
CHOICES = ("native", "prepacked")
DECODE_ROWS = 1  # the batch size oneDNN is told to pick its blocking for


def bf16_kernel_choice(spec: str | None = None) -> str:
    """``spec`` (default ``PALI_BF16_KERNEL``, unset = native); InputError names the choices."""
    value = (os.environ.get(ENV_VAR, "") if spec is None else spec).strip().lower() or "native"
    if value not in CHOICES:
        raise InputError(f"{ENV_VAR}={value!r} is not a bf16 kernel; use one of: {', '.join(CHOICES)}")
    return value


def prepack(weight: torch.Tensor) -> torch.Tensor:
    """bf16[N, K] -> oneDNN's blocked copy (an opaque mkldnn tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), DECODE_ROWS)


@functools.cache
def prepack_available() -> bool:
    """Whether oneDNN prepacks bf16 weights on this CPU (it needs AVX512BW/VL/DQ or AVX-NE-CONVERT)."""
    try:
        w = torch.ones(16, 16, dtype=torch.bfloat16)
        x = torch.ones(1, 16, dtype=torch.bfloat16)
        y = torch.ops.mkldnn._linear_pointwise(x, prepack(w), None, "none", [], "")
        return bool(torch.equal(y, F.linear(x, w)))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def packed_linear(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """rows bf16[M, K] @ the prepacked weight -> bf16[M, N]."""
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")


def _packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1]).contiguous()  # (M, K)
    return packed_linear(rows, packed, bias).view(*x.shape[:-1], n)


class PrepackedBf16Linear(nn.Module):
    """nn.Linear (bf16) whose matmuls read oneDNN's blocked copy of the weight."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.weight, self.bias = layer.weight, layer.bias  # kept for state_dict and training
        self.packed = prepack(layer.weight)  # not a buffer: an opaque layout, never saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if needs_grad(x, self.weight):
            return F.linear(x, self.weight, self.bias)
        return _packed_matmul(x, self.packed, self.bias, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN prepacked bf16"


class PrepackedTiedEmbedding(TiedEmbedding):
    """The tied embedding whose LM head reads a prepacked copy (lookups read the plain rows)."""

    packed: torch.Tensor

    @classmethod
    def wrap(cls, embed: TiedEmbedding) -> PrepackedTiedEmbedding:
        new = cls.__new__(cls)
        new.__dict__.update(embed.__dict__)  # the same parameter: nothing is copied
        new.packed = prepack(embed.weight)
        return new

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        if needs_grad(hidden, self.weight):
            return F.linear(hidden, self.weight)
        return _packed_matmul(hidden, self.packed, None, self.weight.shape[0])
