"""The one normaliser of generation inputs: what ``PaliGemmaCausalLM.generate`` and
``PaliGemmaCausalLMPreprocessor.generate_preprocess`` accept, and the rows it makes of them.

* Prompts sit under ``"prompts"`` (keras-hub's preprocessor key) or ``"text"`` (the key of
  keras-hub's PaliGemmaCausalLM docstring examples), not both. A str is one prompt.
* Images are one image (a PIL image, a path, image bytes, an HxWx3 array), a list or tuple of them,
  a uint8 batch ``[B, H, W, 3]``, or already preprocessed pixels ``float[B, 3, R, R]`` in [-1, 1]
  (a tensor or array; used as they are).
* One row per (image, prompt) pair: the two counts are equal, or one of them is 1 and that image or
  prompt is used for every row. So one prompt with several images asks the same of each image, and
  one image with several prompts asks several things of it. transformers' processor reads one
  prompt with several images as a single multi-image row instead; PaliGemma models take one image
  per row, so pali does not (``lm.backbone`` raises when the counts differ).
* ``unbatched``: a str prompt for one row; ``generate`` then returns a str rather than a list (as
  keras-hub does for a str prompt). ``generate_preprocess`` always returns a batch.

The token-id path (``generate({"images", "token_ids", "padding_mask"})``) broadcasts images over
its rows by the same rule, through ``pixels_for_rows``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engine.errors import InputError
from engine.processing.image import preprocess_images

__all__ = ["GenerationInputs", "count_images", "normalize_generation_inputs", "pixels_for_rows", "to_pixels"]


@dataclass(frozen=True)
class GenerationInputs:
    pixel_values: torch.Tensor  # float32[B, 3, R, R], one image per row
    prompts: list[str]  # B prompts, one per row
    unbatched: bool  # a str prompt for one row: generate() answers with a str


def _is_batch(images: Any) -> bool:
    return isinstance(images, (list, tuple)) or getattr(images, "ndim", 0) == 4


def count_images(images: Any) -> int:
    """How many images ``images`` holds (a batch's length, else 1)."""
    return len(images) if _is_batch(images) else 1


def _is_pixels(images: Any, image_size: int) -> bool:
    return isinstance(images, (torch.Tensor, np.ndarray)) and tuple(images.shape[1:]) == (3, image_size, image_size)


def to_pixels(images: Any, image_size: int, resample: str = "bilinear") -> torch.Tensor:
    """Any of the image forms above -> float32[N, 3, R, R], N = ``count_images(images)``."""
    if _is_pixels(images, image_size):
        return torch.as_tensor(images, dtype=torch.float32)
    return preprocess_images(list(images) if isinstance(images, tuple) else images, image_size, resample)


def _check_counts(n_images: int, n_rows: int, what: str) -> None:
    if n_images not in (1, n_rows) and n_rows != 1:
        raise InputError(
            f"got {n_images} images for {n_rows} {what}; give one image per {what.rstrip('s')}, "
            f"or a single image (or a single prompt) for all"
        )


def pixels_for_rows(images: Any, rows: int, image_size: int, resample: str = "bilinear") -> torch.Tensor:
    """float32[rows, 3, R, R] for ``rows`` rows of token ids: one image per row, or one for all."""
    n = count_images(images)
    if n not in (1, rows):
        raise InputError(f"got {n} images for {rows} rows of token_ids; give one image per row, or a single image")
    pixels = to_pixels(images, image_size, resample)
    return pixels.expand(rows, -1, -1, -1).contiguous() if n != rows else pixels


def _prompts(x: Mapping[str, Any], caller: str) -> str | list[str]:
    if "text" in x and "prompts" in x:
        raise InputError('pass the prompt under "prompts" or "text", not both')
    prompts = x.get("prompts", x.get("text"))
    if prompts is None:
        raise InputError(f'{caller} needs the prompt under "prompts" (or "text")')
    if isinstance(prompts, str):
        return prompts
    prompt_list = list(prompts)
    if not all(isinstance(p, str) for p in prompt_list):  # a wrong type, not a bad value (engine.errors)
        raise TypeError(f"{caller}: prompts must be strings, got {[type(p).__name__ for p in prompt_list]}")
    return prompt_list


def normalize_generation_inputs(
    x: Any, image_size: int, resample: str = "bilinear", caller: str = "generate()"
) -> GenerationInputs:
    """``{"images": ..., "prompts" | "text": ...}`` -> one image and one prompt per row (see above)."""
    if not isinstance(x, Mapping) or "images" not in x:
        raise InputError(f'{caller} takes a dict with "images" and "prompts" (or "text")')
    prompts = _prompts(x, caller)
    prompt_list = [prompts] if isinstance(prompts, str) else prompts
    n_images = count_images(x["images"])
    if not prompt_list or not n_images:
        raise InputError(f"{caller} needs at least one image and one prompt")
    _check_counts(n_images, len(prompt_list), "prompts")
    rows = max(n_images, len(prompt_list))
    pixels = to_pixels(x["images"], image_size, resample)
    if pixels.shape[0] != rows:
        pixels = pixels.expand(rows, -1, -1, -1).contiguous()
    if len(prompt_list) != rows:
        prompt_list = prompt_list * rows
    return GenerationInputs(pixels, prompt_list, unbatched=isinstance(prompts, str) and rows == 1)
