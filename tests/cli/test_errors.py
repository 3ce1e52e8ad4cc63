"""The one table from error kinds to exit codes, the CLI's hints, and the README's exit-code table."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

import engine.errors as engine_errors
from engine.errors import (
    AccessDeniedError,
    CheckpointError,
    DownloadInterruptedError,
    ImageLoadError,
    InputError,
    LocalModelError,
    ModelUnavailableError,
    OfflineError,
    PaliError,
    QuantizeError,
    TrainingError,
    UnknownPresetError,
)
from pali_cli.app import app
from pali_cli.errors import CliError, ExitCode, Interrupted, NoInput, UsageProblem, exit_code_for, hint_for

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.parametrize(
    "error, code",
    [
        (UnknownPresetError("x", []), ExitCode.USAGE),
        (InputError("bad argument"), ExitCode.USAGE),
        (ImageLoadError("cannot load image a.jpg"), ExitCode.USAGE),
        (UsageProblem("bad option"), ExitCode.USAGE),
        (OfflineError("not downloaded", label="p"), ExitCode.MODEL_UNAVAILABLE),
        (AccessDeniedError("gated"), ExitCode.MODEL_UNAVAILABLE),
        (LocalModelError("no such directory"), ExitCode.USAGE),  # a bad path, like a bad preset name
        (CheckpointError("bad tensor"), ExitCode.FAILURE),
        (QuantizeError("bad cache"), ExitCode.FAILURE),
        (TrainingError("loss is nan"), ExitCode.FAILURE),
        (CliError("cannot write out.jsonl"), ExitCode.FAILURE),
        (NoInput("no images found"), ExitCode.NO_INPUT),
        (Interrupted("stopped"), ExitCode.INTERRUPTED),
        (RuntimeError("a bug"), ExitCode.FAILURE),  # outside the table
    ],
)
def test_every_kind_has_its_exit_code(error, code):
    assert exit_code_for(error) is code


def test_every_engine_error_is_a_pali_error_and_keeps_its_builtin_base():
    classes = [getattr(engine_errors, name) for name in engine_errors.__all__]
    assert all(issubclass(cls, PaliError) for cls in classes)
    assert issubclass(InputError, ValueError) and issubclass(CheckpointError, ValueError)
    assert issubclass(ModelUnavailableError, RuntimeError)


def test_exit_codes_are_the_readme_table():
    table = README.read_text(encoding="utf-8").split("### Exit codes", 1)[1].split("###", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.*) \|$", table, flags=re.M))
    assert {int(code) for code in rows} == {int(code) for code in ExitCode}
    # The signal codes are the shell's 128 + signal number, and each row names its signal.
    for code, signum, words in (
        (ExitCode.HANGUP, signal.SIGHUP, "SIGHUP"),
        (ExitCode.INTERRUPTED, signal.SIGINT, "Ctrl-C"),
        (ExitCode.TERMINATED, signal.SIGTERM, "SIGTERM"),
    ):
        assert code == 128 + signum and words in rows[str(int(code))]
    assert "usage" in rows[str(int(ExitCode.USAGE))] and "unavailable" in rows[str(int(ExitCode.MODEL_UNAVAILABLE))]
    assert "left out" in rows[str(int(ExitCode.ITEMS_FAILED))]  # an unreadable directory exits 3 too


def test_exit_codes_in_the_help_are_the_table():
    from pali_cli.typer_classes import EXIT_CODES

    listed = {int(code) for code in re.findall(r"(?<![\d-])(\d+) (?=[a-z])", EXIT_CODES)}
    assert listed == {int(code) for code in ExitCode}


def test_hints_name_cli_commands_the_engine_does_not():
    unknown = UnknownPresetError("llama", [])
    assert "pali" not in str(unknown) and "`pali presets list`" in (hint_for(unknown) or "")
    for kind in (OfflineError, DownloadInterruptedError):
        error = kind("pali_gemma_3b_224 is not downloaded", label="pali_gemma_3b_224")
        assert "pali presets download pali_gemma_3b_224" in (hint_for(error) or "")
    assert hint_for(OfflineError("no label")) is None
    assert hint_for(UsageProblem("x", hint="try y")) == "try y"
    assert hint_for(CheckpointError("bad file")) is None


def test_errors_survive_pickling():
    import pickle

    for error in (UnknownPresetError("x", ["y"], " hint"), OfflineError("gone", label="p")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    assert pickle.loads(pickle.dumps(OfflineError("gone", label="p"))).label == "p"


def test_a_broken_checkpoint_exits_1_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")  # a good image: the model load is what fails
    result = CliRunner().invoke(app, ["caption", "img.png", "-p", "ckpt"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "config.json: invalid JSON" in result.stderr and "Traceback" not in result.output
