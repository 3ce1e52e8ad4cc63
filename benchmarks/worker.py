"""One measured run in its own process: import, load, one greedy generation; prints one JSON line.

    python -m benchmarks.worker --side ours --checkpoint DIR --dtype bfloat16 --batch 1 --prompt-ids 2,420,4
    python -m benchmarks.worker --side hf   --checkpoint DIR --dtype bfloat16 --batch 1 --prompt-ids 2,420,4

Both sides get the same inputs: pixel values drawn from a fixed seed (row i from seed + i) and the
same prompt ids (computed once by the harness with our tokenizer), 256 image tokens + the prompt,
exactly ``--new-tokens`` greedy tokens (no stop token), so both do the same work. Times are from
``time.perf_counter``; ``import_s`` counts from interpreter start (so it includes Python's own start).

``--device cuda`` runs both sides on a GPU (timestamps after a device synchronize; ``peak_gpu_gib``
is torch's peak allocation); ``--warmup`` first runs an untimed 2-token generation, so CUDA's
one-off start-up (context, kernels) is not counted as time to first token.

``--score FILE`` (teacher forcing) instead writes the fp32 logits that predict each of the given
tokens to ``--dump``: the harness compares them across modes (cosine similarity, top-1 agreement).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

NUM_TOP = 5  # per-step top logits of row 0, to explain any divergence between the two sides


def _process_start() -> float:
    """Seconds on the perf_counter clock when this process started (for import time)."""
    with open(f"/proc/{os.getpid()}/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    return time.perf_counter() - age


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


def pixel_values(batch: int, size: int, seed: int):
    import torch

    rows = [
        torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed + i)) * 2 - 1 for i in range(batch)
    ]
    return torch.cat(rows)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _device_memory(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {}
    return {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 1024**3, "gpu": torch.cuda.get_device_name()}


def _top(logits) -> list:
    values, ids = logits.float().topk(NUM_TOP)
    return [[int(i), round(float(v), 4)] for i, v in zip(ids, values, strict=True)]


def run_ours(args, t_start: float) -> dict:
    import torch

    from engine import PaliGemmaCausalLM
    from engine.generate import stream_tokens

    t_import = time.perf_counter()
    options = {"quantize": args.quantize} if args.quantize else {}
    lm = PaliGemmaCausalLM.from_preset(
        args.checkpoint, dtype=args.dtype, device=args.device, preprocessor=None, **options
    )
    _sync(args.device)
    t_load = time.perf_counter()
    backbone = lm.backbone
    size = backbone.config.image_size
    pixels = pixel_values(args.batch, size, args.seed).to(args.device)
    prompts = [args.prompt_ids] * args.batch
    if args.score:
        return _score_ours(args, backbone, pixels)
    if args.warmup:
        for _ in stream_tokens(backbone, pixels[:1], prompts[:1], [2], lambda logits: logits.argmax(-1)):
            pass
        _sync(args.device)
    tops: list = []

    def sample(logits: torch.Tensor) -> torch.Tensor:
        tops.append(_top(logits[0]))
        return logits.argmax(-1)

    tokens: list[list[int]] = [[] for _ in range(args.batch)]
    stamps = []
    t0 = time.perf_counter()
    for rows, new in stream_tokens(backbone, pixels, prompts, [args.new_tokens] * args.batch, sample):
        stamps.append(time.perf_counter())
        for row, token in zip(rows, new, strict=True):
            tokens[row].append(token)
    # each stamp is taken after stream_tokens handed the step's tokens to the host (a device sync)
    return _timings(args, t_start, t_import, t_load, t0, stamps, tokens, tops, weight_bytes(backbone))


def weight_bytes(module) -> int:
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _score_ours(args, backbone, pixels) -> dict:
    import torch

    generated = json.loads(Path(args.score).read_text())
    ids = torch.tensor([args.prompt_ids + generated])
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[0, len(args.prompt_ids) :] = True
    with torch.inference_mode():
        logits = backbone(pixels[:1], ids, response_mask=response)[0]  # (T, V)
    # logits at position p predict token p + 1: keep the ones predicting the generated tokens
    torch.save(logits[len(args.prompt_ids) - 1 : -1].float().clone(), args.dump)
    return {"scored": len(generated)}


class _Stamps:
    """A transformers streamer that only records when each new token arrives."""

    def __init__(self, device: str = "cpu"):
        self.times: list[float] = []
        self.calls = 0
        self.device = device

    def put(self, value) -> None:
        self.calls += 1
        if self.calls > 1:  # the first call hands over the prompt
            _sync(self.device)
            self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def run_hf(args, t_start: float) -> dict:
    import torch
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PaliGemmaForConditionalGeneration

    t_import = time.perf_counter()
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    loaded: Any = PaliGemmaForConditionalGeneration.from_pretrained(
        args.checkpoint, dtype=dtype, output_loading_info=True
    )
    model, info = loaded  # (model, loading info) with output_loading_info=True
    missing = [m for m in info.get("missing_keys", ()) if "lm_head" not in m]  # the head is tied
    if missing or info.get("unexpected_keys") or info.get("mismatched_keys"):
        raise SystemExit(
            f"{args.checkpoint}: transformers reports missing {missing}, unexpected "
            f"{info.get('unexpected_keys')}, mismatched {info.get('mismatched_keys')}"
        )
    model.eval().to(args.device)
    _sync(args.device)
    t_load = time.perf_counter()
    size = model.config.vision_config.image_size
    pixels = pixel_values(args.batch, size, args.seed).to(dtype).to(args.device)
    n_img = (size // model.config.vision_config.patch_size) ** 2
    row = [model.config.image_token_id] * n_img + list(args.prompt_ids)
    input_ids = torch.tensor([row] * args.batch, device=args.device)
    extra = dict(attention_mask=torch.ones_like(input_ids), token_type_ids=torch.zeros_like(input_ids))
    if args.score:
        return _score_hf(args, model, pixels, row)
    if args.warmup:
        short = GenerationConfig(max_new_tokens=2, do_sample=False, eos_token_id=None, pad_token_id=0, bos_token_id=2)
        one = {k: v[:1] for k, v in extra.items()}
        model.generate(input_ids=input_ids[:1], pixel_values=pixels[:1], generation_config=short, **one)
        _sync(args.device)
    tops: list = []

    class Record(LogitsProcessor):
        def __call__(self, input_ids, scores):
            tops.append(_top(scores[0]))
            return scores

    config = GenerationConfig(
        max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0, bos_token_id=2
    )
    stamps = _Stamps(args.device)
    t0 = time.perf_counter()
    out = model.generate(
        input_ids=input_ids,
        pixel_values=pixels,
        generation_config=config,
        streamer=stamps,
        logits_processor=LogitsProcessorList([Record()]),
        **extra,
    )
    tokens = out[:, input_ids.shape[1] :].tolist()
    return _timings(args, t_start, t_import, t_load, t0, stamps.times, tokens, tops, weight_bytes(model))


def _score_hf(args, model, pixels, row) -> dict:
    import torch

    generated = json.loads(Path(args.score).read_text())
    ids = torch.tensor([row + generated])
    types = torch.tensor([[0] * len(row) + [1] * len(generated)])
    with torch.no_grad():
        logits = model(
            input_ids=ids, pixel_values=pixels[:1], token_type_ids=types, attention_mask=torch.ones_like(ids)
        ).logits[0]
    torch.save(logits[len(row) - 1 : -1].float().clone(), args.dump)
    return {"scored": len(generated)}


def _timings(args, t_start, t_import, t_load, t0, stamps, tokens, tops, nbytes) -> dict:
    n = len(stamps)
    if any(len(t) != args.new_tokens for t in tokens):
        raise SystemExit(f"expected {args.new_tokens} tokens per row, got {[len(t) for t in tokens]}")
    total = stamps[-1] - t0
    return {
        "import_s": t_import - t_start,
        "load_s": t_load - t_import,
        "ttft_s": stamps[0] - t0,
        "decode_ms_per_token": 1000 * (stamps[-1] - stamps[0]) / max(n - 1, 1),
        "generate_s": total,
        "images_per_s": args.batch / total,
        "tokens_per_s": args.batch * (n - 1) / max(stamps[-1] - stamps[0], 1e-9),
        "start_to_first_token_s": stamps[0] - t_start,
        "peak_rss_gib": peak_rss_gib(),
        "weight_gib": nbytes / 1024**3,
        "device": args.device,
        **_device_memory(args.device),
        "tokens": tokens,
        "top": tops,
    }


def main(argv: list[str] | None = None) -> None:
    t_start = _process_start()
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=("ours", "hf"), required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dtype", default="bfloat16", choices=("auto", "bfloat16", "float32"))
    parser.add_argument("--quantize", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-ids", type=lambda s: [int(x) for x in s.split(",")], required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument("--warmup", action="store_true", help="an untimed 2-token generation first (GPUs)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--score", default=None, help="JSON list of generated ids to score with teacher forcing")
    parser.add_argument("--dump", default=None, help="where --score writes its logits (torch.save)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = (run_ours if args.side == "ours" else run_hf)(args, t_start)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
