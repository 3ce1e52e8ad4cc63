"""Shell completion scripts: fresh in completions/, and they really complete in each shell."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.checkpoints.presets import list_presets
from pali_cli.app import app
from pali_cli.completions import FILENAMES, REPO_DIR, SHELLS, main, render

BASH = REPO_DIR / FILENAMES["bash"]
FISH = REPO_DIR / FILENAMES["fish"]
ZSH = REPO_DIR / FILENAMES["zsh"]


def test_checked_in_scripts_are_up_to_date():
    # If this fails: python -m pali_cli.completions (then commit completions/).
    for shell in SHELLS:
        assert (REPO_DIR / FILENAMES[shell]).read_text(encoding="utf-8") == render(shell), shell
    assert main(["--check"]) == 0


def test_check_reports_a_stale_script(tmp_path, capsys):
    assert main(["--dir", str(tmp_path)]) == 0
    (tmp_path / FILENAMES["fish"]).write_text("# edited by hand\n")
    assert main(["--check", "--dir", str(tmp_path)]) == 1
    assert "pali.fish" in capsys.readouterr().err


def test_completion_command_prints_the_script():
    result = CliRunner().invoke(app, ["completion", "bash"])
    assert result.exit_code == 0 and result.stdout == render("bash")
    bad = CliRunner().invoke(app, ["completion", "tcsh"])
    assert bad.exit_code == 2 and "bash, zsh, fish" in bad.stderr


def bash_complete(tmp_path: Path, *words: str) -> list[str]:
    """Runs the bash function the way readline would, for the last word in ``words``."""
    script = (
        f"source {BASH}\n"
        "compopt() { :; }\n"  # only valid inside a real completion; irrelevant to what is offered
        f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}\n"
        '_pali; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completes_commands_options_choices_presets_and_files(tmp_path):
    (tmp_path / "holiday.jpg").write_bytes(b"x")
    assert bash_complete(tmp_path, "pali", "cap") == ["caption"]
    assert bash_complete(tmp_path, "pali", "caption", "--samp") == ["--sampler"]
    assert bash_complete(tmp_path, "pali", "ask", "--sampler", "") == ["greedy", "top-k", "top-p", "random"]
    assert bash_complete(tmp_path, "pali", "caption", "-o", "out.jsonl", "--on-") == ["--on-existing"]
    assert bash_complete(tmp_path, "pali", "presets", "") == ["list", "download", "rm", "path"]
    assert bash_complete(tmp_path, "pali", "presets", "rm", "pali_gemma2_mix_3") == [
        "pali_gemma2_mix_3b_224",
        "pali_gemma2_mix_3b_448",
    ]
    assert bash_complete(tmp_path, "pali", "caption", "--preset", "pali_gemma2_pt_28b_8") == ["pali_gemma2_pt_28b_896"]
    assert bash_complete(tmp_path, "pali", "caption", "-o", "hol") == ["holiday.jpg"]
    assert bash_complete(tmp_path, "pali", "caption", "--lang", "") == []
    assert len(bash_complete(tmp_path, "pali", "caption", "-p", "")) == len(list_presets())


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_completes(tmp_path):
    (tmp_path / "holiday.jpg").write_bytes(b"x")

    def complete(line: str) -> list[str]:
        out = subprocess.run(
            ["fish", "--no-config", "-c", f"source {FISH}; complete -C {line!r}"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return [row.split("\t")[0] for row in out.stdout.splitlines()]

    assert complete("pali cap") == ["caption"]
    assert sorted(complete("pali detect --sampler ")) == ["greedy", "random", "top-k", "top-p"]
    assert sorted(complete("pali presets ")) == ["download", "list", "path", "rm"]
    assert complete("pali presets download pali_gemma2_mix_10b_4") == ["pali_gemma2_mix_10b_448"]
    assert "holiday.jpg" in complete("pali caption hol")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_script_parses_and_defines_the_completion_function(tmp_path):
    (tmp_path / "_pali").write_text(ZSH.read_text())
    script = (
        f"fpath=({tmp_path} $fpath); autoload -Uz compinit; compinit -u -d {tmp_path}/.zcompdump; "
        "autoload -Uz _pali; print $_comps[pali]"
    )
    out = subprocess.run(["zsh", "-f", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "_pali"
    assert subprocess.run(["zsh", "-n", str(ZSH)], capture_output=True).returncode == 0


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completes_file_names_with_spaces_as_one_word(tmp_path):
    (tmp_path / "my holiday.jpg").write_bytes(b"x")
    (tmp_path / "my notes dir").mkdir()
    assert sorted(bash_complete(tmp_path, "pali", "caption", "my")) == ["my holiday.jpg", "my notes dir"]
    assert bash_complete(tmp_path, "pali", "caption", "-o", "my h") == ["my holiday.jpg"]
    assert bash_complete(tmp_path, "pali", "caption", "--cache-dir", "my") == ["my notes dir"]
