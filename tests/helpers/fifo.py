"""Calling code that must refuse a FIFO without opening it: run it in a thread, and if it is still
waiting after the timeout (it opened the FIFO and waits for a writer), release it and fail."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest


def raised_without_waiting(call: Callable[[], object], fifo: Path, timeout: float = 30) -> BaseException | None:
    """The exception ``call()`` raised (None if it returned); fails the test if it waited on ``fifo``."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=timeout)
    if thread.is_alive():
        with open(fifo, "w"):
            pass  # release the waiting reader
        pytest.fail(f"{fifo.name} was opened and waited on: a FIFO must be refused unread")
    return errors[0] if errors else None
