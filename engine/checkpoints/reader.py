"""Reading safetensors tensors through one small reused buffer, casting on the way.

:class:`TensorReader` copies a tensor's bytes through one small reused buffer, casting on the way:
a load never holds a second copy of a shard (not even as mapped file pages, which count in RSS
until unmapped) and never faults in fresh memory for the source, which also makes it faster than
safetensors' sliced reads (benchmarks/RESULTS.md). Where the bytes land is engine.runtime.memory's
business.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from engine.errors import CheckpointError
from engine.runtime.kernels import scratch

READ_CHUNK_BYTES = 16 * 1024**2  # source bytes read per step: the only extra memory a load uses

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


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
            raise CheckpointError(f"{self.path}: not a safetensors file (bad header: {e})") from None
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
            raise CheckpointError(f"{self.path}: {name} has dtype {info['dtype']}, which pali does not read")
        begin, end = info["data_offsets"]
        flat = out.view(-1)
        size = src.itemsize
        if (end - begin) != flat.numel() * size:
            raise CheckpointError(f"{self.path}: {name} holds {end - begin} bytes, expected {flat.numel() * size}")
        step = max(1, READ_CHUNK_BYTES // size)
        buf = scratch((step * size,), torch.uint8, torch.device("cpu"))  # reused: no fresh page faults
        self._file.seek(self._data_start + begin)
        for start in range(0, flat.numel(), step):
            n = min(step, flat.numel() - start)
            chunk = buf[: n * size]
            view = memoryview(chunk.numpy())  # type: ignore[arg-type]  # numpy arrays are buffers
            got = 0
            while got < n * size:  # readinto may return short counts
                read = self._file.readinto(view[got:])
                if not read:
                    raise CheckpointError(f"{self.path}: file ends inside {name}; the download may be truncated")
                got += read
            flat[start : start + n].copy_(chunk.view(src))
        return out
