"""Stage 1 of the demo recipe: pretrain the vision tower alone, as PaliGemma's SigLIP was pretrained
before the multimodal stage.

A ViT trained from scratch learns colours quickly but the shape of an object slowly: a 112 px
image in 14 px patches cuts every shape into a few fragments, and the tower has to learn to
relate them. Trained only through the decoder, it had not done so after 60k examples (single-shape
captions named the right shape one time in three, chance level). Given a direct signal here, it does
within a few thousand small steps, and the multimodal stage then only has to learn to read it.

Two signals, both through small linear heads that are thrown away afterwards: per scene, for every
shape kind, its colour or "absent" (a 6-way choice per kind, from the mean of the output tokens);
and per patch, which kind covers it, if any (so every token learns what object it is part of,
which is what the decoder later reads to caption, answer and find that object). Small batches (16)
learn this fastest per example: the tower needs many updates more than large ones.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from engine.demo import shapes
from engine.model.vision import VisionTower
from engine.processing.image import preprocess_images

COLOR_NAMES = tuple(shapes.COLORS)


def scene_labels(scene: shapes.Scene) -> list[int]:
    """Per kind (in KINDS order): 0 if absent, else 1 + the index of its colour."""
    labels = []
    for kind in shapes.KINDS:
        shape = scene.shape(kind)
        labels.append(0 if shape is None else 1 + COLOR_NAMES.index(shape.color))
    return labels


def patch_labels(scene: shapes.Scene, image_size: int, patch_size: int) -> list[int]:
    """Per patch (row-major, as the tower orders its tokens): the kind (1 + KINDS index) that
    covers most of the patch if shapes cover at least a quarter of it, else 0 (background)."""
    grid = image_size // patch_size
    m = scene.label_map(image_size)[: grid * patch_size, : grid * patch_size]
    patches = m.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.stack([(patches == k).sum(1) for k in range(1 + len(shapes.KINDS))], 1)  # (N, 1 + kinds)
    covered = counts[:, 1:].sum(1) * 4 >= patch_size * patch_size
    return np.where(covered, 1 + counts[:, 1:].argmax(1), 0).tolist()


def pretrain_vision(
    tower: VisionTower,
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    seed: int = 1,
    callback: Callable[[int, float, float, float], None] | None = None,
) -> float:
    """Train ``tower`` in place; returns the label accuracy over the last 10% of steps.
    ``callback(step, loss, accuracy, seconds)`` is called every step."""
    size = tower.cfg.image_size
    device = tower.patch_embedding.weight.device
    head = torch.nn.Linear(tower.cfg.hidden_size, len(shapes.KINDS) * (1 + len(COLOR_NAMES)), device=device)
    patch_head = torch.nn.Linear(tower.cfg.hidden_size, 1 + len(shapes.KINDS), device=device)
    params = [*tower.parameters(), *head.parameters(), *patch_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    rng = random.Random(seed)
    tower.train().requires_grad_(True)
    accuracies: list[float] = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        scenes = [shapes.random_scene(rng) for _ in range(batch_size)]
        pixels = preprocess_images(np.stack([np.asarray(s.render(size)) for s in scenes]), size).to(device)
        labels = torch.tensor([scene_labels(s) for s in scenes], device=device)  # (B, kinds)
        per_patch = torch.tensor([patch_labels(s, size, tower.cfg.patch_size) for s in scenes], device=device)  # (B, N)
        tokens = tower(pixels)  # (B, N, C)
        logits = head(tokens.mean(dim=1)).view(batch_size, len(shapes.KINDS), -1)  # (B, kinds, 6)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        loss = loss + F.cross_entropy(patch_head(tokens).flatten(0, 1), per_patch.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        accuracies.append((logits.argmax(-1) == labels).float().mean().item())
        if callback is not None:
            callback(step, loss.item(), accuracies[-1], time.perf_counter() - start)
    tail = accuracies[-max(1, steps // 10) :]
    return sum(tail) / len(tail)
