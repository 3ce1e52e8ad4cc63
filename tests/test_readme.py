"""The README's install instructions: the two fresh-machine commands stay word for word, and the
CPU build of torch is shown for machines without a local wheel (issue 13, item 28)."""

from __future__ import annotations

from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")

DEMO = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . && "
    "python -m engine.demo.shapes --out shapes && pali caption shapes --preset pali-demo-shapes"
)
TESTS = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    'pip install -e ".[test]" && python -m pytest'
)


def code_lines(text: str) -> list[str]:
    """The lines of the README's fenced code blocks."""
    blocks = text.split("```")[1::2]
    return [line.strip() for block in blocks for line in block.splitlines()[1:]]


def test_the_two_fresh_machine_commands_are_word_for_word():
    lines = code_lines(README)
    assert DEMO in lines and TESTS in lines


def test_the_cpu_wheel_index_is_shown_for_ordinary_machines():
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in code_lines(README)
    setup = README.split("## Set up and run", 1)[1].split("## Tests", 1)[0]
    assert "local" in setup and "CUDA build" in setup  # why pip install torch==2.13.0 is CPU only here
