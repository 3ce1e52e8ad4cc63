"""Images/s of ``pali caption`` on Ray (``--ray local``) against the same command run locally.

    unshare --net sh -c 'ip link set lo up && exec "$@"' sh python -m benchmarks.ray_scaleout
    ... python -m benchmarks.ray_scaleout --images 96 --batch-size 4 --runs 3

Ray contacts outside addresses when it starts, so this runs only in a private network namespace
with nothing but loopback up (as root; the command above), like the Ray tests. It captions the
same demo-model images (``engine.demo.shapes``) with each configuration, in turns (the order
rotates each run, so drift in the load of this shared machine hits all alike), and watches the
``-o`` file grow:

* ``wall_s``: the whole command, start-up included (for Ray: a new local runtime and its actors);
* ``steady``: images/s between the 10% and the 90% record, once everything is loaded.

One JSON line per measurement goes to ``--out``; the summary prints medians, the load average
and the ratios that matter: Ray against the local run at the same threads, 2 workers against 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.demo.shapes import write_samples
from tests.helpers.ray_runtime import RayRoot, network_problem

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "unshare --net sh -c 'ip link set lo up && exec \"$@\"' sh"
CONFIGS: dict[str, list[str]] = {
    "local, 1 thread": ["--threads", "1"],
    "local, 2 threads": ["--threads", "2"],
    "ray, 1 worker x 1 CPU": ["--ray", "local", "--workers", "1", "--worker-cpus", "1"],
    "ray, 1 worker x 2 CPUs": ["--ray", "local", "--workers", "1", "--worker-cpus", "2"],
    "ray, 2 workers x 1 CPU": ["--ray", "local", "--workers", "2", "--worker-cpus", "1"],
}
RATIOS = (  # (name, numerator, denominator) of steady images/s
    ("Ray overhead at 1 thread", "ray, 1 worker x 1 CPU", "local, 1 thread"),
    ("Ray overhead at 2 threads", "ray, 1 worker x 2 CPUs", "local, 2 threads"),
    ("2 workers / 1 worker (1 CPU each)", "ray, 2 workers x 1 CPU", "ray, 1 worker x 1 CPU"),
    ("2 workers x 1 CPU / local 2 threads", "ray, 2 workers x 1 CPU", "local, 2 threads"),
)


def load_average() -> float:
    return os.getloadavg()[0]


def measure(name: str, images: Path, count: int, batch: int, work: Path, root: RayRoot) -> dict:
    out = work / f"{re.sub(r'[^a-z0-9]+', '_', name)}.jsonl"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "pali_cli", "caption", str(images), "-p", "pali-demo-shapes", "-b", str(batch)]
    cmd += ["-o", str(out), "-q", *CONFIGS[name]]
    load = load_average()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=root.env(), cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    arrivals: list[float] = []  # time of the n-th record
    while True:
        finished = proc.poll() is not None  # before the last read, so no record is missed
        lines = out.read_bytes().count(b"\n") if out.exists() else 0
        arrivals += [time.perf_counter() - start] * (lines - len(arrivals))
        if finished:
            break
        time.sleep(0.02)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read() if proc.stderr else ""
    lo, hi = round(count * 0.1), round(count * 0.9)
    steady = (hi - lo) / (arrivals[hi - 1] - arrivals[lo - 1]) if len(arrivals) >= hi > lo else None
    result = {"config": name, "rc": proc.returncode, "wall_s": round(wall, 2), "records": len(arrivals)}
    result.update(steady_img_s=steady and round(steady, 3), end_to_end_img_s=round(len(arrivals) / wall, 3))
    result.update(first_record_s=arrivals[0] if arrivals else None, load_before=round(load, 2))
    if proc.returncode:
        result["stderr"] = stderr[-800:]
    return result


def environment() -> dict:
    import ray
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cpu_flags": [f for f in wanted if flags and f in flags.group(1).split()],
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
    }


def summary(results: list[dict], env: dict, args: argparse.Namespace) -> str:
    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in results if r["config"] == name and r["rc"] in (0, 3) and r[key] is not None]
        return statistics.median(values) if values else None

    lines = [
        f"{env['date']}, {env['cpu']} ({env['cores']} cores; {' '.join(env['cpu_flags'])}), "
        f"torch {env['torch']}, ray {env['ray']}, Python {env['python']}; {args.images} demo images "
        f"(224 px), batch {args.batch_size}, median of {args.runs} runs; 1-min load average "
        f"{min(r['load_before'] for r in results):.1f} to {max(r['load_before'] for r in results):.1f}.",
        "",
        "| configuration | steady images/s | whole command | first record after |",
        "|---|---|---|---|",
    ]
    for name in CONFIGS:
        steady, wall, first = median(name, "steady_img_s"), median(name, "wall_s"), median(name, "first_record_s")
        lines.append(
            f"| {name} | {steady:.2f} | {wall:.1f} s | {first:.1f} s |"
            if steady and wall and first
            else f"| {name} | failed | | |"
        )
    lines += ["", "| ratio (steady images/s) | value |", "|---|---|"]
    for label, top, bottom in RATIOS:
        a, b = median(top, "steady_img_s"), median(bottom, "steady_img_s")
        lines.append(f"| {label} | {a / b:.2f} |" if a and b else f"| {label} | n/a |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("ray_scaleout.jsonl"), help="one JSON line per measurement")
    args = parser.parse_args(argv)
    problem = network_problem()
    if problem:
        sys.exit(f"{problem}; run: {NAMESPACE} python -m benchmarks.ray_scaleout")
    work = Path(tempfile.mkdtemp(prefix="pali-ray-bench-"))
    root = RayRoot.create()
    try:
        write_samples(work / "images", seed=3030, count=args.images, size=224)
        results: list[dict] = []
        names = list(CONFIGS)
        with open(args.out, "a", encoding="utf-8") as log:
            for run in range(args.runs):
                for name in names[run % len(names) :] + names[: run % len(names)]:
                    result = measure(name, work / "images", args.images, args.batch_size, work, root)
                    result["run"] = run
                    print(json.dumps(result), flush=True)
                    log.write(json.dumps(result) + "\n")
                    results.append(result)
        print()
        print(summary(results, environment(), args))
    finally:
        root.remove()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
