"""``--ray`` without a Ray runtime: options, the missing extra, the worker class run directly, the
record transport, deduplication, stopping on a signal and errors raised on workers.

The runs on a real Ray runtime are in test_ray.py (they need a private network namespace).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine import ModelNotFoundError, PaliError
from engine.demo.shapes import write_samples
from pali_cli.app import app
from pali_cli.errors import CliError, ExitCode, exit_code_for, hint_for
from pali_cli.jobs import detect_job
from pali_cli.options import RunOptions
from pali_cli.ray_worker import (
    IMAGE,
    PATH,
    RECORD,
    PaliWorker,
    WorkerFailure,
    WorkerSpec,
    find_worker_failure,
    record_from_json,
    record_to_json,
    rows_for,
    worker_options,
)
from pali_cli.records import Record
from pali_cli.scale_out import StopSignals, _as_pali_error, _stream, check_address, unique

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2"], "--workers only apply to Ray workers; add --ray local"),
        (["--worker-cpus", "2", "--worker-gpus", "1"], "--worker-cpus, --worker-gpus only apply"),
        (["--ray", " "], "--ray needs 'local' or a cluster address"),
        (["--ray", "local", "--workers", "0"], "--workers must be at least 1"),
        (["--ray", "local", "--worker-cpus", "0"], "--worker-cpus must be greater than 0"),
        (["--ray", "local", "--worker-gpus", "-1"], "--worker-gpus must be 0 or more"),
    ],
)
def test_ray_options_are_checked_before_anything_runs(tmp_path, args, message):
    result = invoke("caption", str(tmp_path / "x.png"), *args)
    assert result.exit_code == ExitCode.USAGE
    assert message in result.stderr


def test_ray_without_the_extra_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray looks like to import
    image = tmp_path / "x.png"
    image.write_bytes(b"not read")
    result = invoke("caption", str(image), "--ray", "local", "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == ExitCode.USAGE
    assert 'pip install "pali[ray]"' in result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_help_shows_the_ray_options_and_never_imports_ray():
    code = (
        "import sys\n"
        "from pali_cli.app import main\n"
        "for argv in (['pali', '--help'], ['pali', 'caption', '--help']):\n"
        "    sys.argv = argv\n"
        "    try:\n"
        "        main()\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (argv, e.code)\n"
        "print('RAY' if 'ray' in sys.modules else 'NO-RAY', file=sys.stderr)\n"
    )
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip().endswith("NO-RAY")
    for option in ("--ray", "--workers", "--worker-cpus", "--worker-gpus"):
        assert option in out.stdout


def test_an_address_where_nothing_listens_fails_at_once():
    with socket.socket() as probe:  # a port that was free a moment ago, on loopback only
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(PaliError, match=f"cannot connect to Ray at 127.0.0.1:{port}"):
        check_address(f"127.0.0.1:{port}")
    for not_checked in ("local", "auto", "ray://127.0.0.1:1"):
        check_address(not_checked)  # no host:port to probe: Ray finds or reports those itself


# ----------------------------------------------------------------------------- the worker class


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_samples(root / "photos", seed=7070, count=4, size=112)
    (root / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_the_worker_makes_the_records_a_local_run_writes(shapes, monkeypatch):
    """PaliWorker called as Ray would call it (rows in, JSON records out), against the same
    command run locally: identical records for good, broken and missing images, with the path as
    typed in each (the worker opens the absolute path)."""
    monkeypatch.chdir(shapes)
    local = shapes / "local.jsonl"
    result = invoke("detect", "photos", "photos/gone.png", "circle", "-p", "pali-demo-shapes", "-o", str(local))
    assert result.exit_code == ExitCode.ITEMS_FAILED, result.stderr
    expected = [json.loads(line) for line in local.read_text(encoding="utf-8").splitlines()]

    paths = [Path(r["image"]) for r in expected]
    rows = rows_for(paths, Path.cwd())
    assert all(Path(os.fsdecode(row[PATH])).is_absolute() for row in rows)
    opts = RunOptions(preset="pali-demo-shapes", batch_size=2)
    job = detect_job("circle")
    worker = PaliWorker(WorkerSpec(job, "pali-demo-shapes", worker_options(opts, 1.0), job.max_tokens))
    monkeypatch.chdir("/")  # a worker's working directory is not the driver's
    texts = []
    for start in range(0, len(rows), 2):
        batch = {IMAGE: [r[IMAGE] for r in rows[start : start + 2]], PATH: [r[PATH] for r in rows[start : start + 2]]}
        texts += worker(batch)[RECORD]
    monkeypatch.chdir(shapes)  # the driver writes the records (and resolves their paths) where it runs
    got = [record_from_json(text).to_dict() for text in texts]

    def comparable(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert comparable(got) == comparable(expected)
    assert any(r.get("detections") for r in got)  # the extras of the job made it through
    assert [r["error"] is None for r in got].count(False) == 2  # broken.png and gone.png
    assert "photos/broken.png" in next(r["error"] for r in got if r["image"] == "photos/broken.png")


def test_records_cross_as_json_and_come_back_equal():
    odd = "photos/caf\udce9.png"  # a name that is not UTF-8, as os.fsdecode gives it
    record = Record(odd, "detect", "detect cat", "p", text="x", tokens=2, finish_reason="stop", seconds=0.1234)
    record.extra["detections"] = [{"label": "cat", "box": [1.0, 2.0, 3.0, 4.0]}]
    text = record_to_json(record)
    assert text.isascii()  # Arrow strings must be UTF-8; escaped JSON always is
    back = record_from_json(text)
    assert back.to_dict() == record.to_dict() and back.key == record.key
    assert rows_for([Path(odd)], Path("/d"))[0][IMAGE] == os.fsencode(odd)


def test_a_record_seen_twice_is_handed_on_once():
    a = Record("a.png", "caption", "caption en", "p", text="one")
    b = Record("b.png", "caption", "caption en", "p", text="two")
    again = Record("a.png", "caption", "caption en", "p", text="one, from a retried batch")
    assert [r.text for r in unique([a, b, again, b])] == ["one", "two"]


# ----------------------------------------------------------------------------- stopping and errors


class SlowRows:
    """A stand-in for a dataset whose workers take their time; records whether it was closed."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows
        self.closed = False

    def iter_rows(self):
        try:
            for row in self.rows:
                time.sleep(0.3)
                yield row
            time.sleep(60)  # a batch that never comes: only the signal can end the wait
        finally:
            self.closed = True


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_breaks_the_wait_for_workers_and_closes_the_dataset(signum):
    rows = [{RECORD: record_to_json(Record(f"{i}.png", "caption", "caption en", "p", text="t"))} for i in range(3)]
    dataset = SlowRows(rows)
    warned = []
    got = []
    start = time.monotonic()
    with StopSignals(lambda: warned.append(True)) as stop:
        threading.Timer(1.5, os.kill, (os.getpid(), signum)).start()
        for record in _stream(dataset, stop):
            got.append(record.image)
    assert got == ["0.png", "1.png", "2.png"]  # everything that came before the signal
    assert stop.signum == signum and warned == [True]
    assert dataset.closed
    assert time.monotonic() - start < 30  # not the 60 s wait
    assert signal.getsignal(signum) is not stop._handle  # handlers restored


def test_an_error_raised_on_a_worker_reads_as_it_would_locally():
    original = ModelNotFoundError("model owner/x is not available: 404", label="hf://owner/x")
    try:
        raise WorkerFailure.of(original)
    except WorkerFailure as e:
        traceback_text = f"Traceback (most recent call last):\n  ...\npali_cli.ray_worker.WorkerFailure: {e}\n"

    class ActorDied(Exception):  # Ray gives only the text of the worker's traceback
        pass

    found = find_worker_failure(traceback_text)
    assert type(found) is ModelNotFoundError and exit_code_for(found) == ExitCode.MODEL_UNAVAILABLE
    assert (str(found), found.label) == (str(original), original.label)
    try:
        try:
            raise ActorDied("The actor died because of an error raised in its creation task, " + traceback_text)
        except ActorDied as inner:
            raise RuntimeError("Dataset execution failed") from inner
    except RuntimeError as outer:
        mapped = _as_pali_error(outer)
    assert str(mapped) == str(original) and exit_code_for(mapped) == ExitCode.MODEL_UNAVAILABLE
    assert "This happened on a Ray worker" in (hint_for(mapped) or "")
    cli = find_worker_failure(str(WorkerFailure.of(CliError("no such thing", hint="Do this."))))
    assert isinstance(cli, CliError) and (cli.message, cli.hint) == ("no such thing", "Do this.")
    other = _as_pali_error(RuntimeError("raylet died\nmore"))
    assert str(other) == "the Ray run failed: RuntimeError: raylet died" and exit_code_for(other) == ExitCode.FAILURE
