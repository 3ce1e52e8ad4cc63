"""Real processes and real signals: a killed batch loses nothing and duplicates nothing when rerun;
Ctrl-C stops after the current batch, keeps its records, says how to resume and exits 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pali_cli.app import app
from tests.helpers.checkpoints import TinySpec

REPO = Path(__file__).resolve().parents[2]
IMAGES = 48


@pytest.fixture
def job(tmp_path, checkpoints, monkeypatch):
    """A batch big and slow enough to interrupt, and the command line that runs it."""
    monkeypatch.chdir(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(IMAGES):
        Image.new("RGB", (24, 24), (i * 5, 255 - i * 5, 128)).save(photos / f"p{i:02d}.png")
    ckpt = checkpoints.checkpoint(TinySpec())
    args = [
        "caption",
        "photos",
        "-o",
        "out.jsonl",
        "--preset",
        str(ckpt),
        "--max-tokens",
        "48",
        "--threads",
        "1",
        "--device",
        "cpu",
    ]
    import torch

    threads = torch.get_num_threads()
    yield tmp_path, args
    torch.set_num_threads(threads)  # the in-process reruns set it for the whole session


def start(cwd: Path, args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "pali_cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_records(path: Path, proc: subprocess.Popen, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        if proc.poll() is not None:
            stderr = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"pali exited early ({proc.returncode}): {stderr}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no records appeared in time")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_sigkill_mid_batch_then_rerun_loses_and_duplicates_nothing(job):
    cwd, args = job
    out = cwd / "out.jsonl"
    proc = start(cwd, [*args, "--batch-size", "2"])
    wait_for_records(out, proc, 6)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed on the way out
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    survivors = out.read_text(encoding="utf-8")
    done_before = records(out)  # every line on disk is a whole record
    assert 6 <= len(done_before) < IMAGES
    # And as if the kill had landed in the middle of a write:
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"image": "photos/p47.png", "task": "capt')

    rerun = CliRunner().invoke(app, args, catch_exceptions=False)

    assert rerun.exit_code == 0, rerun.output
    assert "incomplete last record" in rerun.stderr
    final = records(out)
    assert out.read_text(encoding="utf-8").startswith(survivors)  # finished records kept as written
    images = [r["image"] for r in final]
    assert sorted(images) == sorted(f"photos/p{i:02d}.png" for i in range(IMAGES))  # none lost, none twice
    assert all(r["error"] is None for r in final)


def test_ctrl_c_finishes_the_current_batch_then_exits_130_with_a_resume_hint(job):
    cwd, args = job
    out = cwd / "out.jsonl"
    proc = start(cwd, [*args, "--batch-size", "4"])
    wait_for_records(out, proc, 4)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)

    assert proc.returncode == 130, stderr
    assert "stopping after the current batch" in stderr
    assert "run the same command again" in stderr
    kept = records(out)
    assert 4 <= len(kept) < IMAGES
    assert len(kept) % 4 == 0  # whole batches only: the interrupted one was finished and written

    rest = CliRunner().invoke(app, args, catch_exceptions=False)
    assert rest.exit_code == 0
    assert f"{len(kept)} of {IMAGES} images already recorded" in rest.stderr
    assert sorted(r["image"] for r in records(out)) == sorted(f"photos/p{i:02d}.png" for i in range(IMAGES))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_stop_like_ctrl_c_with_their_exit_codes(job, signum, code):
    cwd, args = job
    out = cwd / "out.jsonl"
    proc = start(cwd, [*args, "--batch-size", "4"])
    wait_for_records(out, proc, 4)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)

    assert proc.returncode == code, stderr
    assert f"send {signal.Signals(signum).name} again to stop at once" in stderr
    assert "Finished records are in out.jsonl; run the same command again" in stderr
    kept = records(out)
    assert 4 <= len(kept) < IMAGES and len(kept) % 4 == 0  # the batch under way was finished
    rest = CliRunner().invoke(app, args, catch_exceptions=False)
    assert rest.exit_code == 0
    assert sorted(r["image"] for r in records(out)) == sorted(f"photos/p{i:02d}.png" for i in range(IMAGES))
