"""int4 weight-only layers: group-wise 4-bit weights (engine.runtime.int4_format) behind nn.Linear's
and the tied embedding's interfaces.

Kernels (chosen when the model is quantized; per call only the number of rows decides):
* up to ``KERNEL_MAX_ROWS`` rows (decode, batched decode) on CPU, when the weights are packed in
  the layout this torch's kernel reads: ``torch.ops.aten._weight_int4pack_mm_for_cpu`` with bf16
  activations (its fp32 path is scalar code, tens of times slower) and bf16 scales and zeros;
* more rows (prefill), other devices, layouts the kernel does not read, and training: slices of
  rows are dequantized into the scratch buffer and multiplied in ``compute_dtype`` (fp32 on CPUs
  without fast bf16) by oneDNN, as int8's slow path does.

The tied embedding looks tokens up by gathering their rows out of the packed form (a few
thousand nibbles per token), so the 4-bit matrix is the only copy of the embedding in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.runtime.int4_format import (
    ROW_MULTIPLE,
    Int4Layout,
    dequantize,
    dequantize_into,
    dequantize_rows,
    pack,
    padded_rows,
    quantize_groups,
)
from engine.runtime.kernels import PACKED_ALIGNMENT, SCRATCH_BYTES, is_aligned, needs_grad, scratch, sliced_linear

# Up to here the int4 kernel beats dequantizing + oneDNN: it runs 4 rows per pass over the weight
# and is compute-bound (2048x16384 and 16384x2048 on AVX2: 8.6 ms at 4 rows, 69 ms at 32, against
# ~48 ms of dequantizing plus the GEMM; benchmarks/RESULTS.md).
KERNEL_MAX_ROWS = 32


def kernel_safe(weight: torch.Tensor, scales_zeros: torch.Tensor) -> bool:
    """Contiguous and 64-byte aligned (what the kernel battery checks it at), on the CPU."""
    return (
        weight.device.type == "cpu"
        and weight.is_contiguous()
        and scales_zeros.is_contiguous()
        and is_aligned(weight, PACKED_ALIGNMENT)
        and is_aligned(scales_zeros, PACKED_ALIGNMENT)
    )


def quantize_weight(weight: torch.Tensor, group: int, layout: Int4Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """float[N, K] -> (packed uint8[N', K/2], scales_zeros bf16[K/g, N', 2]) with N' = N padded to
    whole blocks of zero rows. A slice of rows at a time, through the reused fp32 scratch buffer:
    fresh 100+ MB temporaries cost more in page faults than the arithmetic."""
    n, k = weight.shape
    rows = padded_rows(n)
    packed = torch.empty(rows, k // 2, dtype=torch.uint8, device=weight.device)
    scales_zeros = torch.empty(k // group, rows, 2, dtype=torch.bfloat16, device=weight.device)
    step = max(ROW_MULTIPLE, SCRATCH_BYTES // (4 * k) // ROW_MULTIPLE * ROW_MULTIPLE)
    for i in range(0, n, step):
        j = min(i + step, n)
        m = padded_rows(j - i)  # whole blocks; the last slice ends in zero rows
        w = scratch((m, k), torch.float32, weight.device)
        w[: j - i] = weight[i:j].detach()
        w[j - i :] = 0
        q, scale, zero = quantize_groups(w, group)
        packed[i : i + m] = pack(q, layout)
        scales_zeros[:, i : i + m, 0] = scale.t()
        scales_zeros[:, i : i + m, 1] = zero.t()
    return packed, scales_zeros


def int4_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales_zeros: torch.Tensor,
    out_features: int,
    layout: Int4Layout,
    kernel: bool,
    compute_dtype: torch.dtype,
) -> torch.Tensor:
    """x float[..., K] @ dequant(packed)[:out_features].T -> float[..., out_features] in x's dtype."""
    k = x.shape[-1]
    rows = x.reshape(-1, k)  # (M, K)
    group = k // scales_zeros.shape[0]
    if kernel and rows.shape[0] <= KERNEL_MAX_ROWS and not needs_grad(x) and kernel_safe(packed, scales_zeros):
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows.to(torch.bfloat16).contiguous(), packed, group, scales_zeros
        )
    elif needs_grad(x):
        y = F.linear(rows.to(compute_dtype), dequantize(packed, scales_zeros, layout, compute_dtype))
    else:

        def fill(i: int, j: int, out: torch.Tensor) -> torch.Tensor:
            return dequantize_into(packed[i:j], scales_zeros[:, i:j], layout, out)

        y = sliced_linear(rows.to(compute_dtype), packed.shape[0], k, compute_dtype, fill, multiple=ROW_MULTIPLE)
    return y[:, :out_features].to(x.dtype).view(*x.shape[:-1], out_features)


class Int4Linear(nn.Module):
    """Linear layer with group-wise int4 weights; activations in their own dtype."""

    weight: torch.Tensor  # packed uint8[N', K/2] (a buffer)
    scales_zeros: torch.Tensor  # bf16[K/g, N', 2]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        dtype: torch.dtype,
        compute_dtype: torch.dtype,
        group: int,
        layout: Int4Layout,
        kernel: bool,
        device: torch.device | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype, self.group, self.layout, self.kernel = compute_dtype, group, layout, kernel
        rows = padded_rows(out_features)
        self.register_buffer("weight", torch.empty(rows, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer(
            "scales_zeros", torch.empty(in_features // group, rows, 2, dtype=torch.bfloat16, device=device)
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        dtype: torch.dtype,
        compute_dtype: torch.dtype,
        group: int,
        layout: Int4Layout,
        kernel: bool,
    ) -> Int4Linear:
        w = linear.weight
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            dtype,
            compute_dtype,
            group,
            layout,
            kernel,
            w.device,
        )
        if not w.is_meta:
            new.weight, new.scales_zeros = quantize_weight(w, group, layout)
            if linear.bias is not None:
                new.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return new

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight float[N, K] this layer multiplies by (for tests and references)."""
        return dequantize(self.weight, self.scales_zeros, self.layout, dtype)[: self.out_features]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = int4_matmul(
            x, self.weight, self.scales_zeros, self.out_features, self.layout, self.kernel, self.compute_dtype
        )
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        shape = f"in_features={self.in_features}, out_features={self.out_features}"
        kernel = "kernel" if self.kernel else "dequantized only"
        return f"{shape}, int4 group {self.group}, {self.layout.name} ({kernel}), compute_dtype={self.compute_dtype}"


class Int4TiedEmbedding(nn.Module):
    """The tied token embedding / LM head in int4 (same interface as text.TiedEmbedding)."""

    weight: torch.Tensor  # packed uint8[V', H/2] (a buffer)
    scales_zeros: torch.Tensor  # bf16[H/g, V', 2]

    def __init__(
        self,
        num: int,
        dim: int,
        dtype: torch.dtype,
        compute_dtype: torch.dtype,
        group: int,
        layout: Int4Layout,
        kernel: bool,
        device: torch.device | None = None,
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num, dim
        self._dtype = dtype  # of the activations it produces
        self.compute_dtype, self.group, self.layout, self.kernel = compute_dtype, group, layout, kernel
        rows = padded_rows(num)
        self.register_buffer("weight", torch.empty(rows, dim // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales_zeros", torch.empty(dim // group, rows, 2, dtype=torch.bfloat16, device=device))

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding,
        dtype: torch.dtype,
        compute_dtype: torch.dtype,
        group: int,
        layout: Int4Layout,
        kernel: bool,
    ) -> Int4TiedEmbedding:
        w = embedding.weight
        new = cls(w.shape[0], w.shape[1], dtype, compute_dtype, group, layout, kernel, w.device)
        if not w.is_meta:
            new.weight, new.scales_zeros = quantize_weight(w, group, layout)
        return new

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.weight, self.scales_zeros, self.layout, dtype)[: self.num_embeddings]

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        flat = token_ids.reshape(-1)
        rows = dequantize_rows(self.weight, self.scales_zeros, self.layout, flat, self._dtype)
        return rows.view(*token_ids.shape, self.embedding_dim)

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        return int4_matmul(
            hidden, self.weight, self.scales_zeros, self.num_embeddings, self.layout, self.kernel, self.compute_dtype
        )

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int4 group {self.group}, {self.layout.name}"
