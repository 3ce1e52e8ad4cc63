"""A pytest plugin: tests marked ``isolated`` run in a fresh Python process.

A native kernel that crashes (SIGSEGV on misaligned data, SIGILL on an instruction the CPU lacks)
kills the process it runs in. The call of a marked test therefore runs in a child ``python -m
pytest NODEID`` (setup and teardown stay in the parent); the child hands its reports back
serialized, so a failure shows the child's traceback and a skip its reason, and a child killed by
a signal fails that one test, naming the signal and the child's last output, while the run goes on.

    @pytest.mark.isolated                                    # a fresh process
    @pytest.mark.isolated(env={"ATEN_CPU_CAPABILITY": "avx2"})   # with extra environment

Children reuse the parent's tiny checkpoints (``SHARED_CHECKPOINTS``; see conftest.py) so they
need not rebuild them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

CHILD = "PALI_TEST_ISOLATED_CHILD"
REPORTS = "PALI_TEST_ISOLATED_REPORTS"
SHARED_CHECKPOINTS = "PALI_TEST_SHARED_CHECKPOINTS"
TIMEOUT_S = 900


class _ReportWriter:
    """In a child: append every report, serialized, to the file the parent named."""

    def __init__(self, config: pytest.Config, target: str):
        self.config, self.target = config, target

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        with open(self.target, "a") as f:
            f.write(json.dumps(data) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "isolated(env=None): run in a fresh Python process, so a native crash fails only this test",
    )
    target = os.environ.get(REPORTS)
    if os.environ.get(CHILD) and target:
        config.pluginmanager.register(_ReportWriter(config, target), "pali-isolated-reports")


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _run_child(item: pytest.Item, env: dict[str, str]) -> tuple[str, str]:
    """Run ``item`` in a child pytest; (outcome, text): passed, skipped (the reason) or failed."""
    config = item.config
    with tempfile.TemporaryDirectory(prefix="pali-isolated-") as tmp:
        report_file = Path(tmp) / "reports.jsonl"
        child_env = {**os.environ, **env, CHILD: "1", REPORTS: str(report_file)}
        cmd = [sys.executable, "-m", "pytest", item.nodeid, "-q", "-p", "no:cacheprovider"]
        cmd += ["-o", "addopts=", "--import-mode=importlib", f"--basetemp={tmp}/base"]
        try:
            proc = subprocess.run(
                cmd, cwd=config.rootpath, env=child_env, capture_output=True, text=True, timeout=TIMEOUT_S
            )
            code, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            out, err = e.stdout or "", e.stderr or ""
            code, output = None, f"{out!s}{err!s}" if isinstance(out, str) else f"{out!r}{err!r}"
        reports = []
        if report_file.exists():
            for line in report_file.read_text().splitlines():
                reports.append(config.hook.pytest_report_from_serializable(config=config, data=json.loads(line)))
    for report in reports:
        if report.outcome == "skipped":
            reason = report.longrepr[2] if isinstance(report.longrepr, (list, tuple)) else str(report.longrepr)
            return "skipped", reason.removeprefix("Skipped: ")
        if report.outcome == "failed":
            return "failed", f"[in its own process, {report.when}]\n{report.longreprtext}"
    if code == 0 and any(r.when == "call" for r in reports):
        return "passed", ""
    tail = "\n".join(output.strip().splitlines()[-40:])
    if code is None:
        why = f"timed out after {TIMEOUT_S} s in its own process"
    elif code < 0:
        why = f"crashed with {_signal_name(code)} in its own process (a native kernel died)"
    else:
        why = f"its process exited with {code} and reported no result"
    return "failed", f"{item.nodeid} {why}; the child's last output:\n{tail}"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Replaces only the call: setup and teardown run here as usual (the parent builds shared
    fixtures such as checkpoints once; the child then finds them)."""
    marker = pyfuncitem.get_closest_marker("isolated")
    if marker is None or os.environ.get(CHILD):
        return None
    outcome, text = _run_child(pyfuncitem, dict(marker.kwargs.get("env") or {}))
    if outcome == "skipped":
        pytest.skip(text)
    if outcome == "failed":
        pytest.fail(text, pytrace=False)
    return True
