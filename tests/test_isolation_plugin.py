"""The ``isolated`` marker (tests/helpers/isolation.py): a native crash in a marked test fails that
test, naming the signal, and the rest of the run goes on; passes, failures and skips come back
from the child process as they would in-process."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

INNER = """
import ctypes, os, pytest

@pytest.mark.isolated
def test_crashes():
    ctypes.string_at(0)  # SIGSEGV

@pytest.mark.isolated
def test_fails():
    assert 1 + 1 == 3, "arithmetic"

@pytest.mark.isolated(env={"PALI_INNER": "yes"})
def test_passes_in_a_child_with_its_env():
    assert os.environ["PALI_TEST_ISOLATED_CHILD"] == "1" and os.environ["PALI_INNER"] == "yes"

@pytest.mark.isolated
def test_skips():
    pytest.skip("not here")

def test_runs_after_the_crash():
    assert "PALI_TEST_ISOLATED_CHILD" not in os.environ
"""


def test_a_crash_fails_one_test_and_the_run_goes_on(pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["tests.helpers.isolation"]\n')
    pytester.makepyfile(test_inner=INNER)
    env_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    pytester._monkeypatch.setenv("PYTHONPATH", env_path)
    pytester._monkeypatch.delenv("PALI_TEST_ISOLATED_CHILD", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "addopts=", "-rA")
    result.assert_outcomes(passed=2, failed=2, skipped=1)
    out = result.stdout.str()
    assert "test_crashes crashed with SIGSEGV in its own process" in out
    assert "arithmetic" in out  # the child's traceback comes back
