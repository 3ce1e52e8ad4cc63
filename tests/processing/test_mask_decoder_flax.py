"""MaskDecoder against a flax decoder written from big_vision's description of it.

big_vision (``evaluators/proj/paligemma/transfers/segmentation.py``) runs the decoder in flax:
kernels transposed (2, 3, 1, 0) from the PyTorch layout, ``nn.ConvTranspose(4x4, stride 2,
padding=2, transpose_kernel=True)`` for the upsampling. That is the layout question the numpy test
cannot settle on its own (it uses PyTorch's layout by definition). jax and flax are not pali
dependencies: the test is skipped, visibly, where they are not installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.processing.mask_decoder import MaskDecoder
from tests.helpers.mask_decoder import random_tensors, write_decoder_npz

pytestmark = pytest.mark.slow  # importing jax and compiling takes tens of seconds on 2 cores

flax_linen = pytest.importorskip("flax.linen", reason="jax/flax are not installed (pip install jax flax)")
jnp = pytest.importorskip("jax.numpy")


def _flax_params(t: dict[str, np.ndarray]) -> dict:
    def conv(name: str) -> dict:
        return {"kernel": np.transpose(t[f"{name}.weight"], (2, 3, 1, 0)), "bias": t[f"{name}.bias"]}

    def block(name: str) -> dict:
        return {"Conv_0": conv(f"{name}.0"), "Conv_1": conv(f"{name}.2"), "Conv_2": conv(f"{name}.4")}

    return {
        "Conv_0": conv("decoder.0"),
        "ResBlock_0": block("decoder.2.net"),
        "ResBlock_1": block("decoder.3.net"),
        "ConvTranspose_0": conv("decoder.4"),
        "ConvTranspose_1": conv("decoder.6"),
        "ConvTranspose_2": conv("decoder.8"),
        "ConvTranspose_3": conv("decoder.10"),
        "Conv_1": conv("decoder.12"),
    }


class ResBlock(flax_linen.Module):  # type: ignore[name-defined]  # flax is optional
    features: int

    @flax_linen.compact
    def __call__(self, x):
        y = flax_linen.relu(flax_linen.Conv(self.features, (3, 3), padding=1)(x))
        y = flax_linen.relu(flax_linen.Conv(self.features, (3, 3), padding=1)(y))
        return x + flax_linen.Conv(self.features, (1, 1), padding=0)(y)


class Decoder(flax_linen.Module):  # type: ignore[name-defined]
    @flax_linen.compact
    def __call__(self, x):  # (B, 4, 4, 512) NHWC
        x = flax_linen.relu(flax_linen.Conv(128, (1, 1), padding=0)(x))
        x = ResBlock(128)(x)
        x = ResBlock(128)(x)
        for features in (128, 64, 32, 16):
            x = flax_linen.ConvTranspose(features, (4, 4), strides=(2, 2), padding=2, transpose_kernel=True)(x)
            x = flax_linen.relu(x)
        return flax_linen.Conv(1, (1, 1), padding=0)(x)  # (B, 64, 64, 1)


def test_agrees_with_a_flax_decoder_in_big_visions_layout(tmp_path):
    tensors = random_tensors(seed=5)
    ours = MaskDecoder.from_npz(write_decoder_npz(tmp_path / "vae-oid.npz", seed=5))
    codes = np.random.default_rng(1).integers(0, 128, size=(4, 16))
    grid = tensors["_vq_vae._embedding"][codes.reshape(-1)].reshape(4, 4, 4, 512)  # (B, 4, 4, D)
    theirs = np.asarray(Decoder().apply({"params": _flax_params(tensors)}, jnp.asarray(grid)))[..., 0]
    mine = ours(torch.from_numpy(codes)).numpy()
    assert np.abs(mine - theirs).max() <= 1e-4, np.abs(mine - theirs).max()
