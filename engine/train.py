"""Training and fine-tuning PaliGemma: big_vision's objective in a plain PyTorch loop.

Objective (spec §7.1, §8.2). A training row is ``[image][BOS prefix "\\n"][suffix EOS]``. Image and
prefix form the bidirectional prefix; the suffix and its EOS are causal (``response_mask``), and
only they are trained: position t is scored on predicting token t + 1 exactly when t + 1 is a
response token, so the last prefix position ("\\n") predicts the first answer token and nothing
ever predicts a prompt token. Token losses are averaged within each example, then over the batch,
so a one-word answer weighs as much as a long caption. Logits are computed only at the scored
positions: with a 257k vocabulary the full logits would dominate memory.

Loop: AdamW (weight decay on matrices only), linear warmup then cosine decay (or constant),
gradient-norm clipping, float32 or bfloat16 autocast, and checkpoints written in the hub layout
``from_preset`` loads (config.json, model.safetensors, tokenizer.model).

Datasets, as ``fit(dataset, ...)`` takes them:

* a mapping of equal-length sequences ``{"images": [...], "prefixes": [...], "suffixes": [...]}``,
  shuffled every epoch and cut into ``batch_size`` batches;
* an iterable of such mappings, each one batch (it sets its own batch size, so ``batch_size``
  must not be given); iterated once per epoch, so pass a re-iterable object, not a generator,
  for more than one epoch;
* an iterable of single examples ``{"images": image, "prefixes": str, "suffixes": str}``, grouped
  into ``batch_size`` batches.

Images are anything ``engine.processing.image`` loads (paths, PIL images, uint8 arrays, a uint8 batch
``[B, H, W, 3]``) or an already preprocessed ``float[B, 3, R, R]`` tensor in [-1, 1]. Prefixes are
prompts as in generation (``"caption en"``; a trailing ``"\\n"`` is optional).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from engine.checkpoints.weights import save_backbone
from engine.errors import InputError, TrainingError
from engine.model.backbone import PaliGemmaBackbone
from engine.processing.preprocessor import PaliGemmaCausalLMPreprocessor

if TYPE_CHECKING:
    from engine.causal_lm import PaliGemmaCausalLM

KEYS = ("images", "prefixes", "suffixes")
DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of ``fit``; keyword arguments to ``fit`` override these fields."""

    epochs: int = 1
    batch_size: int | None = None  # in-memory and per-example datasets; None means DEFAULT_BATCH_SIZE
    learning_rate: float = 3e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"  # cosine needs a dataset with a known length
    max_grad_norm: float | None = 1.0
    # "bfloat16": matmuls run in bf16 under autocast, weights and optimizer state stay in the model's
    # dtype. A model loaded in bf16 trains its bf16 weights directly (half the memory, coarser updates).
    precision: Literal["float32", "bfloat16"] = "float32"
    freeze: tuple[str, ...] = ()  # modules left untrained, by dotted name, e.g. ("vision_tower",)
    shuffle: bool = True
    seed: int = 0  # shuffling order of in-memory datasets
    checkpoint_dir: str | Path | None = None  # written at the end, and every checkpoint_every steps
    checkpoint_every: int | None = None

    def __post_init__(self):
        if self.epochs < 1:
            raise InputError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.schedule not in ("cosine", "constant"):
            raise InputError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.precision not in ("float32", "bfloat16"):
            raise InputError(f"precision must be 'float32' or 'bfloat16', got {self.precision!r}")
        if self.checkpoint_every is not None and (self.checkpoint_every < 1 or self.checkpoint_dir is None):
            raise InputError("checkpoint_every needs a checkpoint_dir and must be >= 1")


@dataclass(frozen=True)
class StepReport:
    """What the optional ``callback`` of ``fit`` receives after every optimizer step."""

    step: int  # 1-based
    total_steps: int | None
    epoch: int  # 0-based
    loss: float
    learning_rate: float
    grad_norm: float
    seconds: float  # since training started


@dataclass(frozen=True)
class TrainHistory:
    losses: list[float] = field(default_factory=list)  # one per step
    epoch_losses: list[float] = field(default_factory=list)  # mean step loss per epoch
    steps: int = 0
    seconds: float = 0.0


# ----------------------------------------------------------------------------- the objective


def next_token_targets(token_ids: torch.Tensor, response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which positions are scored, and on what. token_ids int[B, T]; response_mask bool[B, T].

    Returns ``scored`` bool[B, T] (position t is scored iff token t + 1 is a response token) and
    ``targets`` int[B, T] (token t + 1; the last column is never scored). For a row
    ``BOS cap \\n red EOS`` with response ``0 0 0 1 1``: scored ``0 0 1 1 0``, i.e. "\\n" predicts
    "red" and "red" predicts EOS.
    """
    scored = torch.zeros_like(response_mask, dtype=torch.bool)
    scored[:, :-1] = response_mask[:, 1:].bool()
    targets = torch.zeros_like(token_ids)
    targets[:, :-1] = token_ids[:, 1:]
    return scored, targets


def suffix_loss(
    backbone: PaliGemmaBackbone, hidden: torch.Tensor, token_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Mean over examples of each example's mean cross-entropy on its response tokens.

    hidden float[B, T, H]: the backbone's final-norm text hidden states; only the scored positions
    go through the (tied) LM head.
    """
    scored, targets = next_token_targets(token_ids, response_mask)
    logits = backbone.language_model.logits(hidden[scored])  # (n, V) fp32
    token_loss = F.cross_entropy(logits, targets[scored], reduction="none")  # (n,)
    rows = scored.nonzero()[:, 0]  # example index of each scored position
    counts = scored.sum(dim=1)  # (B,)
    per_example = torch.zeros(token_ids.shape[0], device=token_loss.device).index_add(0, rows, token_loss)
    has_response = counts > 0
    if not bool(has_response.any()):
        raise InputError("no example in the batch has a response token to train on")
    return (per_example[has_response] / counts[has_response]).mean()


def compute_loss(backbone: PaliGemmaBackbone, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The training loss of a prepared batch (``pixel_values``, ``token_ids``, ``padding_mask``,
    ``response_mask``), with the prefix-LM mask: prompt bidirectional, response causal."""
    hidden = backbone.text_hidden_states(
        batch["pixel_values"], batch["token_ids"], batch["padding_mask"], batch["response_mask"]
    )
    return suffix_loss(backbone, hidden, batch["token_ids"], batch["response_mask"])


def prepare_batch(
    preprocessor: PaliGemmaCausalLMPreprocessor,
    images: Any,
    prefixes: Sequence[str],
    suffixes: Sequence[str],
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Model inputs for one batch: pixels, and rows right-padded to the longest one."""
    prefixes, suffixes = list(prefixes), list(suffixes)
    if len(prefixes) != len(suffixes):
        raise InputError(f"got {len(prefixes)} prefixes for {len(suffixes)} suffixes; give one suffix per prefix")
    size = preprocessor.image_size
    if isinstance(images, torch.Tensor) and images.ndim == 4 and tuple(images.shape[1:]) == (3, size, size):
        pixel_values = images.float()
    else:
        pixel_values = preprocessor.preprocess_images(images if not isinstance(images, tuple) else list(images))
    if pixel_values.shape[0] != len(prefixes):
        raise InputError(f"got {pixel_values.shape[0]} images for {len(prefixes)} prefixes; give one image per example")
    encoded = [preprocessor.encode_example(p, s) for p, s in zip(prefixes, suffixes)]
    # No fixed width: rows are padded to the longest one (pack's default), capped at the
    # preprocessor's sequence_length, so short tasks do not pay for a long limit.
    packed = preprocessor.pack([ids for ids, _ in encoded], None, [mask for _, mask in encoded])
    batch = {"pixel_values": pixel_values, **packed}
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------- datasets


def _check_keys(item: Any, where: str) -> None:
    if not isinstance(item, Mapping) or any(k not in item for k in KEYS):
        got = sorted(item) if isinstance(item, Mapping) else type(item).__name__
        raise InputError(f"{where} must be a mapping with keys {list(KEYS)}, got {got}")


def _is_single_example(item: Mapping) -> bool:
    return isinstance(item["prefixes"], str)


def _slice(images: Any, index: Sequence[int]) -> Any:
    if isinstance(images, torch.Tensor):
        return images[torch.as_tensor(index, dtype=torch.long)]
    if hasattr(images, "ndim") and getattr(images, "ndim", 0) == 4:  # numpy uint8 batch
        return images[list(index)]
    return [images[i] for i in index]


def _memory_batches(data: Mapping, batch_size: int, order: list[int]) -> Iterator[dict]:
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield {
            "images": _slice(data["images"], index),
            "prefixes": [data["prefixes"][i] for i in index],
            "suffixes": [data["suffixes"][i] for i in index],
        }


def _grouped(examples: Iterator[Mapping], first: Mapping, batch_size: int) -> Iterator[dict]:
    group = [first]
    for item in examples:
        _check_keys(item, "every dataset item")
        group.append(item)
        if len(group) == batch_size:
            yield {k: [g[k] for g in group] for k in KEYS}
            group = []
    if group:
        yield {k: [g[k] for g in group] for k in KEYS}


class _Batches:
    """One epoch's batches, whatever the dataset's form (see the module docstring)."""

    def __init__(self, dataset: Any, cfg: TrainConfig):
        self.dataset, self.cfg = dataset, cfg
        self.in_memory = isinstance(dataset, Mapping)
        if self.in_memory:
            _check_keys(dataset, "an in-memory dataset")
            n = len(dataset["prefixes"])
            for k in KEYS:
                if len(dataset[k]) != n:
                    raise InputError(f"dataset[{k!r}] has {len(dataset[k])} items but dataset['prefixes'] has {n}")
            if n == 0:
                raise InputError("the dataset is empty")
        elif not isinstance(dataset, Iterable):
            raise TypeError(f"dataset must be a mapping or an iterable of mappings, got {type(dataset).__name__}")
        elif cfg.epochs > 1 and iter(dataset) is dataset:
            raise InputError(
                "a one-shot iterator (e.g. a generator) cannot be read for several epochs; "
                "pass a list or an object whose __iter__ restarts, or use epochs=1"
            )

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size or DEFAULT_BATCH_SIZE

    def __len__(self) -> int:
        """Batches per epoch; TypeError when the dataset cannot tell in advance (no __len__)."""
        if self.in_memory:
            return math.ceil(len(self.dataset["prefixes"]) / self.batch_size)
        items = len(self.dataset)
        if isinstance(self.dataset, Sequence):
            first = self.dataset[0] if items else None
        elif iter(self.dataset) is not self.dataset:  # re-iterable: peeking costs one item
            first = next(iter(self.dataset), None)
        else:
            raise TypeError("a one-shot iterator's length is unknown")
        if isinstance(first, Mapping) and "prefixes" in first and _is_single_example(first):
            return math.ceil(items / self.batch_size)
        return items

    def epoch(self, epoch: int) -> Iterator[dict]:
        if self.in_memory:
            order = list(range(len(self.dataset["prefixes"])))
            if self.cfg.shuffle:
                random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
            yield from _memory_batches(self.dataset, self.batch_size, order)
            return
        items = iter(self.dataset)
        first = next(items, None)
        if first is None:
            raise InputError("the dataset yielded no items")
        _check_keys(first, "every dataset item")
        if _is_single_example(first):
            yield from _grouped(items, first, self.batch_size)
            return
        if self.cfg.batch_size is not None:
            raise InputError("this dataset yields whole batches, so batch_size does not apply; leave it unset")
        yield first
        for item in items:
            _check_keys(item, "every dataset item")
            yield item


# ----------------------------------------------------------------------------- the loop


def _lr_factor(warmup: int, total: int | None, schedule: str) -> Callable[[int], float]:
    def factor(step: int) -> float:  # step = optimizer steps taken so far
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total is None:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _under(name: str, module: str) -> bool:
    """Whether parameter ``name`` belongs to the dotted module path ``module`` (whole components:
    "language_model.layers.1" is not under "language_model.layers.10")."""
    return name == module or name.startswith(module.rstrip(".") + ".")


def _trainable(backbone: PaliGemmaBackbone, freeze: Sequence[str]) -> list[torch.nn.Parameter]:
    names = [n for n, _ in backbone.named_parameters()]
    for module in freeze:
        if not any(_under(n, module) for n in names):
            raise InputError(
                f"freeze entry {module!r} matches no parameter; name modules such as 'vision_tower', "
                "'projector', 'language_model.embed_tokens' or 'language_model.layers.0'"
            )
    params = []
    for name, p in backbone.named_parameters():
        train = not any(_under(name, module) for module in freeze)
        p.requires_grad_(train)
        if train:
            params.append(p)
    if not params:
        raise InputError("every parameter is frozen; nothing to train")
    return params


def make_optimizer(params: Sequence[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (norm scales and biases are not decayed)."""
    decay = [p for p in params if p.ndim >= 2]
    plain = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, betas=cfg.betas)


def save_checkpoint(lm: PaliGemmaCausalLM, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """config.json + model.safetensors + tokenizer.model in ``directory``, loadable by
    ``PaliGemmaCausalLM.from_preset(directory)``. Files are written next to it first and moved in,
    so an interrupted save never leaves a half-written checkpoint behind."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    save_backbone(lm.backbone, staging, dtype)
    if lm.preprocessor is not None:
        # The tokenizer has no public "save" yet; its SentencePiece proto is the file's exact bytes.
        (staging / "tokenizer.model").write_bytes(lm.preprocessor.tokenizer._sp.serialized_model_proto())
    directory.mkdir(parents=True, exist_ok=True)
    for f in staging.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; a checkpoint (or packaged model) is meant to be shared
        os.replace(f, directory / f.name)
    staging.rmdir()
    return directory


def fit(
    lm: PaliGemmaCausalLM,
    dataset: Any,
    config: TrainConfig | None = None,
    *,
    callback: Callable[[StepReport], None] | None = None,
    **options: Any,
) -> TrainHistory:
    """Train ``lm`` in place on ``dataset`` (see the module docstring); ``options`` are TrainConfig
    fields, e.g. ``fit(lm, data, epochs=2, batch_size=8, learning_rate=1e-4)``. Returns the losses.
    The model is left in eval mode with gradients off, ready for generate()."""
    cfg = replace(config or TrainConfig(), **options)
    if lm.preprocessor is None:
        raise InputError("fit() needs the model's tokenizer: load it with preprocessor=True")
    backbone, device = lm.backbone, lm.device
    batches = _Batches(dataset, cfg)
    try:
        total: int | None = len(batches) * cfg.epochs
    except TypeError:
        total = None
    params = _trainable(backbone, cfg.freeze)
    optimizer = make_optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg.warmup_steps, total, cfg.schedule))
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if cfg.precision == "bfloat16"
        else contextlib.nullcontext()
    )
    losses: list[float] = []
    epoch_losses: list[float] = []
    start = time.perf_counter()
    backbone.train()
    try:
        for epoch in range(cfg.epochs):
            first = len(losses)
            for raw in batches.epoch(epoch):
                batch = prepare_batch(lm.preprocessor, raw["images"], raw["prefixes"], raw["suffixes"], device)
                with autocast:
                    loss = compute_loss(backbone, batch)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at step {len(losses) + 1}; "
                        "lower learning_rate or train in float32"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                if callback is not None:
                    callback(
                        StepReport(
                            len(losses), total, epoch, losses[-1], lr, float(grad_norm), time.perf_counter() - start
                        )
                    )
                if cfg.checkpoint_every and len(losses) % cfg.checkpoint_every == 0:
                    save_checkpoint(lm, cfg.checkpoint_dir)
            epoch_losses.append(sum(losses[first:]) / max(1, len(losses) - first))
    finally:
        backbone.eval().requires_grad_(False)
    if cfg.checkpoint_dir is not None:
        save_checkpoint(lm, cfg.checkpoint_dir)
    return TrainHistory(losses, epoch_losses, len(losses), time.perf_counter() - start)
