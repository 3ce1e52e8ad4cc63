"""Which bf16 matmul streams weights fastest on this CPU: the measurement that decides pali's bf16
kernel choice on CPUs with AVX512-BF16/AMX.

    python -m benchmarks.bf16_gemv                 # decode rows (1, 8) and prefill (266)
    python -m benchmarks.bf16_gemv --rows 1 --compile

Candidates, on PaliGemma 1 3B's MLP shapes, each cycling through distinct weights (more bytes than
the last-level cache, as a decode step reads them):
* ``F.linear``: what pali runs today on such CPUs (torch's own bf16 path);
* ``oneDNN plain``: ``torch.ops.mkldnn._linear_pointwise`` on the plain weight;
* ``oneDNN prepacked``: the same op on a weight reordered once by ``torch.ops.mkldnn._reorder_linear_weight``
  (what Inductor's CPU freezing pass emits; engine.runtime.optimize's ``PrepackedBf16Linear``);
* ``torch.compile`` (``--compile``): Inductor's code for one linear (slow to build; decode only);
* references: fp32 oneDNN GEMV and a streaming read, the memory's rate.
It prints GB/s of weight bytes per candidate and, last, the fastest at one row. On CPUs without
AVX512 (or AVX-NE-CONVERT) oneDNN refuses to prepack bf16 weights: that row reports the refusal.
If the prepacked kernel wins clearly on such a machine, ``PALI_BF16_KERNEL=prepacked`` makes pali
use it; the measurement here is what a change of default would rest on (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from benchmarks.timing import median_s
from engine.runtime.capabilities import host_flags_line

SHAPES = {"up 2048->16384": (16384, 2048), "down 16384->2048": (2048, 16384)}
COPIES = 4  # 4 x 64 MiB of bf16 per shape


def candidates(weights: list[torch.Tensor], rows: int, compile_too: bool) -> dict:
    """name -> callable(x) running every weight once, or the reason it cannot run here."""
    onednn = torch.ops.mkldnn._linear_pointwise
    out: dict = {
        "F.linear": lambda x: [F.linear(x, w) for w in weights],
        "oneDNN plain": lambda x: [onednn(x, w, None, "none", [], "") for w in weights],
    }
    try:
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
        out["oneDNN prepacked"] = lambda x: [onednn(x, p, None, "none", [], "") for p in packed]
    except RuntimeError as e:
        out["oneDNN prepacked"] = str(e).splitlines()[0]
    if compile_too:
        compiled = torch.compile(lambda x, w: F.linear(x, w), dynamic=False)
        out["torch.compile"] = lambda x: [compiled(x, w) for w in weights]
    return out


def _fp32_gemv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def measure(rows_list: list[int], compile_too: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    results = []
    big = torch.empty(256 * 1024**2).normal_(generator=g)
    t = median_s(big.sum)
    results.append(
        {"kernel": "stream read (sum of 1 GiB fp32)", "shape": "-", "rows": 0, "GBps": big.numel() * 4 / t / 1e9}
    )
    del big
    for shape, (n, k) in SHAPES.items():
        weights = [torch.randn(n, k, generator=g).bfloat16() for _ in range(COPIES)]
        fp32 = [w.float() for w in weights[:2]]
        for rows in rows_list:
            x = torch.randn(rows, k, generator=g).bfloat16()
            table = candidates(weights, rows, compile_too and rows <= 8)
            for name, fn in table.items():
                if isinstance(fn, str):
                    results.append({"kernel": name, "shape": shape, "rows": rows, "error": fn})
                    continue
                t = median_s(lambda fn=fn, x=x: fn(x)) / len(weights)
                results.append(
                    {"kernel": name, "shape": shape, "rows": rows, "ms": 1e3 * t, "GBps": n * k * 2 / t / 1e9}
                )
            xf = x.float()
            t = median_s(lambda xf=xf, fp32=fp32: [_fp32_gemv(xf, w) for w in fp32]) / len(fp32)
            results.append(
                {"kernel": "fp32 oneDNN", "shape": shape, "rows": rows, "ms": 1e3 * t, "GBps": n * k * 4 / t / 1e9}
            )
            for r in results[-len(table) - 1 :]:
                print(json.dumps(r), flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 8, 266])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd linears (minutes to build)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = measure(args.rows, args.compile)
    print(f"\n{host_flags_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n| kernel | shape | rows | ms per weight | weight GB/s |\n|---|---|---|---|---|")
    for r in results:
        cells = (
            f"{r['ms']:.2f} | {r['GBps']:.1f}"
            if "ms" in r
            else (f"- | {r['GBps']:.1f}" if "GBps" in r else f"- | {r['error']}")
        )
        print(f"| {r['kernel']} | {r['shape']} | {r['rows']} | {cells} |")
    one = [r for r in results if r.get("rows") == 1 and "ms" in r and r["kernel"] != "fp32 oneDNN"]
    for shape in SHAPES:
        best = min((r for r in one if r["shape"] == shape), key=lambda r: r["ms"], default=None)
        if best:
            print(f"fastest bf16 at one row, {shape}: {best['kernel']} ({best['GBps']:.1f} GB/s)")


if __name__ == "__main__":
    main()
