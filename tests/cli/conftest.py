"""Fixtures shared by the CLI tests that run a model: the tiny random checkpoint and a runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pali_cli.app import app
from tests.helpers.checkpoints import TinySpec


@pytest.fixture(scope="module")
def tiny_ckpt(checkpoints) -> Path:
    return checkpoints.checkpoint(TinySpec())


@pytest.fixture
def photos_dir(tmp_path, monkeypatch) -> Path:
    """A working directory with photos/img1.png .. img3.png."""
    monkeypatch.chdir(tmp_path)
    for name in ("PALI_PRESET", "PALI_DEVICE", "NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "photos").mkdir()
    for i, colour in enumerate([(220, 20, 20), (20, 200, 20), (20, 20, 220)]):
        Image.new("RGB", (32 + 8 * i, 24 + 4 * i), colour).save(tmp_path / "photos" / f"img{i + 1}.png")
    return tmp_path


@pytest.fixture
def tiny_pali(tiny_ckpt):
    """``pali COMMAND --tiny-model-options ARGS...`` in process."""
    import torch

    threads = torch.get_num_threads()

    def invoke(command: str, *args: str, env: dict | None = None, input: str | bytes | None = None):
        defaults = ["--max-tokens", "4", "--device", "cpu", "--dtype", "float32", "--threads", "1"]
        defaults += ["--preset", str(tiny_ckpt)]
        return CliRunner().invoke(app, [command, *defaults, *args], env=env, input=input, catch_exceptions=False)

    yield invoke
    torch.set_num_threads(threads)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
