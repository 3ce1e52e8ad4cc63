"""The ``-o`` file under odd conditions: files that are not pali's, devices, pipes and FIFOs, a
second writer, a full disk, a person's notes at the end, and names that are not UTF-8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pali_cli.errors import CliError, ExitCode, exit_code_for
from pali_cli.records import Record, make_key
from pali_cli.results import ResultsFile

REPO = Path(__file__).resolve().parents[2]


def rec(image: str, text: str | None = "a cat", error: str | None = None) -> Record:
    return Record(image=image, task="caption", prompt="caption en", preset="p", text=text, error=error)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def warnings() -> list[str]:
    return []


# ----------------------------------------------------------------------------- files that are not ours


@pytest.mark.parametrize(
    "content",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR not a results file at all",  # pali caption x.png -o x.png
        b"my notes\nmore notes\n",
        b'{"name": "some other tool\'s JSON lines"}\n',
        b"no newline at all",
    ],
)
def test_a_file_that_is_not_pali_jsonl_is_refused_and_left_byte_for_byte(tmp_path, warnings, content):
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(CliError, match=r"x\.png.* not a pali results file") as caught:
        ResultsFile(path, warnings.append)
    assert exit_code_for(caught.value) is ExitCode.USAGE
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == content


def test_an_empty_file_is_used(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"")
    out = ResultsFile(path, warnings.append)
    out.write(rec("a.jpg"))
    out.close()
    assert [r["image"] for r in lines(path)] == ["a.jpg"]


def test_notes_a_person_appended_are_kept(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    path.write_text(rec("a.jpg").to_line() + "notes", encoding="utf-8")  # printf 'notes' >> out.jsonl
    out = ResultsFile(path, warnings.append)
    out.write(rec("b.jpg"))
    out.close()
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[1] == "notes"  # kept, and the next record starts on its own line
    assert json.loads(text.splitlines()[2])["image"] == "b.jpg"
    assert not any("removed" in w for w in warnings)


def test_a_torn_record_of_ours_is_still_repaired(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    whole = rec("a.jpg").to_line()
    for torn in ('{"image": "b.j', '{"ima', "{"):
        path.write_text(whole + torn, encoding="utf-8")
        ResultsFile(path, warnings.append).close()
        assert path.read_text(encoding="utf-8") == whole, torn


def test_a_file_holding_only_a_torn_record_is_ours(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    path.write_text(rec("a.jpg").to_line()[:20], encoding="utf-8")
    ResultsFile(path, warnings.append).close()
    assert path.read_bytes() == b""


# ----------------------------------------------------------------------------- devices, pipes, FIFOs


def in_capped_child(code: str) -> subprocess.CompletedProcess:
    """Runs ``code`` in a child capped at 2 GiB of address space: reading /dev/zero or /dev/full
    "to resume" (the old behaviour) then fails that child, not the machine."""
    prelude = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
        "from pathlib import Path\n"
        "from pali_cli.records import Record\n"
        "from pali_cli.results import ResultsFile\n"
        "record = Record('a.jpg', 'caption', 'caption en', 'p', text='x')\n"
    )
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_dev_zero_is_written_to_never_read():
    proc = in_capped_child("out = ResultsFile(Path('/dev/zero'), print)\nout.write(record)\nout.close()\nprint('OK')\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "OK"


def test_dev_full_says_the_disk_is_full():
    code = (
        "from pali_cli.errors import CliError, exit_code_for\n"
        "out = ResultsFile(Path('/dev/full'), print)\n"
        "try:\n"
        "    out.write(record)\n"
        "except CliError as e:\n"
        "    print(int(exit_code_for(e)), e)\n"
        "out.close()\n"
    )
    proc = in_capped_child(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("1 cannot write /dev/full: the disk is full"), proc.stdout


def test_dev_stdout_on_a_pipe_is_written_not_read():
    """``-o /dev/stdout | cat``: the path names the pipe; reading it to resume would wait for ever."""
    proc = in_capped_child(
        "out = ResultsFile(Path('/dev/stdout'), print)\nout.write(record)\nout.close()\n"
    )  # subprocess.run's capture_output makes the child's stdout a pipe
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [json.loads(line)["image"] for line in proc.stdout.splitlines()] == ["a.jpg"]


def test_a_fifo_is_a_write_only_output(tmp_path, warnings):
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    opened: list[ResultsFile] = []
    opener = threading.Thread(target=lambda: opened.append(ResultsFile(fifo, warnings.append)), daemon=True)
    opener.start()
    opener.join(timeout=30)
    if opener.is_alive():  # it blocked reading the FIFO: let it go, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("opening a FIFO as -o blocked (it was read to resume)")
    out = opened[0]
    out.write(rec("a.jpg"))
    out.close()
    reader.join(timeout=30)
    assert [json.loads(line)["image"] for line in received[0].splitlines()] == ["a.jpg"]


# ----------------------------------------------------------------------------- one writer at a time


def test_a_second_writer_is_refused_with_a_clear_message(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    first = ResultsFile(path, warnings.append)
    first.write(rec("a.jpg"))
    with pytest.raises(CliError, match=r"out\.jsonl is being written by another pali run"):
        ResultsFile(path, warnings.append)
    first.close()
    second = ResultsFile(path, warnings.append)  # free again once the first run is done
    second.close()


def test_the_lock_survives_the_rewrite_of_retry_failed(tmp_path, warnings):
    path = tmp_path / "out.jsonl"
    path.write_text(rec("a.jpg").to_line() + rec("b.jpg", text=None, error="broken").to_line(), encoding="utf-8")
    mode = 0o640
    os.chmod(path, mode)
    first = ResultsFile(path, warnings.append)
    assert first.drop_failed({rec("b.jpg").key}) == 1  # the file is replaced by a rewritten copy
    with pytest.raises(CliError, match="being written by another pali run"):
        ResultsFile(path, warnings.append)
    first.write(rec("b.jpg"))
    first.close()
    assert [r["image"] for r in lines(path)] == ["a.jpg", "b.jpg"]
    assert path.stat().st_mode & 0o777 == mode  # the rewrite keeps the file's permissions


def test_a_run_that_writes_nothing_leaves_no_new_file(tmp_path, warnings):
    path = tmp_path / "new.jsonl"
    out = ResultsFile(path, warnings.append)  # created at once, to hold the lock
    assert not out.has_records
    out.close()
    assert not path.exists()


# ----------------------------------------------------------------------------- file names


def test_a_name_that_is_not_utf8_is_recorded_losslessly_and_resumes(tmp_path, warnings, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = os.fsdecode(b"d/m\xff.png")  # what os.listdir gives for such a name
    path = tmp_path / "out.jsonl"
    out = ResultsFile(path, warnings.append)
    out.write(rec(odd))
    out.write(rec(os.fsdecode(b"d/m\xfe.png"), text=None, error=f"cannot load image {odd}: broken"))
    out.close()
    raw = path.read_bytes()
    raw.decode("utf-8")  # the file stays valid UTF-8
    first, second = lines(path)
    assert first["image"] == "d/m\ufffd.png"  # readable, the odd byte shown as U+FFFD
    assert os.fsencode(first["path_escaped"]) == os.fsencode(str(tmp_path)) + b"/d/m\xff.png"
    assert "path_escaped" in second and "\ufffd" in second["error"]
    again = ResultsFile(path, warnings.append)
    assert again.status[make_key(odd, "caption", "caption en", "p")] is True
    assert again.status[make_key(os.fsdecode(b"d/m\xfe.png"), "caption", "caption en", "p")] is False
    again.close()


def test_records_keep_the_typed_path_and_key_on_the_resolved_one(tmp_path, warnings, monkeypatch):
    (tmp_path / "many").mkdir()
    (tmp_path / "link").symlink_to("many")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cap.jsonl"
    out = ResultsFile(path, warnings.append)
    out.write(rec("many/a.png"))
    out.close()
    [record] = lines(path)
    assert record["image"] == "many/a.png" and record["path"] == str(tmp_path / "many" / "a.png")
    monkeypatch.chdir(tmp_path / "many")  # cd many && pali caption . -o ../cap.jsonl
    again = ResultsFile(Path("../cap.jsonl"), warnings.append)
    assert again.status[make_key("./a.png", "caption", "caption en", "p")] is True
    assert again.status[make_key("../link/a.png", "caption", "caption en", "p")] is True
    again.close()
