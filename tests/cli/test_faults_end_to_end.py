"""Issue 13's "done when": a run over many images with 5% broken files, killed with SIGKILL in the
middle, then stopped by a full disk in the middle, then run again, ends with every good image
recorded exactly once and every broken one named in its error record.

Real processes (``python -m pali_cli``) with the tiny random checkpoint: the kill is a real
SIGKILL; the full disk is the kernel's answer ENOSPC, injected into the child's ``os.write`` on the
results file only (a small tmpfs needs root), after the first half of a record got written, as a
filling disk does. The 1,000-image run is marked slow; a smaller one runs by default.
"""

from __future__ import annotations

import io
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

# The child's os.write, as on a disk that fills up after `PALI_TEST_ROOM` records of out.jsonl: the
# next write gets half its bytes on disk, the one after (and every later one) ENOSPC.
FULL_DISK = """
import errno, os, sys
room = int(os.environ["PALI_TEST_ROOM"])
real_write = os.write
state = {"writes": 0, "full": False}

def write(fd, data):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = ""
    if not target.endswith("/out.jsonl"):
        return real_write(fd, data)
    if state["full"]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    state["writes"] += 1
    if state["writes"] > room:
        state["full"] = True
        return real_write(fd, bytes(data)[: max(1, len(data) // 2)])
    return real_write(fd, data)

os.write = write
from pali_cli.app import main
sys.argv = ["pali", *sys.argv[1:]]
main()
"""


def broken_bytes(i: int) -> bytes:
    """Four kinds of broken file: text, a cut PNG, an empty file, a JPEG header and nothing else."""
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(good, format="PNG")
    return [b"not an image at all", good.getvalue()[:40], b"", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"][i % 4]


def make_photos(root: Path, count: int) -> tuple[set[str], set[str]]:
    """``count`` tiny images in root/photos, every 20th broken (5%); returns (good, broken) names."""
    photos = root / "photos"
    photos.mkdir()
    good, broken = set(), set()
    for i in range(count):
        name = f"photos/p{i:04d}.png"
        if i % 20 == 7:
            (root / name).write_bytes(broken_bytes(i // 20))
            broken.add(name)
        else:
            Image.new("RGB", (8, 8), (i % 256, (i * 7) % 256, (i * 13) % 256)).save(root / name)
            good.add(name)
    return good, broken


def child(cwd: Path, args: list[str], prelude: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *prelude, *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lines_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def cli_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the in-process rerun sets it for the whole session


@pytest.mark.parametrize("count", [pytest.param(1000, marks=pytest.mark.slow), 200])
def test_broken_files_a_sigkill_and_a_full_disk_lose_nothing_and_duplicate_nothing(
    tmp_path, checkpoints, monkeypatch, cli_threads, count
):
    monkeypatch.chdir(tmp_path)
    good, broken = make_photos(tmp_path, count)
    assert len(broken) == count // 20
    out = tmp_path / "out.jsonl"
    args = ["caption", "photos", "-o", "out.jsonl", "-p", str(checkpoints.checkpoint(TinySpec()))]
    args += ["--max-tokens", "2", "--threads", "1", "--device", "cpu", "-b", "16"]

    # 1. SIGKILL once a quarter of the images is recorded.
    proc = child(tmp_path, args, ["-m", "pali_cli"])
    deadline = time.monotonic() + 300
    while lines_in(out) < count // 4:
        assert proc.poll() is None, f"the run ended before it was killed: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no records appeared in time"
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = len(records(out))  # every line on disk is a whole record
    assert count // 4 <= killed_at < count
    with open(out, "a", encoding="utf-8") as f:  # as if the kill had landed inside a write
        f.write('{"image": "photos/p9999.png", "task": "capt')

    # 2. The disk fills up after another quarter.
    proc = child(tmp_path, args, ["-c", FULL_DISK], env={"PALI_TEST_ROOM": str(count // 4)})
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-2000:]
    [error] = [line for line in stderr.splitlines() if line.startswith("pali: error")]
    assert "cannot write out.jsonl: the disk is full" in error, stderr[-2000:]
    assert "report" not in stderr and "Traceback" not in stderr
    assert "incomplete last record" in stderr  # the torn line of the killed run was repaired
    assert out.read_bytes().endswith(b"\n")  # the half-written record was taken back
    assert len(records(out)) == killed_at + count // 4

    # 3. The same command again (disk freed) does the rest.
    rest = CliRunner().invoke(app, args, catch_exceptions=False)
    assert rest.exit_code == 3, rest.output  # the broken files' error records are kept
    assert f"{killed_at + count // 4} of {count} images already recorded" in rest.stderr

    final = records(out)
    images = [r["image"] for r in final]
    assert len(images) == len(set(images)) == count  # every image exactly once
    assert {r["image"] for r in final if r["error"] is None} == good
    failed = {r["image"]: r["error"] for r in final if r["error"] is not None}
    assert set(failed) == broken
    assert all(name in message for name, message in failed.items())  # each error names its file
