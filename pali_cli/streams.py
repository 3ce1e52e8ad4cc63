"""Where records go when they do not go to an ``-o`` file: stdout (JSON lines or plain text), or
nowhere (sidecar files only). ``ResultsFile`` (pali_cli.results) is the other ``Sink``."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Protocol

from pali_cli.errors import CliError
from pali_cli.records import Record


class Sink(Protocol):
    def write(self, record: Record) -> None: ...

    def close(self) -> None: ...


def write_failure(where: str, error: OSError) -> str:
    """One line for a write that failed, saying what to do."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full" if error.errno == errno.ENOSPC else "the disk quota is used up"
        return (
            f"cannot write {where}: {what} (records finished so far are kept); free some space, "
            "then run the same command again to do the rest"
        )
    return f"cannot write {where}: {error.strerror or error}"


def stdout_is_terminal() -> bool:
    """Whether results printed on stdout land on a terminal (not a pipe or file)."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def _stdout_write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise  # the reader went away (| head): click's handling, as for any CLI
    except OSError as e:
        raise CliError(write_failure("the results to stdout", e)) from None


class JsonlStream:
    """Records as JSON lines on stdout, flushed one by one so a pipe sees them as they come."""

    def write(self, record: Record) -> None:
        _stdout_write(record.to_line())

    def close(self) -> None:
        pass


class TextStream:
    """Plain text on stdout (one image): the result as the task renders it; failures go to the
    caller, which reports them on stderr. ``streamed`` is the text already printed while it was
    generated (pali_cli.batches.TextPrinter): only the rest is printed then."""

    def __init__(self, render: Callable[[Record], str | None]) -> None:
        self._render = render
        self.streamed: str | None = None

    def write(self, record: Record) -> None:
        if not record.ok:
            return
        text = self._render(record)
        if text is None:  # nothing to show (no object found): no line at all
            return
        shown, self.streamed = self.streamed, None
        if shown is not None:
            # The printed part is the start of the final text but for a rare re-segmentation of the
            # last characters by the detokenizer; then the text is printed whole on a new line.
            text = text[len(shown) :] if text.startswith(shown) else "\n" + text
        _stdout_write(text if text.endswith("\n") else text + "\n")

    def close(self) -> None:
        pass


class NullSink:
    """Results go only to sidecar files."""

    def write(self, record: Record) -> None:
        pass

    def close(self) -> None:
        pass
