"""The command classes behind ``pali``: one error style, and help without type placeholders.

* Every error is one ``pali: error:`` line on stderr (and a hint line), whether pali found it or
  the option parser did (click's own usage errors would otherwise come as a boxed panel);
  ``PaliGroup.invoke`` maps pali's and the engine's errors to exit codes (pali_cli.errors).
* Help shows what to type, not Python types: flags show no value, arguments their metavar only
  (Typer would add ``<bool>``, ``<list[str]>``, ``<str>``); options name their values with a metavar.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from engine import PaliError
from pali_cli.errors import CliError, ExitCode, Interrupted, exit_code_for, hint_for

EXIT_CODES = (
    "[bold]Exit codes:[/bold] 0 ok, 1 runtime failure, 2 usage error, 3 some images failed (see their "
    "error records) or were left out, 4 model unavailable (download, login, offline), 5 no input "
    "matched, 129 the terminal closed (SIGHUP), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); "
    "after 129-143 rerun the same command to resume."
)


def examples(*lines: str) -> str:
    """A command's epilog: its examples, then the exit codes."""
    shown = "\n\n".join(f"  {line}" for line in lines)
    return f"[bold]Examples:[/bold]\n\n{shown}\n\n{EXIT_CODES}"


def _no_type(ctx: Any = None) -> None:
    return None


class _PlainHelp:
    """Help rows without type placeholders (see the module docstring)."""

    params: list[Any]

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None and getattr(option, "metavar", None) is None:
            option.metavar = ""  # a flag: nothing to type after it
        return option

    def format_help(self, ctx: Any, formatter: Any) -> None:
        for param in self.params:
            if param.param_type_name == "argument" and param.metavar:
                param.display_type_rich = _no_type  # the metavar (IMAGES, SHELL) says it all
        super().format_help(ctx, formatter)  # type: ignore[misc]


class PaliCommand(_PlainHelp, TyperCommand):
    """A ``pali`` subcommand."""


class HelpGroup(_PlainHelp, TyperGroup):
    """A group of subcommands (``pali presets``)."""


class PaliGroup(_PlainHelp, TyperGroup):
    """The ``pali`` command: errors become one stderr line and an exit code, for every subcommand."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except PaliError as e:
            report(e)
            raise typer.Exit(int(exit_code_for(e))) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt, BrokenPipeError):
            raise  # click's own handling: Ctrl-C (130), closed pipes
        except Exception as e:
            if _is_click_error(e):
                raise  # a usage error found while parsing a subcommand: main() reports it
            debug = bool(os.environ.get("PALI_DEBUG"))
            if debug:
                traceback.print_exc()
            hint = "Please report it." if debug else "Set PALI_DEBUG=1 to see the traceback, and please report it."
            report(CliError(f"unexpected {type(e).__name__}: {e}", hint=hint))
            raise typer.Exit(int(ExitCode.FAILURE)) from None

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            result = super().main(
                args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra
            )
            code = result if isinstance(result, int) else 0
        except typer.Abort:
            code = int(ExitCode.INTERRUPTED)
        except Exception as e:
            if not _is_click_error(e):
                raise
            code = _report_click_error(e)
        if standalone_mode:
            sys.exit(code)
        return code


# Typer's value conversion speaks pydantic ("Input should be ..."); pali's messages say the fix.
_PLAIN_WORDS = (
    (r"Input should be a valid integer.*", "it must be a whole number"),
    (r"Input should be a valid number.*", "it must be a number"),
    (r"Input should be greater than or equal to (\S+)", r"it must be at least \1"),
    (r"Input should be less than or equal to (\S+)", r"it must be at most \1"),
)


def _is_click_error(error: BaseException) -> bool:
    # click's ClickException (Typer vendors click in recent versions): duck-typed, for either.
    return hasattr(error, "exit_code") and hasattr(error, "format_message")


def _report_click_error(error: Any) -> int:
    if type(error).__name__ == "NoArgsIsHelpError":
        return int(error.exit_code)  # the help was printed already
    message = " ".join(str(error.format_message()).split())
    for pattern, plain in _PLAIN_WORDS:
        message = re.sub(pattern, plain, message)
    ctx = getattr(error, "ctx", None)
    hint = f"Try '{ctx.command_path} --help' for help." if ctx is not None else None
    from pali_cli.console import Reporter

    Reporter().error(message[:1].lower() + message[1:].rstrip("."), hint)
    return int(error.exit_code)


def report(error: PaliError) -> None:
    from pali_cli.console import Reporter

    reporter = Reporter()
    message, hint = str(error), hint_for(error)
    try:
        if isinstance(error, Interrupted):
            reporter.console.print(f"pali: {message}", markup=False, highlight=False)
            if hint:
                reporter.console.print(hint, markup=False, highlight=False)
        else:
            reporter.error(message, hint)
    except OSError:
        pass  # stderr is gone (SIGHUP: the terminal closed); the exit code still tells
