"""Exit codes, the CLI's own errors, and the one table that maps every error kind to an exit code.

Engine errors (``engine.PaliError`` and its kinds) reach ``app.PaliGroup`` untouched; there
``exit_code_for`` reads ``EXIT_CODES`` and ``hint_for`` adds what to type at the command line
(the engine's messages never name CLI commands). The README's exit-code table documents the same.
"""

from __future__ import annotations

from enum import IntEnum

from engine import (
    DownloadInterruptedError,
    InputError,
    MaskDecoderError,
    ModelUnavailableError,
    OfflineError,
    PaliError,
    UnknownPresetError,
)


class ExitCode(IntEnum):
    """Process exit status; documented in ``pali --help`` and the README."""

    OK = 0
    FAILURE = 1  # runtime failure: the model or the output could not be used
    USAGE = 2  # bad command line (click's own usage errors use 2 as well)
    ITEMS_FAILED = 3  # the run finished but images have an error record, or inputs were left out
    MODEL_UNAVAILABLE = 4  # the model could not be downloaded or found (auth, offline, 404)
    NO_INPUT = 5  # no image matched the given paths, directories or patterns
    HANGUP = 129  # SIGHUP (128 + 1: the terminal closed); finished records are kept
    INTERRUPTED = 130  # Ctrl-C (SIGINT, 128 + 2); finished records are kept
    TERMINATED = 143  # SIGTERM (128 + 15); finished records are kept


class CliError(PaliError):
    """An error of the command line itself: printed as one line (plus an optional hint)."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageProblem(CliError):
    """A bad combination of arguments or options, found before any work starts."""


class NoInput(CliError):
    """No image matched the given paths, directories or patterns."""


class Interrupted(CliError):
    """Ctrl-C stopped the run; finished records are kept."""


class Terminated(Interrupted):
    """SIGTERM stopped the run; finished records are kept."""


class Hangup(Interrupted):
    """SIGHUP (the terminal went away) stopped the run; finished records are kept."""


# Every error kind -> its exit code. First match wins, so more specific kinds come first; an
# error outside the table (a bug) exits with FAILURE too, with a traceback hint (app.PaliGroup).
EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (Terminated, ExitCode.TERMINATED),
    (Hangup, ExitCode.HANGUP),
    (Interrupted, ExitCode.INTERRUPTED),
    (NoInput, ExitCode.NO_INPUT),
    (UsageProblem, ExitCode.USAGE),
    (InputError, ExitCode.USAGE),  # bad arguments reach the engine from the command line
    (ModelUnavailableError, ExitCode.MODEL_UNAVAILABLE),
    (PaliError, ExitCode.FAILURE),  # CheckpointError, TrainingError, CliError: runtime failures
)


def exit_code_for(error: BaseException) -> ExitCode:
    for kind, code in EXIT_CODES:
        if isinstance(error, kind):
            return code
    return ExitCode.FAILURE


def hint_for(error: BaseException) -> str | None:
    """What to do about ``error`` at the command line, where the CLI knows better than the engine;
    a note attached on the way (``add_cli_note``: that it happened on a Ray worker) follows."""
    parts = [_kind_hint(error), getattr(error, _NOTE, None)]
    return " ".join(p for p in parts if p) or None


_NOTE = "_pali_cli_note"


def add_cli_note(error: BaseException, note: str) -> None:
    """Attach ``note`` to the hint ``hint_for`` gives (BaseException.add_note needs Python 3.11)."""
    setattr(error, _NOTE, note)


def _kind_hint(error: BaseException) -> str | None:
    if isinstance(error, CliError):
        return error.hint
    if isinstance(error, MaskDecoderError):
        return "`--seg-decoder PATH` (or PALI_SEG_DECODER) names a local copy of vae-oid.npz."
    if isinstance(error, UnknownPresetError):
        return "`pali presets list` shows all presets."
    if isinstance(error, (OfflineError, DownloadInterruptedError)) and error.label:
        return f"`pali presets download {error.label}` downloads it (while online); finished files are kept."
    return None
