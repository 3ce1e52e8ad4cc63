"""Training and fine-tuning PaliGemma: big_vision's objective in a plain PyTorch loop.

Objective (big_vision models/proj/paligemma/paligemma.py make_attn_mask,
configs/proj/paligemma/transfers/common.py). A training row is ``[image][BOS prefix "\\n"][suffix
EOS]``. Image and prefix form the bidirectional prefix; the suffix and its EOS are causal
(``response_mask``), and only they are trained: position t is scored on predicting token t + 1
exactly when t + 1 is a response token, so the last prefix position ("\\n") predicts the first
answer token and nothing ever predicts a prompt token. Token losses are averaged within each
example, then over the batch, so a one-word answer weighs as much as a long caption. Logits are
computed only at the scored positions: with a 257k vocabulary the full logits would dominate memory.

Loop: AdamW (weight decay on matrices only), linear warmup then cosine decay (or constant),
gradient-norm clipping, float32 or bfloat16 autocast, and checkpoints written in the hub layout
``from_preset`` loads (config.json, model.safetensors, tokenizer.model).

Datasets (a mapping of sequences, an iterable of batches or of single examples) and how they become
batches are engine.train_data's; ``fit`` takes any of them.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from engine.checkpoints.processor_files import write_processor_files
from engine.checkpoints.weights import save_backbone
from engine.errors import InputError, TrainingError
from engine.model.backbone import PaliGemmaBackbone
from engine.processing.preprocessor import PaliGemmaCausalLMPreprocessor
from engine.train_data import Batches, prepare_batch

if TYPE_CHECKING:
    from engine.causal_lm import PaliGemmaCausalLM


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of ``fit``; keyword arguments to ``fit`` override these fields."""

    epochs: int = 1
    batch_size: int | None = None  # in-memory and per-example datasets; None means DEFAULT_BATCH_SIZE (8)
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
    """A checkpoint directory in the released Hugging Face layout, loadable by
    ``PaliGemmaCausalLM.from_preset(directory)`` and by transformers
    (``PaliGemmaForConditionalGeneration`` / ``PaliGemmaProcessor.from_pretrained``): config.json,
    model.safetensors and, with a tokenizer, tokenizer.model and the processor files
    (engine.checkpoints.processor_files). config.json's ``image_token_index`` is then the tokenizer's
    ``<image>`` id. Files are written next to the directory first and moved in, so an interrupted
    save never leaves a half-written checkpoint behind."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    config = lm.backbone.config
    if lm.preprocessor is not None:
        tokenizer = lm.preprocessor.tokenizer
        config = replace(config, image_token_index=tokenizer.image_token_id)
    save_backbone(lm.backbone, staging, dtype, config)
    if lm.preprocessor is not None:
        # The tokenizer has no public "save" yet; its SentencePiece proto is the file's exact bytes.
        (staging / "tokenizer.model").write_bytes(tokenizer._sp.serialized_model_proto())
        write_processor_files(staging, config)
    directory.mkdir(parents=True, exist_ok=True)
    for f in staging.iterdir():
        f.chmod(0o644)  # safetensors writes 0600; a checkpoint (or packaged model) is meant to be shared
        os.replace(f, directory / f.name)
    staging.rmdir()
    return directory


@dataclass
class _Updates:
    """What one optimizer step needs besides the batch."""

    params: list[torch.nn.Parameter]
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    max_grad_norm: float
    autocast: contextlib.AbstractContextManager[Any]


def _make_updates(lm: PaliGemmaCausalLM, cfg: TrainConfig, total: int | None) -> _Updates:
    params = _trainable(lm.backbone, cfg.freeze)
    optimizer = make_optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg.warmup_steps, total, cfg.schedule))
    autocast: contextlib.AbstractContextManager[Any] = (
        torch.autocast(device_type=lm.device.type, dtype=torch.bfloat16)
        if cfg.precision == "bfloat16"
        else contextlib.nullcontext()
    )
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else math.inf
    return _Updates(params, optimizer, scheduler, max_norm, autocast)


def _train_step(
    lm: PaliGemmaCausalLM, preprocessor: PaliGemmaCausalLMPreprocessor, raw: Mapping[str, Any], up: _Updates, step: int
) -> tuple[float, float, float]:
    """One optimizer step on one raw batch; returns (loss, learning rate used, gradient norm)."""
    batch = prepare_batch(preprocessor, raw["images"], raw["prefixes"], raw["suffixes"], lm.device)
    with up.autocast:
        loss = compute_loss(lm.backbone, batch)
    if not torch.isfinite(loss):
        raise TrainingError(f"the loss became {loss.item()} at step {step}; lower learning_rate or train in float32")
    up.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(up.params, up.max_grad_norm)
    lr = float(up.optimizer.param_groups[0]["lr"])
    up.optimizer.step()
    up.scheduler.step()
    return loss.item(), lr, float(grad_norm)


def fit(
    lm: PaliGemmaCausalLM,
    dataset: Any,
    config: TrainConfig | None = None,
    *,
    callback: Callable[[StepReport], None] | None = None,
    **options: Any,
) -> TrainHistory:
    """Train ``lm`` in place on ``dataset`` (see engine.train_data); ``options`` are TrainConfig
    fields, e.g. ``fit(lm, data, epochs=2, batch_size=8, learning_rate=1e-4)``. Returns the losses.
    The model is left in eval mode with gradients off, ready for generate()."""
    cfg = replace(config or TrainConfig(), **options)
    if lm.preprocessor is None:
        raise InputError("fit() needs the model's tokenizer: load it with preprocessor=True")
    batches = Batches(dataset, cfg)
    total = batches.total_steps()
    updates = _make_updates(lm, cfg, total)
    losses: list[float] = []
    epoch_losses: list[float] = []
    start = time.perf_counter()
    lm.backbone.train()
    try:
        for epoch in range(cfg.epochs):
            first = len(losses)
            for raw in batches.epoch(epoch):
                loss, lr, grad_norm = _train_step(lm, lm.preprocessor, raw, updates, len(losses) + 1)
                losses.append(loss)
                if callback is not None:
                    seconds = time.perf_counter() - start
                    callback(StepReport(len(losses), total, epoch, loss, lr, grad_norm, seconds))
                if cfg.checkpoint_dir is not None and cfg.checkpoint_every and len(losses) % cfg.checkpoint_every == 0:
                    save_checkpoint(lm, cfg.checkpoint_dir)
            epoch_losses.append(sum(losses[first:]) / max(1, len(losses) - first))
    finally:
        lm.backbone.eval().requires_grad_(False)
    if cfg.checkpoint_dir is not None:
        save_checkpoint(lm, cfg.checkpoint_dir)
    return TrainHistory(losses, epoch_losses, len(losses), time.perf_counter() - start)
