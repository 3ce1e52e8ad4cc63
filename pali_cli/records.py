"""Result records and the JSONL results file that makes runs resumable.

One JSON object per line::

    {"image": "photos/a.jpg", "task": "caption", "prompt": "caption en", "preset": "...",
     "text": "a cat on a sofa", "tokens": 6, "finish_reason": "stop", "seconds": 0.81, "error": null}

``error`` is null on success and a one-line message otherwise (then ``text`` and ``tokens`` are
null). Some tasks add fields (``detect``: ``detections``).

Resume key: (image, task, prompt, preset). The image is compared as an absolute path resolved
against the current directory, the preset by its canonical name (or checkpoint directory).
Sampling options (``--max-tokens``, ``--temperature`` ...) are deliberately *not* in the key: a
results file answers "what does the model say about each image", and rerunning an interrupted job
with a tweaked option must not process every image a second time. Use a new ``-o`` file (or
``--overwrite``) to redo images with other settings.

Crash safety: each record is one ``write`` of a whole line on an ``O_APPEND`` descriptor, so a
killed process leaves at most one partial last line; opening the file again cuts it off (that
image is simply redone). Process death does not lose written bytes (the kernel holds them); the
file is fsynced on close.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pali_cli.errors import CliError

RecordKey = tuple[str, str, str, str]


def image_key(image: str | Path) -> str:
    return os.path.normcase(os.path.abspath(image))


def make_key(image: str | Path, task: str, prompt: str, preset: str) -> RecordKey:
    return (image_key(image), task, prompt, preset)


@dataclass
class Record:
    """One image's result (or failure)."""

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
        d: dict[str, Any] = {
            "image": self.image,
            "task": self.task,
            "prompt": self.prompt,
            "preset": self.preset,
            "text": self.text,
            "tokens": self.tokens,
            "finish_reason": self.finish_reason,
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "error": self.error,
        }
        d.update(self.extra)
        return d

    def to_line(self) -> str:
        # ensure_ascii=False keeps captions in any language readable; JSON escapes the newlines.
        return json.dumps(self.to_dict(), ensure_ascii=False) + "\n"


def _key_of(obj: Any) -> RecordKey | None:
    if not isinstance(obj, dict):
        return None
    image, task, prompt, preset = (obj.get(k) for k in ("image", "task", "prompt", "preset"))
    if isinstance(image, str) and isinstance(task, str) and isinstance(prompt, str) and isinstance(preset, str):
        return make_key(image, task, prompt, preset)
    return None


class Sink(Protocol):
    def write(self, record: Record) -> None: ...

    def close(self) -> None: ...


class ResultsFile:
    """An ``-o`` JSONL file: reads what earlier runs finished, then appends record by record.

    ``status[key]`` is True for a finished image, False for an error record (the last record of a
    key wins, so a hand-appended retry counts).
    """

    def __init__(self, path: Path, warn: Callable[[str], None]) -> None:
        self.path = path
        self._warn = warn
        self.status: dict[RecordKey, bool] = {}
        self._fd: int | None = None
        self._truncate = False
        if path.exists():
            if path.is_dir():
                raise CliError(f"output {path} is a directory; give a file name such as {path}/results.jsonl")
            self._load()

    # ------------------------------------------------------------------ reading / repairing

    def _load(self) -> None:
        bad = 0
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise CliError(f"cannot read {self.path}: {e.strerror or e}") from None
        if data and not data.endswith(b"\n"):
            data = self._repair_tail(data)
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                bad += 1
                continue
            key = _key_of(obj)
            if key is None:
                bad += 1
                continue
            self.status[key] = obj.get("error") is None
        if bad:
            self._warn(f"{self.path}: {bad} line(s) are not pali records; they are left as they are and ignored")

    def _repair_tail(self, data: bytes) -> bytes:
        """The last line has no newline: a run was killed while writing it (or it was edited)."""
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            json.loads(tail)
        except ValueError:
            os.truncate(self.path, cut)
            self._warn(
                f"{self.path}: removed an incomplete last record left by an interrupted run; that image will be redone"
            )
            return data[:cut]
        with open(self.path, "ab") as f:  # a whole record that only lacks its newline
            f.write(b"\n")
        return data + b"\n"

    # ------------------------------------------------------------------ rewriting

    def clear(self) -> None:
        """``--overwrite``: start afresh. The old file is only emptied by the first new record, so
        a run that fails before producing one (no model, no network) leaves it as it was."""
        self._truncate = True
        self.status.clear()

    def drop_failed(self, keys: set[RecordKey]) -> int:
        """``--retry-failed``: removes the error records of ``keys``; returns how many images."""
        failed = {k for k in keys if self.status.get(k) is False}
        if failed:
            self._rewrite(lambda key, ok: not (key in failed and not ok))
            for k in failed:
                del self.status[k]
        return len(failed)

    def _rewrite(self, keep: Callable[[RecordKey, bool], bool]) -> None:
        if not self.path.exists():
            return
        kept: list[bytes] = []
        with open(self.path, "rb") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except ValueError:
                    kept.append(line)
                    continue
                key = _key_of(obj)
                if key is None or keep(key, obj.get("error") is None):
                    kept.append(line)
        # Write a sibling and rename over: a crash mid-rewrite leaves the old file intact.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.writelines(kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ appending

    def write(self, record: Record) -> None:
        if self._fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_TRUNC if self._truncate else 0)
                self._fd = os.open(self.path, flags, 0o644)
            except OSError as e:
                raise CliError(f"cannot write {self.path}: {e.strerror or e}") from None
        data = memoryview(record.to_line().encode("utf-8"))
        while data:  # regular files take it in one go; the loop is for the odd short write
            written = os.write(self._fd, data)
            data = data[written:]
        self.status[record.key] = record.ok

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError:
                pass  # some filesystems (pipes, /dev/stdout) cannot fsync; the data is written
            os.close(self._fd)
            self._fd = None


class JsonlStream:
    """Records as JSON lines on stdout, flushed one by one so a pipe sees them as they come."""

    def write(self, record: Record) -> None:
        sys.stdout.write(record.to_line())
        sys.stdout.flush()

    def close(self) -> None:
        pass


class TextStream:
    """Plain text on stdout (one image): the result as the task renders it; failures go to the
    caller, which reports them on stderr."""

    def __init__(self, render: Callable[[Record], str | None]) -> None:
        self._render = render

    def write(self, record: Record) -> None:
        if record.ok:
            text = self._render(record)
            if text is None:  # nothing to show (no object found): no line at all
                return
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
            sys.stdout.flush()

    def close(self) -> None:
        pass


class NullSink:
    """Results go only to sidecar files."""

    def write(self, record: Record) -> None:
        pass

    def close(self) -> None:
        pass
