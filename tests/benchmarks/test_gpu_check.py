"""benchmarks/gpu_check.sh, the prepared GPU check, on a machine without a GPU: it refuses to
pretend (no CUDA: exit 2, naming --dry-run), and its --dry-run runs every step on the CPU with a
tiny checkpoint, writing the one report file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(args: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "PALI_BENCH_CACHE": str(tmp_path / "bench")}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real check would start")
def test_without_cuda_it_stops_and_names_the_dry_run(tmp_path):
    out = tmp_path / "report.md"
    proc = _run(["--out", str(out)], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "CUDA is not available" in proc.stderr and "--dry-run" in proc.stderr
    assert not out.exists()  # nothing measured, nothing written


@pytest.mark.slow  # builds a tiny checkpoint and runs six benchmark processes (~1 minute on 2 cores)
def test_dry_run_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "report.md"
    proc = _run(["--dry-run", "--out", str(out), "--root", str(tmp_path / "root")], tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = out.read_text()
    for title in ("## Machine", "## Parity on the device (fp32, bf16)", "## Checkpoint", "ours against transformers"):
        assert title in report, report
    assert "passed" in report.split("## Parity", 1)[1].split("## Checkpoint", 1)[0]
    for batch in (1, 2):  # both sides, both batch sizes, measured
        assert f"| tiny | {batch} | ours | bf16 | 1 |" in report and f"| tiny | {batch} | hf | bf16 | 1 |" in report
    assert "all steps passed" in report and "FAILED" not in report and "ERROR" not in report
