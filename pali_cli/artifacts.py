"""Image files some commands write besides their records: ``--draw DIR`` (the picture with its
results drawn) and ``--masks-dir DIR`` (one PNG mask per object).

Names come from the input's name and the task::

    photo.jpg -> DIR/photo.segment.png (photo.detect.png)   --draw
    photo.jpg -> DIR/photo.mask0.png, photo.mask1.png ...   --masks-dir: mask k is the record's segments[k]

An object answered with a box only has no mask file, so the numbers follow the record.

pali never overwrites a file the user did not ask it to write. Every PNG it writes carries a text
chunk naming the input it was made from, and before the model loads the run is refused when two
inputs share a name stem (``a.jpg`` and ``a.png``, or ``x.jpg`` in two folders), when an output name
is one of the inputs, or when an output file exists that pali did not write for that same input (a
user's file, or pali's output for another image of the same name). pali's own earlier outputs for
the same input are replaced, and an image's stale masks are removed when it is redone. Files are
written to a temporary sibling and renamed, and before the image's record, so a killed run leaves
no half-written PNG and a recorded image has all its files.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pali_cli.errors import UsageProblem
from pali_cli.records import Record, image_key
from pali_cli.sidecar import atomic_write_bytes
from pali_cli.sources import Source, as_source, escape_surrogates

SOURCE_KEY = "pali:source"  # PNG text chunk: the absolute path of the input


# ----------------------------------------------------------------------------- masks as COCO RLE


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a bool [height, width] mask: ``{"size": [h, w], "counts": str}``."""
    from pycocotools import mask as coco

    rle = coco.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """The bool [height, width] mask of ``encode_mask``'s output."""
    from pycocotools import mask as coco

    decoded = coco.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")})
    return np.asarray(decoded, dtype=bool)


def mask_area(rle: dict[str, Any]) -> int:
    from pycocotools import mask as coco

    return int(coco.area({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}))


# ----------------------------------------------------------------------------- the files


_MASK_NAME = re.compile(r"(.+)\.mask\d+\.png")


@dataclass
class ImageOutputs:
    task: str  # "detect" or "segment": part of the drawing's name
    draw_dir: Path | None = None
    masks_dir: Path | None = None
    # Mask files already in masks_dir by input stem, listed once per run (a big dataset's folder
    # must not be listed again for every image).
    _existing_masks: dict[str, list[Path]] | None = field(default=None, init=False, repr=False)

    def drawing_path(self, image: Source) -> Path:
        assert self.draw_dir is not None
        return self.draw_dir / f"{image.stem}.{self.task}.png"

    def mask_path(self, image: Source, index: int) -> Path:
        assert self.masks_dir is not None
        return self.masks_dir / f"{image.stem}.mask{index}.png"

    def _masks_of(self, image: Source) -> list[Path]:
        """Mask files of ``image``'s name that were in masks_dir when the run started."""
        if self._existing_masks is None:
            self._existing_masks = {}
            if self.masks_dir is not None and self.masks_dir.is_dir():
                for name in sorted(os.listdir(self.masks_dir)):
                    if match := _MASK_NAME.fullmatch(name):
                        self._existing_masks.setdefault(match[1], []).append(self.masks_dir / name)
        return self._existing_masks.get(image.stem, [])

    # -------------------------------------------------------------- checks before the model loads

    def check_names(self, images: Iterable[Source]) -> None:
        """Refuses inputs whose outputs would collide with each other or be an input."""
        images = list(images)
        for flag, folder in (("--draw", self.draw_dir), ("--masks-dir", self.masks_dir)):
            if folder is not None and folder.exists() and not folder.is_dir():
                raise UsageProblem(f"{flag} {folder} is a file; give a directory (it is created if missing)")
        owner: dict[str, Source] = {}
        for image in images:
            key = os.path.normcase(image.stem)
            if key in owner:
                raise UsageProblem(
                    f"{owner[key]} and {image} have the same name stem, so their {self._what()} files would "
                    "overwrite each other; rename one, or run them separately with different output directories"
                )
            owner[key] = image
        inputs = {image_key(i) for i in images}
        for image in images:
            for target in self._targets_named(image):
                if image_key(target) in inputs:
                    raise UsageProblem(
                        f"{target} is one of the input images and would be overwritten; choose another output directory"
                    )

    def _targets_named(self, image: Source) -> list[Path]:
        targets = [self.drawing_path(image)] if self.draw_dir else []
        return targets + self._masks_of(image)

    def _what(self) -> str:
        return " and ".join(w for w, d in (("--draw", self.draw_dir), ("--masks-dir", self.masks_dir)) if d)

    def check_existing(self, images: Iterable[Source]) -> None:
        """Refuses to run if an output of an image to do exists and pali did not write it for that image."""
        for image in images:
            for target in self._targets_named(image):
                if target.exists() and not _made_for(target, image):
                    raise UsageProblem(
                        f"{target} exists and pali did not write it for {image}; move it away or choose "
                        "another output directory (pali only replaces its own outputs)"
                    )

    # -------------------------------------------------------------- writing

    def write(self, record: Record) -> None:
        """Writes the files of one successful record; raises OSError or ValueError if it cannot."""
        image = as_source(record.image)
        objects = _objects(record)
        if self.masks_dir is not None:
            self.masks_dir.mkdir(parents=True, exist_ok=True)
            for stale in self._masks_of(image):
                if stale.exists() and _made_for(stale, image):
                    stale.unlink()
            for index, (label, _, mask) in enumerate(objects):
                if mask is not None:
                    _save_png(_mask_image(mask), self.mask_path(image, index), image, label)
        if self.draw_dir is not None:
            from pali_cli.batches import decode
            from pali_cli.draw import Drawn, draw_objects

            self.draw_dir.mkdir(parents=True, exist_ok=True)
            # Read again: the loader kept only the model-sized copy (a URL is downloaded again).
            picture = draw_objects(decode(image), [Drawn(label, box, mask) for label, box, mask in objects])
            _save_png(picture, self.drawing_path(image), image)


def _objects(record: Record) -> list[tuple[str, tuple[float, float, float, float], np.ndarray | None]]:
    if "segments" in record.extra:
        return [
            (s["label"], tuple(s["box"]), None if s["mask"] is None else decode_mask(s["mask"]))
            for s in record.extra["segments"]
        ]
    return [(d["label"], tuple(d["box"]), None) for d in record.extra.get("detections", [])]


def _mask_image(mask: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))  # mode L: 0 outside, 255 inside


def _source_key(image: Source) -> str:
    return escape_surrogates(image_key(image))  # a PNG text chunk must be valid Unicode


def _save_png(picture: Any, target: Path, source: Source, label: str | None = None) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt(SOURCE_KEY, _source_key(source))
    if label is not None:
        info.add_itxt("pali:label", label)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    atomic_write_bytes(target, buffer.getvalue())


def _made_for(path: Path, image: Source) -> bool:
    """Whether ``path`` is a PNG pali wrote from ``image``."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return getattr(picture, "text", {}).get(SOURCE_KEY) == _source_key(image)
    except Exception:  # noqa: BLE001 - unreadable or not an image: certainly not ours
        return False
