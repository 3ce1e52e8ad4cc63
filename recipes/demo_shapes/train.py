"""Train the bundled demo model (preset ``pali-demo-shapes``) from scratch on the shapes task.

    python -m recipes.demo_shapes.train                   # writes engine/demo_model/ (about 30 min, 2 cores)
    python -m recipes.demo_shapes.train --out /tmp/demo   # anywhere else

The model is a PaliGemma 2 in miniature (1.5 M parameters): a SigLIP-style tower on 112 px images
in 14 px patches (an 8 x 8 grid, 64 image tokens, as So400m/14 makes 256 at 224 px) and a Gemma 2
decoder (post-norms, soft-caps, grouped-query attention). The recipe follows PaliGemma's own
order, vision first:

1. the vision tower alone learns which shape and colour each patch and scene holds
   (recipes.demo_shapes.vision_pretrain; PaliGemma starts from a pretrained SigLIP for the same reason);
2. decoder and projector learn the three tasks with the tower frozen, so their random early
   gradients cannot wash out what the tower learnt;
3. everything trains together at a lower rate, which sharpens the boxes;
4. a short polish at a lower rate still, on a mix weighted towards detection (boxes are the last
   thing to settle: it lifts held-out IoU > 0.5 by about four points).

Stages 2 to 4 are engine.train's ``fit`` (the suffix-only objective, prefix-LM mask, AdamW,
clipping) on fresh streams of examples. Everything is seeded (tokenizer, init, data), so a rerun on
the same torch build reproduces the weights up to floating-point summation order.

Initialisation is ours: token embeddings with std 1/sqrt(H), so that the sqrt(H)-scaled inputs
and the tied head's logits start at unit scale; the 1024 ``<loc>`` rows as smooth functions of
their index (random mixtures of sinusoids), so neighbouring bins start out similar; and the
tower's position table at std 0.02, so it does not drown the patch contents.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

# Spinning OpenMP workers slow down tenfold when the two cores are shared with other processes;
# waiting passively costs little when they are not. Must be set before torch starts its pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from engine.demo import shapes
from engine.model.backbone import PaliGemmaBackbone
from engine.model.config import PaliGemmaConfig, TextConfig, VisionConfig
from engine.processing.preprocessor import PaliGemmaCausalLMPreprocessor
from engine.processing.tokenizer import NUM_LOC_TOKENS, PaliGemmaTokenizer
from engine.train import StepReport, TrainConfig, fit
from recipes.demo_shapes.tokenizer import train_demo_tokenizer
from recipes.demo_shapes.vision_pretrain import pretrain_vision

DEMO_DIR = Path(__file__).resolve().parents[2] / "engine" / "demo_model"
IMAGE_SIZE = 112
TRAIN_SEED = 0  # data stream; evaluation uses other seeds (recipes.demo_shapes.evaluate)
VISION_SEED = 100  # stage 1 scenes
INIT_SEED = 0
TASK_WEIGHTS = {"caption": 0.3, "vqa": 0.25, "detect": 0.45}  # boxes are the hardest to learn, colours the easiest
POLISH_WEIGHTS = {"caption": 0.3, "vqa": 0.1, "detect": 0.6}
DEMO_SIZES = dict(
    image_size=IMAGE_SIZE,
    patch_size=14,
    vision_hidden=96,
    vision_layers=4,
    text_hidden=128,
    text_mlp=384,
    text_layers=4,
    text_heads=4,
    text_kv_heads=1,
)


def demo_config(vocab_size: int, **sizes: int) -> PaliGemmaConfig:
    """The demo architecture; ``sizes`` overrides DEMO_SIZES entries (for experiments)."""
    z = {**DEMO_SIZES, **sizes}
    vision = VisionConfig(
        hidden_size=z["vision_hidden"],
        intermediate_size=4 * z["vision_hidden"],
        num_layers=z["vision_layers"],
        num_heads=z["vision_hidden"] // 32,
        image_size=z["image_size"],
        patch_size=z["patch_size"],
    )
    text = TextConfig(
        variant="gemma2",
        vocab_size=vocab_size,
        hidden_size=z["text_hidden"],
        intermediate_size=z["text_mlp"],
        num_layers=z["text_layers"],
        num_heads=z["text_heads"],
        num_kv_heads=z["text_kv_heads"],
        head_dim=z["text_hidden"] // z["text_heads"],
        query_pre_attn_scalar=float(z["text_hidden"] // z["text_heads"]),
        attn_logit_softcap=50.0,
        final_logit_softcap=30.0,
        sliding_window=4096,
    )
    return PaliGemmaConfig(vision=vision, text=text)


def _padded_vocab(tokenizer_size: int) -> int:
    # As in the released checkpoints: room for <image> after the pieces, rounded up to 64 rows.
    return math.ceil((tokenizer_size + 1) / 64) * 64


def init_demo_weights(model: PaliGemmaBackbone, tokenizer: PaliGemmaTokenizer, seed: int) -> None:
    """Embedding rows at std 1/sqrt(H); loc rows smooth in their index; the vision tower's position
    table small, so patch contents are not drowned by an N(0, 1) position code at the start."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        table = model.vision_tower.position_embedding.weight
        table.copy_(torch.randn(table.shape, generator=g) * 0.02)
    weight = model.language_model.embed_tokens.weight
    h = weight.shape[1]
    with torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=g) * h**-0.5)
        first = tokenizer.loc_token_id(0)
        index = torch.arange(NUM_LOC_TOKENS, dtype=torch.float32)[:, None] / NUM_LOC_TOKENS  # (1024, 1)
        freqs = 2.0 ** torch.linspace(-1, 6, 16)[None, :]  # 0.5 to 64 cycles across the image
        features = torch.cat([torch.cos(2 * math.pi * freqs * index), torch.sin(2 * math.pi * freqs * index)], 1)
        mix = torch.randn(features.shape[1], h, generator=g)  # (32, H)
        smooth = features @ mix
        smooth = smooth / smooth.norm(dim=1, keepdim=True)  # norm 1, as the N(0, 1/H) rows have
        weight[first : first + NUM_LOC_TOKENS] = smooth


def build(tokenizer_path: Path, seed: int = INIT_SEED, **sizes: int):
    """A fresh, randomly initialised demo PaliGemmaCausalLM (its tokenizer trained into tokenizer_path)."""
    from engine.causal_lm import PaliGemmaCausalLM

    torch.manual_seed(seed)
    tokenizer = PaliGemmaTokenizer(train_demo_tokenizer(tokenizer_path))
    config = demo_config(_padded_vocab(tokenizer.vocabulary_size()), **sizes)
    backbone = PaliGemmaBackbone(config)
    init_demo_weights(backbone, tokenizer, seed)
    pre = PaliGemmaCausalLMPreprocessor(tokenizer, config.image_size, sequence_length=64)
    return PaliGemmaCausalLM(backbone, pre)


def _stage2_reporter(name: str) -> Callable[[StepReport], None]:
    window: list[float] = []

    def report(r: StepReport) -> None:
        window.append(r.loss)
        if r.step % 250 == 0 or r.step == r.total_steps:
            print(
                f"{name} step {r.step:5d}/{r.total_steps}  loss {sum(window) / len(window):.4f}  "
                f"lr {r.learning_rate:.2e}  |g| {r.grad_norm:.2f}  {r.seconds:6.0f} s",
                flush=True,
            )
            window.clear()

    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the pali-demo-shapes model from scratch.")
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help="checkpoint directory (default: the package's)")
    parser.add_argument("--vision-steps", type=int, default=2500, help="stage 1: vision tower alone")
    parser.add_argument("--frozen-steps", type=int, default=2000, help="stage 2: decoder and projector, tower frozen")
    parser.add_argument("--steps", type=int, default=2000, help="stage 3: everything")
    parser.add_argument("--polish-steps", type=int, default=900, help="stage 4: everything, detection-weighted")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="stages 1 and 2")
    parser.add_argument("--final-learning-rate", type=float, default=3e-4, help="stage 3")
    parser.add_argument("--polish-learning-rate", type=float, default=1e-4, help="stage 4")
    parser.add_argument("--threads", type=int, default=2)
    return parser


def _stages(args: argparse.Namespace) -> tuple[TrainConfig, TrainConfig, TrainConfig, TrainConfig]:
    """The shared settings, then stages 2, 3 and 4 (the last one run writes the checkpoint)."""
    lr = args.learning_rate
    common = TrainConfig(weight_decay=0.01, schedule="cosine", max_grad_norm=1.0, precision="float32", batch_size=None)
    stage2 = replace(common, learning_rate=lr, warmup_steps=200, freeze=("vision_tower",))
    last = "polish" if args.polish_steps else "all"  # the last stage writes the checkpoint
    stage3 = replace(
        common,
        learning_rate=args.final_learning_rate,
        warmup_steps=100,
        checkpoint_dir=args.out if last == "all" else None,
    )
    stage4 = replace(common, learning_rate=args.polish_learning_rate, warmup_steps=50, checkpoint_dir=args.out)
    return common, stage2, stage3, stage4


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    lm = build(args.out / "tokenizer.model", INIT_SEED)
    n_params = sum(p.numel() for p in lm.backbone.parameters())
    lr, bs = args.learning_rate, args.batch_size
    common, stage2, stage3, stage4 = _stages(args)
    print(
        f"pali-demo-shapes: {n_params / 1e6:.2f} M parameters, {lm.backbone.num_image_tokens} image tokens, "
        f"vocabulary {lm.preprocessor.tokenizer.vocabulary_size()}, sizes {DEMO_SIZES}"
    )
    print(
        f"settings: steps (vision, frozen, all, polish)=({args.vision_steps}, {args.frozen_steps}, {args.steps}, "
        f"{args.polish_steps}) batch_size={bs} lr={lr} (stage 3: {stage3.learning_rate:g}, stage 4: "
        f"{stage4.learning_rate:g}) weight_decay={common.weight_decay} clip={common.max_grad_norm} "
        f"tasks={TASK_WEIGHTS} (stage 4: {POLISH_WEIGHTS}) seeds (init, vision, data)=({INIT_SEED}, {VISION_SEED}, "
        f"{TRAIN_SEED}) threads={args.threads} torch={torch.__version__}",
        flush=True,
    )
    start = time.perf_counter()
    size = lm.backbone.config.image_size

    def report_vision(step: int, loss: float, accuracy: float, seconds: float) -> None:
        if step % 250 == 0 or step == args.vision_steps:
            print(
                f"stage 1 step {step:5d}/{args.vision_steps}  loss {loss:.4f}  label accuracy {accuracy:.2f}  "
                f"{seconds:6.0f} s",
                flush=True,
            )

    if args.vision_steps:
        pretrain_vision(lm.backbone.vision_tower, args.vision_steps, bs, lr, 100, VISION_SEED, report_vision)
    if args.frozen_steps:
        data = shapes.ShapesBatches(TRAIN_SEED, bs, args.frozen_steps, size, TASK_WEIGHTS)
        fit(lm, data, stage2, callback=_stage2_reporter("stage 2"))
    data = shapes.ShapesBatches(TRAIN_SEED + 1, bs, args.steps, size, TASK_WEIGHTS)  # fresh scenes
    history = fit(lm, data, stage3, callback=_stage2_reporter("stage 3"))
    if args.polish_steps:
        data = shapes.ShapesBatches(TRAIN_SEED + 2, bs, args.polish_steps, size, POLISH_WEIGHTS)
        history = fit(lm, data, stage4, callback=_stage2_reporter("stage 4"))
    final = sum(history.losses[-100:]) / len(history.losses[-100:])
    summary = {"seconds_total": round(time.perf_counter() - start, 1), "final_loss_last100": round(final, 4)}
    print(json.dumps(summary))
    print(f"wrote {args.out}; run `python -m recipes.demo_shapes.evaluate --model {args.out}` for held-out scores")


if __name__ == "__main__":
    main()
