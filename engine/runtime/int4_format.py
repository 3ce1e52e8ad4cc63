"""The int4 weight format: group-wise asymmetric 4-bit values, packed as torch's CPU kernel reads them.

A weight float[N, K] is cut into groups of ``g`` consecutive inputs (32, 64 or 128) per output row;
each group keeps a bf16 scale ``s`` and a bf16 zero ``z`` and its values become unsigned 4-bit
``q`` in 0..15, with ``w ~= (q - 8) * s + z`` (the affine form ``_weight_int4pack_mm_for_cpu``
applies: it subtracts 8 itself, and takes scales and zeros as one tensor bf16[K/g, N, 2]).

The packed bytes uint8[N, K/2] are laid out in blocks of ``block`` output rows: block ``b`` holds
bytes[K, block/2] (row-major over K), and byte ``(k, j)`` holds two rows' values at input ``k``:
* ``halves``: rows ``j`` (low nibble) and ``j + block/2`` (high nibble) of the block;
* ``pairs``: rows ``2j`` (low) and ``2j + 1`` (high).
``torch.ops.aten._convert_weight_to_int4pack_for_cpu`` picks one per ATen kernel set (AVX512:
halves of 64 rows; AVX2: halves of 32; the portable kernels: pairs of 32; see ATen's
native/cpu/int4mm_kernel.cpp). Which one this torch uses is found by packing a probe
(:func:`kernel_layout`), never assumed, so a cache packed on another CPU is never misread: the
layout is part of the cache key. Rows are padded to a multiple of ``ROW_MULTIPLE`` (every block
full, in every layout) with zero weights; outputs are cut back to N.

Everything here is plain torch (any device): packing, unpacking, dequantizing a slice of rows and
gathering single rows (the embedding lookup).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

GROUP_SIZES = (128, 64, 32)  # what the CPU kernel takes (it also takes 256; coarser groups lose accuracy)
ROW_MULTIPLE = 64  # the largest block of any layout: padded weights fill whole blocks
LEVELS = 15  # 4 bits: 0..15
OFFSET = 8  # the kernel maps q to q - 8


@dataclass(frozen=True)
class Int4Layout:
    """How packed bytes map to (row, input) values; see the module docstring."""

    block: int  # output rows per block: 32 or 64
    scheme: str  # "halves" or "pairs"

    @property
    def name(self) -> str:
        return f"{self.scheme}{self.block}"


CANONICAL = Int4Layout(64, "halves")  # where no kernel layout is known (other devices, other torch builds)
KNOWN_LAYOUTS = (Int4Layout(32, "halves"), Int4Layout(64, "halves"), Int4Layout(32, "pairs"), Int4Layout(64, "pairs"))


def layout_named(name: str) -> Int4Layout:
    for layout in KNOWN_LAYOUTS:
        if layout.name == name:
            return layout
    raise ValueError(f"unknown int4 layout {name!r}; known: {', '.join(lay.name for lay in KNOWN_LAYOUTS)}")


def padded_rows(n: int) -> int:
    return -(-n // ROW_MULTIPLE) * ROW_MULTIPLE


def group_size_for(k: int, preferred: int) -> int | None:
    """The largest kernel group size <= ``preferred`` that divides the input width ``k`` (None: no
    group size fits, and the layer is not stored in int4)."""
    return next((g for g in GROUP_SIZES if g <= preferred and k % g == 0), None)


def pack(q: torch.Tensor, layout: Int4Layout) -> torch.Tensor:
    """uint8[R, K] values 0..15 (R a multiple of the block) -> packed uint8[R, K/2]."""
    r, k = q.shape
    b = layout.block
    blocks = q.view(r // b, b, k)  # (R/B, B, K)
    if layout.scheme == "halves":
        lo, hi = blocks[:, : b // 2], blocks[:, b // 2 :]
    else:
        lo, hi = blocks[:, 0::2], blocks[:, 1::2]
    return (lo | (hi << 4)).transpose(1, 2).contiguous().view(r, k // 2)  # bytes (R/B, K, B/2)


def _nibbles(packed: torch.Tensor, layout: Int4Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed uint8[R, K/2] -> the low and high nibbles, each uint8[R/B, K, B/2]."""
    r, half = packed.shape
    b = packed.reshape(r // layout.block, 2 * half, layout.block // 2)  # (R/B, K, B/2)
    return b & 0xF, b >> 4


def unpack(packed: torch.Tensor, layout: Int4Layout) -> torch.Tensor:
    """Packed uint8[R, K/2] -> values uint8[R, K] (the inverse of :func:`pack`)."""
    r, half = packed.shape
    lo, hi = _nibbles(packed, layout)
    if layout.scheme == "halves":
        blocks = torch.cat([lo, hi], dim=2)  # (R/B, K, B): rows j, then rows j + B/2
    else:
        blocks = torch.stack([lo, hi], dim=3).flatten(2)  # (R/B, K, B): rows 2j, 2j + 1 interleaved
    return blocks.transpose(1, 2).reshape(r, 2 * half)


def quantize_groups(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32[R, K] -> (q uint8[R, K] in 0..15, scale bf16[R, K/g], zero bf16[R, K/g]); ``w`` is
    overwritten (callers pass a scratch copy).

    Scale and zero are rounded to bf16 first and q is rounded against the rounded values, so
    dequantizing is exact arithmetic on what is stored. A constant group is its value in bf16."""
    r, k = w.shape
    wg = w.view(r, k // group, group)  # (R, K/g, g)
    lo, hi = wg.amin(dim=2), wg.amax(dim=2)
    scale = ((hi - lo) / LEVELS).to(torch.bfloat16)
    flat = scale == 0
    scale = torch.where(flat, torch.ones_like(scale), scale)
    zero = torch.where(flat, lo, lo + OFFSET * scale.float()).to(torch.bfloat16)  # flat: q = 8 -> the value
    q = wg.sub_(zero.float()[..., None]).div_(scale.float()[..., None]).add_(OFFSET).round_().clamp_(0, LEVELS)
    return q.to(torch.uint8).view(r, k), scale, zero


def dequantize(
    packed: torch.Tensor, scales_zeros: torch.Tensor, layout: Int4Layout, dtype: torch.dtype
) -> torch.Tensor:
    """Packed uint8[R, K/2] and scales_zeros bf16[K/g, R, 2] -> weight float[R, K] in ``dtype``."""
    q = unpack(packed, layout)
    r, k = q.shape
    groups = scales_zeros.shape[0]
    s = scales_zeros[..., 0].t().float()[..., None]  # (R, K/g, 1)
    z = scales_zeros[..., 1].t().float()[..., None]
    return ((q.view(r, groups, k // groups).float() - OFFSET) * s + z).view(r, k).to(dtype)


def dequantize_into(
    packed: torch.Tensor, scales_zeros: torch.Tensor, layout: Int4Layout, out: torch.Tensor
) -> torch.Tensor:
    """Packed uint8[R, K/2] and scales_zeros bf16[K/g, R, 2] -> ``out`` float[R, K] = weight: two
    transposing copies, then the affine step in place. (Writing weight.T[K, R] instead skips the
    transposes, but oneDNN's GEMM then runs slower by more than they cost: benchmarks/RESULTS.md.)"""
    r, k = out.shape
    b = layout.block
    lo, hi = _nibbles(packed, layout)  # (R/B, K, B/2) each
    blocks = out.view(r // b, b, k)  # (R/B, B, K)
    if layout.scheme == "halves":
        blocks[:, : b // 2].copy_(lo.transpose(1, 2))
        blocks[:, b // 2 :].copy_(hi.transpose(1, 2))
    else:
        pairs = blocks.view(r // b, b // 2, 2, k)  # (R/B, B/2, 2, K)
        pairs[:, :, 0].copy_(lo.transpose(1, 2))
        pairs[:, :, 1].copy_(hi.transpose(1, 2))
    groups = scales_zeros.shape[0]
    s = scales_zeros[..., 0].t().to(out.dtype)  # (R, K/g)
    z = scales_zeros[..., 1].t().to(out.dtype) - OFFSET * s
    grouped = out.view(r, groups, k // groups)  # (R, K/g, g)
    return grouped.mul_(s[..., None]).add_(z[..., None]).view(r, k)


def dequantize_rows(
    packed: torch.Tensor, scales_zeros: torch.Tensor, layout: Int4Layout, ids: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Rows ``ids`` int[T] of the weight -> float[T, K] in ``dtype``: a gather of one nibble per
    input from each row's block (the embedding lookup of a tied int4 embedding)."""
    r, half = packed.shape
    k, b = 2 * half, layout.block
    blocks = packed.view(r // b, k, b // 2)  # (R/B, K, B/2)
    within = ids % b
    if layout.scheme == "halves":
        col, shift = within % (b // 2), (within // (b // 2)) * 4
    else:
        col, shift = within // 2, (within % 2) * 4
    raw = blocks[ids // b, :, col]  # (T, K)
    q = (raw >> shift[:, None].to(torch.uint8)) & 0xF
    groups = scales_zeros.shape[0]
    s = scales_zeros[:, ids, 0].t().float()[..., None]  # (T, K/g, 1)
    z = scales_zeros[:, ids, 1].t().float()[..., None]
    return ((q.view(-1, groups, k // groups).float() - OFFSET) * s + z).view(-1, k).to(dtype)


@functools.cache
def kernel_layout() -> Int4Layout | None:
    """The layout torch's CPU int4 kernel reads in this process (it follows ATen's kernel set), or
    None where the kernel is missing or packs in a way this module does not know."""
    convert = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)
    if convert is None or getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None) is None:
        return None
    k = 2 * GROUP_SIZES[-1]
    # every row different, so that only the true layout reproduces the packing
    probe = torch.randint(
        0, LEVELS + 1, (ROW_MULTIPLE, k), dtype=torch.int32, generator=torch.Generator().manual_seed(0)
    )
    try:
        packed = convert(probe, 1)
    except (RuntimeError, NotImplementedError):
        return None
    q = probe.to(torch.uint8)
    return next((lay for lay in KNOWN_LAYOUTS if torch.equal(pack(q, lay), packed)), None)
