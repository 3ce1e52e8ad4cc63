"""Random stand-ins for big_vision's ``vae-oid.npz`` mask decoder file.

The real file cannot be downloaded here. The names and shapes below are written from the file's
description (big_vision ``evaluators/proj/paligemma/transfers/segmentation.py``: the codebook
``_vq_vae._embedding`` and the PyTorch-style ``decoder.*`` state dict), not read from pali's code,
so a mistake in ``MaskDecoder`` cannot hide in both. Convolution weights are ``[out, in, k, k]``,
transposed-convolution weights ``[in, out, k, k]`` (PyTorch's layouts).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def _conv(name: str, cout: int, cin: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (cout, cin, k, k), f"{name}.bias": (cout,)}


def _conv_transpose(name: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (cin, cout, 4, 4), f"{name}.bias": (cout,)}


SHAPES: dict[str, tuple[int, ...]] = {
    "_vq_vae._embedding": (128, 512),
    **_conv("decoder.0", 128, 512, 1),
    **_conv("decoder.2.net.0", 128, 128, 3),
    **_conv("decoder.2.net.2", 128, 128, 3),
    **_conv("decoder.2.net.4", 128, 128, 1),
    **_conv("decoder.3.net.0", 128, 128, 3),
    **_conv("decoder.3.net.2", 128, 128, 3),
    **_conv("decoder.3.net.4", 128, 128, 1),
    **_conv_transpose("decoder.4", 128, 128),
    **_conv_transpose("decoder.6", 128, 64),
    **_conv_transpose("decoder.8", 64, 32),
    **_conv_transpose("decoder.10", 32, 16),
    **_conv("decoder.12", 1, 16, 1),
}
# Training-only parts a real file also holds; the loader must ignore them.
ENCODER_EXTRAS: dict[str, tuple[int, ...]] = {
    **_conv("encoder.0", 16, 1, 4),
    "_vq_vae._ema_w": (128, 512),
    "_vq_vae._ema_cluster_size": (128,),
}


def random_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Weights scaled so activations stay O(1) through the 13 layers (outputs of both signs)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in {**SHAPES, **ENCODER_EXTRAS}.items():
        if name.endswith(".bias"):
            tensors[name] = rng.normal(0.0, 0.1, shape)
        elif len(shape) == 4:
            transposed = name.split(".")[1] in {"4", "6", "8", "10"} and name.startswith("decoder.")
            fan_in = (shape[0] if transposed else shape[1]) * shape[2] * shape[3] / (4 if transposed else 1)
            tensors[name] = rng.normal(0.0, 1.4 / np.sqrt(fan_in), shape)
        else:
            tensors[name] = rng.normal(0.0, 1.0, shape)
    return {name: t.astype(np.float32) for name, t in tensors.items()}


def write_decoder_npz(path: str | Path, seed: int = 0, **changes: np.ndarray | None) -> Path:
    """Saves ``random_tensors(seed)`` as an npz; ``changes`` replace (or, as None, drop) tensors.
    Names with dots are given through ``**{"decoder.0.bias": ...}``."""
    tensors = random_tensors(seed)
    for name, value in changes.items():
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value
    path = Path(path)
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
        np.savez(f, **tensors)  # type: ignore[arg-type]  # numpy stub types **kwds as bool
    return path


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
