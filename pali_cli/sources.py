"""What an image argument names: a file, or an image that is not a file (stdin, an http(s) URL).

``-`` is stdin and ``http://...`` / ``https://...`` are URLs wherever an image is named (arguments,
``--files-from`` lists, records); a file really called ``-`` is ``./-``. ``as_source`` turns the
text of a record back into what it named, so no table of inputs travels with the records.

File names that are not UTF-8 reach Python as ``str`` with surrogate escapes (``os.fsdecode``);
``readable`` shows them with U+FFFD instead, ``escaped`` keeps them as ``\\udcXX`` escapes, lossless.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

STDIN = "-"
_URL = re.compile(r"^https?://", re.IGNORECASE)
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Remote:
    """An image read from stdin (``name == "-"``) or downloaded from an http(s) URL."""

    name: str

    def __str__(self) -> str:
        return self.name

    @property
    def is_stdin(self) -> bool:
        return self.name == STDIN

    @property
    def stem(self) -> str:
        """A file-name stem for outputs made from it (``--draw``): the URL's last path segment."""
        if self.is_stdin:
            return "stdin"
        leaf = unquote(urlsplit(self.name).path.rstrip("/").rsplit("/", 1)[-1])
        stem = Path(leaf).stem if leaf else ""
        return re.sub(r"[^\w.-]+", "_", stem) or "download"


Source = Path | Remote


def is_remote_name(text: str) -> bool:
    return text == STDIN or bool(_URL.match(text))


def as_source(text: str | Path | Remote) -> Source:
    """The image ``text`` names (see the module docstring)."""
    if isinstance(text, (Path, Remote)):
        return text
    return Remote(text) if is_remote_name(text) else Path(text)


def resolved(text: str) -> str:
    """What identifies an image across runs and directories: a URL as written, stdin as ``-``,
    a file as its absolute path with symbolic links resolved (``cd photos && pali caption .`` and
    ``pali caption photos`` name the same files)."""
    if is_remote_name(text):
        return text
    return os.path.normcase(os.path.realpath(os.path.expanduser(text)))


def readable(text: str) -> str:
    """``text`` as valid Unicode: bytes of a name that were not UTF-8 become U+FFFD."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def has_escapes(text: str) -> bool:
    return bool(_SURROGATE.search(text))


def escape_surrogates(json_text: str) -> str:
    """JSON text with every lone surrogate written as a ``\\uXXXX`` escape: valid UTF-8 and valid
    JSON, and ``json.loads`` gives the surrogates back (so ``os.fsencode`` gives the name's bytes)."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)
