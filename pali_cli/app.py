"""The ``pali`` command line: PaliGemma captioning, VQA, OCR, detection and segmentation on local images.

Commands are thin: each builds a ``Job`` (what to ask the model) and hands it to the runner with
the shared ``RunOptions``. Domain errors are turned into exit codes in one place, ``PaliGroup``.
Nothing here imports torch or the model engine at import time, so ``pali --help`` is instant.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from engine import PaliError
from pali_cli.errors import CliError, ExitCode, Interrupted, UsageProblem, exit_code_for, hint_for
from pali_cli.options import Draw, Images, Lang, MasksDir, RunOptions, SegDecoder, run_options
from pali_cli.presets_cmd import download_command, presets_app

EXIT_CODES = (
    "[bold]Exit codes:[/bold] 0 ok, 1 runtime failure, 2 usage error, 3 some images failed (see their "
    "error records), 4 model unavailable (download, login, offline), 5 no input matched, 130 "
    "interrupted (rerun the same command to resume)."
)

EPILOG = f"""[bold]Examples:[/bold]

  pali caption photo.jpg

  pali ask photo.jpg "how many dogs are there?"

  pali caption "photos/**/*.jpg" -o captions.jsonl   [dim]# rerun to resume[/dim]

  pali caption dataset/ -r --sidecar --prefix "photo of sks, "

  pali detect street.jpg "car ; bicycle" --draw drawn/

  pali segment photo.jpg "cat" --masks-dir masks/

{EXIT_CODES}

[bold]Environment:[/bold] PALI_PRESET, PALI_DEVICE, PALI_QUANTIZE, PALI_CPU, PALI_CACHE_DIR, PALI_SEG_DECODER; \
HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE for downloads; NO_COLOR; PALI_DEBUG=1 shows tracebacks."""


class PaliGroup(TyperGroup):
    """Turns errors into one stderr line and an exit code, for every subcommand (pali_cli.errors
    holds the table of exit codes)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except PaliError as e:
            _report(e)
            raise typer.Exit(int(exit_code_for(e))) from None
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt, BrokenPipeError):
            raise  # click's own handling: usage errors (2), Ctrl-C (130), closed pipes
        except Exception as e:  # noqa: BLE001 - the last line of defence: one line, not a traceback
            debug = bool(os.environ.get("PALI_DEBUG"))
            if debug:
                traceback.print_exc()
            hint = "Please report it." if debug else "Set PALI_DEBUG=1 to see the traceback, and please report it."
            _report(CliError(f"unexpected {type(e).__name__}: {e}", hint=hint))
            raise typer.Exit(int(ExitCode.FAILURE)) from None


def _report(error: PaliError) -> None:
    from pali_cli.console import Reporter

    reporter = Reporter()
    message, hint = str(error), hint_for(error)
    if isinstance(error, Interrupted):
        reporter.console.print(f"pali: {message}", markup=False, highlight=False)
        if hint:
            reporter.console.print(hint, markup=False, highlight=False)
    else:
        reporter.error(message, hint)


def _version(value: bool) -> None:
    if value:
        from pali_cli import __version__

        typer.echo(f"pali {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="pali",
    cls=PaliGroup,
    help="Run Google's PaliGemma vision-language models locally: caption, ask, OCR, detect, segment.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,  # static scripts instead (pali completion SHELL): no Python per <Tab>
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(presets_app)


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Run Google's PaliGemma vision-language models locally: caption, ask, OCR, detect, segment."""


def _finish(code: ExitCode) -> None:
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def _run(job_factory: Any, images: list[str] | None, opts: RunOptions, usage: str) -> None:
    if not images and not opts.files_from:
        # With one word only, click gives it to the trailing argument (QUESTION, OBJECTS...).
        raise UsageProblem(f"no images given; usage: {usage}")
    # Imported here: the runner pulls in rich's progress machinery and, later, the engine.
    from pali_cli.runner import run_command

    _finish(run_command(job_factory(), images, opts))


@app.command(epilog=EXIT_CODES)
@run_options
def caption(images: Images = None, lang: Lang = "en", *, opts: RunOptions) -> None:
    """Caption images ("caption en")."""
    from pali_cli.jobs import caption_job

    _run(lambda: caption_job(lang), images, opts, "pali caption IMAGES...")


@app.command(epilog=EXIT_CODES)
@run_options
def ask(
    images: Images = None,
    question: Annotated[
        str, typer.Argument(metavar="QUESTION", help="The question, in quotes.", show_default=False)
    ] = "",
    lang: Lang = "en",
    *,
    opts: RunOptions,
) -> None:
    """Answer a question about each image ("answer en QUESTION")."""
    from pali_cli.jobs import answer_job

    _run(lambda: answer_job(question, lang), images, opts, 'pali ask IMAGES... "QUESTION"')


@app.command(epilog=EXIT_CODES)
@run_options
def detect(
    images: Images = None,
    objects: Annotated[
        str,
        typer.Argument(metavar="OBJECTS", help='What to find, separated by ";": "car ; person".', show_default=False),
    ] = "",
    draw: Draw = None,
    *,
    opts: RunOptions,
) -> None:
    """Find objects; prints label and box (x_min y_min x_max y_max, in pixels) per line."""
    from pali_cli.jobs import detect_job

    _run(lambda: detect_job(objects, draw), images, opts, 'pali detect IMAGES... "OBJECT ; OBJECT"')


@app.command(epilog=EXIT_CODES)
@run_options
def segment(
    images: Images = None,
    objects: Annotated[
        str,
        typer.Argument(metavar="OBJECTS", help='What to segment, separated by ";": "cat ; dog".', show_default=False),
    ] = "",
    masks_dir: MasksDir = None,
    draw: Draw = None,
    seg_decoder: SegDecoder = None,
    *,
    opts: RunOptions,
) -> None:
    """Segment objects; prints label, box (x_min y_min x_max y_max, in pixels) and mask area per line."""
    from pali_cli.jobs import segment_job

    _run(
        lambda: segment_job(objects, seg_decoder, masks_dir, draw),
        images,
        opts,
        'pali segment IMAGES... "OBJECT ; OBJECT"',
    )


@app.command(epilog=EXIT_CODES)
@run_options
def ocr(images: Images = None, *, opts: RunOptions) -> None:
    """Read the text in images ("ocr")."""
    from pali_cli.jobs import ocr_job

    _run(ocr_job, images, opts, "pali ocr IMAGES...")


@app.command(epilog=EXIT_CODES)
@run_options
def prompt(
    images: Images = None,
    text: Annotated[
        str,
        typer.Argument(
            metavar="PROMPT", help='A raw PaliGemma prompt, e.g. "describe en" or "segment cat".', show_default=False
        ),
    ] = "",
    *,
    opts: RunOptions,
) -> None:
    """Send a raw prompt (any task the model knows)."""
    from pali_cli.jobs import raw_job

    _run(lambda: raw_job(text), images, opts, 'pali prompt IMAGES... "PROMPT"')


app.command("download", hidden=True, help="Same as 'pali presets download'.")(download_command)


@app.command("completion")
def completion(
    shell: Annotated[str, typer.Argument(metavar="SHELL", help="bash, zsh or fish.")],
) -> None:
    """Print the shell completion script (see the README to install it)."""
    from pali_cli.completions import SHELLS, render

    if shell not in SHELLS:
        raise UsageProblem(f"no completion script for {shell!r}; choose one of {', '.join(SHELLS)}")
    sys.stdout.write(render(shell))


def main() -> None:
    """Console-script entry point (``pali``) and ``python -m pali_cli``."""
    app(prog_name="pali")
