"""Option parsing, usage errors, exit codes and environment defaults: everything that is settled
before a model is loaded (so none of these tests loads one)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pali_cli.app import app
from pali_cli.errors import UsageProblem
from pali_cli.options import RunOptions, Sampler

REPO = Path(__file__).resolve().parents[2]
COLOUR = re.compile(r"\x1b\[[0-9;]*3[0-7]m")  # a foreground colour escape


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("PALI_PRESET", "PALI_DEVICE", "NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None, input: str | None = None):
        return runner.invoke(app, list(args), env=env, input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def image(tmp_path) -> str:
    (tmp_path / "cat.jpg").write_bytes(b"only has to exist for these tests")
    return "cat.jpg"


def test_version_matches_pyproject(run):
    found = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert found is not None
    declared = found.group(1)
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"pali {declared}"


def test_help_lists_commands_examples_and_exit_codes(run):
    result = run("--help")
    assert result.exit_code == 0
    for word in ("caption", "ask", "detect", "ocr", "prompt", "presets", "completion", "Exit codes", "PALI_PRESET"):
        assert word in result.stdout
    listed = re.findall(r"^│ (\w+) ", result.stdout, re.M)
    assert "download" not in listed and "caption" in listed  # the alias of presets download is hidden


def test_help_and_presets_list_do_not_import_torch():
    code = (
        "import sys\n"
        "from pali_cli.app import main\n"
        "for argv in (['pali', '--help'], ['pali', 'caption', '--help'], ['pali', 'segment', '--help'],\n"
        "             ['pali', 'presets', 'list', '--json']):\n"
        "    sys.argv = argv\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (argv, e.code)\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().endswith("NO-TORCH")


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "pali_cli", "--version"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("pali ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["caption"], "no images given"),
        (["ask", "cat.jpg"], 'usage: pali ask IMAGES... "QUESTION"'),  # forgot the question
        (["ask", "cat.jpg", "   "], "the question is empty"),
        (["detect", "cat.jpg", " ; "], "no object names"),
        (["prompt", "cat.jpg", "\\n"], "the prompt is empty"),
        (["caption", "cat.jpg", "--lang", "en us"], "must be one word"),
        (["caption", "cat.jpg", "--overwrite"], "add -o FILE"),
        (["caption", "cat.jpg", "-o", "o.jsonl", "--overwrite", "--retry-failed"], "choose one"),
        (["caption", "cat.jpg", "--prefix", "x"], "add --sidecar"),
        (["caption", "cat.jpg", "--sampler", "greedy", "--temperature", "0.5"], "only apply to sampling"),
        (["caption", "cat.jpg", "--temperature", "0"], "greater than 0"),
        (["caption", "cat.jpg", "--top-p", "1.5"], "(0, 1]"),
        (["caption", "cat.jpg", "--sidecar", "--sidecar-ext", "txt"], "--sidecar-ext"),
        (["caption", "cat.jpg", "--preset", "pali_gemma2_mix_3b_22"], "did you mean 'pali_gemma2_mix_3b_224'"),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(run, image, args, message):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""


def test_click_level_usage_errors_also_exit_2(run, image):
    assert run("caption", image, "--bogus").exit_code == 2
    assert run("caption", image, "--sampler", "beam").exit_code == 2
    assert run("caption", image, "--batch-size", "0").exit_code == 2
    assert run("nonsense").exit_code == 2


def test_environment_defaults_are_read(run, image):
    result = run("caption", image, env={"PALI_PRESET": "no_such_model"})
    assert result.exit_code == 2 and "unknown preset 'no_such_model'" in result.stderr
    result = run("caption", image, env={"PALI_DEVICE": "tpu"})
    assert result.exit_code == 2 and "tpu" in result.stderr


def test_no_input_matched_exits_5(run, tmp_path):
    result = run("caption", "missing.jpg")
    assert result.exit_code == 5
    assert "no images found" in result.stderr and "missing.jpg" in result.stderr
    (tmp_path / "empty").mkdir()
    result = run("caption", "empty", "*.png", "-q")  # quiet still shows the fatal error
    assert result.exit_code == 5 and "'empty'" in result.stderr and "'*.png'" in result.stderr


def test_a_directory_with_images_only_in_subdirectories_suggests_recursive(run, tmp_path):
    (tmp_path / "album" / "2024").mkdir(parents=True)
    (tmp_path / "album" / "2024" / "a.jpg").write_bytes(b"x")
    result = run("caption", "album")
    assert result.exit_code == 5 and "--recursive" in result.stderr


def test_an_empty_files_from_list_is_no_input(run, tmp_path):
    result = run("caption", "--files-from", "-", input="\n\n")
    assert result.exit_code == 5 and "the list is empty" in result.stderr
    result = run("caption", "--files-from", "nope.txt")
    assert result.exit_code == 2 and "cannot read --files-from nope.txt" in result.stderr


def test_sidecar_collision_is_found_before_any_model_is_loaded(run, tmp_path):
    for name in ("a.jpg", "a.png"):
        (tmp_path / name).write_bytes(b"x")
    result = run("caption", ".", "--sidecar")
    assert result.exit_code == 2 and "would share the sidecar" in result.stderr


def test_colour_follows_force_color_and_no_color(run):
    coloured = run("caption", env={"FORCE_COLOR": "1"})
    plain = run("caption", env={"FORCE_COLOR": "1", "NO_COLOR": "1"})
    assert COLOUR.search(coloured.stderr)
    assert not COLOUR.search(plain.stderr) and "no images given" in plain.stderr


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, ("greedy", 1.0, 5, 0.1)),
        ({"top_p": 0.5}, ("top_p", 1.0, 5, 0.5)),
        ({"top_k": 7, "temperature": 0.7}, ("top_k", 0.7, 7, 0.1)),
        ({"temperature": 0.3}, ("random", 0.3, 5, 0.1)),
        ({"sampler": Sampler.top_k}, ("top_k", 1.0, 5, 0.1)),
    ],
)
def test_sampler_is_implied_by_the_options_given(kwargs, expected):
    config = RunOptions(**kwargs).sampler_config()
    assert (config.name, config.temperature, config.top_k, config.top_p) == expected


@pytest.mark.parametrize("sampler", list(Sampler))
def test_cli_sampler_defaults_are_the_apis(sampler):
    """`--sampler NAME` alone builds exactly the sampler that compile(sampler="NAME") builds."""
    from engine.samplers import get_sampler

    from_cli = get_sampler(RunOptions(sampler=sampler).sampler_config())
    assert from_cli == get_sampler(sampler.value)


def test_help_shows_the_engine_sampler_defaults(run):
    from engine.sampler_config import DEFAULT_TOP_K, DEFAULT_TOP_P

    text = " ".join(run("caption", "--help", env={"COLUMNS": "200"}).stdout.split())
    assert f"[default: {DEFAULT_TOP_K}]" in text and f"[default: {DEFAULT_TOP_P}]" in text


def test_run_options_validate_on_their_own():
    with pytest.raises(UsageProblem):
        RunOptions(retry_failed=True)
