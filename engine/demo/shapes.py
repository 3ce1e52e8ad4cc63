"""The synthetic shapes task: deterministic scenes, their images, and PaliGemma-style examples.

A scene holds one to three shapes of different kinds (circle, square, triangle), each in one of a
few colours, on a plain light-grey background, none overlapping. Geometry lives on a GRID x GRID
integer grid whose unit is 8 detection bins (1024 / 128), so every box edge is an exact
``<locNNNN>`` token; images are rendered from the geometry at any size (supersampled, so edges are
antialiased and a 224 px sample looks like a 112 px training image, only sharper).

Three kinds of examples, all with the prompts engine.processing.tasks builds (so they match the CLI's):

    caption en                           -> a red circle, a blue square and a green triangle
    answer en what color is the circle?  -> red
    detect square                        -> <loc0208><loc0456><loc0536><loc0784> square

Captions list the shapes in a fixed order (circle, square, triangle) so each scene has exactly one
right caption. Boxes are ``y_min, x_min, y_max, x_max`` (PaliGemma's order: big_vision refcoco_mask2str) and tight
around the drawn shape. Everything is a pure function of a ``random.Random``: the same seed gives
the same scenes, images and texts on every machine.

    python -m engine.demo.shapes --out demo_images --count 4 --size 224
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.errors import InputError
from engine.processing.tasks import answer_prompt, caption_prompt, detect_prompt

GRID = 128  # geometry units per image side; one unit = 1024 / GRID = 8 detection bins
BINS_PER_UNIT = 1024 // GRID
KINDS = ("circle", "square", "triangle")  # also the caption order
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
}
TASKS = ("caption", "vqa", "detect")
MIN_SIZE, MAX_SIZE = 24, 44  # shape side in grid units (19% to 34% of the image side)
MARGIN, GAP = 3, 4  # units kept free at the image border and between shapes
COLOR_JITTER = 12  # +- per RGB channel, so colours are categories, not exact values
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Shape:
    kind: str  # one of KINDS
    color: str  # one of COLORS
    rgb: tuple[int, int, int]  # the jittered colour actually drawn
    x: int  # left edge, grid units
    y: int  # top edge, grid units
    size: int  # side of the bounding square, grid units

    @property
    def box(self) -> tuple[float, float, float, float]:
        """``(x_min, y_min, x_max, y_max)`` as fractions of the image side."""
        return (self.x / GRID, self.y / GRID, (self.x + self.size) / GRID, (self.y + self.size) / GRID)

    @property
    def loc_text(self) -> str:
        """The four location tokens, y_min x_min y_max x_max."""
        edges = (self.y, self.x, self.y + self.size, self.x + self.size)
        return "".join(f"<loc{min(e * BINS_PER_UNIT, 1023):04d}>" for e in edges)


@dataclass(frozen=True)
class Scene:
    background: int  # grey level of the plain background
    shapes: tuple[Shape, ...]  # in caption order

    def shape(self, kind: str) -> Shape | None:
        return next((s for s in self.shapes if s.kind == kind), None)

    def render(self, size: int) -> Image.Image:
        """The scene as an RGB ``size`` x ``size`` image."""
        big = size * SUPERSAMPLE
        image = Image.new("RGB", (big, big), (self.background,) * 3)
        self._draw(ImageDraw.Draw(image), big / GRID, lambda s: s.rgb)
        return image.resize((size, size), Image.Resampling.BOX)

    def label_map(self, size: int) -> np.ndarray:
        """uint8[size, size]: 0 on the background, 1 + KINDS.index(kind) on each shape (no
        antialiasing), for training signals that need to know which pixel belongs to what."""
        image = Image.new("L", (size, size), 0)
        self._draw(ImageDraw.Draw(image), size / GRID, lambda s: 1 + KINDS.index(s.kind))
        return np.asarray(image)

    def _draw(self, draw: ImageDraw.ImageDraw, scale: float, fill) -> None:
        for s in self.shapes:
            x0, y0 = s.x * scale, s.y * scale
            x1, y1 = (s.x + s.size) * scale - 1, (s.y + s.size) * scale - 1  # PIL's far edge is inclusive
            if s.kind == "circle":
                draw.ellipse((x0, y0, x1, y1), fill=fill(s))
            elif s.kind == "square":
                draw.rectangle((x0, y0, x1, y1), fill=fill(s))
            else:  # apex at the top middle, base along the bottom edge
                draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill(s))


@dataclass(frozen=True)
class Example:
    scene: Scene
    task: str  # one of TASKS
    prefix: str  # the prompt, ending with the "\n" separator
    suffix: str  # the expected answer
    target: Shape | None = None  # the shape asked about (vqa, detect)


def _overlaps(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    (ax, ay, asz), (bx, by, bsz) = a, b
    return ax < bx + bsz + GAP and bx < ax + asz + GAP and ay < by + bsz + GAP and by < ay + asz + GAP


def random_scene(rng: random.Random) -> Scene:
    """One to three non-overlapping shapes of distinct kinds."""
    kinds = rng.sample(KINDS, rng.randint(1, len(KINDS)))
    placed: list[tuple[str, int, int, int]] = []
    for kind in kinds:
        for _ in range(200):
            size = rng.randint(MIN_SIZE, MAX_SIZE)
            x = rng.randint(MARGIN, GRID - MARGIN - size)
            y = rng.randint(MARGIN, GRID - MARGIN - size)
            if not any(_overlaps((x, y, size), (px, py, ps)) for _, px, py, ps in placed):
                placed.append((kind, x, y, size))
                break
        # A kind that found no free spot is left out; the draws above are still consumed the same
        # way on every machine, so the scene stays a pure function of the seed.
    shapes = []
    for kind, x, y, size in sorted(placed, key=lambda p: KINDS.index(p[0])):
        color = rng.choice(list(COLORS))
        r, g, b = (min(255, max(0, c + rng.randint(-COLOR_JITTER, COLOR_JITTER))) for c in COLORS[color])
        rgb = (r, g, b)
        shapes.append(Shape(kind, color, rgb, x, y, size))
    return Scene(background=rng.randint(225, 255), shapes=tuple(shapes))


def caption(scene: Scene) -> str:
    """``"a red circle"``, ``"a red circle and a blue square"``, ``"a red circle, a blue square and
    a green triangle"``."""
    parts = [f"a {s.color} {s.kind}" for s in scene.shapes]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def color_question(kind: str) -> str:
    return f"what color is the {kind}?"


def make_example(scene: Scene, task: str, kind: str | None = None) -> Example:
    """The example of ``task`` about ``scene``; vqa and detect ask about the shape ``kind``."""
    if task == "caption":
        return Example(scene, task, caption_prompt("en"), caption(scene))
    target = scene.shape(kind) if kind else None
    if target is None or kind is None:
        raise InputError(f"the scene has no {kind!r}; ask about one of {[s.kind for s in scene.shapes]}")
    if task == "vqa":
        return Example(scene, task, answer_prompt(color_question(kind)), target.color, target)
    if task == "detect":
        return Example(scene, task, detect_prompt(kind), f"{target.loc_text} {kind}", target)
    raise InputError(f"unknown task {task!r}; choose one of {TASKS}")


def random_example(rng: random.Random, weights: dict[str, float] | None = None) -> Example:
    """A fresh scene and one example on it; ``weights`` is the task mix (default: equal)."""
    weights = weights or {t: 1.0 for t in TASKS}
    scene = random_scene(rng)
    task = rng.choices(list(weights), weights=list(weights.values()))[0]
    kind = None if task == "caption" else rng.choice(scene.shapes).kind
    return make_example(scene, task, kind)


def examples(seed: int, count: int, weights: dict[str, float] | None = None) -> list[Example]:
    """``count`` examples drawn from ``random.Random(seed)``."""
    rng = random.Random(seed)
    return [random_example(rng, weights) for _ in range(count)]


class ShapesBatches:
    """A re-iterable training stream for ``engine.train.fit``: ``num_batches`` batches of
    ``{"images": uint8[B, S, S, 3], "prefixes": [...], "suffixes": [...]}``, every example on a
    fresh scene. Each pass over it yields the same batches (the seed restarts)."""

    def __init__(
        self, seed: int, batch_size: int, num_batches: int, image_size: int, weights: dict[str, float] | None = None
    ):
        self.seed, self.batch_size, self.num_batches = seed, batch_size, num_batches
        self.image_size, self.weights = image_size, weights

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(self.seed)
        for _ in range(self.num_batches):
            batch = [random_example(rng, self.weights) for _ in range(self.batch_size)]
            yield {
                "images": np.stack([np.asarray(e.scene.render(self.image_size)) for e in batch]),
                "prefixes": [e.prefix for e in batch],
                "suffixes": [e.suffix for e in batch],
            }


def write_samples(out: Path, seed: int, count: int, size: int) -> list[dict]:
    """Write ``count`` scenes as PNGs plus ``truth.jsonl`` (caption, colours, boxes) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(count):
        scene = random_scene(rng)
        name = f"shapes_{seed}_{i:03d}.png"
        scene.render(size).save(out / name)
        records.append(
            {
                "image": name,
                "caption": caption(scene),
                "shapes": [
                    {
                        "kind": s.kind,
                        "color": s.color,
                        "detection": f"{s.loc_text} {s.kind}",
                        "box_xyxy_pixels": [round(v * size, 1) for v in s.box],
                    }
                    for s in scene.shapes
                ],
            }
        )
    with open(out / "truth.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write sample images of the pali-demo-shapes task.")
    parser.add_argument("--out", type=Path, required=True, help="directory for the PNGs and truth.jsonl")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    args = parser.parse_args(argv)
    for r in write_samples(args.out, args.seed, args.count, args.size):
        print(f"{args.out / r['image']}: {r['caption']}")


if __name__ == "__main__":
    main()
