"""The ``pali`` command line: PaliGemma captioning, VQA, OCR, detection and segmentation on local images.

Commands are thin: each builds a ``Job`` (what to ask the model) and hands it to the runner with
the shared ``RunOptions``. Errors become one line and an exit code in one place
(``pali_cli.typer_classes.PaliGroup``, with the table in ``pali_cli.errors``).
Nothing here imports torch or the model engine at import time, so ``pali --help`` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pali_cli.errors import ExitCode, UsageProblem
from pali_cli.options import Draw, Images, Lang, MasksDir, RunOptions, SegDecoder, run_options
from pali_cli.presets_cmd import download_command, presets_app
from pali_cli.typer_classes import EXIT_CODES, PaliCommand, PaliGroup, examples

EPILOG = f"""[bold]Examples:[/bold]

  pali caption photo.jpg

  pali ask photo.jpg "how many dogs are there?"

  pali caption "photos/**/*.jpg" -o captions.jsonl   [dim]# rerun to resume[/dim]

  pali caption dataset/ -r --sidecar --prefix "photo of sks, "

  pali detect street.jpg "car ; bicycle" --draw drawn/

  pali segment photo.jpg "cat" --masks-dir masks/

{EXIT_CODES}

[bold]Environment:[/bold] PALI_PRESET, PALI_DEVICE, PALI_QUANTIZE, PALI_CPU, PALI_BF16_KERNEL, PALI_CACHE_DIR, \
PALI_SEG_DECODER; HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE for downloads; NO_COLOR; PALI_DEBUG=1 shows tracebacks."""


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
        bool,
        typer.Option(
            "--version", "-V", metavar="", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Run Google's PaliGemma vision-language models locally: caption, ask, OCR, detect, segment."""


def _finish(code: ExitCode) -> None:
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def _looks_like_an_image(text: str) -> bool:
    """Whether a word on the command line names images: it exists, is a URL or ends like one."""
    from pali_cli.inputs import image_extensions
    from pali_cli.sources import is_remote_name

    return is_remote_name(text) or os.path.exists(text) or Path(text).suffix.lower() in image_extensions()


def _check_order(images: list[str] | None, trailing: str | None, what: str, usage: str, opts: RunOptions) -> None:
    """``pali ask IMG`` (click gives the one word to the trailing argument) and ``pali ask "question"
    img.png`` (swapped): say what is missing, or that the images come first."""
    if not images and not opts.files_from:
        if trailing and _looks_like_an_image(trailing):
            raise UsageProblem(f"{what} is missing; usage: {usage}")
        raise UsageProblem(f"no images given; usage: {usage}")
    if trailing and images and _looks_like_an_image(trailing) and not any(map(_looks_like_an_image, images)):
        raise UsageProblem(
            f"{trailing!r} looks like an image and {images[-1]!r} like {what}: the images come first; usage: {usage}"
        )


def _run(job_factory: Any, images: list[str] | None, opts: RunOptions) -> None:
    # Imported here: the runner pulls in rich's progress machinery and, later, the engine.
    from pali_cli.runner import run_command

    _finish(run_command(job_factory(), images, opts))


@app.command(
    cls=PaliCommand,
    epilog=examples(
        "pali caption photo.jpg",
        'pali caption "photos/**/*.jpg" -o captions.jsonl   [dim]# rerun to resume[/dim]',
        "curl -s https://example.com/cat.jpg | pali caption -",
    ),
)
@run_options
def caption(images: Images = None, lang: Lang = "en", *, opts: RunOptions) -> None:
    """Caption images ("caption en")."""
    from pali_cli.jobs import caption_job

    _check_order(images, None, "", "pali caption IMAGES...", opts)
    _run(lambda: caption_job(lang), images, opts)


@app.command(
    cls=PaliCommand,
    epilog=examples(
        'pali ask photo.jpg "how many dogs are there?"',
        'pali ask "shelves/*.jpg" "is the shelf empty?" -o answers.jsonl',
    ),
)
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

    _check_order(images, question, "the question", 'pali ask IMAGES... "QUESTION"', opts)
    _run(lambda: answer_job(question, lang), images, opts)


@app.command(
    cls=PaliCommand,
    epilog=examples(
        'pali detect street.jpg "car ; bicycle"',
        'pali detect "street/*.jpg" car --draw drawn/ -o cars.jsonl',
    ),
)
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

    _check_order(images, objects, "what to find", 'pali detect IMAGES... "OBJECT ; OBJECT"', opts)
    _run(lambda: detect_job(objects, draw), images, opts)


@app.command(
    cls=PaliCommand,
    epilog=examples(
        'pali segment photo.jpg "cat ; dog" --masks-dir masks/',
        'pali segment "photos/*.jpg" person -o people.jsonl --draw drawn/',
    ),
)
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

    _check_order(images, objects, "what to segment", 'pali segment IMAGES... "OBJECT ; OBJECT"', opts)
    _run(lambda: segment_job(objects, seg_decoder, masks_dir, draw), images, opts)


@app.command(cls=PaliCommand, epilog=examples("pali ocr scan.png", 'pali ocr "scans/*.png" -o text.jsonl'))
@run_options
def ocr(images: Images = None, *, opts: RunOptions) -> None:
    """Read the text in images ("ocr")."""
    from pali_cli.jobs import ocr_job

    _check_order(images, None, "", "pali ocr IMAGES...", opts)
    _run(ocr_job, images, opts)


@app.command(
    cls=PaliCommand,
    epilog=examples(
        'pali prompt photo.jpg "describe en"',
        'pali prompt photo.jpg "detect cat ; dog"   [dim]# boxes parsed as by pali detect[/dim]',
    ),
)
@run_options
def prompt(
    images: Images = None,
    text: Annotated[
        str,
        typer.Argument(
            metavar="PROMPT", help='A raw PaliGemma prompt, e.g. "describe en" or "segment cat".', show_default=False
        ),
    ] = "",
    seg_decoder: SegDecoder = None,
    *,
    opts: RunOptions,
) -> None:
    """Send a raw prompt (any task the model knows)."""
    from pali_cli.jobs import raw_job

    _check_order(images, text, "the prompt", 'pali prompt IMAGES... "PROMPT"', opts)
    _run(lambda: raw_job(text, seg_decoder), images, opts)


app.command("download", cls=PaliCommand, hidden=True, help="Same as 'pali presets download'.")(download_command)


@app.command(
    "completion",
    cls=PaliCommand,
    epilog=examples(
        "pali completion bash > ~/.local/share/bash-completion/completions/pali",
        "pali completion fish > ~/.config/fish/completions/pali.fish",
    ),
)
def completion(
    shell: Annotated[str, typer.Argument(metavar="bash|zsh|fish", help="The shell to complete in.")],
) -> None:
    """Print the shell completion script (see the README to install it)."""
    from pali_cli.completions import SHELLS, render

    if shell not in SHELLS:
        raise UsageProblem(f"no completion script for {shell!r}; choose one of {', '.join(SHELLS)}")
    sys.stdout.write(render(shell))


def main() -> None:
    """Console-script entry point (``pali``) and ``python -m pali_cli``."""
    app(prog_name="pali")
