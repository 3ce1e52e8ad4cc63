"""Numerical error of each mode at full size, against our fp32 model (and transformers fp32).

    python -m benchmarks.accuracy                          # PG1 3B 224
    python -m benchmarks.accuracy --preset pali_gemma2_pt_3b_224
    python -m benchmarks.accuracy --modes ours:bf16 hf:bf16  # a subset (our fp32 always runs: the reference)

1. Free-running greedy: 32 tokens from each mode (fp32, bf16, int8, int4, and transformers in fp32 and
   bf16); reported as the number of leading tokens equal to our fp32 run's, and the total matches.
2. Teacher forcing: every mode scores the same sequence (prompt + our fp32 greedy tokens); per
   position, the cosine similarity of its fp32 logits with our fp32 model's, whether the top-1 agrees,
   and the max |difference|. Transformers fp32 there is the full-size parity check of the logits.
Each model runs in its own process (benchmarks/worker.py); one at a time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.checkpoints import build
from benchmarks.run import prompt_ids, run_worker

MODES = (("ours", "fp32"), ("ours", "bf16"), ("ours", "int8"), ("ours", "int4"), ("hf", "fp32"), ("hf", "bf16"))


def compare(reference, logits) -> dict:
    import torch
    import torch.nn.functional as F

    cos = F.cosine_similarity(reference.double(), logits.double(), dim=-1)
    top1 = (reference.argmax(-1) == logits.argmax(-1)).float()
    return {
        "cosine_mean": cos.mean().item(),
        "cosine_min": cos.min().item(),
        "top1_agreement": top1.mean().item(),
        "max_abs_diff": (reference - logits).abs().max().item(),
        "logit_std": reference.std().item(),
        "positions": int(reference.shape[0]),
        "all_finite": bool(torch.isfinite(logits).all()),
    }


def _greedy(modes: list, checkpoint: Path, new_tokens: int, ids: list[int]) -> dict[tuple, list[int]]:
    """Row 0's greedy tokens per (side, mode)."""
    tokens = {}
    for side, mode in modes:
        result = run_worker(side, checkpoint, mode, 1, new_tokens, ids)
        if "error" in result:
            raise SystemExit(f"{side} {mode}: {result['error']}")
        tokens[(side, mode)] = result["tokens"][0]
    return tokens


def _teacher_forced(modes: list, checkpoint: Path, new_tokens: int, ids: list[int], ref: list[int]) -> dict:
    """Each side's logits at every position of ``ref`` (our fp32 greedy tokens), fed as given."""
    import torch

    logits = {}
    with tempfile.TemporaryDirectory() as tmp:
        score = Path(tmp) / "tokens.json"
        score.write_text(json.dumps(ref))
        for side, mode in modes:
            dump = Path(tmp) / f"{side}-{mode}.pt"
            extra = ["--score", str(score), "--dump", str(dump)]
            result = run_worker(side, checkpoint, mode, 1, new_tokens, ids, extra=extra)
            if "error" in result:
                raise SystemExit(f"{side} {mode} (scoring): {result['error']}")
            logits[(side, mode)] = torch.load(dump)
    return logits


def _print_table(summary: dict, names: list[str], std: bool = True) -> None:
    print(
        "| mode | greedy: leading tokens equal | greedy: tokens equal | logit cosine mean | min "
        "| top-1 agreement (teacher-forced) | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in names:
        g, t = summary["greedy"][name], summary["teacher_forced"][name]
        print(
            f"| {name} | {g['leading_equal']}/{g['of']} | {g['equal']}/{g['of']} "
            f"| {t['cosine_mean']:.6f} | {t['cosine_min']:.6f} | "
            f"{t['top1_agreement']:.3f} | {t['max_abs_diff']:.2e} |"
        )
    if std:
        print(f"\nlogit std (our fp32): {summary['teacher_forced']['ours fp32']['logit_std']:.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="pali_gemma_3b_224")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument(
        "--modes", nargs="+", default=None, metavar="SIDE:MODE", help="e.g. ours:bf16 hf:fp32 (default: all)"
    )
    args = parser.parse_args(argv)
    chosen = [tuple(m.split(":", 1)) for m in args.modes or [] if m != "ours:fp32"]
    modes = list(MODES) if args.modes is None else [("ours", "fp32"), *chosen]
    unknown = [f"{s}:{m}" for s, m in modes if (s, m) not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; choose from {' '.join(f'{s}:{m}' for s, m in MODES)}")
    checkpoint = args.checkpoint or build(args.preset, args.root)
    ids = prompt_ids(checkpoint)
    tokens = _greedy(modes, checkpoint, args.new_tokens, ids)
    ref = tokens[("ours", "fp32")]
    summary: dict = {"preset": args.preset, "checkpoint": str(checkpoint), "greedy": {}, "teacher_forced": {}}
    for (side, mode), toks in tokens.items():
        summary["greedy"][f"{side} {mode}"] = _agreement(ref, toks)
    logits = _teacher_forced(modes, checkpoint, args.new_tokens, ids, ref)
    for key, value in logits.items():
        summary["teacher_forced"][" ".join(key)] = compare(logits[("ours", "fp32")], value)
    bf16 = ("ours", "bf16")
    quantized = [key for key in logits if key[0] == "ours" and key[1].startswith("int")]
    if bf16 in logits and quantized:  # what quantizing costs against the dtype users would otherwise run
        summary["against_bf16"] = {
            "greedy": {" ".join(k): _agreement(tokens[bf16], tokens[k]) for k in quantized},
            "teacher_forced": {" ".join(k): compare(logits[bf16], logits[k]) for k in quantized},
        }
    print(json.dumps(summary))
    print(f"\n{args.preset}: against our fp32 model, {len(ref)} generated tokens\n")
    _print_table(summary, [" ".join(key) for key in logits])
    if "against_bf16" in summary:
        print(f"\n{args.preset}: quantized modes against our bf16 model (greedy: its own 32 tokens)\n")
        _print_table(summary["against_bf16"], [" ".join(k) for k in quantized], std=False)


def _agreement(ref: list[int], toks: list[int]) -> dict:
    """How many of ``toks`` equal ``ref``: the leading run and in total."""
    lead = next((i for i, (a, b) in enumerate(zip(ref, toks, strict=False)) if a != b), len(ref))
    equal = sum(a == b for a, b in zip(ref, toks, strict=False))
    return {"leading_equal": lead, "equal": equal, "of": len(ref)}


if __name__ == "__main__":
    main()
