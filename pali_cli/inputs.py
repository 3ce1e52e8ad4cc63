"""Turns what the user typed (files, directories, quoted globs, a list file) into images to read.

Rules, in the order they apply to each argument:
0. ``-`` is an image read from stdin and ``http(s)://...`` one downloaded (pali_cli.sources).
1. An existing file is taken as is, whatever its extension (the user named it); so is anything
   else that exists and is not a directory (a FIFO, a link loop), so that its record says what it is.
2. An existing directory yields the image files inside it (``recursive``: and below it), skipping
   hidden files and directories such as ``.thumbnails`` or macOS ``._photo.jpg`` shadows.
3. Anything else with ``*``, ``?``, ``[`` or ``{a,b}`` is a glob expanded here (quoted globs reach
   us unexpanded; ``**`` spans directories, never following a directory cycle). Only image files
   are kept, and extensions match case-insensitively: ``*.jpg`` finds ``IMG_1.JPG``.
4. Anything else is a missing file. It is kept, so it becomes an error record naming it, unless
   nothing at all was found (then the caller exits with "no input matched").

Files found through directories and globs are sorted naturally (``img2`` before ``img10``); the
same file reached twice (also through a symbolic link) is kept once, where it first appeared.
Directories that cannot be read are listed in ``Expansion.skipped`` (the caller warns and exits 3).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from pali_cli.globbing import walk_glob
from pali_cli.sources import Remote, Source, as_source, is_remote_name, resolved

# Formats PIL reads out of the box; HEIC and AVIF are added when a plugin (or PIL itself) reads them.
BASE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .apng .webp .gif .bmp .dib .tif .tiff .ppm .pgm .pbm .pnm .tga .qoi "
    ".jp2 .j2k .jpx .ico .pcx .psd".split()
)
_MAGIC = re.compile(r"[*?\[]|\{[^{}]*,[^{}]*\}")
_BRACE = re.compile(r"\{([^{}]*,[^{}]*)\}")
_DIGITS = re.compile(r"(\d+)")


@cache
def image_extensions() -> frozenset[str]:
    """Lower-case suffixes (with the dot) that directories and globs treat as images."""
    from importlib.util import find_spec

    exts = set(BASE_EXTENSIONS)
    if find_spec("pillow_heif") is not None:
        exts |= {".heic", ".heif"}
    if find_spec("pillow_avif") is not None or _pil_reads_avif():
        exts |= {".avif"}
    return frozenset(exts)


def _pil_reads_avif() -> bool:
    try:
        from PIL import features

        return bool(features.check("avif"))
    except Exception:  # noqa: BLE001 - an old PIL without the feature flag simply cannot
        return False


@dataclass
class Expansion:
    """The images to process and what did not match."""

    paths: list[Source] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # named files that do not exist
    empty: list[str] = field(default_factory=list)  # directories/globs that matched no image
    skipped: list[str] = field(default_factory=list)  # "DIR (why)": directories that could not be read

    @property
    def found(self) -> int:
        """How many of ``paths`` exist."""
        return len(self.paths) - len(self.missing)


def is_pattern(arg: str) -> bool:
    return bool(_MAGIC.search(arg))


def natural_key(path: Path) -> tuple[tuple[int, int, str], ...]:
    """Sort key that orders digit runs by value: ``a2.jpg`` < ``a10.jpg``."""
    parts = _DIGITS.split(str(path))
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts)


def expand_braces(pattern: str) -> list[str]:
    """``a.{jpg,png}`` -> ``[a.jpg, a.png]`` (nesting resolved one level at a time)."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    out: list[str] = []
    for choice in m.group(1).split(","):
        out.extend(expand_braces(head + choice + tail))
    return out


def case_insensitive_suffix(pattern: str) -> str:
    """Makes the extension of a glob's last component match any case: ``*.jpg`` -> ``*.[jJ][pP][gG]``."""
    head, tail = os.path.split(pattern)
    dot = tail.rfind(".")
    if dot < 0 or "[" in tail[dot:] or "]" in tail[dot:]:
        return pattern
    ext = "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in tail[dot + 1 :])
    return os.path.join(head, tail[: dot + 1] + ext)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _why(error: OSError, name: str | None = None) -> str:
    reason = (error.strerror or str(error)).strip()
    return f"{name or error.filename} ({reason[:1].lower()}{reason[1:]})"


def _not_a_directory(entry: os.DirEntry[str]) -> bool:
    try:
        return not entry.is_dir()
    except OSError:  # a link loop: an entry to report, not a directory
        return True


def _images_in_dir(directory: Path, recursive: bool, exts: frozenset[str], skipped: list[str]) -> list[Path]:
    found: list[Path] = []
    if recursive:
        for root, dirs, files in os.walk(directory, onerror=lambda e: skipped.append(_why(e))):
            dirs[:] = [d for d in dirs if not _is_hidden(d)]  # prunes the walk too
            found.extend(Path(root, f) for f in files if not _is_hidden(f) and Path(f).suffix.lower() in exts)
    else:
        try:
            with os.scandir(directory) as entries:
                found = [
                    Path(directory, e.name)
                    for e in entries
                    if not _is_hidden(e.name) and Path(e.name).suffix.lower() in exts and _not_a_directory(e)
                ]
        except OSError as e:
            skipped.append(_why(e, str(directory)))
    return sorted(found, key=natural_key)


def _glob(pattern: str, exts: frozenset[str], skipped: list[str]) -> list[Path]:
    hits: dict[str, Path] = {}
    for p in expand_braces(os.path.expanduser(pattern)):
        for hit in walk_glob(case_insensitive_suffix(p), lambda e: skipped.append(_why(e))):
            path = Path(hit)
            if path.suffix.lower() in exts and not path.is_dir():
                hits.setdefault(resolved(hit), path)
    return sorted(hits.values(), key=natural_key)


class _Adder:
    """Adds sources to an expansion once each, by the file they name."""

    def __init__(self, result: Expansion) -> None:
        self.result = result
        self.seen: set[str] = set()

    def __call__(self, source: Source) -> bool:
        key = resolved(str(source))
        if key in self.seen:
            return False
        self.seen.add(key)
        self.result.paths.append(source)
        return True


def expand_inputs(args: Iterable[str], recursive: bool = False) -> Expansion:
    """Expands command-line image arguments (see the module docstring)."""
    exts = image_extensions()
    result = Expansion()
    add = _Adder(result)
    for arg in args:
        if is_remote_name(arg):
            add(Remote(arg))
            continue
        path = Path(os.path.expanduser(arg))
        if path.is_dir():
            unreadable = len(result.skipped)
            images = _images_in_dir(path, recursive, exts, result.skipped)
            if not images and len(result.skipped) == unreadable:
                result.empty.append(arg)
            for image in images:
                add(image)
        elif os.path.lexists(path):
            add(path)
        elif is_pattern(arg):
            images = _glob(arg, exts, result.skipped)
            if not images:
                result.empty.append(arg)
            for image in images:
                add(image)
        elif add(path):
            result.missing.append(arg)
    return result


def read_list_file(source: str, stdin_text: str | None = None) -> list[str]:
    """Lines of a ``--files-from`` list (``-`` is stdin): one path per line, blank lines skipped.
    Each line is a literal path: no glob expansion, so odd file names survive."""
    if source == "-":
        text = stdin_text if stdin_text is not None else ""
    else:
        text = Path(source).read_text(encoding="utf-8")
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def expand_listed(lines: Sequence[str]) -> Expansion:
    """Expansion of literal paths (``--files-from``; URLs too): directories are not descended into."""
    result = Expansion()
    add = _Adder(result)
    for line in lines:
        source = as_source(line)
        if add(source) and isinstance(source, Path) and not os.path.lexists(source):
            result.missing.append(line)
    return result


def merge(first: Expansion, second: Expansion) -> Expansion:
    """Concatenates two expansions, dropping repeats of the same file."""
    out = Expansion(
        missing=first.missing + second.missing, empty=first.empty + second.empty, skipped=first.skipped + second.skipped
    )
    add = _Adder(out)
    for source in first.paths + second.paths:
        add(source)
    return out
