"""PaliGemma's prompt format: the one module that knows how text and images become model inputs.

Text layout (big_vision configs/proj/paligemma/transfers/common.py), image tokens excluded (the model prepends them):

    prompt:   [BOS] + tok(prefix) + [NL]                  <- the "prefix", attended bidirectionally
    training: [BOS] + tok(prefix) + [NL] + tok(suffix) + [EOS]
                                         `--- response_mask True ---'

``NL`` is the id of ``"\\n"``, tokenized on its own as big_vision does. Users coming from KerasHub
end prompts with ``"\\n"``; users coming from transformers do not (its processor appends one). Both
are accepted: one trailing ``"\\n"`` is removed before the separator is added, so the result has
exactly one BOS and one separator either way (adding a second one, ``"\\n\\n"``, degrades output:
vLLM PR #13584 "need newline at prompt").

Batches are right-padded with the pad id 0 (KerasHub's convention); ``padding_mask`` marks real
tokens. Whether the model then left-aligns prompts is the generation loop's business.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine.errors import InputError
from engine.processing.image import RESAMPLE_FILTERS, ImageSource, preprocess_images
from engine.processing.inputs import GenerationInputs, normalize_generation_inputs, to_pixels
from engine.processing.tokenizer import PaliGemmaTokenizer

# Markers of a transformers-formatted prompt. SentencePiece would encode them as plain characters,
# so such a prompt would silently carry garbage in front of the task; refuse it instead.
_FOREIGN_MARKERS = ("<image>", "<bos>")


class PaliGemmaCausalLMPreprocessor:
    """Turns prompts (and training targets) into token ids and images into pixel tensors.

    Args:
        tokenizer: the checkpoint's tokenizer.
        image_size: the model's square input resolution R (224, 448 or 896 for released models).
            Optional, as in keras-hub: a preprocessor attached to a ``PaliGemmaCausalLM`` takes its
            backbone's; only a standalone one that handles images needs it.
        sequence_length: the most text tokens (image tokens not counted) a row may have.
        resample: ``"bilinear"`` (close to big_vision training) or ``"bicubic"`` (matches
            transformers' SiglipImageProcessor); see ``engine.processing.image``.
    """

    def __init__(
        self,
        tokenizer: PaliGemmaTokenizer,
        image_size: int | None = None,
        sequence_length: int = 1024,
        resample: str = "bilinear",
    ) -> None:
        if image_size is not None:
            _check_image_size(image_size)
        if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length <= 0:
            raise InputError(f"sequence_length must be a positive int, got {sequence_length!r}")
        if resample not in RESAMPLE_FILTERS:
            raise InputError(f"unknown resample filter {resample!r}; choose one of {sorted(RESAMPLE_FILTERS)}")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.sequence_length = sequence_length
        self.resample = resample

    @classmethod
    def from_preset(
        cls,
        directory: str | Path,
        image_size: int | None = None,
        sequence_length: int = 1024,
        resample: str = "bilinear",
    ) -> PaliGemmaCausalLMPreprocessor:
        """Builds the preprocessor from a checkpoint directory holding ``tokenizer.model``; without
        ``image_size``, the directory's config.json gives it (when it has one)."""
        if image_size is None and (Path(directory) / "config.json").is_file():
            from engine.model.config import load_config

            image_size = load_config(directory).image_size
        return cls(PaliGemmaTokenizer.from_preset(directory), image_size, sequence_length, resample)

    def attach(self, image_size: int) -> None:
        """Called by ``PaliGemmaCausalLM`` with its backbone's resolution: adopts it, or refuses a
        different one given at construction."""
        if self.image_size is None:
            self.image_size = _check_image_size(image_size)
        elif self.image_size != image_size:
            raise InputError(
                f"this preprocessor was built with image_size {self.image_size} but the backbone takes "
                f"{image_size} px images; build it without image_size to use the backbone's"
            )

    def _image_size(self) -> int:
        if self.image_size is None:
            raise InputError(
                "this preprocessor does not know the model's image size yet: attach it to a "
                "PaliGemmaCausalLM (which gives it its backbone's) or pass image_size="
            )
        return self.image_size

    # ----------------------------------------------------------------------------- text

    def encode_prompt(self, prompt: str) -> list[int]:
        """``[BOS] + tok(prompt) + [NL]``, accepting the prompt with or without its final ``"\\n"``."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        for marker in _FOREIGN_MARKERS:
            if marker in prompt:
                raise InputError(
                    f"prompt {prompt!r} contains {marker!r}: image tokens and <bos> are added "
                    "automatically; write only the task, e.g. 'caption en'"
                )
        if prompt.endswith("\n"):
            prompt = prompt[:-1]
        tok = self.tokenizer
        return [tok.start_token_id, *tok.tokenize(prompt), tok.newline_token_id]

    def encode_example(self, prefix: str, suffix: str) -> tuple[list[int], list[bool]]:
        """Training row: prompt ids + ``tok(suffix) + [EOS]``, and the response mask (True on the
        suffix tokens and the EOS, i.e. the positions whose prediction is trained)."""
        if not isinstance(suffix, str):
            raise TypeError(f"suffix must be a str, got {type(suffix).__name__}")
        prompt_ids = self.encode_prompt(prefix)
        response_ids = [*self.tokenizer.tokenize(suffix), self.tokenizer.end_token_id]
        mask = [False] * len(prompt_ids) + [True] * len(response_ids)
        return prompt_ids + response_ids, mask

    def pack(
        self,
        rows: Sequence[Sequence[int]],
        sequence_length: int | None = None,
        response_masks: Sequence[Sequence[bool]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Right-pads rows with the pad id into ``token_ids`` int64[B, T], ``padding_mask`` bool[B, T]
        (True on real tokens) and ``response_mask`` bool[B, T] (all False without response masks).

        T is ``sequence_length`` if given, else the longest row. A row longer than
        ``sequence_length`` (or, when it is None, than the preprocessor's limit) is an error: silent
        truncation would cut the separator or the answer.
        """
        rows = [list(r) for r in rows]
        if not rows:
            raise InputError("pack() needs at least one row")
        limit = self.sequence_length if sequence_length is None else sequence_length
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise InputError(f"sequence_length must be a positive int, got {sequence_length!r}")
        for i, row in enumerate(rows):
            if len(row) > limit:
                raise InputError(
                    f"row {i} has {len(row)} tokens, more than the sequence length {limit}; "
                    "shorten the text or raise sequence_length"
                )
        if response_masks is not None:
            response_masks = [list(m) for m in response_masks]
            lengths_differ = any(len(m) != len(r) for m, r in zip(response_masks, rows, strict=True))
            if len(response_masks) != len(rows) or lengths_differ:
                raise InputError("response_masks must have one mask per row, each as long as its row")
        width = sequence_length if sequence_length is not None else max(len(r) for r in rows)

        token_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.int64)
        padding_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            n = len(row)
            if n == 0:
                continue
            token_ids[i, :n] = torch.tensor(row, dtype=torch.int64)
            padding_mask[i, :n] = True
            if response_masks is not None:
                response_mask[i, :n] = torch.tensor(response_masks[i], dtype=torch.bool)
        return {"token_ids": token_ids, "padding_mask": padding_mask, "response_mask": response_mask}

    # ----------------------------------------------------------------------------- images

    def preprocess_images(self, images: ImageSource | Sequence[ImageSource]) -> torch.Tensor:
        """``float32[B, 3, R, R]`` in [-1, 1]; see ``engine.processing.image.preprocess_images``."""
        return preprocess_images(images, self._image_size(), self.resample)

    def pixel_values(self, images: Any) -> torch.Tensor:
        """Like ``preprocess_images``, and already preprocessed ``float[B, 3, R, R]`` pixels pass as they are."""
        return to_pixels(images, self._image_size(), self.resample)

    def generation_inputs(self, x: Any, caller: str = "generate()") -> GenerationInputs:
        """One image and one prompt per row, by the rule of ``engine.processing.inputs``."""
        return normalize_generation_inputs(x, self._image_size(), self.resample, caller)

    # ----------------------------------------------------------------------------- generation

    def generate_preprocess(self, x: dict[str, Any], sequence_length: int | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for generation from ``{"images": ..., "prompts" | "text": ...}``, as keras-hub's.

        Rows are made by ``engine.processing.inputs`` (one image per prompt, or one image or one
        prompt for all) and right-padded to ``sequence_length`` (default: the preprocessor's), so
        ``generate`` on the result fills each row up to that length. Returns ``pixel_values``
        float32[B, 3, R, R] (keras-hub calls it ``images``; ``generate`` takes either name),
        ``token_ids`` int64[B, T], ``padding_mask`` bool[B, T] and ``response_mask`` bool[B, T]
        (all False: a prompt has no response). Always a batch, even for one str prompt.
        """
        batch = self.generation_inputs(x, "generate_preprocess()")
        packed = self.pack([self.encode_prompt(p) for p in batch.prompts], sequence_length or self.sequence_length)
        return {"pixel_values": batch.pixel_values, **packed}


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise InputError(f"image_size must be a positive int, got {image_size!r}")
    return image_size
