"""The VQ-VAE mask decoder that turns PaliGemma's 16 ``<segNNN>`` codes into a 64x64 mask.

PaliGemma writes a segmentation mask as 16 indices into a 128-entry codebook (a 4x4 grid of codes,
row-major). The decoder of a VQ-VAE trained on OpenImages masks (Ning et al. 2023, "All in Tokens",
arXiv 2301.02229) upsamples that grid to a 64x64 field roughly in [-1, 1]; big_vision decodes with
it in ``big_vision/evaluators/proj/paligemma/transfers/segmentation.py`` and ships the weights as
``vae-oid.npz``, a PyTorch-style state dict saved with numpy. Architecture (from that evaluator):

    codebook [128, 512] -> (B, 4, 4, 512)
    decoder.0   1x1 conv 512 -> 128, ReLU
    decoder.2/3 residual blocks, 128 ch: 3x3 conv, ReLU, 3x3 conv, ReLU, 1x1 conv, + input
    decoder.4/6/8/10  4x4 transposed convs, stride 2, 128 -> 128 -> 64 -> 32 -> 16, each + ReLU
    decoder.12  1x1 conv 16 -> 1

The stored tensors are used as they are by ``nn.Conv2d`` / ``nn.ConvTranspose2d`` (big_vision
transposes them (2, 3, 1, 0) for flax, whose ``ConvTranspose(padding=2, transpose_kernel=True)`` is
PyTorch's ``ConvTranspose2d(kernel 4, stride 2, padding=1)``: each doubles 4 -> 8 -> ... -> 64). The
``nn.Sequential`` indices reproduce the file's names, so the state dict loads without renaming.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.checkpoints.seg_decoder import resolve_mask_decoder
from engine.errors import MaskDecoderError
from engine.processing.segmentation import CODES_PER_MASK, NUM_CODES

CODE_DIM = 512

# The file's training-only parts: the encoder, and whatever else the quantizer stored besides its
# codebook. The file's size (8,479,556 bytes, of which the decoder and codebook are 4.76 MB)
# leaves room for an encoder mirroring the decoder plus a [128, 512] and a [128] array, which is
# what an EMA quantizer keeps; their exact names could not be checked, so the whole prefix is
# ignored rather than guessed.
_IGNORED_PREFIXES = ("encoder.", "_vq_vae.")
_CODEBOOK = "_vq_vae._embedding"


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def _upsample(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1)


class MaskDecoder(nn.Module):
    """``decoder(codes)``: int codes ``[B, 16]`` in 0..127 -> float masks ``[B, 64, 64]`` (raw
    decoder output, > 0 inside the object). Build it with ``MaskDecoder.from_npz(path)``."""

    def __init__(self) -> None:
        super().__init__()
        self.codebook = nn.Embedding(NUM_CODES, CODE_DIM)
        self.decoder = nn.Sequential(
            nn.Conv2d(CODE_DIM, 128, 1),  # 0
            nn.ReLU(),
            _ResBlock(128),  # 2
            _ResBlock(128),  # 3
            _upsample(128, 128),  # 4
            nn.ReLU(),
            _upsample(128, 64),  # 6
            nn.ReLU(),
            _upsample(64, 32),  # 8
            nn.ReLU(),
            _upsample(32, 16),  # 10
            nn.ReLU(),
            nn.Conv2d(16, 1, 1),  # 12
        )

    def forward(self, codes: Any) -> torch.Tensor:
        codes = torch.as_tensor(codes, dtype=torch.long, device=self.codebook.weight.device)
        if codes.ndim != 2 or codes.shape[1] != CODES_PER_MASK:
            raise ValueError(f"mask codes must be int [B, {CODES_PER_MASK}], got shape {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= NUM_CODES):
            raise ValueError(f"mask codes must be in 0..{NUM_CODES - 1}, got {int(codes.min())}..{int(codes.max())}")
        b = codes.shape[0]
        grid = self.codebook(codes).view(b, 4, 4, CODE_DIM)  # (B, 4, 4, D): code k at row k // 4, col k % 4
        out = self.decoder(grid.permute(0, 3, 1, 2))  # (B, D, 4, 4) -> (B, 1, 64, 64)
        return out[:, 0]  # (B, 64, 64)

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> MaskDecoder:
        """Loads big_vision's ``vae-oid.npz`` (no pickle). Raises ``MaskDecoderError`` naming the
        file and the tensors when anything is missing, unexpected, mis-shaped or not finite."""
        path = Path(path)
        model = cls()
        tensors = _read_npz(path)
        expected = {_CODEBOOK: "codebook.weight"} | {
            name: name for name in model.state_dict() if name.startswith("decoder.")
        }
        shapes = {npz_name: tuple(model.state_dict()[ours].shape) for npz_name, ours in expected.items()}
        _check_names(path, tensors, shapes)
        state = {}
        for npz_name, ours in expected.items():
            array = tensors[npz_name]
            if not np.isfinite(array).all():
                raise MaskDecoderError(
                    f"{path}: tensor {npz_name} contains NaN or infinite values; the file is damaged"
                )
            state[ours] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        model.load_state_dict(state, strict=True)
        return model.eval().requires_grad_(False)


def load_mask_decoder(
    path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None, *, quiet: bool = False
) -> MaskDecoder:
    """The decoder from ``path``, else $PALI_SEG_DECODER, else the verified cache or one download
    (``engine.checkpoints.seg_decoder.resolve_mask_decoder``)."""
    return MaskDecoder.from_npz(resolve_mask_decoder(path, cache_dir, quiet=quiet))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    fix = "use big_vision's vae-oid.npz, or drop --seg-decoder to let pali download it"
    if not path.is_file():
        raise MaskDecoderError(f"{path}: no such file; {fix}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise MaskDecoderError(f"{path}: holds a single array, not a state dict of named tensors; {fix}")
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except MaskDecoderError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        # np.load reads unknown bytes as a pickle, which allow_pickle=False refuses with a ValueError;
        # an object array inside an npz is refused the same way.
        reason = " ".join(str(e).split()) or type(e).__name__
        raise MaskDecoderError(f"{path}: not a readable .npz file of plain arrays ({reason}); {fix}") from None


def _check_names(path: Path, tensors: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(shapes) - set(tensors))
    unused = sorted(n for n in tensors if n not in shapes and not n.startswith(_IGNORED_PREFIXES))
    problems = []
    if missing:
        problems.append(f"missing {_names(missing)}")
    if unused:
        problems.append(f"unexpected {_names(unused)}")
    for name in sorted(set(shapes) & set(tensors)):
        array = tensors[name]
        if tuple(array.shape) != shapes[name]:
            problems.append(f"{name} has shape {tuple(array.shape)}, expected {shapes[name]}")
        elif not np.issubdtype(array.dtype, np.floating):
            problems.append(f"{name} is {array.dtype}, expected floating point")
    if problems:
        raise MaskDecoderError(f"{path} is not big_vision's mask decoder (vae-oid.npz): {'; '.join(problems)}")


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
