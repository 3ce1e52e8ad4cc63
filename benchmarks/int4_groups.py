"""Choosing int4's group size: kernel speed and full-size error for groups of 32, 64 and 128.

    python -m benchmarks.int4_groups                      # kernels + PaliGemma 1 3B error
    python -m benchmarks.int4_groups --kernels-only

1. Kernels: ``_weight_int4pack_mm_for_cpu`` on PaliGemma 1 3B's decoder shapes (2048 -> 16384,
   16384 -> 2048, the 257216-row LM head) at 1, 4 and 8 rows, against the bf16 GEMV, median ms.
2. Error: our fp32 model against the same model with int4 weights of each group size, teacher
   forced on the image + prompt + 32 tokens of the fp32 model's own greedy output: logit cosine
   (mean, min) and top-1 agreement per position. One model in memory besides the fp32 reference.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from benchmarks.timing import median_s
from engine.runtime.int4 import quantize_weight
from engine.runtime.int4_format import GROUP_SIZES, kernel_layout

SHAPES = {"up 2048->16384": (16384, 2048), "down 16384->2048": (2048, 16384), "head 2048->257216": (257216, 2048)}
ROWS = (1, 4, 8)


def kernels() -> list[dict]:
    layout = kernel_layout()
    if layout is None:
        raise SystemExit("this torch has no CPU int4 kernel whose layout pali knows")
    g = torch.Generator().manual_seed(0)
    out = []
    for name, (n, k) in SHAPES.items():
        copies = 1 if n > 100_000 else 3  # distinct weights, more bytes than the last-level cache
        dense = [torch.randn(n, k, generator=g).bfloat16() for _ in range(copies)]
        packed = {group: [quantize_weight(w, group, layout) for w in dense] for group in GROUP_SIZES}
        for rows in ROWS:
            x = torch.randn(rows, k, generator=g).bfloat16()
            dense_ms = 1000 * median_s(lambda: [F.linear(x, w) for w in dense])  # noqa: B023
            row = {"shape": name, "rows": rows, "bf16 F.linear": dense_ms}
            for group, weights in packed.items():
                op = torch.ops.aten._weight_int4pack_mm_for_cpu
                row[f"int4 g{group}"] = 1000 * median_s(lambda: [op(x, p, group, sz) for p, sz in weights])  # noqa: B023
            row = {k: v / copies if isinstance(v, float) else v for k, v in row.items()}
            print(json.dumps(row), flush=True)
            out.append(row)
    return out


def errors(checkpoint, new_tokens: int) -> list[dict]:
    from benchmarks.run import prompt_ids
    from benchmarks.worker import pixel_values
    from engine.checkpoints.weights import load_backbone
    from engine.generate import generate_tokens
    from engine.model.config import load_config
    from engine.runtime.optimize import optimize
    from engine.runtime.quantize import quantize_backbone
    from engine.samplers import greedy

    config = load_config(checkpoint)
    ids = prompt_ids(checkpoint)
    pixels = pixel_values(1, config.image_size, 0)
    reference = optimize(load_backbone(checkpoint, config, torch.float32))
    tokens = generate_tokens(reference, pixels, [ids], [new_tokens], greedy)[0]
    sequence = torch.tensor([ids + tokens])
    response = torch.zeros_like(sequence, dtype=torch.bool)
    response[0, len(ids) :] = True
    with torch.inference_mode():
        ref = reference(pixels, sequence, response_mask=response)[0, len(ids) - 1 : -1]
    del reference
    out = []
    for group in GROUP_SIZES:
        model = quantize_backbone(load_backbone(checkpoint, config, torch.float32), "int4", group_size=group)
        optimize(model)
        with torch.inference_mode():
            got = model(pixels, sequence, response_mask=response)[0, len(ids) - 1 : -1]
        cos = F.cosine_similarity(ref.double(), got.double(), dim=-1)
        row = {
            "group": group,
            "cosine_mean": cos.mean().item(),
            "cosine_min": cos.min().item(),
            "top1_agreement": (ref.argmax(-1) == got.argmax(-1)).float().mean().item(),
            "positions": int(ref.shape[0]),
        }
        print(json.dumps(row), flush=True)
        out.append(row)
        del model
    return out


def main(argv: list[str] | None = None) -> None:
    from benchmarks.checkpoints import build

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="pali_gemma_3b_224")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--kernels-only", action="store_true")
    args = parser.parse_args(argv)
    rows = kernels()
    print("\n| shape | rows | bf16 F.linear ms | " + " | ".join(f"int4 g{g} ms" for g in GROUP_SIZES) + " |")
    print("|---|---|---|" + "---|" * len(GROUP_SIZES))
    for r in rows:
        cells = " | ".join(f"{r[f'int4 g{g}']:.2f}" for g in GROUP_SIZES)
        print(f"| {r['shape']} | {r['rows']} | {r['bf16 F.linear']:.2f} | {cells} |")
    if not args.kernels_only:
        errs = errors(build(args.preset), args.new_tokens)
        print("\n| group | logit cosine mean | min | top-1 agreement |\n|---|---|---|---|")
        for e in errs:
            print(f"| {e['group']} | {e['cosine_mean']:.6f} | {e['cosine_min']:.6f} | {e['top1_agreement']:.3f} |")


if __name__ == "__main__":
    main()
