"""Segmentation answers (``segment cat ; dog``) -> labelled boxes and full-size masks.

An answer holds, per object, four ``<locNNNN>`` tokens (y_min, x_min, y_max, x_max), 16
``<segNNN>`` codes that the VQ-VAE decoder (``engine.processing.mask_decoder``) turns into a 64x64
field, and a label. ``parse_segmentation`` reads it with the one loc/seg parser of
``engine.processing.tasks`` and places every mask on the upright original image.

Geometry and threshold are big_vision's segmentation evaluator's
(``big_vision/evaluators/proj/paligemma/transfers/segmentation.py``), the code behind the published
RefCOCO numbers, so a mask here is pixel for pixel the mask that evaluator scores:

* box: each bin is the fraction ``bin / 1023`` (big_vision made its targets with ``round(b * 1023)``,
  ``big_vision/pp/proj/paligemma/segmentation.py``), and a pixel edge is ``int(fraction * size)``,
  computed in that order in float64, as the evaluator does. The box is ``[x_min, x_max)`` x
  ``[y_min, y_max)`` in pixels and the mask lives inside it.
* mask: the 64x64 float field resized to the box with PIL's bilinear filter (antialiased when the
  box is smaller than 64 px), then ``> 0`` (the decoder's output is roughly in [-1, 1]).

Other references differ by at most a pixel or 0.1 %: the Hugging Face Space rounds ``bin / 1024 *
size`` and pastes a soft mask, and pali's own detection boxes (``parse_detections``) are fractional
``bin / 1024`` like most detection code.

Validity is the evaluator's too: bins in 0..1023, exactly 16 codes in 0..127, and a box that is
not empty once in pixels. Anything else is skipped, never raised. Instances with no seg code at all
(a detection inside a segmentation answer) are kept with their box and ``mask=None``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from engine.processing.tasks import LocObject, parse_loc_objects

LOC_SCALE = 1023  # big_vision's segmentation evaluator: bins / 1023
MAX_BIN = 1023
NUM_CODES = 128
CODES_PER_MASK = 16
MASK_SIZE = 64

# Anything that maps int codes [N, 16] to masks [N, 64, 64] (a MaskDecoder, or a stand-in in tests).
Decoder = Callable[[Any], Any]

__all__ = ["Segment", "parse_segmentation", "pixel_box", "place_mask"]  # and MaskDecoder, lazily


@dataclass(frozen=True, eq=False)
class Segment:
    """One object: ``box`` is ``(x_min, y_min, x_max, y_max)``, integer pixel edges of the upright
    original image (``x_max``/``y_max`` exclusive); ``mask`` is bool ``[height, width]``, False
    outside the box, or None for an object the model answered with a box only."""

    label: str
    box: tuple[int, int, int, int]
    mask: np.ndarray | None

    @property
    def area(self) -> int | None:
        """Pixels in the mask (None without a mask)."""
        return None if self.mask is None else int(self.mask.sum())


def pixel_box(bins: Sequence[int], width: int, height: int) -> tuple[int, int, int, int] | None:
    """``(x_min, y_min, x_max, y_max)`` of loc bins ``(y_min, x_min, y_max, x_max)``, or None when a
    bin is not a real token or the box is empty in pixels."""
    if len(bins) != 4 or any(not 0 <= b <= MAX_BIN for b in bins):
        return None
    y1, x1, y2, x2 = (b / LOC_SCALE for b in bins)
    box = (int(x1 * width), int(y1 * height), int(x2 * width), int(y2 * height))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return box


def place_mask(field: np.ndarray, box: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """The 64x64 decoder ``field`` resized into ``box`` of a ``width`` x ``height`` image, > 0."""
    x1, y1, x2, y2 = box
    patch = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32)).resize(
        (x2 - x1, y2 - y1), Image.Resampling.BILINEAR
    )
    full = np.zeros((height, width), dtype=bool)
    full[y1:y2, x1:x2] = np.asarray(patch) > 0.0
    return full


def _well_formed(obj: LocObject) -> bool:
    if not obj.seg:
        return True  # a box without a mask
    return len(obj.seg) == CODES_PER_MASK and all(0 <= c < NUM_CODES for c in obj.seg)


def decode_fields(decoder: Decoder, codes: list[tuple[int, ...]]) -> np.ndarray:
    """float32 ``[N, 64, 64]`` from the decoder for ``N`` code rows (one batched call)."""
    import torch

    with torch.no_grad():
        out = decoder(torch.tensor(codes, dtype=torch.long))  # (N, 16) -> (N, 64, 64)
    if isinstance(out, torch.Tensor):
        out = out.detach().to("cpu", torch.float32).numpy()
    fields = np.asarray(out, dtype=np.float32)
    if fields.shape != (len(codes), MASK_SIZE, MASK_SIZE):
        raise ValueError(f"the mask decoder returned shape {fields.shape}, expected ({len(codes)}, 64, 64)")
    return fields


def parse_segmentation(text: str, image_size: tuple[int, int], *, decoder: Decoder) -> list[Segment]:
    """The objects of a segmentation answer, in answer order, placed on an image of
    ``image_size = (width, height)`` (the upright original: what ``load_image`` returns)."""
    width, height = image_size
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    kept = []
    for obj in parse_loc_objects(text):
        box = pixel_box(obj.bins, width, height)
        if box is not None and _well_formed(obj):
            kept.append((obj, box))
    codes = [obj.seg for obj, _ in kept if obj.seg]
    fields = iter(decode_fields(decoder, codes) if codes else ())
    return [
        Segment(obj.label, box, place_mask(next(fields), box, width, height) if obj.seg else None) for obj, box in kept
    ]


def __getattr__(name: str) -> Any:
    # MaskDecoder needs torch; importing it lazily keeps parsing usable without paying for torch.
    if name == "MaskDecoder":
        from engine.processing.mask_decoder import MaskDecoder

        return MaskDecoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
