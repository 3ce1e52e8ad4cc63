"""Hardware floors on this machine: memory bandwidth and the matmul kernels the engine can choose from.

    python -m benchmarks.floors                 # one JSON line per figure, then a table
    python -m benchmarks.floors --quick         # fewer row counts

Shapes are PaliGemma 1 3B's text MLP: up/gate (2048 -> 16384) and down (16384 -> 2048), at decode
row counts (the batch) and at prefill (266 rows: 256 image tokens + a short prompt). Each kernel
cycles through several distinct weights (more bytes than the last-level cache), so decode figures
are the memory-bound rates a real decode step sees. "GB/s" counts weight bytes read per second.
"huge pages" rows read the same weights from engine.runtime.memory's 2 MiB-page memory (Linux THP).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from benchmarks.timing import median_s
from engine.runtime.memory import empty_weight

SHAPES = {"up 2048->16384": (16384, 2048), "down 16384->2048": (2048, 16384)}
ROWS = (1, 2, 4, 8, 16, 32, 64, 266)
QUICK_ROWS = (1, 4, 8, 266)
COPIES = 4  # distinct weights per kernel: 4 x 128 MiB in fp32


def _int8(w: torch.Tensor):
    scale = (w.abs().amax(1) / 127).to(torch.bfloat16)
    return torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8), scale


def kernels(n: int, k: int, g: torch.Generator) -> dict:
    """name -> (bytes per weight, weights, fn(x_fp32, x_bf16, weight) -> y)."""
    fp32 = [torch.randn(n, k, generator=g) for _ in range(COPIES)]
    bf16 = [w.bfloat16() for w in fp32]
    # The same weights in engine.runtime.memory's huge-page memory (what a casting load gives them).
    fp32_huge = [empty_weight((n, k), torch.float32).copy_(w) for w in fp32]
    bf16_huge = [empty_weight((n, k), torch.bfloat16).copy_(w) for w in bf16]
    int8 = [_int8(w) for w in fp32]
    onednn = torch.ops.mkldnn._linear_pointwise
    scratch = torch.empty(n, k)
    return {
        "fp32 F.linear": (4, fp32, lambda xf, xb, w: F.linear(xf, w)),
        "fp32 weight @ x.T": (4, fp32, lambda xf, xb, w: torch.matmul(w, xf.T)),
        "fp32 oneDNN (plain weight)": (4, fp32, lambda xf, xb, w: onednn(xf, w, None, "none", [], "")),
        "fp32 oneDNN, huge pages": (4, fp32_huge, lambda xf, xb, w: onednn(xf, w, None, "none", [], "")),
        "bf16 F.linear": (2, bf16, lambda xf, xb, w: F.linear(xb, w)),
        "bf16 F.linear, huge pages": (2, bf16_huge, lambda xf, xb, w: F.linear(xb, w)),
        "bf16 -> fp32 scratch + oneDNN": (
            2,
            bf16,
            lambda xf, xb, w: onednn(xf, scratch.copy_(w), None, "none", [], ""),
        ),
        "int8 _weight_int8pack_mm (bf16 x)": (
            1,
            int8,
            lambda xf, xb, w: torch.ops.aten._weight_int8pack_mm(xb, w[0], w[1]),
        ),
        "int8 -> fp32 scratch + oneDNN": (
            1,
            int8,
            lambda xf, xb, w: onednn(xf, scratch.copy_(w[0]).mul_(w[1].float()[:, None]), None, "none", [], ""),
        ),
    }


def measure(rows_list=ROWS) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    big = torch.empty(256 * 1024**2).normal_(generator=g)
    t = median_s(big.sum, repeats=3)
    out.append(
        {
            "kernel": "stream read (sum of 1 GiB fp32)",
            "shape": "-",
            "rows": 0,
            "ms": 1000 * t,
            "GBps": big.numel() * 4 / t / 1e9,
        }
    )
    del big
    for shape_name, (n, k) in SHAPES.items():
        table = kernels(n, k, g)
        for rows in rows_list:
            xf = torch.randn(rows, k, generator=g)
            xb = xf.bfloat16()
            for name, (nbytes, weights, fn) in table.items():
                if name.startswith("bf16 F.linear") and rows > 64:
                    continue  # emulated bf16 GEMM: ~1 s per call, known to lose
                t = median_s(lambda fn=fn, xf=xf, xb=xb, weights=weights: [fn(xf, xb, w) for w in weights], repeats=3)
                t /= len(weights)
                out.append(
                    {
                        "kernel": name,
                        "shape": shape_name,
                        "rows": rows,
                        "ms": 1000 * t,
                        "GBps": n * k * nbytes / t / 1e9,
                        "GFLOPs": 2 * rows * n * k / t / 1e9,
                    }
                )
                print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = measure(QUICK_ROWS if args.quick else ROWS)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    print("\n| kernel | shape | rows | ms per weight | weight GB/s | GFLOP/s |\n|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['kernel']} | {r['shape']} | {r['rows']} | {r['ms']:.2f} | {r['GBps']:.1f} "
            f"| {r.get('GFLOPs', 0):.1f} |"
        )


if __name__ == "__main__":
    main()
