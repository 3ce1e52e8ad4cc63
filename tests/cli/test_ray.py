"""``--ray`` on real Ray runtimes: 2 workers, the bundled demo model, images of the shapes task.

Same records as a local run; a rerun adds nothing; Ctrl-C or SIGTERM mid-run then a rerun, and a
worker killed mid-run, each end with every image recorded exactly once; a model the workers
cannot load fails with the message of a local run; no Ray process outlives its run.

These tests need the ray extra and a private network namespace with only loopback up (Ray
contacts outside addresses when it starts; tests never may). Elsewhere they are skipped, visibly;
with PALI_REQUIRE_RAY_TESTS=1 (set by .ci/run) they fail instead, so a broken setup cannot pass
as skipped::

    pip install -e ".[ray]"
    unshare --net sh -c 'ip link set lo up && exec "$@"' sh python -m pytest -m ray

One cluster (``ray start``) serves most tests; ``--ray local`` starts its own runtime per test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from engine.demo.shapes import write_samples
from pali_cli.app import app
from tests.helpers.ray_runtime import (
    RayRoot,
    command_line,
    kill_processes_of,
    processes_of,
    start_cluster,
    wait_until_gone,
    why_ray_tests_cannot_run,
)

pytestmark = pytest.mark.ray
PRESET = ["-p", "pali-demo-shapes"]
CLUSTER_CPUS = 2  # what this machine has: 2 workers of 1 CPU take all of it (measured: the pipeline still moves)


def require_ray_setup() -> None:
    reason = why_ray_tests_cannot_run()
    if reason is None:
        return
    if os.environ.get("PALI_REQUIRE_RAY_TESTS"):
        pytest.fail(f"Ray tests required but cannot run: {reason}")
    pytest.skip(f"Ray tests: {reason}")


@pytest.fixture(autouse=True)
def _ray_ready():
    require_ray_setup()


@pytest.fixture(scope="module")
def cluster():
    """One head node for the module; all its processes are killed at the end, whatever happened."""
    require_ray_setup()
    root = RayRoot.create()
    try:
        address = start_cluster(root, CLUSTER_CPUS)
        yield root, address
    finally:
        root.remove()


@pytest.fixture
def local_root():
    """Home and temp dir for one ``--ray local`` run; what it leaves running is killed after."""
    root = RayRoot.create()
    yield root
    root.remove()


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def shapes(workdir: Path, count: int, seed: int) -> list[str]:
    """``count`` demo images in photos/ (python -m engine.demo.shapes), as a run records them."""
    write_samples(workdir / "photos", seed=seed, count=count, size=112)
    return sorted(f"photos/{p.name}" for p in (workdir / "photos").glob("*.png"))


def start(cwd: Path, env: dict[str, str], args: list[str], new_session: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pali_cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"pali --ray did not finish in {timeout} s: {stderr[-3000:]}")
    return proc.returncode, stderr


def run(cwd: Path, env: dict[str, str], args: list[str]) -> tuple[int, str]:
    return finish(start(cwd, env, args))


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_for_records(path: Path, proc: subprocess.Popen, count: int, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_bytes().count(b"\n") if path.exists() else 0
        if lines >= count:
            return lines
        if proc.poll() is not None:
            pytest.fail(f"pali exited early ({proc.returncode}): {proc.stderr.read()[-3000:] if proc.stderr else ''}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{count} records did not appear in {timeout} s")


def exactly_once(path: Path, images: list[str]) -> None:
    counts = Counter(r["image"] for r in records(path))
    assert sorted(counts) == images, "some images are missing or unexpected"
    assert max(counts.values()) == 1, f"duplicates: {[i for i, n in counts.items() if n > 1]}"


# ----------------------------------------------------------------------------- --ray local


def test_ray_local_writes_the_records_of_a_local_run(workdir, local_root):
    images = shapes(workdir, count=10, seed=5151)
    (workdir / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but not an image")
    args = ["detect", "photos", "photos/gone.png", "circle", *PRESET, "-b", "2"]
    here = CliRunner().invoke(app, [*args, "-o", "local.jsonl", "--draw", "drawn-local"], catch_exceptions=False)
    assert here.exit_code == 3, here.stderr  # broken.png and gone.png fail, the rest is done

    ray_args = [*args, "-o", "ray.jsonl", "--ray", "local", "--workers", "2", "--draw", "drawn-ray"]
    code, stderr = run(workdir, local_root.env(), ray_args)
    assert code == 3, stderr
    assert "Starting a local Ray runtime" in stderr and "Done: 12 images" in stderr

    def by_image(path):
        return {r["image"]: {k: v for k, v in r.items() if k != "seconds"} for r in records(path)}

    assert by_image(workdir / "ray.jsonl") == by_image(workdir / "local.jsonl")
    exactly_once(workdir / "ray.jsonl", sorted([*images, "photos/broken.png", "photos/gone.png"]))
    drawn = sorted(p.name for p in (workdir / "drawn-local").iterdir())
    assert drawn and drawn == sorted(p.name for p in (workdir / "drawn-ray").iterdir())  # --draw on the driver
    for name in drawn:
        local_png, ray_png = (Image.open(workdir / d / name) for d in ("drawn-local", "drawn-ray"))
        assert local_png.tobytes() == ray_png.tobytes(), name
    assert wait_until_gone(local_root.tmp) == []  # the runtime it started is gone with it

    before = (workdir / "ray.jsonl").read_bytes()
    code, stderr = run(workdir, local_root.env(), ray_args)
    assert code == 3 and "Nothing to do" in stderr, stderr
    assert (workdir / "ray.jsonl").read_bytes() == before  # a rerun adds nothing


def test_ctrl_c_in_a_terminal_stops_a_local_run_and_a_rerun_completes_it(workdir, local_root, cluster):
    """Ctrl-C in a terminal signals the whole process group: the driver and the local runtime's
    own processes alike."""
    images = shapes(workdir, count=24, seed=5252)
    args = ["caption", "photos", *PRESET, "-b", "2", "-o", "out.jsonl", "--workers", "2"]
    proc = start(workdir, local_root.env(), [*args, "--ray", "local"], new_session=True)
    wait_for_records(workdir / "out.jsonl", proc, 4)
    os.killpg(proc.pid, signal.SIGINT)
    code, stderr = finish(proc, timeout=120)

    assert code == 130, stderr
    assert "stopping" in stderr and "run the same command again" in stderr
    kept = records(workdir / "out.jsonl")
    assert 4 <= len(kept) < len(images)
    assert len({r["image"] for r in kept}) == len(kept)
    assert wait_until_gone(local_root.tmp) == []

    root, address = cluster  # the rerun on the shared cluster: same -o file, same resume
    code, stderr = run(workdir, root.env(), [*args, "--ray", address])
    assert code == 0, stderr
    assert f"{len(kept)} of {len(images)} images already recorded" in stderr
    exactly_once(workdir / "out.jsonl", images)


# ----------------------------------------------------------------------------- a cluster


def test_sigterm_stops_the_driver_with_143_and_a_rerun_completes_it(workdir, cluster):
    root, address = cluster
    images = shapes(workdir, count=24, seed=5353)
    args = ["caption", "photos", *PRESET, "-b", "2", "-o", "out.jsonl", "--ray", address, "--workers", "2"]
    proc = start(workdir, root.env(), args)
    wait_for_records(workdir / "out.jsonl", proc, 4)
    proc.send_signal(signal.SIGTERM)
    code, stderr = finish(proc, timeout=120)

    assert code == 143, stderr
    assert "run the same command again" in stderr
    kept = records(workdir / "out.jsonl")
    assert 4 <= len(kept) < len(images) and len({r["image"] for r in kept}) == len(kept)

    code, stderr = run(workdir, root.env(), args)
    assert code == 0, stderr
    exactly_once(workdir / "out.jsonl", images)


def test_a_worker_killed_mid_run_is_replaced_and_nothing_is_lost_or_doubled(workdir, cluster):
    root, address = cluster
    images = shapes(workdir, count=24, seed=5454)
    args = ["caption", "photos", *PRESET, "-b", "2", "-o", "out.jsonl", "--ray", address, "--workers", "2"]
    proc = start(workdir, root.env(), args)
    done = wait_for_records(workdir / "out.jsonl", proc, 4)
    actors = [pid for pid in processes_of(root.tmp) if command_line(pid).startswith("ray::MapWorker")]
    assert actors, "no worker process found"
    os.kill(actors[0], signal.SIGKILL)
    assert done < len(images) and proc.poll() is None  # the kill landed mid-run

    code, stderr = finish(proc)
    assert code == 0, stderr
    exactly_once(workdir / "out.jsonl", images)
    assert all(r["error"] is None for r in records(workdir / "out.jsonl"))


def test_a_model_the_workers_cannot_load_fails_as_it_does_locally(workdir, cluster):
    root, address = cluster
    shapes(workdir, count=2, seed=5555)
    # config.json is there (so the driver's checks before any work pass) but is no JSON: only
    # loading the model, on the workers, finds that.
    (workdir / "broken").mkdir()
    (workdir / "broken" / "config.json").write_text("{not json")
    args = ["caption", "photos", "-p", str(workdir / "broken"), "-o", "out.jsonl"]
    here = CliRunner().invoke(app, args, catch_exceptions=False)
    local_error = next(line for line in here.stderr.splitlines() if line.startswith("pali: error:"))

    code, stderr = run(workdir, root.env(), [*args, "--ray", address, "--workers", "2"])
    assert code == here.exit_code and code != 0, stderr  # the local exit code, whichever it is
    assert local_error in stderr.splitlines()
    assert "on a Ray worker" in stderr
    assert not (workdir / "out.jsonl").exists() or records(workdir / "out.jsonl") == []


def test_a_path_that_is_no_checkpoint_is_refused_before_any_worker_starts(workdir, cluster):
    """Issue 13 (items 19, 21): checked on the driver first, a usage error as in a local run."""
    root, address = cluster
    shapes(workdir, count=2, seed=5555)
    (workdir / "empty").mkdir()
    args = ["caption", "photos", "-p", str(workdir / "empty"), "-o", "out.jsonl"]
    code, stderr = run(workdir, root.env(), [*args, "--ray", address, "--workers", "2"])
    assert code == 2, stderr
    assert "empty has no config.json" in stderr and "on a Ray worker" not in stderr
    assert not (workdir / "out.jsonl").exists()


def test_no_process_of_the_cluster_outlives_it(cluster):
    """Teardown safety itself: the helper finds the runtime's processes and kills them all."""
    root, _ = cluster
    assert processes_of(root.tmp), "the cluster's processes should be visible by their RAY_TMPDIR"
    probe = RayRoot.create()
    try:
        sleeper = subprocess.Popen(["sleep", "600"], env=probe.env())
        # Popen returns once the exec has begun; the kernel sets up the new /proc/PID/environ a
        # moment later, so an immediate read can find it empty (seen once in CI).
        deadline = time.monotonic() + 5
        while processes_of(probe.tmp) != [sleeper.pid] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert processes_of(probe.tmp) == [sleeper.pid]
        kill_processes_of(probe.tmp)
        assert sleeper.wait(timeout=10) == -signal.SIGKILL
    finally:
        probe.remove()
