"""Input expansion when the file system is odd: symbolic link loops, directory cycles, unreadable
directories, FIFOs, one file reached by two names; and inputs that are not files (stdin, URLs)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pali_cli.inputs import expand_inputs, expand_listed
from pali_cli.sources import Remote

CHILD_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def names(paths) -> list[str]:
    return [p.as_posix() if isinstance(p, Path) else str(p) for p in paths]


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_symlink_loop_in_a_directory_is_an_entry_not_a_crash(cwd):
    touch(cwd, "d/a.jpg")
    os.symlink("b.jpg", cwd / "d/loop.jpg")
    os.symlink("loop.jpg", cwd / "d/b.jpg")
    got = expand_inputs(["d"])
    # Both links are kept so that each becomes an error record naming it; the good image is there.
    assert names(got.paths) == ["d/a.jpg", "d/b.jpg", "d/loop.jpg"]
    assert got.missing == []


def test_a_quoted_double_star_glob_never_follows_a_directory_cycle(cwd):
    touch(cwd, "d/a.png", "d/sub/b.png", "d/sub/c.png")
    os.symlink("..", cwd / "d/sub/up")  # d/sub/up/sub/up/... is d again
    os.symlink(".", cwd / "d/self")
    # Two cycles: following them is exponential in the depth, so a regression hangs, here in a
    # child process that is stopped after a while instead of the test run.
    code = "from pali_cli.inputs import expand_inputs; print([str(p) for p in expand_inputs(['d/**/*.png']).paths])"
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, env=CHILD_ENV, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail("expanding the glob followed the cycles")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(["d/a.png", "d/sub/b.png", "d/sub/c.png"])


def test_one_file_reached_by_two_names_is_kept_once(cwd):
    touch(cwd, "d/a.png")
    os.symlink("d", cwd / "link")
    got = expand_inputs(["d/a.png", "link/a.png", "link"])
    assert names(got.paths) == ["d/a.png"]
    assert names(expand_listed(["link/a.png", "d/a.png"]).paths) == ["link/a.png"]


@pytest.fixture
def unreadable(monkeypatch):
    """Makes directories unreadable: chmod 000, and, where the tests run as root (whom chmod does
    not stop), os.scandir raising the EACCES a normal user gets."""
    blocked: set[str] = set()
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.realpath(os.fspath(path)) in blocked:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    if os.geteuid() == 0:
        monkeypatch.setattr(os, "scandir", scandir)
    made: list[Path] = []

    def block(path: Path) -> None:
        blocked.add(os.path.realpath(path))
        path.chmod(0)
        made.append(path)

    yield block
    for path in made:
        path.chmod(0o755)


def test_an_unreadable_subdirectory_is_reported_not_skipped_silently(cwd, unreadable):
    touch(cwd, "d/a.png", "d/private/b.png")
    unreadable(cwd / "d/private")
    got = expand_inputs(["d"], recursive=True)
    assert names(got.paths) == ["d/a.png"]
    assert len(got.skipped) == 1 and "d/private" in got.skipped[0] and "permission denied" in got.skipped[0]


def test_an_unreadable_directory_named_directly_is_reported(cwd, unreadable):
    touch(cwd, "d/a.png", "ok/b.png")
    unreadable(cwd / "d")
    got = expand_inputs(["d", "ok"])
    assert names(got.paths) == ["ok/b.png"]
    assert got.skipped == ["d (permission denied)"]


def test_a_fifo_named_directly_is_taken_so_that_its_record_says_what_it_is(cwd):
    os.mkfifo(cwd / "x.jpg")
    got = expand_inputs(["x.jpg"])
    assert names(got.paths) == ["x.jpg"] and got.missing == [] and got.found == 1


def test_stdin_and_urls_are_inputs_that_are_not_files(cwd):
    touch(cwd, "a.png")
    got = expand_inputs(["-", "https://example.com/cat.jpg", "a.png", "HTTP://example.com/x"])
    assert got.paths == [
        Remote("-"),
        Remote("https://example.com/cat.jpg"),
        Path("a.png"),
        Remote("HTTP://example.com/x"),
    ]
    assert got.found == 4
    assert expand_listed(["https://example.com/1.png"]).paths == [Remote("https://example.com/1.png")]
