"""Where a decode step's time goes: torch.profiler over a few steps of a real-size model.

    python -m benchmarks.profile_decode --quantize int8               # PaliGemma 1 3B 224 (random weights)
    python -m benchmarks.profile_decode --quantize int4 --steps 8 --dtype auto
    python -m benchmarks.profile_decode --dtype bfloat16

Loads the benchmark checkpoint (benchmarks.checkpoints) like the worker does, prefills one image
and the "caption en" prompt, runs ``--warm`` untimed decode steps, then ``--steps`` profiled ones.
Prints: the wall time per step, the ATen ops by self CPU time (how much of a step is the matmul
kernels against casts, attention, norms, copies), and the time per module kind (a forward hook per
module: the LM head, q/k/v/o, MLP projections, attention core, norms), with each kind's share of
the step. The kernel's own rate for the matmuls is what benchmarks.floors measures in isolation.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import torch

from benchmarks.checkpoints import build

PROMPT = "caption en"


def _module_timers(root: torch.nn.Module) -> tuple[dict[str, float], dict[str, int]]:
    """Forward hooks that add up wall time per module class name (leaf-ish modules only)."""
    totals: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    starts: dict[int, float] = {}

    def pre(module, _args):
        starts[id(module)] = time.perf_counter()

    def post(module, _args, _out):
        name = type(module).__name__
        totals[name] += time.perf_counter() - starts.pop(id(module))
        calls[name] += 1

    for module in root.modules():
        if not list(module.children()) or type(module).__name__.endswith("Attention"):
            module.register_forward_pre_hook(pre)
            module.register_forward_hook(post)
    return totals, calls


def main(argv: list[str] | None = None) -> None:
    from engine.causal_lm import PaliGemmaCausalLM
    from engine.generate import decode_step, prefill
    from engine.processing.tokenizer import PaliGemmaTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="pali_gemma_3b_224")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantize", default=None, choices=["int8", "int4"])
    parser.add_argument("--warm", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=30, help="profiler table rows")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or build(args.preset, None)
    lm = PaliGemmaCausalLM.from_preset(
        checkpoint, dtype=args.dtype, device="cpu", preprocessor=None, quantize=args.quantize
    )
    backbone = lm.backbone
    tok = PaliGemmaTokenizer.from_preset(checkpoint)
    ids = [tok.start_token_id, *tok.tokenize(PROMPT), tok.newline_token_id]
    size = backbone.config.image_size
    pixels = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    total = args.warm + 3 * args.steps + 1  # untimed, plain, profiled and hooked steps
    with torch.inference_mode():
        logits, state = prefill(backbone, pixels, [ids], [total])
        slot = backbone.num_image_tokens + len(ids)
        token = logits.argmax(-1)
        for _ in range(args.warm):
            token = decode_step(backbone, state, token, slot).argmax(-1)
            slot += 1
        t0 = time.perf_counter()
        for _ in range(args.steps):
            token = decode_step(backbone, state, token, slot).argmax(-1)
            slot += 1
        plain = (time.perf_counter() - t0) / args.steps
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.steps):
                token = decode_step(backbone, state, token, slot).argmax(-1)
                slot += 1
        totals, calls = _module_timers(backbone)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            token = decode_step(backbone, state, token, slot).argmax(-1)
            slot += 1
        hooked = (time.perf_counter() - t0) / args.steps
    print(f"{checkpoint} dtype={lm.dtype} quantize={args.quantize} threads={torch.get_num_threads()}")
    print(f"decode step: {plain * 1e3:.1f} ms (no profiler), {hooked * 1e3:.1f} ms with module hooks")
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print("Per module kind (hooked run), ms per step and share of the step:")
    for name, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        per_step = seconds / args.steps * 1e3
        print(f"  {name:28s} {per_step:8.1f} ms  {per_step / (hooked * 1e3):6.1%}  ({calls[name] // args.steps} calls)")


if __name__ == "__main__":
    main()
