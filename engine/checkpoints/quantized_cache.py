"""The on-disk cache of quantized weights.

Quantizing 3B weights takes tens of seconds, so ``from_preset(..., quantize=...)`` saves the
quantized state once and later loads it memory-mapped like any checkpoint. The file is safetensors
with every tensor on a 64-byte boundary (engine.checkpoints.aligned_file), so the packed int8
kernel reads it in place. Its name holds a key over the source files (path, size, mtime), the mode,
the dtype, ``CACHE_VERSION`` and, for int4, the packing layout and group size (the layout follows
the CPU kernel set torch runs, so a cache written on another kind of CPU is never misread); the
version is also in the metadata, and a file of another version or without the alignment mark is
rebuilt, never read. Caches of older versions for the same
checkpoint are deleted when a new one is written (no pali of this version can read them).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
from pathlib import Path

import torch
from torch import nn

from engine.checkpoints.aligned_file import ALIGNMENT, is_padding, write_aligned
from engine.checkpoints.weights import load_backbone, weight_files
from engine.errors import QuantizeError
from engine.model.backbone import PaliGemmaBackbone
from engine.model.config import PaliGemmaConfig
from engine.runtime.capabilities import CpuCapabilities
from engine.runtime.kernels import aligned
from engine.runtime.quantize import INT4_GROUP, check_mode, int4_layout, quantize_backbone

# 1: safetensors' own layout (offsets set by the header length: misaligned for the int8 kernel).
# 2: every tensor on a 64-byte boundary.
CACHE_VERSION = 2
MAX_HEADER_BYTES = 100 * 1024**2


def cache_key(checkpoint_dir: Path, weight_files: list[Path], mode: str, dtype: torch.dtype, extra: str = "") -> str:
    """Identity of a quantized state: the source files (path, size, mtime), mode, dtype, layout."""
    h = hashlib.sha256()
    for f in weight_files:
        st = os.stat(f)
        h.update(f"{os.path.realpath(f)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(f"{mode}|{dtype}|v{CACHE_VERSION}|{extra}".encode())
    return h.hexdigest()[:24]


def _prefix(checkpoint_dir: Path, mode: str, dtype: torch.dtype) -> str:
    name = Path(checkpoint_dir).resolve().name or "model"
    return f"{name}-{mode}-{str(dtype).removeprefix('torch.')}-"


def cache_path(
    cache_root: Path, checkpoint_dir: Path, weight_files: list[Path], mode: str, dtype: torch.dtype, extra: str = ""
) -> Path:
    key = cache_key(checkpoint_dir, weight_files, mode, dtype, extra)
    return Path(cache_root) / "quantized" / f"{_prefix(checkpoint_dir, mode, dtype)}{key}.safetensors"


def read_metadata(path: Path) -> dict[str, str] | None:
    """The ``__metadata__`` of a safetensors file, or None when the header cannot be read."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(length))
    except (OSError, struct.error, ValueError):
        return None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def is_current(path: Path) -> bool:
    """Written by this cache version, with the aligned layout."""
    meta = read_metadata(path)
    if meta is None:
        return True  # unreadable: let the load name the file instead of silently rebuilding it
    return meta.get("pali_cache_version") == str(CACHE_VERSION) and meta.get("pali_alignment") == str(ALIGNMENT)


def layout_key(mode: str, device: torch.device) -> str:
    """What else the stored bytes depend on: int4's packing layout and group size."""
    return f"{int4_layout(device).name}-g{INT4_GROUP}" if mode == "int4" else ""


def save_quantized(backbone: nn.Module, path: Path, mode: str, source: Path, layout: str = "") -> Path:
    """Write the whole quantized state (every tensor) atomically, then drop older versions' files
    for the same checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach() for k, v in backbone.state_dict().items()}
    meta = {"format": "pt", "pali_quantize": mode, "pali_cache_version": str(CACHE_VERSION), "pali_source": str(source)}
    if layout:
        meta["pali_layout"] = layout
    write_aligned(path, state, meta)
    prefix = path.name[: path.name.rindex("-") + 1]
    for old in path.parent.glob(f"{prefix}*.safetensors"):
        if old != path and not is_current(old):
            old.unlink(missing_ok=True)
    return path


def load_quantized(backbone: PaliGemmaBackbone, path: Path, device: torch.device) -> PaliGemmaBackbone:
    """Fill a meta-device quantized backbone from a cache file (memory-mapped when on CPU; a tensor
    that is not aligned for its kernel is copied, never handed over as it is)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: aligned(f.get_tensor(k)) for k in f.keys() if not is_padding(k)}
    except (SafetensorError, OSError) as e:
        raise QuantizeError(f"{path}: unreadable quantized cache ({e}); delete it to rebuild") from None
    if device.type != "cpu":
        state = {k: v.to(device) for k, v in state.items()}
    try:
        backbone.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise QuantizeError(
            f"{path}: does not match the model ({str(e).splitlines()[0]}); delete it to rebuild"
        ) from None
    return backbone.eval().requires_grad_(False)


def load_quantized_backbone(
    checkpoint_dir: str | Path,
    config: PaliGemmaConfig,
    mode: str,
    dtype: torch.dtype,
    device: torch.device,
    cache_root: str | Path,
    cpu: CpuCapabilities | None = None,
) -> PaliGemmaBackbone:
    """The checkpoint's backbone quantized with ``mode``: from the cache when present and current,
    else loaded, quantized and cached (an unwritable cache only costs the next run the same work)."""
    check_mode(mode)
    checkpoint_dir = Path(checkpoint_dir)
    sources = [checkpoint_dir / "config.json", *weight_files(checkpoint_dir)]
    layout = layout_key(mode, device)
    path = cache_path(Path(cache_root), checkpoint_dir, sources, mode, dtype, layout)
    if path.exists() and is_current(path):
        with torch.device("meta"):
            backbone = quantize_backbone(PaliGemmaBackbone(config), mode, dtype, device, cpu)
        loaded = load_quantized(backbone, path, device)
        loaded.checkpoint = str(checkpoint_dir)
        return loaded
    backbone = quantize_backbone(load_backbone(checkpoint_dir, config, dtype, device), mode, cpu=cpu)
    try:
        save_quantized(backbone, path, mode, checkpoint_dir, layout)
    except OSError as e:
        warnings.warn(
            f"could not cache quantized weights at {path} ({e}); the next load will quantize again", stacklevel=2
        )
    return backbone
