"""Exit codes and the domain errors the CLI turns into them (in one place: ``app.PaliGroup``)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit status; documented in ``pali --help`` and the README."""

    OK = 0
    FAILURE = 1  # runtime failure: the model or the output could not be used
    USAGE = 2  # bad command line (click's own usage errors use 2 as well)
    ITEMS_FAILED = 3  # the run finished but one or more images have an error record
    MODEL_UNAVAILABLE = 4  # the model could not be downloaded or found (auth, offline, 404)
    NO_INPUT = 5  # no image matched the given paths, directories or patterns
    INTERRUPTED = 130  # Ctrl-C; finished records are kept
    TERMINATED = 143  # SIGTERM (128 + 15); finished records are kept


class PaliError(Exception):
    """An error the user can act on: printed as one line (plus an optional hint), no traceback."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageProblem(PaliError):
    exit_code = ExitCode.USAGE


class ModelUnavailable(PaliError):
    exit_code = ExitCode.MODEL_UNAVAILABLE


class NoInput(PaliError):
    exit_code = ExitCode.NO_INPUT


class Interrupted(PaliError):
    exit_code = ExitCode.INTERRUPTED
