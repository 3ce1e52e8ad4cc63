"""Held-out scores of a shapes model: exact-match captions, colour VQA accuracy, detection IoU > 0.5.

    python -m recipes.demo_shapes.evaluate                     # the bundled pali-demo-shapes model
    python -m recipes.demo_shapes.evaluate --model DIR --count 300 --seed 7

Every example is a fresh scene drawn from a seed the training stream never used, and the truth is
what the generator drew. A detection counts when the first box in the output overlaps the drawn
box with IoU > 0.5 (the label is reported separately). Prompts go through the same public API the
CLI uses (``PaliGemmaCausalLM.complete``), greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from engine.demo import shapes
from engine.processing.tasks import parse_detections

HELD_OUT_SEED = 20_250_101  # training uses seed 0 (recipes.demo_shapes.train.TRAIN_SEED)
PRESET = "pali-demo-shapes"


@dataclass(frozen=True)
class Scores:
    caption_exact: float
    vqa_accuracy: float
    detection_iou50: float
    detection_label: float  # detections whose label names the asked shape
    count: int  # examples per task


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x_min, y_min, x_max, y_max) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def held_out_examples(seed: int, count: int) -> dict[str, list[shapes.Example]]:
    """``count`` examples per task, each on its own fresh scene; vqa/detect ask about a random shape."""
    rng = random.Random(seed)
    out: dict[str, list[shapes.Example]] = {t: [] for t in shapes.TASKS}
    for task in shapes.TASKS:
        for _ in range(count):
            scene = shapes.random_scene(rng)
            kind = None if task == "caption" else rng.choice(scene.shapes).kind
            out[task].append(shapes.make_example(scene, task, kind))
    return out


def answers(lm, examples: Sequence[shapes.Example], batch_size: int = 50) -> list[str]:
    """The model's greedy outputs for the examples' images and prompts."""
    size = lm.backbone.config.image_size
    texts: list[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        done = lm.complete([e.scene.render(size) for e in chunk], [e.prefix for e in chunk], max_new_tokens=32)
        texts.extend(c.text for c in done)
    return texts


def detection_hit(text: str, example: shapes.Example) -> tuple[bool, bool]:
    """(IoU > 0.5, label right) for the first box of a detection output."""
    found = parse_detections(text, 1, 1)
    if not found:
        return False, False
    first, target = found[0], example.target
    assert target is not None, "a detection example names its target shape"
    return iou(first.normalized, target.box) > 0.5, first.label == target.kind


def evaluate(lm, seed: int = HELD_OUT_SEED, count: int = 200) -> Scores:
    ex = held_out_examples(seed, count)
    captions = answers(lm, ex["caption"])
    vqa = answers(lm, ex["vqa"])
    det = [detection_hit(t, e) for t, e in zip(answers(lm, ex["detect"]), ex["detect"], strict=True)]
    return Scores(
        caption_exact=sum(t == e.suffix for t, e in zip(captions, ex["caption"], strict=True)) / count,
        vqa_accuracy=sum(t.strip() == e.suffix for t, e in zip(vqa, ex["vqa"], strict=True)) / count,
        detection_iou50=sum(hit for hit, _ in det) / count,
        detection_label=sum(label for _, label in det) / count,
        count=count,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Held-out scores of the pali-demo-shapes model.")
    parser.add_argument("--model", default=PRESET, help="preset name or checkpoint directory")
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    parser.add_argument("--count", type=int, default=200, help="examples per task")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    # As in train_demo: passive OpenMP waiting keeps shared cores from collapsing (set before torch loads).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from engine.causal_lm import PaliGemmaCausalLM

    torch.set_num_threads(args.threads)
    lm = PaliGemmaCausalLM.from_preset(args.model, dtype=args.dtype, device="cpu")
    start = time.perf_counter()
    scores = evaluate(lm, args.seed, args.count)
    print(
        f"model={args.model} dtype={lm.dtype} seed={args.seed} examples per task={args.count} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    print(f"caption exact match  {scores.caption_exact:6.1%}")
    print(f"VQA colour accuracy  {scores.vqa_accuracy:6.1%}")
    print(f"detection IoU > 0.5  {scores.detection_iou50:6.1%}  (label right: {scores.detection_label:.1%})")
    print(json.dumps(asdict(scores)))


if __name__ == "__main__":
    main()
