"""Memory for weights that a load must convert, and how their bytes get there.

A checkpoint tensor already in the target dtype is used in place, memory-mapped from the file
(engine.weights): nothing to copy, and a 3B model "loads" in 0.3 s. A tensor that must be cast (bf16
hub files run in fp32, fp32 files in bf16) needs memory of its own, and this module provides it:

* **Huge pages.** A converted weight of 2 MiB or more gets an anonymous mapping advised for 2 MiB
  pages (Linux transparent huge pages, ``madvise`` mode). Decode streams every weight once per
  token; with 4 KiB pages the TLB misses constantly and prefetchers stop at every page edge. On the
  benchmark machine (2-core AMD EPYC VM) a one-row fp32 GEMV reads 3-45% faster from huge pages,
  depending on shape and run (``python -m benchmarks.floors``: 15.3 -> 17.1 GB/s on the MLP up
  projection, 15.0 -> 15.4 on the down projection; another run 14-18 -> 21-22); PaliGemma 3B in
  fp32 prefills ~10% and decodes ~5% faster end to end. Copying same-dtype weights too was
  measured and rejected: +5 s of load (page faults at ~1 GB/s in a VM) for 2-3% faster bf16
  decode. Elsewhere (macOS, Windows, THP off) plain ``torch.empty`` is used.
* **Bounded reads.** :class:`TensorReader` copies a tensor's bytes through one small reused buffer,
  casting on the way: a load never holds a second copy of a shard (not even as mapped file pages,
  which count in RSS until unmapped) and never faults in fresh memory for the source (a fp32 load
  of a bf16 3B checkpoint: 8-17 s, against 13-18 s through safetensors' sliced reads; page faults
  in a VM vary from run to run).

Each large weight has its own mapping, so a tensor that is dropped later (quantization replaces
every linear) gives its memory back; one arena for all would live as long as its last small view.
"""

from __future__ import annotations

import functools
import json
import mmap
import struct
import sys
from pathlib import Path

import torch

from .optimize import scratch

HUGE_PAGE = 2 * 1024**2
READ_CHUNK_BYTES = 16 * 1024**2  # source bytes read per step: the only extra memory a load uses

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
    "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


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


class TensorReader:
    """Reads named tensors of one safetensors file into caller-given tensors, casting as it goes.

    The header layout is the format's own (8-byte little-endian length, JSON with dtype, shape and
    byte range per tensor); safetensors' Python API only hands out whole tensors or fresh slices.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 -- closed by close()/__exit__
        try:
            (length,) = struct.unpack("<Q", self._file.read(8))
            self._header = json.loads(self._file.read(length))
            self._header.pop("__metadata__", None)
        except (struct.error, ValueError, MemoryError, OverflowError) as e:
            self._file.close()
            raise ValueError(f"{self.path}: not a safetensors file (bad header: {e})") from None
        self._data_start = 8 + length

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def dtype(self, name: str) -> torch.dtype | None:
        """The stored dtype of ``name`` (None for one pali does not read)."""
        return SAFETENSORS_DTYPES.get(self._header[name]["dtype"])

    def read_into(self, name: str, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` (contiguous, CPU, same number of elements) with tensor ``name``, cast to
        ``out.dtype``; returns ``out``."""
        info = self._header[name]
        src = SAFETENSORS_DTYPES.get(info["dtype"])
        if src is None:
            raise ValueError(f"{self.path}: {name} has dtype {info['dtype']}, which pali does not read")
        begin, end = info["data_offsets"]
        flat = out.view(-1)
        size = src.itemsize
        if (end - begin) != flat.numel() * size:
            raise ValueError(f"{self.path}: {name} holds {end - begin} bytes, expected {flat.numel() * size}")
        step = max(1, READ_CHUNK_BYTES // size)
        buf = scratch((step * size,), torch.uint8, torch.device("cpu"))  # reused: no fresh page faults
        self._file.seek(self._data_start + begin)
        for start in range(0, flat.numel(), step):
            n = min(step, flat.numel() - start)
            chunk = buf[: n * size]
            view = memoryview(chunk.numpy())
            got = 0
            while got < n * size:  # readinto may return short counts
                read = self._file.readinto(view[got:])
                if not read:
                    raise OSError(f"{self.path}: file ends inside {name}; the download may be truncated")
                got += read
            flat[start : start + n].copy_(chunk.view(src))
        return out

