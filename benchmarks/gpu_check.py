"""The GPU check: parity on the device, then ours against transformers on the same card; one report.

    bash benchmarks/gpu_check.sh                      # on a CUDA machine: < 8 minutes on an H200
    bash benchmarks/gpu_check.sh --dry-run            # the same steps on CPU with a tiny checkpoint
    python -m benchmarks.gpu_check --device cuda --out report.md

Steps, each timed, all written to ``--out`` (markdown) as they finish, so a run cut short still
leaves what it did:
1. the machine: GPU, torch, CUDA, transformers, the CPU line;
2. parity on the device: tests/model/test_device_parity.py with ``PALI_TEST_DEVICES`` set to it
   (ours against transformers' random-weight models, fp32 and bf16, logits and greedy tokens);
3. a random full-size checkpoint (benchmarks.checkpoints, PaliGemma 1 3B 224, bf16), built there;
4. benchmarks.run on the device: bf16, batch 1 and 8, both sides interleaved, each process warmed
   up (CUDA start-up is not time to first token); TTFT, decode ms/token, images/s, peak memory.
``--dry-run`` swaps step 3's checkpoint for a tiny one and runs everything on the CPU with few
tokens: it checks this script and its entry points anywhere (tests/benchmarks/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRESET = "pali_gemma_3b_224"


class Report:
    """A markdown file rewritten after every step."""

    def __init__(self, path: Path):
        self.path, self.parts = path, list[str]()
        self.t0 = time.perf_counter()

    def add(self, title: str, body: str, seconds: float | None = None) -> None:
        timing = f" ({seconds:.0f} s)" if seconds is not None else ""
        self.parts.append(f"## {title}{timing}\n\n{body.rstrip()}\n")
        total = time.perf_counter() - self.t0
        text = "# pali GPU check\n\n" + "\n".join(self.parts) + f"\nTotal so far: {total:.0f} s\n"
        self.path.write_text(text)
        print(f"[gpu_check] {title}{timing}", flush=True)


def machine(device: str) -> str:
    import torch

    from engine.runtime.capabilities import host_flags_line

    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), device {device}",
        f"- CPU: {host_flags_line()}",
    ]
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"- GPU: {props.name}, {props.total_memory / 1024**3:.0f} GiB, bf16: {torch.cuda.is_bf16_supported()}"
        )
    for name in ("transformers", "safetensors", "sentencepiece", "numpy"):
        try:
            module = __import__(name)
            lines.append(f"- {name} {getattr(module, '__version__', '?')}")
        except ImportError as e:
            lines.append(f"- {name}: MISSING ({e})")
    return "\n".join(lines)


def _text(output: bytes | str | None) -> str:
    """What a timed-out process wrote (bytes even with text=True, or None)."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        return proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        return -1, f"timed out after {timeout:.0f} s\n{_text(e.stdout)}{_text(e.stderr)}"


def parity(device: str) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/model/test_device_parity.py"]
    code, out = _run(cmd, {"PALI_TEST_DEVICES": device}, timeout=300)
    tail = "\n".join(out.strip().splitlines()[-25:])
    return code == 0, f"`PALI_TEST_DEVICES={device} {' '.join(cmd[2:])}`: exit {code}\n\n```\n{tail}\n```"


def checkpoint(dry_run: bool, root: Path) -> Path:
    if dry_run:
        from tests.helpers.checkpoints import TinySpec, build_reference, save_checkpoint

        path = root / "tiny"
        if not (path / "config.json").exists():
            save_checkpoint(build_reference(TinySpec(), 0), path)
        return path
    from benchmarks.checkpoints import build

    return build(PRESET, root)


def bench(ckpt: Path, device: str, batches: list[int], runs: int, new_tokens: int, out: Path) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "benchmarks.run", "--checkpoint", str(ckpt), "--modes", "bf16"]
    cmd += ["--batches", *map(str, batches), "--runs", str(runs), "--new-tokens", str(new_tokens)]
    cmd += ["--device", device, "--warmup", "--out", str(out)]
    code, text = _run(cmd, timeout=900)
    summary = text[text.find("Medians") :] if "Medians" in text else "\n".join(text.strip().splitlines()[-30:])
    return code == 0 and "ERROR" not in summary, f"`{' '.join(cmd[2:])}`: exit {code}\n\n{summary}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --dry-run")
    parser.add_argument("--dry-run", action="store_true", help="tiny checkpoint on the CPU: checks the steps")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_results.md"))
    parser.add_argument("--root", type=Path, default=None, help="where the checkpoint goes (default: a temp dir)")
    parser.add_argument("--runs", type=int, default=None, help="interleaved runs per side (default 2; dry run 1)")
    parser.add_argument("--skip-parity", action="store_true")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.dry_run else "cuda")
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"[gpu_check] CUDA is not available to torch {torch.__version__}; use --dry-run on a CPU", file=sys.stderr
        )
        return 2
    root = args.root or Path(os.environ.get("PALI_BENCH_CACHE") or tempfile.mkdtemp(prefix="pali-gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    report = Report(args.out.resolve())
    report.add("Machine", machine(device))
    ok = True
    if not args.skip_parity:
        t = time.perf_counter()
        passed, text = parity(device)
        ok &= passed
        report.add("Parity on the device (fp32, bf16)", text, time.perf_counter() - t)
    t = time.perf_counter()
    ckpt = checkpoint(args.dry_run, root)
    report.add(
        "Checkpoint",
        f"`{ckpt}` ({'tiny' if args.dry_run else PRESET + ', random weights, bf16'})",
        time.perf_counter() - t,
    )
    t = time.perf_counter()
    runs = args.runs or (1 if args.dry_run else 2)
    batches, tokens = ([1, 2], 4) if args.dry_run else ([1, 8], 32)
    passed, text = bench(ckpt, device, batches, runs, tokens, root / "gpu_check.jsonl")
    ok &= passed
    report.add(f"ours against transformers on {device}, bf16", text, time.perf_counter() - t)
    report.add("Result", "all steps passed" if ok else "SOME STEPS FAILED (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
