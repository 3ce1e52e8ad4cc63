"""Memory for weights that a load must convert: huge pages where the OS offers them.

A checkpoint tensor already in the target dtype is used in place, memory-mapped from the file
(engine.checkpoints.weights): nothing to copy. A tensor that must be cast (bf16 hub files run in
fp32, fp32 files in bf16) needs memory of its own, and this module provides it (the bytes are read
by engine.checkpoints.reader):

* **Huge pages.** A converted weight of 2 MiB or more gets an anonymous mapping advised for 2 MiB
  pages (Linux transparent huge pages, ``madvise`` mode). Decode streams every weight once per
  token; with 4 KiB pages the TLB misses constantly and prefetchers stop at every page edge (the
  measured gains, and why same-dtype weights are not copied onto huge pages, are in
  benchmarks/RESULTS.md). Elsewhere (macOS, Windows, THP off) plain ``torch.empty`` is used.

Each large weight has its own mapping, so a tensor that is dropped later (quantization replaces
every linear) gives its memory back; one arena for all would live as long as its last small view.
"""

from __future__ import annotations

import functools
import mmap
import sys
from pathlib import Path

import torch

HUGE_PAGE = 2 * 1024**2


@functools.cache
def huge_pages_available() -> bool:
    """Linux with transparent huge pages in ``always`` or ``madvise`` mode."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return False
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return "[never]" not in mode


def empty_weight(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor, on huge pages when it is large enough to use them."""
    nbytes = torch.Size(shape).numel() * dtype.itemsize
    if nbytes < HUGE_PAGE or not huge_pages_available():
        return torch.empty(shape, dtype=dtype)
    # One spare huge page so the tensor can start on a 2 MiB boundary (untouched pages cost nothing).
    # Only whole huge pages are advised: a tail of 4 KiB pages wastes no memory past the tensor's end.
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` alive as long as any view
    skip = -raw.data_ptr() % HUGE_PAGE
    region.madvise(mmap.MADV_HUGEPAGE, skip, nbytes - nbytes % HUGE_PAGE)
    return raw[skip : skip + nbytes].view(dtype).view(shape)
