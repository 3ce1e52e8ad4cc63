"""The CPU matmul kernels the module swaps call, the scratch buffer they share, and alignment.

* :func:`linear`: F.linear, except fp32 on CPU, which runs oneDNN's inner product on the plain
  weight (faster than torch's default sgemm at every shape pali uses; see benchmarks/RESULTS.md).
* :func:`converted_linear`: a matmul against a weight stored in another dtype (bf16, int8): slices
  of its rows are converted into a reused scratch buffer and multiplied one at a time.
* :func:`scratch`: that buffer. Fresh allocations of 100+ MB are served by mmap and page-faulted in
  on every call, which costs as much as the conversion itself.
* :func:`kernel_alignment` / :func:`aligned`: what a native kernel may be handed. Memory-mapped
  safetensors tensors start wherever the file's header length puts them, and torch's int8 GEMV
  (``_weight_int8pack_mm``) crashes on AVX512 CPUs when its weight is not 16-byte aligned; dense
  float kernels need their element size. A tensor that falls short is copied before use.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import torch
import torch.nn.functional as F

SCRATCH_BYTES = 32 * 1024**2  # weights converted for a matmul pass through this much memory at a time
# ... except for a few rows (batched decode), where slices this small stay in the last-level cache
# between the conversion and the GEMV; prefill-sized GEMMs prefer the larger slices.
SMALL_SCRATCH_BYTES = 8 * 1024**2
SMALL_ROWS = 16
PACKED_ALIGNMENT = 64  # bytes: a cache line, and the widest (AVX512) vector load

_local = threading.local()  # one scratch buffer per thread, so concurrent forwards never share one


def scratch(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reused buffer of ``shape``, valid until the next call on this thread with the same dtype
    and device."""
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


def kernel_alignment(dtype: torch.dtype) -> int:
    """Bytes a tensor of ``dtype`` must be aligned to before a native kernel reads it: int8 weights
    go to the packed int8 GEMV (a cache line); floats need their element size."""
    return PACKED_ALIGNMENT if dtype in (torch.int8, torch.uint8) else dtype.itemsize


def is_aligned(tensor: torch.Tensor, alignment: int) -> bool:
    return tensor.data_ptr() % alignment == 0


def aligned(tensor: torch.Tensor, alignment: int | None = None) -> torch.Tensor:
    """``tensor`` itself when its data starts on an ``alignment``-byte boundary (default: what its
    dtype needs), else a contiguous copy in fresh memory (torch's CPU allocator aligns to 64)."""
    need = kernel_alignment(tensor.dtype) if alignment is None else alignment
    if tensor.device.type != "cpu" or is_aligned(tensor, need):
        return tensor
    copy = torch.empty(tensor.shape, dtype=tensor.dtype)
    if not is_aligned(copy, need):  # an allocator that aligns less than asked: over-allocate
        raw = torch.empty(copy.numel() * copy.element_size() + need, dtype=torch.uint8)
        skip = -raw.data_ptr() % need
        copy = raw[skip : skip + copy.numel() * copy.element_size()].view(tensor.dtype).view(tensor.shape)
    return copy.copy_(tensor)


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
    MKL's sgemm it is faster at prefill shapes, at one-row decode of up-projections and the LM head,
    and much faster at batched decode (2-64 rows) on AMD CPUs. Same math; only the summation order
    differs. Training falls back to F.linear, which autograd knows."""
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
    y = sliced_linear(x, n, k, dtype, lambda i, j, out: out.copy_(weight[i:j]), bias)
    return y if scale is None else y.mul_(scale.to(dtype))


def sliced_linear(
    x: torch.Tensor,
    n: int,
    k: int,
    dtype: torch.dtype,
    fill: Callable[[int, int, torch.Tensor], torch.Tensor],
    bias: torch.Tensor | None = None,
    multiple: int = 1,
) -> torch.Tensor:
    """x float[M, K] (in ``dtype``) @ W[N, K].T where ``fill(i, j, out)`` writes rows i..j of W into
    ``out`` float[j - i, K] (scratch memory) and returns it; slices hold a multiple of ``multiple``
    rows and stay under the scratch budget (SMALL_SCRATCH_BYTES for a few rows of x)."""
    budget = SMALL_SCRATCH_BYTES if x.shape[0] <= SMALL_ROWS else SCRATCH_BYTES
    step = max(multiple, budget // (k * dtype.itemsize) // multiple * multiple)
    if step >= n:
        return linear(x, fill(0, n, scratch((n, k), dtype, x.device)), bias)
    y = torch.empty(x.shape[0], n, dtype=dtype, device=x.device)
    for i in range(0, n, step):
        j = min(i + step, n)
        w = fill(i, j, scratch((j - i, k), dtype, x.device))
        y[:, i:j] = linear(x, w, None if bias is None else bias[i:j])
    return y
