"""stderr output: messages, warnings, the progress bar. stdout is for results only.

Rich decides colour: ``NO_COLOR`` turns it off, ``FORCE_COLOR`` forces it, a pipe gets none. The
progress bar is drawn only when stderr is a terminal, so logs of batch jobs stay clean. ``quiet``
silences everything here except fatal errors.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Images per second, or seconds per image when slower than one a second (CPU runs)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("", style="progress.data.speed")
        label = f"{speed:.2f} img/s" if speed >= 1 else f"{1 / speed:.1f} s/img"
        return Text(label, style="progress.data.speed")


class ProgressHandle:
    """What the runner advances; a no-op when no bar is drawn."""

    def __init__(self, progress: Progress | None, description: str, total: int) -> None:
        self._progress = progress
        self._description = description
        self._task = progress.add_task(description, total=total) if progress else None
        self.failed = 0

    def advance(self, done: int, failed: int = 0) -> None:
        self.failed += failed
        if self._progress is None or self._task is None:
            return
        description = self._description
        if self.failed:
            description += f" [red]({self.failed} failed)[/red]"
        self._progress.update(self._task, advance=done, description=description)


class Reporter:
    """Everything the CLI says on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        # highlight=False: rich would otherwise colour numbers and paths inside our messages.
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def _say(self, prefix: str, style: str, message: str) -> None:
        line = Text.assemble(("pali: ", "bold"), (prefix, style), message)
        self.console.print(line)

    def error(self, message: str, hint: str | None = None) -> None:
        """Fatal errors are printed even in quiet mode."""
        self._say("error: ", "bold red", message)
        if hint:
            self.console.print(Text(hint, style="dim"))

    def warn(self, message: str) -> None:
        if not self.quiet:
            self._say("warning: ", "yellow", message)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(Text(message))

    @contextmanager
    def python_warnings(self) -> Iterator[None]:
        """Python warnings (from the engine or a library) as one ``pali: warning:`` line each, with no
        source line; none at all with ``quiet``."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if self.quiet else "default")

            def show(
                message: Warning | str,
                category: type[Warning],
                filename: str,
                lineno: int,
                file: Any = None,
                line: str | None = None,
            ) -> None:
                self.warn(" ".join(str(message).split()))

            warnings.showwarning = show
            yield

    @contextmanager
    def progress(self, description: str, total: int, stdout_busy: bool = False) -> Iterator[ProgressHandle]:
        """A progress bar on stderr when it is a terminal. ``stdout_busy``: results are being printed
        to a terminal on stdout, where they already show progress and a bar would garble them."""
        if self.quiet or not self.console.is_terminal or stdout_busy or total <= 1:
            yield ProgressHandle(None, description, total)
            return
        # transient: the finished bar gives way to the one-line summary. No stdout redirection:
        # rich would otherwise send results printed on stdout to the console, i.e. to stderr.
        with Progress(
            *progress_columns(self.console),
            console=self.console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as progress:
            yield ProgressHandle(progress, description, total)


class PlainBar(ProgressColumn):
    """The bar without colour (NO_COLOR, or a terminal without colours): rich tells done from to-do
    by colour alone, so without it the bar would be one blank line; here to-do is a thinner line."""

    def __init__(self, bar_width: int | None = 40) -> None:
        super().__init__()
        self.bar_width = bar_width

    def render(self, task: Task) -> Text:
        width = self.bar_width or 20
        done = 0 if not task.total else min(width, int(width * task.completed / task.total))
        return Text("━" * done + "─" * (width - done))


def progress_columns(console: Console) -> tuple[ProgressColumn, ...]:
    """The bar's columns for this terminal: fewer on a narrow one, so that the line never wraps."""
    plain = console.no_color or console.color_system is None
    bar = (PlainBar if plain else BarColumn)(bar_width=None if console.width >= 100 else 20)
    if console.width < 60:
        return (TextColumn("{task.description}"), MofNCompleteColumn(), TimeRemainingColumn())
    if console.width < 100:
        return (TextColumn("{task.description}"), bar, MofNCompleteColumn(), TextColumn("eta"), TimeRemainingColumn())
    return (
        TextColumn("{task.description}"),
        bar,
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


class Stopwatch:
    """Wall time of a block, for the summary line."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


def plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def format_duration(seconds: float) -> str:
    """``0.4s``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
