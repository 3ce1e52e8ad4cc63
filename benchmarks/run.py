"""The harness: our engine against transformers on the same full-size checkpoint, same inputs.

    python -m benchmarks.run                                   # PG1 + PG2 3B 224, bf16/fp32/int8, batch 1, 3 runs
    python -m benchmarks.run --presets pali_gemma_3b_224 --modes fp32 int8 --batches 1 4 8 --runs 2
    python -m benchmarks.run --report RESULTS.jsonl            # re-print the tables of an earlier run

Every measurement is one process (benchmarks/worker.py): import, load, one greedy generation of
``--new-tokens`` tokens (no stop token) from 256 image tokens + the "caption en" prompt. Processes
run one at a time, interleaved (the order of the jobs rotates each run), so drift in machine load
hits both sides alike. Each result is appended as one JSON line to ``--out``; the summary prints
medians, ratios against transformers, and a top-1 parity check of the greedy tokens (row 0).

Modes: ``bf16`` and ``fp32`` run on both sides; ``int8`` and ``int4`` are ours only
(``quantize=...`` with ``dtype="auto"``) and are compared with transformers in bf16 and fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.checkpoints import DEFAULT_PRESETS, build, default_root

PROMPT = "caption en"
OURS_MODES = {
    "bf16": ("bfloat16", None),
    "fp32": ("float32", None),
    "int8": ("auto", "int8"),
    "int4": ("auto", "int4"),
}
QUANTIZED = ("int8", "int4")
HF_MODES = {"bf16": "bfloat16", "fp32": "float32"}
METRICS = ("ttft_s", "decode_ms_per_token", "images_per_s", "load_s", "import_s", "peak_rss_gib", "weight_gib")


def prompt_ids(checkpoint: Path) -> list[int]:
    from engine.processing.tokenizer import PaliGemmaTokenizer

    tok = PaliGemmaTokenizer.from_preset(checkpoint)
    return [tok.start_token_id, *tok.tokenize(PROMPT), tok.newline_token_id]


def run_worker(
    side: str,
    checkpoint: Path,
    mode: str,
    batch: int,
    new_tokens: int,
    ids: list[int],
    extra=(),
    device: str = "cpu",
    warmup: bool = False,
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.worker",
        "--side",
        side,
        "--checkpoint",
        str(checkpoint),
        "--batch",
        str(batch),
        "--new-tokens",
        str(new_tokens),
        "--prompt-ids",
        ",".join(map(str, ids)),
        "--device",
        device,
        *(["--warmup"] if warmup else []),
        *extra,
    ]
    if side == "ours":
        dtype, quantize = OURS_MODES[mode]
        if quantize and device != "cpu":
            dtype = "bfloat16"  # "auto" picks by the CPU
        cmd += ["--dtype", dtype] + (["--quantize", quantize] if quantize else [])
    else:
        cmd += ["--dtype", HF_MODES[mode]]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
            "wall_s": wall,
        }
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    return result


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(limit: float | None, patience_s: float = 1200) -> float:
    """Wait (up to ``patience_s``) until the 1-minute load average is under ``limit``: 2-core
    OpenMP slows down several times when anything else runs. Returns the load it starts at."""
    deadline = time.monotonic() + patience_s
    while limit is not None and load_average() >= limit and time.monotonic() < deadline:
        time.sleep(10)
    return load_average()


def evict(checkpoint: Path) -> None:
    """Drop the checkpoint's pages from the page cache (this file set only), for a cold-ish load."""
    for f in checkpoint.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def jobs_for(modes: list[str]) -> list[tuple[str, str]]:
    jobs = []
    for mode in modes:
        if mode in HF_MODES:
            jobs.append(("hf", mode))
        jobs.append(("ours", mode))
    if any(m in QUANTIZED for m in modes) and not any(m in HF_MODES for m in modes):
        jobs.append(("hf", "bf16"))
    return jobs


def _append(out: Path, record: dict) -> None:
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")


def _quantize_warmup(out: Path, preset: str, checkpoint: Path, ids: list[int], mode: str, device: str) -> None:
    """The first quantized load quantizes and fills the cache: timed apart from the runs."""
    result = run_worker("ours", checkpoint, mode, 1, 1, ids, device=device)
    _append(
        out,
        {
            "preset": preset,
            "side": "ours",
            "mode": mode,
            "batch": 1,
            "warmup": True,
            "first_quantize_load_s": result.get("load_s"),
            **result,
        },
    )


def _measure(args, out: Path, preset: str, checkpoint: Path, ids: list[int], r: int, batch: int, job: tuple) -> None:
    side, mode = job
    if args.cold and r == 0:
        evict(checkpoint)
    load_before = wait_for_quiet(args.quiet_load)
    result = run_worker(side, checkpoint, mode, batch, args.new_tokens, ids, device=args.device, warmup=args.warmup)
    common = {"preset": preset, "side": side, "mode": mode, "batch": batch, "run": r}
    extra = {"cold": bool(args.cold and r == 0), "new_tokens": args.new_tokens, "prompt_tokens": len(ids)}
    loads = {"device": args.device, "load_before": load_before, "load_after": load_average()}
    _append(out, {**common, **extra, **loads, **result})
    brief = {k: round(v, 3) for k, v in result.items() if k in METRICS}
    error = {"error": result["error"]} if "error" in result else {}
    load = {"load": [round(load_before, 2), round(loads["load_after"], 2)]}
    print(json.dumps({**common, **brief, **load, **error}), flush=True)


def run(args) -> Path:
    out = args.out or default_root() / f"results-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    targets: list[tuple[str, Path | None]] = [(Path(c).name, Path(c)) for c in args.checkpoint]
    targets = targets or [(p, None) for p in args.presets]
    for preset, given in targets:
        checkpoint = given or build(preset, args.root)
        ids = prompt_ids(checkpoint)
        jobs = jobs_for(args.modes)
        for mode in (m for m in args.modes if m in QUANTIZED):
            _quantize_warmup(out, preset, checkpoint, ids, mode, args.device)
        for r in range(args.runs):
            for batch in args.batches:
                for job in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:  # rotated: drift hits both sides
                    _measure(args, out, preset, checkpoint, ids, r, batch, job)
    return out


# ------------------------------------------------------------------------------------- summary


def _median(records: list[dict], key: str) -> float:
    """The median of ``key`` over the records that have it; nan when none has (prints as "nan")."""
    values = [r[key] for r in records if key in r]
    return statistics.median(values) if values else math.nan


def _median_lines(groups: dict[tuple, list[dict]]) -> list[str]:
    lines = [
        "| preset | batch | side | mode | runs | TTFT s | decode ms/tok | images/s | load s | import s "
        "| peak RSS GiB | weights GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (preset, batch, side, mode), rs in sorted(groups.items()):
        m = {k: _median(rs, k) for k in METRICS}
        lines.append(
            f"| {preset} | {batch} | {side} | {mode} | {len(rs)} | {m['ttft_s']:.2f} "
            f"| {m['decode_ms_per_token']:.0f} | {m['images_per_s']:.4f} | {m['load_s']:.2f} | {m['import_s']:.2f} "
            f"| {m['peak_rss_gib']:.2f} | {m['weight_gib']:.2f} |"
        )
    return lines


def _ratio_lines(groups: dict[tuple, list[dict]]) -> list[str]:
    lines = [
        "| preset | batch | ours | vs transformers | TTFT | decode speed-up | images/s | peak RSS | load+TTFT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (preset, batch, side, mode), rs in sorted(groups.items()):
        if side != "ours":
            continue
        for ref_mode in HF_MODES:
            ref = groups.get((preset, batch, "hf", ref_mode))
            if not ref or (mode in HF_MODES and mode != ref_mode):
                continue
            o = {k: _median(rs, k) for k in METRICS}
            h = {k: _median(ref, k) for k in METRICS}
            first_o, first_h = o["load_s"] + o["ttft_s"], h["load_s"] + h["ttft_s"]
            lines.append(
                f"| {preset} | {batch} | {mode} | {ref_mode} | {o['ttft_s'] / h['ttft_s']:.2f}x | "
                f"{h['decode_ms_per_token'] / o['decode_ms_per_token']:.2f}x "
                f"| {o['images_per_s'] / h['images_per_s']:.2f}x | "
                f"{o['peak_rss_gib'] / h['peak_rss_gib']:.2f}x | {first_o / first_h:.2f}x |"
            )
    return lines


def _other_lines(records: list[dict]) -> list[str]:
    """Peak GPU memory, machine load, cold runs, first quantized loads and errors."""
    lines = []
    gpu = [r for r in records if "peak_gpu_gib" in r and not r.get("warmup")]
    if gpu:
        lines += ["", "Peak GPU memory (torch's peak allocation), GiB:", ""]
        lines += [f"- {r['preset']} batch {r['batch']} {r['side']} {r['mode']}: {r['peak_gpu_gib']:.2f}" for r in gpu]
    loads = [r[k] for r in records for k in ("load_before", "load_after") if k in r]
    if loads:
        lines += ["", f"1-minute load average around the measured processes: {min(loads):.2f}-{max(loads):.2f}"]
    cold = [r for r in records if r.get("cold") and "error" not in r]
    if cold:
        lines += ["", "Cold-ish first run (checkpoint evicted from the page cache): load s / TTFT s", ""]
        lines += [
            f"- {r['preset']} batch {r['batch']} {r['side']} {r['mode']}: {r['load_s']:.2f} / {r['ttft_s']:.2f}"
            for r in cold
        ]
    lines += [
        f"- first {r['mode']} load of {r['preset']} (quantize + write the cache): {r['load_s']:.1f} s"
        for r in records
        if r.get("warmup") and "load_s" in r
    ]
    errors = [r for r in records if "error" in r]
    lines += [f"- ERROR {r['preset']} {r['side']} {r['mode']} batch {r['batch']}: {r['error']}" for r in errors]
    return lines


def summarize(path: Path) -> str:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    ok = [r for r in records if "error" not in r and not r.get("cold") and not r.get("warmup")]
    groups: dict[tuple, list[dict]] = {}
    for r in ok:
        groups.setdefault((r["preset"], r["batch"], r["side"], r["mode"]), []).append(r)
    lines = ["", f"Medians ({path}):", "", *_median_lines(groups)]
    lines += ["", "Ratios, ours / transformers (TTFT and RSS: lower is better; decode and images/s are speed-ups):", ""]
    lines += _ratio_lines(groups)
    lines += ["", "Top-1 parity of the greedy tokens (row 0, every run), ours vs transformers in the same dtype:", ""]
    lines += parity_lines(ok)
    return "\n".join(lines + _other_lines(records))


def parity_lines(records: list[dict]) -> list[str]:
    lines = []
    pairs: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        if r["mode"] in HF_MODES:
            pairs.setdefault((r["preset"], r["mode"]), {}).setdefault(r["side"], []).append(r)
    for (preset, mode), sides in sorted(pairs.items()):
        if "ours" not in sides or "hf" not in sides:
            continue
        ours = {tuple(r["tokens"][0]) for r in sides["ours"]}
        theirs = {tuple(r["tokens"][0]) for r in sides["hf"]}
        if len(ours) > 1 or len(theirs) > 1:
            lines.append(
                f"- {preset} {mode}: runs disagree with themselves "
                f"({len(ours)} ours / {len(theirs)} transformers variants)"
            )
        a, b = next(iter(ours)), next(iter(theirs))
        ra = next(r for r in sides["ours"] if tuple(r["tokens"][0]) == a)
        rb = next(r for r in sides["hf"] if tuple(r["tokens"][0]) == b)
        step = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if step is None:
            lines.append(f"- {preset} {mode}: identical, {len(a)}/{len(b)} tokens")
            continue
        top_h, top_o = rb["top"][step], ra["top"][step]
        ours_in_h = next((v for i, v in top_h if i == a[step]), None)
        margin = f"{top_h[0][1] - ours_in_h:.4f}" if ours_in_h is not None else "> top-5"
        lines.append(
            f"- {preset} {mode}: first {step} tokens identical, then ours {a[step]} vs transformers {b[step]}; "
            f"transformers' top-5 there {top_h}, ours {top_o}; transformers' margin over our token {margin}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--presets", nargs="+", default=list(DEFAULT_PRESETS), help="random-weight checkpoints to build/use"
    )
    parser.add_argument(
        "--checkpoint", nargs="+", default=[], help="existing checkpoint directories instead of --presets"
    )
    parser.add_argument("--modes", nargs="+", default=["bf16", "fp32", "int8"], choices=sorted(OURS_MODES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--cold", action="store_true", help="evict the checkpoint from the page cache before run 0 (reported apart)"
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="checkpoint cache (default: $PALI_BENCH_CACHE or ~/.cache/pali-bench)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON lines file to append to")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both sides run")
    parser.add_argument("--warmup", action="store_true", help="untimed 2-token generation first in each process")
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=None,
        help="before each process, wait (up to 20 min) for the 1-minute load average to drop below this",
    )
    parser.add_argument("--report", type=Path, default=None, help="only print the summary of an existing results file")
    args = parser.parse_args(argv)
    path = args.report or run(args)
    print(summarize(path))


if __name__ == "__main__":
    main()
