"""A new user's first hour, settled before any model loads: what a missing or swapped argument
says, one error style, exit codes that follow the README's table, help that shows what to type,
the progress bar on odd terminals, warnings under -q. (None of these tests loads a model.)"""

from __future__ import annotations

import io
import re

import pytest
from typer.testing import CliRunner

from pali_cli.app import app


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("PALI_PRESET", "PALI_DEVICE", "NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)

    def invoke(*args: str, env: dict | None = None, input: str | None = None):
        return CliRunner().invoke(app, list(args), env=env, input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def image(tmp_path) -> str:
    (tmp_path / "cat.jpg").write_bytes(b"only has to exist for these tests")
    return "cat.jpg"


# ----------------------------------------------------------------------------- item 18: missing and swapped arguments


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", "cat.jpg"], 'the question is missing; usage: pali ask IMAGES... "QUESTION"'),
        (["detect", "cat.jpg"], "what to find is missing"),
        (["prompt", "cat.jpg"], "the prompt is missing"),
        (["ask", "what is this?", "cat.jpg"], "'cat.jpg' looks like an image and 'what is this?' like the question"),
        (["detect", "dog", "cat.jpg"], "the images come first"),
    ],
)
def test_a_missing_or_swapped_argument_says_what_is_wrong(run, image, args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "no images given" not in result.stderr


# ----------------------------------------------------------------------------- item 19: exit codes


def test_removing_the_bundled_preset_is_a_usage_error(run):
    result = run("presets", "rm", "pali-demo-shapes")
    assert result.exit_code == 2, result.output
    assert "ships inside the pali package" in result.stderr


def test_a_preset_directory_that_does_not_exist_is_a_usage_error_like_a_bad_name(run, image):
    missing = run("caption", image, "-p", "owner/repo")
    nonsense = run("caption", image, "-p", "nonsense")
    assert missing.exit_code == nonsense.exit_code == 2, (missing.output, nonsense.output)
    assert "hf://owner/repo" in missing.stderr  # and it says how to name a Hub repository


# ----------------------------------------------------------------------------- item 20: PALI_PRESET


def test_a_bad_preset_from_the_environment_names_the_variable(run, image):
    result = run("caption", image, env={"PALI_PRESET": "typo"})
    assert result.exit_code == 2
    assert "PALI_PRESET=typo" in result.stderr and "unknown preset 'typo'" in result.stderr
    direct = run("caption", image, "-p", "typo")
    assert direct.exit_code == 2 and "PALI_PRESET" not in direct.stderr


# ----------------------------------------------------------------------------- item 25: one error style


@pytest.mark.parametrize(
    "args, message",
    [
        (["caption", "cat.jpg", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["caption", "cat.jpg", "--threads", "0"], "--threads must be at least 1, got 0"),
        (["caption", "cat.jpg", "--max-tokens", "0"], "--max-tokens must be at least 1, got 0"),
        (["caption", "cat.jpg", "--bogus"], "no such option: --bogus"),
        (["caption", "cat.jpg", "--device", "tpu"], "'tpu' is not one of"),
        (["caption", "cat.jpg", "--batch-size", "many"], "'--batch-size' / '-b': it must be a whole number"),
        (["completion"], "missing argument"),
    ],
)
def test_every_usage_error_is_one_pali_line_naming_the_option(run, image, args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith("pali: error: ") and message in lines[0], result.stderr
    assert len(lines) <= 2  # the error, and at most a hint
    assert "╭" not in result.stderr and "Input should be" not in result.stderr


# ----------------------------------------------------------------------------- item 27: one sampler rule


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--sampler", "top-k", "--top-p", "0.5"],
            "--top-p is not used by --sampler top-k; drop it, or use --sampler top-p",
        ),
        (["--sampler", "top-p", "--top-k", "3"], "--top-k is not used by --sampler top-p"),
        (["--sampler", "random", "--top-k", "3"], "--top-k is not used by --sampler random"),
        (["--top-k", "3", "--top-p", "0.5"], "--top-k and --top-p pick different samplers"),
        (["--sampler", "greedy", "--temperature", "0.5"], "only apply to sampling"),
    ],
)
def test_a_sampling_option_the_sampler_does_not_read_is_an_error(run, image, args, message):
    result = run("caption", image, *args)
    assert result.exit_code == 2 and message in result.stderr, result.output


# ----------------------------------------------------------------------------- item 26: help


@pytest.mark.parametrize(
    "command",
    [
        ["caption"],
        ["ask"],
        ["detect"],
        ["segment"],
        ["ocr"],
        ["prompt"],
        ["completion"],
        ["presets", "list"],
        ["presets", "download"],
        ["presets", "rm"],
        ["presets", "path"],
        ["presets"],
    ],
)
def test_help_shows_what_to_type_and_ends_with_examples(run, command):
    result = run(*command, "--help", env={"COLUMNS": "160"})
    assert result.exit_code == 0
    text = result.stdout
    for placeholder in ("<bool>", "<list[str]>", "<str>", "<int", "<float>", "[[", "x>=1", "the default preset"):
        assert placeholder not in text, (command, placeholder)
    tail = text[text.index("Examples:") :]
    assert len(re.findall(r"^\s+pali ", tail, re.M)) >= 2 or "curl" in tail
    assert "Exit codes" in tail


def test_help_names_the_default_preset_and_the_completion_shells(run):
    from engine.checkpoints.presets import DEFAULT_PRESET

    caption = " ".join(run("caption", "--help", env={"COLUMNS": "200"}).stdout.split())
    assert f"[default: {DEFAULT_PRESET}]" in caption
    assert "bash|zsh|fish" in run("completion", "--help").stdout


# ----------------------------------------------------------------------------- item 27: the progress bar


def render_bar(width: int, no_color: bool, completed: int = 0) -> list[str]:
    from rich.console import Console
    from rich.progress import Progress

    from pali_cli.console import progress_columns

    buffer = io.StringIO()
    console = Console(
        file=buffer, force_terminal=True, width=width, no_color=no_color, color_system=None if no_color else "standard"
    )
    progress = Progress(*progress_columns(console), console=console, auto_refresh=False)
    progress.add_task("caption (3 failed)", total=1000, completed=completed)
    console.print(progress.make_tasks_table(progress.tasks))
    return re.sub(r"\x1b\[[0-9;]*m", "", buffer.getvalue()).splitlines()


def test_without_colour_the_bar_is_still_drawn():
    [empty] = render_bar(120, no_color=True)
    [part] = render_bar(120, no_color=True, completed=400)
    assert "─" in empty and "━" in part and "─" in part  # to-do and done look different without colour


@pytest.mark.parametrize("width", [40, 50, 70, 100, 160])
def test_the_bar_fits_a_narrow_terminal_on_one_line(width):
    lines = render_bar(width, no_color=False, completed=400)
    assert len(lines) == 1 and len(lines[0]) <= width and "…" not in lines[0], lines
    assert "400/1000" in lines[0]


# ----------------------------------------------------------------------------- item 27: wording


def test_skipping_one_image_with_a_sidecar_agrees_in_number(tmp_path, monkeypatch):
    from pathlib import Path

    from pali_cli.console import Reporter
    from pali_cli.jobs import caption_job
    from pali_cli.options import RunOptions
    from pali_cli.plan import plan
    from pali_cli.sidecar import SidecarSpec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.txt").write_text("done")
    said: list[str] = []
    reporter = Reporter()
    monkeypatch.setattr(reporter, "info", said.append)
    todo, _ = plan(
        [Path("a.png"), Path("b.png")], caption_job("en"), "p", None, SidecarSpec(), RunOptions(sidecar=True), reporter
    )
    assert todo == [Path("b.png")]
    assert said == ["Skipping 1 image that already has a .txt sidecar."]


# ----------------------------------------------------------------------------- item 23: -q and Python warnings


def test_python_warnings_are_one_pali_line_and_nothing_under_quiet(capsys):
    import warnings

    from pali_cli.console import Reporter

    with Reporter(quiet=False).python_warnings():
        warnings.warn("could not cache quantized weights at /x (No space left)", stacklevel=1)
    err = capsys.readouterr().err
    assert err.strip() == "pali: warning: could not cache quantized weights at /x (No space left)"
    with Reporter(quiet=True).python_warnings():
        warnings.warn("not shown", stacklevel=1)
    assert capsys.readouterr().err == ""
