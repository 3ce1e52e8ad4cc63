"""Stopping a run on a signal: Ctrl-C (SIGINT), SIGTERM (``kill``, systemd, ``docker stop``) and
SIGHUP (the terminal went away) stop a run the same way.

Once images are being processed, the first signal finishes the batch under way (its records are
written), the records are flushed and fsynced, and the run ends with the resume hint and exit
code 130, 143 or 129; a second signal stops at once (finished records are kept either way).
Before the first batch (while the model loads) there is nothing to finish: a signal stops at once.
Only the main thread can install handlers; elsewhere the signals keep their default behaviour.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from pali_cli.errors import Hangup, Interrupted, Terminated

STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def stopped(signum: int | None, message: str, hint: str) -> Interrupted:
    """The error that ends a run stopped by ``signum`` (its kind decides the exit code)."""
    if signum == signal.SIGTERM:
        return Terminated(message, hint=hint)
    if signum == getattr(signal, "SIGHUP", None):
        return Hangup(message, hint=hint)
    return Interrupted(message, hint=hint)


def install(handler: Callable[[int, FrameType | None], Any]) -> dict[int, Any]:
    """Installs ``handler`` for every stop signal (main thread only); returns what to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}


def restore(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class GracefulStop:
    """The local run's handling (see the module docstring). ``armed`` once batches run; until
    then, and on a second signal, the handler raises KeyboardInterrupt. ``signum`` is the first
    signal received."""

    def __init__(self, on_first: Callable[[int], None]) -> None:
        self.signum: int | None = None
        self.armed = False
        self._on_first = on_first
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        if not first or not self.armed:
            raise KeyboardInterrupt
        try:
            self._on_first(signum)
        except OSError:
            pass  # SIGHUP: the terminal that would show the message is gone

    def __enter__(self) -> GracefulStop:
        self._previous = install(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        restore(self._previous)
