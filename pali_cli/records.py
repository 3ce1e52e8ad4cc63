"""Result records: one JSON object per line, and the key that makes runs resumable.

::

    {"image": "photos/a.jpg", "path": "/home/me/photos/a.jpg", "task": "caption", "prompt": "caption en",
     "preset": "...", "text": "a cat on a sofa", "tokens": 6, "finish_reason": "stop", "seconds": 0.81,
     "error": null}

``image`` is the input as typed; ``path`` is the file it named, absolute with symbolic links
resolved (a URL as written, ``-`` for stdin). ``error`` is null on success and a one-line message
otherwise (then ``text`` and ``tokens`` are null). Some tasks add fields (``detect``:
``detections``). For a file name that is not UTF-8, ``image``, ``path`` and messages show each
undecodable byte as U+FFFD, and ``path_escaped`` holds the exact name with each such byte as a
surrogate escape ``\\udcXX`` (Python's surrogateescape: ``os.fsencode(record["path_escaped"])`` gives
the bytes). The file itself is always valid UTF-8.

Resume key: (path, task, prompt, preset), the preset by its canonical name (or checkpoint
directory). So ``cd photos && pali caption . -o ../out.jsonl`` resumes ``pali caption photos -o
out.jsonl``. Records written before ``path`` existed are keyed by their ``image`` resolved against
the current directory. Sampling options (``--max-tokens``, ``--temperature`` ...) are deliberately
*not* in the key: a results file answers "what does the model say about each image", and rerunning
an interrupted job with a tweaked option must not process every image a second time. Use a new
``-o`` file (or ``--overwrite``) to redo images with other settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pali_cli.sources import Remote, escape_surrogates, has_escapes, readable, resolved

RecordKey = tuple[str, str, str, str]
RECORD_PREFIX = b'{"image": '  # how every line ``to_line`` writes begins ("image" comes first)


def image_key(image: str | Path | Remote) -> str:
    return resolved(str(image))


def make_key(image: str | Path | Remote, task: str, prompt: str, preset: str) -> RecordKey:
    return (image_key(image), task, prompt, preset)


@dataclass
class Record:
    """One image's result (or failure). ``image`` is the input as typed (``str`` of its path, so
    a name that is not UTF-8 holds surrogate escapes)."""

    image: str
    task: str
    prompt: str
    preset: str
    text: str | None = None
    tokens: int | None = None
    finish_reason: str | None = None
    seconds: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def key(self) -> RecordKey:
        return make_key(self.image, self.task, self.prompt, self.preset)

    def to_dict(self) -> dict[str, Any]:
        """The record as written (see the module docstring): valid Unicode everywhere except
        ``path_escaped``."""
        path = image_key(self.image)
        d: dict[str, Any] = {"image": readable(self.image), "path": readable(path)}
        if has_escapes(path):
            d["path_escaped"] = path
        d.update(
            task=self.task,
            prompt=self.prompt,
            preset=readable(self.preset),
            text=self.text,
            tokens=self.tokens,
            finish_reason=self.finish_reason,
            seconds=None if self.seconds is None else round(self.seconds, 3),
            error=None if self.error is None else readable(self.error),
        )
        d.update(self.extra)
        return d

    def to_line(self) -> str:
        # ensure_ascii=False keeps captions in any language readable; JSON escapes the newlines;
        # path_escaped's surrogates become \udcXX escapes, so the line is valid UTF-8.
        return escape_surrogates(json.dumps(self.to_dict(), ensure_ascii=False)) + "\n"


def key_of(obj: Any) -> RecordKey | None:
    """The key of a parsed line, or None when it is not a pali record."""
    if not isinstance(obj, dict):
        return None
    image, task, prompt, preset = (obj.get(k) for k in ("image", "task", "prompt", "preset"))
    if not (isinstance(image, str) and isinstance(task, str) and isinstance(prompt, str) and isinstance(preset, str)):
        return None
    path = obj.get("path_escaped", obj.get("path"))
    return (path if isinstance(path, str) else image_key(image), task, prompt, preset)
