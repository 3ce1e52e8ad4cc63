"""Pictures of results: an image with translucent masks, boxes and labels drawn on it.

Presentation, so it belongs to the CLI (``--draw`` of ``detect`` and ``segment``); it takes plain
values (a label, a pixel box, an optional bool mask), so anything else can call it too. PIL only.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, colour-blind-friendly hues (Okabe-Ito plus two), one per label.
PALETTE = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (120, 94, 240),
)
MASK_ALPHA = 110  # of 255: the picture stays visible under the mask


@dataclass(frozen=True)
class Drawn:
    label: str
    box: tuple[float, float, float, float]  # x_min, y_min, x_max, y_max in pixels (max exclusive)
    mask: np.ndarray | None = None  # bool [height, width]


def colour_for(label: str) -> tuple[int, int, int]:
    """A colour fixed by the label (crc32, not hash(): the same in every run)."""
    return PALETTE[zlib.crc32(label.encode("utf-8")) % len(PALETTE)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, OSError):
        return ImageFont.load_default()


def draw_objects(image: Image.Image, objects: Sequence[Drawn]) -> Image.Image:
    """A new RGB image: ``image`` with each object's mask (translucent), box and label."""
    base = image.convert("RGBA")
    width, height = base.size
    overlay = np.zeros((height, width, 4), dtype=np.uint8)
    for obj in objects:
        if obj.mask is not None:
            if obj.mask.shape != (height, width):
                raise ValueError(f"mask of {obj.label!r} is {obj.mask.shape}, the image is {height}x{width}")
            overlay[obj.mask] = (*colour_for(obj.label), MASK_ALPHA)  # later objects lie on top
    picture = Image.alpha_composite(base, Image.fromarray(overlay, mode="RGBA")).convert("RGB")
    pen = ImageDraw.Draw(picture)
    line = max(2, round(min(width, height) / 200))
    font = _font(max(10, round(min(width, height) / 30)))
    for obj in objects:
        colour = colour_for(obj.label)
        x0, y0, x1, y1 = obj.box
        pen.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=line)
        if obj.label:
            _label(pen, obj.label, (x0, y0), colour, font, height)
    return picture


def _label(
    pen: ImageDraw.ImageDraw,
    text: str,
    corner: tuple[float, float],
    colour: tuple[int, int, int],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    height: int,
) -> None:
    left, top, right, bottom = pen.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x, y = corner
    y = y - h if y - h >= 0 else min(y, height - h)  # above the box, else inside its top edge
    pen.rectangle([x, y, x + w, y + h], fill=colour)
    pen.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0), font=font)
