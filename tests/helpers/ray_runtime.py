"""Ray runtimes for tests: when they may run, a private home and temp directory each, a cluster
started with ``ray start``, and every process of a runtime found and killed when it is done.

Ray probes outside addresses when it starts, so its tests run only in a private network
namespace with nothing but loopback up (``unshare --net``; see .ci/run). Ray also leaves
processes behind when its driver dies; each runtime here has its own ``RAY_TMPDIR``, which all
its processes inherit, so they are found by that (``/proc/PID/environ``) and killed by pid,
never by name.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NAMESPACE_COMMAND = "unshare --net sh -c 'ip link set lo up && exec \"$@\"' sh python -m pytest -m ray"
_SIOCGIFFLAGS, _IFF_UP = 0x8913, 0x1


def _is_up(sock: socket.socket, name: str) -> bool:
    request = struct.pack("16sH14s", name.encode()[:15], 0, b"")
    return bool(struct.unpack("16sH14s", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1] & _IFF_UP)


def network_problem() -> str | None:
    """None inside a network namespace whose only interface up is loopback (and loopback is up)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            up = [name for _, name in socket.if_nameindex() if _is_up(sock, name)]
    except OSError as e:
        return f"cannot list network interfaces: {e}"
    if "lo" not in up:
        return "loopback is down (ip link set lo up)"
    outside = [name for name in up if name != "lo"]
    if outside:
        return f"interfaces other than loopback are up ({', '.join(outside)}): not a private network namespace"
    return None


def why_ray_tests_cannot_run() -> str | None:
    if find_spec("ray") is None or find_spec("pyarrow") is None:
        return 'ray is not installed (pip install -e ".[ray]")'
    problem = network_problem()
    if problem:
        return f"{problem}; run them as: {NAMESPACE_COMMAND}"
    return None


# ----------------------------------------------------------------------------- processes


def processes_of(ray_tmpdir: Path) -> list[int]:
    """Pids of the live processes started with ``RAY_TMPDIR=ray_tmpdir`` (this one excepted)."""
    tag = f"RAY_TMPDIR={ray_tmpdir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path("/proc", entry, "environ").read_bytes()  # empty for zombies
        except OSError:
            continue
        if tag in environ.split(b"\0"):
            found.append(int(entry))
    return found


def command_line(pid: int) -> str:
    try:
        return Path("/proc", str(pid), "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_processes_of(ray_tmpdir: Path, rounds: int = 20) -> None:
    """SIGKILL every process of that runtime, again until none is left (a raylet may still be
    starting workers while the first ones die)."""
    for _ in range(rounds):
        pids = processes_of(ray_tmpdir)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def wait_until_gone(ray_tmpdir: Path, timeout: float = 20) -> list[int]:
    """Waits for a runtime's processes to exit by themselves; returns those still there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = processes_of(ray_tmpdir)
        if not left:
            return []
        time.sleep(0.25)
    return processes_of(ray_tmpdir)


# ----------------------------------------------------------------------------- runtimes


@dataclass
class RayRoot:
    """A private HOME (Ray 2.60 keeps an auth token in ~/.ray) and a short temp dir (Ray's Unix
    socket paths must stay under 107 bytes), plus caches, for one runtime and its drivers."""

    path: Path

    @classmethod
    def create(cls) -> RayRoot:
        return cls(Path(tempfile.mkdtemp(prefix="pr", dir="/tmp")))

    @property
    def tmp(self) -> Path:
        return self.path / "t"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(
            HOME=str(self.path / "h"),
            RAY_TMPDIR=str(self.tmp),
            RAY_USAGE_STATS_ENABLED="0",
            PYTHONPATH=str(REPO),
        )
        env.setdefault("PALI_CACHE_DIR", str(self.path / "cache"))
        env.setdefault("HF_HOME", str(self.path / "hf"))
        return env

    def remove(self) -> None:
        kill_processes_of(self.tmp)
        shutil.rmtree(self.path, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cluster(root: RayRoot, cpus: int) -> str:
    """A head node on 127.0.0.1 (``ray start`` returns once it is up); returns its address."""
    port = free_port()
    ray = Path(sys.executable).with_name("ray")
    command = [
        str(ray),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={cpus}",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={root.tmp}",
    ]
    for directory in ("h", "t"):
        (root.path / directory).mkdir(exist_ok=True)
    done = subprocess.run(command, env=root.env(), capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"ray start failed ({done.returncode}): {done.stderr[-2000:]}")
    return f"127.0.0.1:{port}"
