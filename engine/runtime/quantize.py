"""Weight-only quantization (int8, int4), applied after loading, with the result cached on disk.

``quantize_backbone(backbone, "int8")`` swaps every ``nn.Linear`` (vision tower, projector, decoder)
and the tied embedding / LM head for int8 versions: one int8 per weight plus one scale per output row
(symmetric, absmax / 127). Activations, norms, the patch convolution and the position table keep the
model's dtype. Decode reads about half the bytes of bf16 (a quarter of fp32).

``"int4"`` stores every decoder linear and the tied embedding / LM head in group-wise int4
(engine.runtime.int4: 4 bits per weight plus a bf16 scale and zero per group of ``INT4_GROUP``
inputs), and the vision tower and projector in int8 (they run once per image, on 256+ rows, where
int4's dequantizing costs twice int8's and saves little memory; benchmarks/RESULTS.md). A layer
whose input width no int4 group size divides is stored in int8.

Kernels (the dtype is chosen when the model is quantized, from the device and the CPU's
capabilities; per call only the number of rows decides):
* few rows (decode): torch's ``_weight_int8pack_mm`` on CPU, fed bf16 activations -- its fp32 path is
  ~10x slower, and rounding activations to bf16 costs less accuracy than the int8 weights themselves.
  It is only handed weights it is safe for (:func:`packed_kernel_safe`): on AVX512 CPUs it crashes
  on a weight that is not 16-byte aligned or whose rows are not a multiple of 16 bytes long;
* many rows (prefill, vision tower), unsafe weights, and devices without that kernel: the weight is
  dequantized into a reused scratch buffer and multiplied in ``compute_dtype`` (fp32 on CPUs
  without fast bf16, else the model dtype), a slice of rows at a time (kernels.converted_linear).

Scales are stored in bf16 (what the int8 kernel takes); weights are rounded against the bf16 scale,
so dequantization is exact arithmetic on the stored values. The on-disk cache is
engine.checkpoints.quantized_cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import QuantizeError
from engine.model.backbone import PaliGemmaBackbone
from engine.runtime.capabilities import CpuCapabilities, cpu_capabilities
from engine.runtime.int4 import Int4Linear, Int4TiedEmbedding
from engine.runtime.int4_format import CANONICAL, Int4Layout, group_size_for, kernel_layout
from engine.runtime.kernels import (
    PACKED_ALIGNMENT,
    SCRATCH_BYTES,
    converted_linear,
    is_aligned,
    linear,
    needs_grad,
    scratch,
)
from engine.runtime.optimize import matmul_dtype, swap_linears

QUANT_MODES = ("int8", "int4")
INT4_GROUP = 128  # inputs per int4 scale/zero: the measured default (benchmarks/RESULTS.md)
PACK_MAX_ROWS = 32  # up to here _weight_int8pack_mm beats dequantize + GEMM (benchmarks/floors.py)
PACK_ROW_MULTIPLE = 16  # int8 row lengths the packed kernel is safe for (bytes)


def check_mode(mode: str) -> str:
    if mode not in QUANT_MODES:
        raise QuantizeError(f"unknown quantization {mode!r}; use one of: {', '.join(QUANT_MODES)}")
    return mode


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float[N, K] -> (int8[N, K], bf16 scale[N]) with weight ~= q * scale per row."""
    n, k = weight.shape
    q = torch.empty(n, k, dtype=torch.int8, device=weight.device)
    scale = torch.empty(n, dtype=torch.bfloat16, device=weight.device)
    # In place, a slice of rows at a time, on the small reused fp32 buffer: fresh 100+ MB temporaries
    # cost more in page faults than the arithmetic (a 3B model quantizes in ~10 s instead of ~50 s).
    step = max(1, SCRATCH_BYTES // (4 * k))
    for i in range(0, n, step):
        w = scratch((min(step, n - i), k), torch.float32, weight.device).copy_(weight[i : i + step].detach())
        s = (torch.maximum(w.amax(dim=1), -w.amin(dim=1)) / 127).to(torch.bfloat16)
        s = torch.where(s == 0, torch.ones_like(s), s)  # all-zero rows stay zero
        q[i : i + step].copy_(w.div_(s.float()[:, None]).round_().clamp_(-127, 127))
        scale[i : i + step] = s
    return q, scale


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None
) -> torch.Tensor:
    """int8[N, K] and scale[N] -> float[N, K] in ``dtype`` (into ``out`` when given)."""
    out = torch.empty(q.shape, dtype=dtype, device=q.device) if out is None else out
    return out.copy_(q).mul_(scale.to(dtype)[:, None])


def packed_kernel_safe(q: torch.Tensor, scale: torch.Tensor) -> bool:
    """Whether torch's packed int8 GEMV may read ``q`` and ``scale``: contiguous, 64-byte aligned
    (memory-mapped files put tensors wherever their header ends), rows a multiple of 16 bytes."""
    return (
        q.is_contiguous()
        and q.shape[1] % PACK_ROW_MULTIPLE == 0
        and is_aligned(q, PACKED_ALIGNMENT)
        and is_aligned(scale, PACKED_ALIGNMENT)
    )


def _use_int8_kernel(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.numel() <= PACK_MAX_ROWS * q.shape[1]
        and not needs_grad(x)
        and packed_kernel_safe(q, scale)
    )


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
    """x float[..., K] @ dequant(q)[N, K].T -> float[..., N] in x's dtype; matmuls that do not take
    the packed kernel run in ``compute_dtype``."""
    rows = x.reshape(-1, x.shape[-1])  # (M, K)
    if _use_int8_kernel(x, q, scale):
        y = torch.ops.aten._weight_int8pack_mm(rows.to(torch.bfloat16).contiguous(), q, scale)
    elif needs_grad(x):
        y = linear(rows.to(compute_dtype), dequantize(q, scale, compute_dtype))
    else:  # the scale goes on the output: converting the weight is then its only pass over it
        y = converted_linear(rows.to(compute_dtype), q, compute_dtype, scale=scale)
    return y.to(x.dtype).view(*x.shape[:-1], q.shape[0])


class Int8Linear(nn.Module):
    """Linear layer with int8 weights and per-output-row scales; activations in their own dtype,
    matmuls off the packed kernel in ``compute_dtype``."""

    weight: torch.Tensor  # int8[N, K] (a buffer)
    scale: torch.Tensor  # bf16[N]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        dtype: torch.dtype,
        compute_dtype: torch.dtype,
        device: torch.device | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(out_features, dtype=torch.bfloat16, device=device))
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype, compute_dtype: torch.dtype) -> Int8Linear:
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype, compute_dtype, w.device)
        if not w.is_meta:
            new.weight, new.scale = quantize_rows(w)
            if linear.bias is not None:
                new.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = int8_matmul(x, self.weight, self.scale, self.compute_dtype)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        shape = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{shape}, int8, compute_dtype={self.compute_dtype}"


class Int8TiedEmbedding(nn.Module):
    """The tied token embedding / LM head in int8 (same interface as text.TiedEmbedding)."""

    weight: torch.Tensor  # int8[V, H] (a buffer)
    scale: torch.Tensor  # bf16[V]

    def __init__(
        self, num: int, dim: int, dtype: torch.dtype, compute_dtype: torch.dtype, device: torch.device | None = None
    ):
        super().__init__()
        self._dtype = dtype  # of the activations it produces
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", torch.empty(num, dim, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(num, dtype=torch.bfloat16, device=device))

    @classmethod
    def from_embedding(
        cls, embedding: nn.Embedding, dtype: torch.dtype, compute_dtype: torch.dtype
    ) -> Int8TiedEmbedding:
        w = embedding.weight
        new = cls(w.shape[0], w.shape[1], dtype, compute_dtype, w.device)
        if not w.is_meta:
            new.weight, new.scale = quantize_rows(w)
        return new

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(token_ids, self.weight).to(self._dtype)  # (..., H), exact for |q| <= 127
        return rows * self.scale[token_ids].to(self._dtype)[..., None]

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        return int8_matmul(hidden, self.weight, self.scale, self.compute_dtype)


def int4_layout(device: torch.device) -> Int4Layout:
    """The layout int4 weights are packed in for ``device``: on CPU the one torch's int4 kernel
    reads (when this torch has the kernel), elsewhere the canonical one."""
    found = kernel_layout() if device.type == "cpu" else None
    return CANONICAL if found is None else found


def quantize_backbone(
    backbone: PaliGemmaBackbone,
    mode: str = "int8",
    dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    cpu: CpuCapabilities | None = None,
    group_size: int = INT4_GROUP,
    layout: Int4Layout | None = None,
) -> PaliGemmaBackbone:
    """Swap linears and the tied embedding for quantized versions, in place. ``dtype`` is the
    activation dtype (default: the weights'; on the meta device, to be filled from a cache, the
    weights cannot tell), ``device`` where the model will run (default: where its weights are) and
    ``cpu`` the capabilities the matmul dtype is chosen for (default: :func:`cpu_capabilities`).
    int4 only: ``group_size`` and ``layout`` (default: :func:`int4_layout`; the kernel is used only
    when it reads that layout)."""
    check_mode(mode)
    lm = backbone.language_model
    embed = lm.embed_tokens
    if not isinstance(embed, nn.Embedding):
        raise QuantizeError(f"the model is quantized already ({type(embed).__name__}); load it afresh to quantize")
    act = dtype or embed.weight.dtype
    target = device or embed.weight.device
    compute = matmul_dtype(target, act, cpu_capabilities() if cpu is None else cpu)

    def int8(linear: nn.Linear) -> nn.Module:
        return Int8Linear.from_linear(linear, act, compute)

    if mode == "int4":
        found = kernel_layout() if target.type == "cpu" else None
        chosen = layout or int4_layout(target)
        kernel = found is not None and chosen == found

        def int4(linear: nn.Linear) -> nn.Module:
            group = group_size_for(linear.in_features, group_size)
            if group is None:
                return int8(linear)
            return Int4Linear.from_linear(linear, act, compute, group, chosen, kernel)

        swap_linears(lm, int4)
        group = group_size_for(embed.weight.shape[1], group_size)
        if group is not None:
            # duck-typed: the same forward/attend/dtype as TiedEmbedding (see its docstring)
            lm.embed_tokens = Int4TiedEmbedding.from_embedding(embed, act, compute, group, chosen, kernel)  # type: ignore[assignment]
    swap_linears(backbone, int8)  # everything not swapped above: vision tower, projector (int4: leftovers)
    if isinstance(lm.embed_tokens, nn.Embedding):
        lm.embed_tokens = Int8TiedEmbedding.from_embedding(embed, act, compute)  # type: ignore[assignment]
    return backbone
