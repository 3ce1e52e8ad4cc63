"""Safetensors files whose every tensor starts on a 64-byte file offset.

Memory-mapped from such a file, each tensor's data pointer is 64-byte aligned (the mapping starts
on a page), which native kernels may need (engine.runtime.kernels). The format is plain
safetensors, readable by any safetensors reader:

* the JSON header is padded with trailing spaces (the format allows it) so that the data section
  starts at a multiple of ``ALIGNMENT`` from the start of the file;
* tensors follow in name order; where one would start off a boundary, a ``uint8`` tensor named
  ``PAD_PREFIX + <n>`` fills the gap (the format forbids holes in the data section, so the
  padding is a tensor of its own); readers of pali's files skip those names;
* ``__metadata__`` carries ``pali_alignment`` = "64".

safetensors' own writer packs tensors back to back, so offsets depend on the header length and on
every earlier tensor's size.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

ALIGNMENT = 64
PAD_PREFIX = "__pali_pad__."
_DTYPE_NAMES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _layout(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict], list[tuple[str, int]]]:
    """Header entries (padding included) and the write order as (name, padding bytes before it)."""
    header: dict[str, dict] = {}
    order: list[tuple[str, int]] = []
    offset = 0
    for i, name in enumerate(sorted(tensors)):
        t = tensors[name]
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(f"{name}: dtype {t.dtype} cannot be stored in safetensors")
        gap = -offset % ALIGNMENT
        if gap:
            header[f"{PAD_PREFIX}{i}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [offset, offset + gap]}
            offset += gap
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        order.append((name, gap))
        offset += size
    return header, order


def write_aligned(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` (CPU) to ``path`` atomically: a crash leaves no half-written file there."""
    path = Path(path)
    header, order = _layout(tensors)
    header["__metadata__"] = {**(metadata or {}), "pali_alignment": str(ALIGNMENT)}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % ALIGNMENT)  # the data section starts on a boundary
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for name, gap in order:
                f.write(b"\0" * gap)
                t = tensors[name].detach().contiguous().cpu()
                if t.numel():  # through the buffer protocol: no second copy of a 1 GB tensor
                    f.write(t.view(-1).view(torch.uint8).numpy().data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_padding(name: str) -> bool:
    return name.startswith(PAD_PREFIX)
