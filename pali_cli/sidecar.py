"""Caption files next to each image (``photo.jpg`` -> ``photo.txt``), the layout training scripts
for image datasets read.

``on_existing``: ``skip`` leaves an existing file alone and does not even run the model on that
image (so rerunning over a half-captioned folder only does the rest); ``overwrite`` replaces it
(atomically: a killed run never leaves a half-written caption); ``append`` adds the new text on a
new line. ``prefix``/``suffix`` wrap the text in the file only (records keep the model's words),
e.g. a trigger word: ``--prefix "photo of sks, "``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pali_cli.errors import UsageProblem
from pali_cli.inputs import image_extensions


class OnExisting(str, Enum):
    skip = "skip"
    overwrite = "overwrite"
    append = "append"


@dataclass(frozen=True)
class SidecarSpec:
    ext: str = ".txt"
    on_existing: OnExisting = OnExisting.skip
    prefix: str = ""
    suffix: str = ""

    def __post_init__(self) -> None:
        if not self.ext.startswith(".") or len(self.ext) < 2 or "/" in self.ext or os.sep in self.ext:
            raise UsageProblem(f"--sidecar-ext {self.ext!r} must be a file extension such as .txt or .caption")
        if self.ext.lower() in image_extensions():
            # photo.jpg's sidecar photo.png would overwrite another image (or the photo itself).
            raise UsageProblem(f"--sidecar-ext {self.ext} is an image extension; sidecars could overwrite images")

    def path_for(self, image: Path) -> Path:
        return image.parent / (image.stem + self.ext)

    def should_skip(self, image: Path) -> bool:
        return self.on_existing is OnExisting.skip and self.path_for(image).exists()

    def content(self, text: str) -> str:
        return f"{self.prefix}{text}{self.suffix}\n"

    def write(self, image: Path, text: str) -> None:
        """Writes (or appends) the sidecar of ``image``; raises OSError if it cannot."""
        target = self.path_for(image)
        content = self.content(text)
        if target.exists():
            if self.on_existing is OnExisting.skip:
                return
            if self.on_existing is OnExisting.append:
                _append(target, content)
                return
        _atomic_write(target, content)


def check_collisions(images: Iterable[Path], spec: SidecarSpec) -> None:
    """Two images with one stem in one folder (``a.jpg``, ``a.png``) would share ``a.txt``."""
    owner: dict[str, Path] = {}
    for image in images:
        key = os.path.normcase(os.path.abspath(spec.path_for(image)))
        if key in owner:
            raise UsageProblem(
                f"{owner[key]} and {image} would share the sidecar {spec.path_for(image)}; "
                "rename one of them (training scripts could not tell their captions apart either)"
            )
        owner[key] = image


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _append(target: Path, content: str) -> None:
    with open(target, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(content.encode("utf-8"))


def _atomic_write(target: Path, content: str) -> None:
    atomic_write_bytes(target, content.encode("utf-8"))


def atomic_write_bytes(target: Path, data: bytes) -> None:
    """Writes ``target`` through a sibling temporary file and a rename: never half-written."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp makes 0600 files; give the file the mode a plain open() would have.
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
