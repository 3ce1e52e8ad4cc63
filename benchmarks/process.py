"""Whole-process time of one caption: ``pali caption img.jpg`` against a minimal transformers script.

    python -m benchmarks.process                       # PG1 3B 224, bf16 and fp32, 3 interleaved runs
    python -m benchmarks.process --dtypes float32 --quantize int8 --runs 5
    python -m benchmarks.process --dtypes bfloat16 --quantize int4 --quantize-dtype auto --no-plain

Wall time from spawning the process to its exit, with a warm page cache (one untimed run of each
command first), 32 new tokens. Also times ``import`` of each side alone (``python -c "import ..."``)
and ``pali --help``, which must stay instant. One JSON line per measurement on stdout, then medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.checkpoints import build, default_root

REPO = Path(__file__).resolve().parent.parent


def test_image(root: Path) -> Path:
    """A deterministic 640x480 JPEG (smooth gradients plus noise, like a photo's statistics)."""
    import numpy as np
    from PIL import Image

    path = root / "bench.jpg"
    if not path.exists():
        rng = np.random.default_rng(0)
        y, x = np.mgrid[0:480, 0:640]
        base = np.stack([x / 640 * 255, y / 480 * 255, (x + y) / 1120 * 255], -1)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    return path


def pali_command() -> list[str]:
    exe = shutil.which("pali") or str(Path(sys.executable).parent / "pali")
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "pali_cli"]


def timed(cmd: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "rc": proc.returncode, "stdout": proc.stdout.strip()[-200:]}
    if proc.returncode:
        out["stderr"] = proc.stderr.strip()[-500:]
    return out


def commands(checkpoint: Path, image: Path, dtype: str, quantize: str | None, tokens: int) -> dict[str, list[str]]:
    ours = [
        *pali_command(),
        "caption",
        str(image),
        "--preset",
        str(checkpoint),
        "--max-tokens",
        str(tokens),
        "--dtype",
        dtype,
        "-q",
    ]
    if quantize:
        ours += ["--quantize", quantize]
    hf = [sys.executable, str(REPO / "benchmarks" / "hf_caption.py"), str(checkpoint), str(image), dtype, str(tokens)]
    return {"ours": ours, "hf": hf}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="pali_gemma_3b_224")
    parser.add_argument("--checkpoint", type=Path, default=None, help="an existing checkpoint instead of --preset")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--quantize", default=None, help="also run ours with --quantize (needs the CLI option)")
    parser.add_argument(
        "--quantize-dtype", default=None, help="--dtype of the quantized runs (default: each of --dtypes; e.g. auto)"
    )
    parser.add_argument("--no-plain", action="store_true", help="skip ours without --quantize")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--root", type=Path, default=None)
    return parser


def _report(results: dict[str, list[float]], dtypes: list[str], quantize: str | None) -> None:
    print("\n| what | runs | median wall s |\n|---|---|---|")
    for name, walls in results.items():
        print(f"| {name} | {len(walls)} | {statistics.median(walls):.2f} |")
    for dtype in dtypes:
        o, h = results.get(f"ours {dtype}"), results.get(f"hf {dtype}")
        if o and h:
            print(f"ratio ours/transformers, {dtype}: {statistics.median(o) / statistics.median(h):.2f}x")
        q = results.get(f"ours {dtype} {quantize}") if quantize else None  # (its --dtype: --quantize-dtype)
        if q and h:
            print(f"ratio ours {quantize}/transformers {dtype}: {statistics.median(q) / statistics.median(h):.2f}x")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    checkpoint = args.checkpoint or build(args.preset, args.root)
    image = test_image(args.root or default_root())
    results: dict[str, list[float]] = {}

    def record(name: str, result: dict) -> None:
        print(json.dumps({"what": name, **result}), flush=True)
        if result["rc"] == 0:
            results.setdefault(name, []).append(result["wall_s"])

    for name, cmd in (
        ("import engine", [sys.executable, "-c", "import engine.causal_lm"]),
        ("import transformers", [sys.executable, "-c", "from transformers import PaliGemmaForConditionalGeneration"]),
        ("pali --help", [*pali_command(), "--help"]),
    ):
        timed(cmd)
        for _ in range(args.runs):
            record(name, timed(cmd))
    jobs = {}
    for dtype in args.dtypes:
        for side, cmd in commands(checkpoint, image, dtype, None, args.new_tokens).items():
            if side == "hf" or not args.no_plain:
                jobs[f"{side} {dtype}"] = cmd
        if args.quantize:
            q_dtype = args.quantize_dtype or dtype
            jobs[f"ours {dtype} {args.quantize}"] = commands(
                checkpoint, image, q_dtype, args.quantize, args.new_tokens
            )["ours"]
    for cmd in jobs.values():  # warm the page cache (and the quantized cache) untimed
        timed(cmd)
    names = list(jobs)
    for r in range(args.runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            record(name, timed(jobs[name]))
    _report(results, args.dtypes, args.quantize)


if __name__ == "__main__":
    main()
