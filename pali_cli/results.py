"""The ``-o`` results file: reads what earlier runs finished, then appends record by record.

Rules, so that nothing the user has is lost and no run hangs or runs twice:

* Only a regular file that looks like pali's JSONL (its first line a pali record, or empty) is
  read or changed. Any other existing file (``-o photo.png``, someone's notes) is refused, as is.
* A character device, pipe or FIFO (``/dev/null``, ``/dev/stdout | cat``, ``mkfifo``) is an output
  only: written to, never read to resume, never truncated or locked.
* One writer at a time: the file is locked (``flock``, advisory) from before it is read until the
  run ends; a second run on it is refused. A new file is created at once to hold the lock, and
  removed again if the run writes nothing.
* Crash safety: each record is one ``write`` of a whole line on an ``O_APPEND`` descriptor, so a
  killed process leaves at most one partial last line; reopening cuts it off (that image is simply
  redone). Text a person appended at the end is kept (a newline goes after it). A write that
  fails (a full disk) is undone to the last whole record and ends the run with one line saying so;
  the rerun resumes. The file is fsynced on close.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pali_cli.errors import CliError, UsageProblem
from pali_cli.records import RECORD_PREFIX, Record, RecordKey, key_of
from pali_cli.streams import write_failure

try:
    import fcntl
except ImportError:  # Windows: no advisory locks of this kind; runs are not guarded there
    fcntl = None  # type: ignore[assignment]

FIRST_LINE_LIMIT = 1 << 20  # a first line longer than this is not a record of ours


def _lock(fd: int) -> bool:
    """Takes the lock without waiting; False when another process holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        pass  # a filesystem without flock (some network mounts): unguarded, as before locks
    return True


def _is_record(line: bytes) -> bool:
    try:
        return key_of(json.loads(line)) is not None
    except ValueError:
        return False


def _is_torn_record(tail: bytes) -> bool:
    """A last line cut off while pali wrote it: the start of a record line."""
    return tail.startswith(RECORD_PREFIX) or RECORD_PREFIX.startswith(tail)


class ResultsFile:
    """An ``-o`` JSONL file (see the module docstring).

    ``status[key]`` is True for a finished image, False for an error record (the last record of a
    key wins, so a hand-appended retry counts).
    """

    def __init__(self, path: Path, warn: Callable[[str], None]) -> None:
        self.path = path
        self._warn = warn
        self.status: dict[RecordKey, bool] = {}
        self._fd: int | None = None
        self._truncate = False
        self._created = False
        self._wrote = False
        try:
            info = os.stat(path)
        except FileNotFoundError:
            info = None
        except OSError as e:
            raise CliError(f"cannot write {path}: {e.strerror or e}") from None
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise UsageProblem(f"output {path} is a directory; give a file name such as {path}/results.jsonl")
        self.is_stream = info is not None and not stat.S_ISREG(info.st_mode)
        if self.is_stream:
            return
        self._open_locked()
        try:
            self._load()
        except BaseException:
            self._release()
            raise

    @property
    def has_records(self) -> bool:
        """Whether the file holds any record (earlier ones, or this run's)."""
        return bool(self.status) or self._wrote

    # ------------------------------------------------------------------ opening and reading

    def _open_locked(self) -> None:
        for _ in range(5):  # the file can be replaced between open and lock (another run's rewrite)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
                    self._created = True
                except FileExistsError:
                    fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            except OSError as e:
                raise CliError(f"cannot write {self.path}: {e.strerror or e}") from None
            if not _lock(fd):
                os.close(fd)
                raise CliError(
                    f"{self.path} is being written by another pali run; wait for it to finish, or give "
                    "this run another -o file"
                )
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)
            self._created = False
        raise CliError(f"{self.path} keeps being replaced by another program; give this run another -o file")

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """(offset, line) of every line of the file, read from the locked descriptor."""
        assert self._fd is not None
        with os.fdopen(os.dup(self._fd), "rb") as f:
            f.seek(0)
            offset = 0
            for line in f:
                yield offset, line
                offset += len(line)

    def _load(self) -> None:
        assert self._fd is not None
        if os.fstat(self._fd).st_size == 0:
            return
        self._check_ours()
        bad = 0
        for offset, line in self._lines():
            if not line.endswith(b"\n"):
                line = self._repair_tail(offset, line)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            key = key_of(obj)
            if key is None:
                bad += 1
                continue
            self.status[key] = obj.get("error") is None
        if bad:
            self._warn(f"{self.path}: {bad} line(s) are not pali records; they are left as they are and ignored")

    def _check_ours(self) -> None:
        assert self._fd is not None
        head = os.pread(self._fd, FIRST_LINE_LIMIT, 0)
        first = next((line for line in head.split(b"\n") if line.strip()), b"")
        whole = b"\n" in head or len(head) < FIRST_LINE_LIMIT
        only_line = head.count(b"\n") == 0 and len(head) < FIRST_LINE_LIMIT
        if whole and (_is_record(first) or (only_line and _is_torn_record(first))):
            return
        raise UsageProblem(
            f"{self.path} exists and is not a pali results file (its first line is not a pali record); "
            "pali leaves it as it is: give -o another file name, or move that file away"
        )

    def _repair_tail(self, offset: int, tail: bytes) -> bytes:
        """The last line has no newline: a run was killed while writing it, or a person added text."""
        assert self._fd is not None
        if _is_record(tail):
            os.write(self._fd, b"\n")  # a whole record that only lacks its newline
            return tail + b"\n"
        if _is_torn_record(tail):
            os.ftruncate(self._fd, offset)
            self._warn(
                f"{self.path}: removed an incomplete last record left by an interrupted run; that image will be redone"
            )
            return b""
        os.write(self._fd, b"\n")  # someone's notes: kept, and the next record goes on a line of its own
        return tail + b"\n"

    # ------------------------------------------------------------------ rewriting

    def clear(self) -> None:
        """``--overwrite``: start afresh. The old file is only emptied by the first new record, so
        a run that fails before producing one (no model, no network) leaves it as it was."""
        if self.is_stream:
            raise UsageProblem(f"--overwrite needs a regular file; {self.path} is a device, pipe or FIFO")
        self._truncate = True
        self.status.clear()

    def drop_failed(self, keys: set[RecordKey]) -> int:
        """``--retry-failed``: removes the error records of ``keys``; returns how many images."""
        if self.is_stream:
            raise UsageProblem(f"--retry-failed needs a regular file; {self.path} is a device, pipe or FIFO")
        failed = {k for k in keys if self.status.get(k) is False}
        if failed:
            self._rewrite(lambda key, ok: not (key in failed and not ok))
            for k in failed:
                del self.status[k]
        return len(failed)

    def _rewrite(self, keep: Callable[[RecordKey, bool], bool]) -> None:
        assert self._fd is not None
        kept: list[bytes] = []
        for _, line in self._lines():
            try:
                obj = json.loads(line)
            except ValueError:
                kept.append(line)
                continue
            key = key_of(obj)
            if key is None or keep(key, obj.get("error") is None):
                kept.append(line)
        # A locked sibling renamed over the file: a crash mid-rewrite leaves the old file intact,
        # and a run that opens the path at any moment finds it locked.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            _lock(fd)
            os.fchmod(fd, stat.S_IMODE(os.fstat(self._fd).st_mode))
            for line in kept:
                os.write(fd, line)
            os.fsync(fd)
            if fcntl is not None:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = fd

    # ------------------------------------------------------------------ appending

    def write(self, record: Record) -> None:
        if self._fd is None:
            try:  # only streams open here: a device, pipe or FIFO (which waits for its reader)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            except OSError as e:
                raise CliError(write_failure(str(self.path), e)) from None
        data = memoryview(record.to_line().encode("utf-8"))
        start = None if self.is_stream else os.fstat(self._fd).st_size
        try:
            if self._truncate:
                os.ftruncate(self._fd, 0)
                self._truncate, start = False, 0
            while data:  # regular files take it in one go; the loop is for the odd short write
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError as e:
            if start is not None:
                try:
                    os.ftruncate(self._fd, start)  # no half record left behind
                except OSError:
                    pass  # the next run's repair cuts it off instead
            raise CliError(write_failure(str(self.path), e)) from None
        self._wrote = True
        self.status[record.key] = record.ok

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError:
            pass  # pipes and devices cannot fsync; the data is written
        if self._created and not self._wrote:
            try:
                if os.fstat(self._fd).st_size == 0:
                    os.unlink(self.path)  # still locked: nobody else can have started using it
            except OSError:
                pass
        self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
