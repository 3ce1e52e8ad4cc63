"""What ``fit`` trains on: the dataset forms it accepts, and a batch of them as model inputs.

Datasets, as ``fit(dataset, ...)`` takes them:

* a mapping of equal-length sequences ``{"images": [...], "prefixes": [...], "suffixes": [...]}``,
  shuffled every epoch and cut into ``batch_size`` batches; keras-hub's names for the two text
  keys, ``"prompts"`` and ``"responses"``, work everywhere in their place;
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

import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from engine.errors import InputError
from engine.processing.preprocessor import PaliGemmaCausalLMPreprocessor

if TYPE_CHECKING:
    from engine.train import TrainConfig

KEYS = ("images", "prefixes", "suffixes")
DEFAULT_BATCH_SIZE = 8


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
    pixel_values = preprocessor.pixel_values(images)
    if pixel_values.shape[0] != len(prefixes):
        raise InputError(f"got {pixel_values.shape[0]} images for {len(prefixes)} prefixes; give one image per example")
    encoded = [preprocessor.encode_example(p, s) for p, s in zip(prefixes, suffixes, strict=True)]
    # No fixed width: rows are padded to the longest one (pack's default), capped at the
    # preprocessor's sequence_length, so short tasks do not pay for a long limit.
    packed = preprocessor.pack([ids for ids, _ in encoded], None, [mask for _, mask in encoded])
    batch = {"pixel_values": pixel_values, **packed}
    return {k: v.to(device) for k, v in batch.items()}


# ----------------------------------------------------------------------------- datasets


# keras-hub's PaliGemmaCausalLMPreprocessor names -> ours (big_vision's prefix / suffix).
ALIASES = {"prompts": "prefixes", "responses": "suffixes"}


def _canonical(item: Any, where: str) -> dict:
    """``item`` with keras-hub's key names renamed to ours; an error unless it has every key."""
    if not isinstance(item, Mapping):
        raise InputError(f"{where} must be a mapping with keys {list(KEYS)}, got {type(item).__name__}")
    out = dict(item)
    for alias, key in ALIASES.items():
        if alias in out:
            if key in out:
                raise InputError(f"{where} has both {alias!r} and {key!r}; give {alias!r} or {key!r}, not both")
            out[key] = out.pop(alias)
    if any(k not in out for k in KEYS):
        raise InputError(
            f"{where} must be a mapping with keys {list(KEYS)} (or keras-hub's 'prompts' and 'responses'), "
            f"got {sorted(item)}"
        )
    return out


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
        group.append(_canonical(item, "every dataset item"))
        if len(group) == batch_size:
            yield {k: [g[k] for g in group] for k in KEYS}
            group = []
    if group:
        yield {k: [g[k] for g in group] for k in KEYS}


class Batches:
    """One epoch's batches, whatever the dataset's form (see the module docstring)."""

    def __init__(self, dataset: Any, cfg: TrainConfig):
        self.dataset, self.cfg = dataset, cfg
        self.in_memory = isinstance(dataset, Mapping)
        if self.in_memory:
            dataset = self.dataset = _canonical(dataset, "an in-memory dataset")
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
        prefixes = first.get("prefixes", first.get("prompts")) if isinstance(first, Mapping) else None
        if isinstance(prefixes, str):  # an iterable of single examples
            return math.ceil(items / self.batch_size)
        return items

    def total_steps(self) -> int | None:
        """Optimizer steps over all epochs, or None when the dataset cannot tell in advance."""
        try:
            return len(self) * self.cfg.epochs
        except TypeError:
            return None

    def epoch(self, epoch: int) -> Iterator[dict]:
        if self.in_memory:
            order = list(range(len(self.dataset["prefixes"])))
            if self.cfg.shuffle:
                random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
            yield from _memory_batches(self.dataset, self.batch_size, order)
            return
        items = iter(self.dataset)
        item = next(items, None)
        if item is None:
            raise InputError("the dataset yielded no items")
        first = _canonical(item, "every dataset item")
        if _is_single_example(first):
            yield from _grouped(items, first, self.batch_size)
            return
        if self.cfg.batch_size is not None:
            raise InputError("this dataset yields whole batches, so batch_size does not apply; leave it unset")
        yield first
        for item in items:
            yield _canonical(item, "every dataset item")
