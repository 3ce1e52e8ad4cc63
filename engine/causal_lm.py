"""PaliGemmaCausalLM: keras-hub's PaliGemma task API on the PyTorch engine.

    lm = PaliGemmaCausalLM.from_preset("pali_gemma2_mix_3b_224")      # or a local HF-layout dir
    lm.generate({"images": image, "text": "caption en\\n"}, max_length=64, strip_prompt=True)
    lm.compile(sampler=TopKSampler(k=5, temperature=0.7, seed=1))

keras-hub semantics are kept: ``max_length`` counts text tokens, prompt included (image tokens
not); ``stop_token_ids`` is "auto" (EOS), None or a tuple; the output includes the prompt unless
``strip_prompt``. ``complete()`` is the lower-level call the CLI uses: generated text and ids per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.checkpoints import hub
from engine.checkpoints.specs import parse_spec
from engine.checkpoints.weights import load_backbone
from engine.errors import InputError
from engine.generate import generate_tokens
from engine.model.backbone import PaliGemmaBackbone
from engine.model.config import WindowPolicy, load_config
from engine.processing.inputs import pixels_for_rows
from engine.processing.preprocessor import PaliGemmaCausalLMPreprocessor
from engine.processing.tokenizer import PaliGemmaTokenizer
from engine.runtime.devices import resolve_device, resolve_dtype
from engine.runtime.optimize import optimize
from engine.samplers import GreedySampler, Sampler, get_sampler, make_generator

DEFAULT_SEQUENCE_LENGTH = 1024  # keras-hub's preprocessor default


@dataclass(frozen=True)
class Completion:
    text: str  # the generated part only, special tokens dropped (loc/seg kept)
    token_ids: list[int]  # generated ids, the stop token excluded
    finish_reason: str  # "stop" (a stop id was produced) or "length" (the budget ran out)


class PaliGemmaCausalLM:
    def __init__(self, backbone: PaliGemmaBackbone, preprocessor: PaliGemmaCausalLMPreprocessor | None = None):
        if isinstance(backbone, PaliGemmaCausalLMPreprocessor) or isinstance(preprocessor, PaliGemmaBackbone):
            raise TypeError(
                "PaliGemmaCausalLM takes (backbone, preprocessor), keras-hub's takes (preprocessor, backbone): "
                "pass them by keyword, PaliGemmaCausalLM(backbone=..., preprocessor=...)"
            )
        self.backbone = backbone
        self.preprocessor = preprocessor  # takes the backbone's image size (see the setter)
        self.sampler: Sampler = GreedySampler()
        self.preset: str | None = None
        self.dtype_reason = "requested"
        self.mask_decoder: Any = None  # segment(): loaded on first use, or set by the caller

    @classmethod
    def from_preset(
        cls,
        preset: str | Path,
        *,
        dtype: str | torch.dtype = "auto",
        device: str | torch.device = "auto",
        preprocessor: bool | None = True,
        sequence_length: int | None = None,
        sliding_window: WindowPolicy = "none",
        cache_dir: str | Path | None = None,
        allow_download: bool = True,
        quantize: str | None = None,
    ) -> PaliGemmaCausalLM:
        """Load a preset name (see engine.checkpoints.presets), ``hf://owner/repo[@revision]`` or a local directory
        in Hugging Face layout. ``preprocessor=None`` skips the tokenizer (token-id API only).
        ``sliding_window``: "none" (as the models were trained) or "transformers" (its Gemma 2 window).
        ``quantize="int8"`` or ``"int4"``: quantized weights (engine.runtime.quantize), cached under ``cache_dir``
        after the first load."""
        spec = parse_spec(preset)
        directory = hub.resolve(spec, cache_dir, allow_download=allow_download)
        info = spec.preset
        config = load_config(directory, window_policy=sliding_window)
        torch_device = resolve_device(device)
        torch_dtype, reason = resolve_dtype(dtype, torch_device)
        if quantize:
            from engine.checkpoints.quantized_cache import load_quantized_backbone

            cache_root = hub.default_cache_dir(cache_dir)
            backbone = load_quantized_backbone(directory, config, quantize, torch_dtype, torch_device, cache_root)
        else:
            backbone = load_backbone(directory, config, torch_dtype, torch_device)
        optimize(backbone)
        pre = None
        if preprocessor:
            length = sequence_length or (
                info.sequence_length if info and info.sequence_length else DEFAULT_SEQUENCE_LENGTH
            )
            pre = PaliGemmaCausalLMPreprocessor(PaliGemmaTokenizer.from_preset(directory), config.image_size, length)
        lm = cls(backbone, pre)
        lm.preset = spec.label
        lm.dtype_reason = reason
        return lm

    # ------------------------------------------------------------------ settings

    def compile(self, sampler: Any = "greedy") -> PaliGemmaCausalLM:
        """Choose the sampler for later generate()/complete() calls (keras-hub's compile(sampler=))."""
        self.sampler = get_sampler(sampler)
        return self

    @property
    def preprocessor(self) -> PaliGemmaCausalLMPreprocessor | None:
        return self._preprocessor

    @preprocessor.setter
    def preprocessor(self, preprocessor: PaliGemmaCausalLMPreprocessor | None) -> None:
        """A preprocessor built without ``image_size`` (keras-hub's way) takes the backbone's here."""
        if preprocessor is not None:
            preprocessor.attach(self.backbone.config.image_size)
        self._preprocessor = preprocessor

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.language_model.dtype

    @property
    def device(self) -> torch.device:
        return self.backbone.language_model.norm.weight.device

    # ------------------------------------------------------------------ generation

    def _stop_ids(self, stop_token_ids) -> tuple[int, ...]:
        if stop_token_ids == "auto":
            return (self.backbone.config.eos_token_id,)
        return tuple(int(i) for i in (stop_token_ids or ()))

    def _generate_ids(self, pixel_values, prompts, budgets, stop_ids, on_step=None) -> list[list[int]]:
        """Run rows with a positive budget; rows without one get no tokens."""
        out: list[list[int]] = [[] for _ in prompts]
        live = [i for i, n in enumerate(budgets) if n > 0]
        if not live:
            return out
        generator = make_generator(self.sampler.seed, self.device)
        vocab = self.preprocessor.tokenizer.vocabulary_size() if self.preprocessor else None
        new = generate_tokens(
            self.backbone,
            pixel_values[live].to(self.device),
            [prompts[i] for i in live],
            [budgets[i] for i in live],
            lambda logits: self.sampler(logits, generator),
            stop_ids,
            vocab_limit=vocab,
            on_step=on_step,
        )
        for i, tokens in zip(live, new, strict=True):
            out[i] = tokens
        return out

    def _pixel_values(self, images: Any, rows: int) -> torch.Tensor:
        """float32[rows, 3, R, R] from any image form engine.processing.inputs takes."""
        resample = self.preprocessor.resample if self.preprocessor is not None else "bilinear"
        return pixels_for_rows(images, rows, self.backbone.config.image_size, resample)

    def _require_preprocessor(self) -> PaliGemmaCausalLMPreprocessor:
        if self.preprocessor is None:
            raise InputError(
                "this model was loaded with preprocessor=None: pass token_ids and padding_mask, "
                "or load it with a preprocessor to use text prompts"
            )
        return self.preprocessor

    def complete(
        self,
        images: Sequence[Any],
        prompts: Sequence[str],
        max_new_tokens: int = 64,
        stop_token_ids: Any = "auto",
        on_step: Any = None,
    ) -> list[Completion]:
        """One Completion per (image, prompt) pair, generated as one batch. ``on_step(rows, tokens)``
        is called after each step with the rows still running and their new token ids."""
        pre = self._require_preprocessor()
        if len(images) != len(prompts):
            raise InputError(f"got {len(images)} images for {len(prompts)} prompts; pass one image per prompt")
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        stop_ids = self._stop_ids(stop_token_ids)
        rows = [pre.encode_prompt(p) for p in prompts]
        new = self._generate_ids(
            self._pixel_values(list(images), len(rows)), rows, [max_new_tokens] * len(rows), stop_ids, on_step
        )
        out = []
        for tokens in new:
            stopped = bool(tokens) and tokens[-1] in stop_ids
            ids = tokens[:-1] if stopped else tokens
            out.append(Completion(pre.tokenizer.detokenize(ids), ids, "stop" if stopped else "length"))
        return out

    def generate(
        self,
        inputs: dict[str, Any],
        max_length: int | None = None,
        stop_token_ids: Any = "auto",
        strip_prompt: bool = False,
    ):
        """keras-hub's generate(). With a preprocessor: {"images", "prompts" (or "text")} -> a str for a
        str prompt on one image, else a list[str] (rows as engine.processing.inputs makes them: one
        image per prompt, or one image or one prompt for all). Token ids, with or without a
        preprocessor: {"images" (or "pixel_values"), "token_ids", "padding_mask"}, e.g.
        ``preprocessor.generate_preprocess`` output -> {"token_ids", "padding_mask"} with the
        generated ids written after each row's prompt, up to the row length."""
        if "token_ids" in inputs:
            return self._generate_from_ids(inputs, stop_token_ids)
        pre = self._require_preprocessor()
        batch = pre.generation_inputs(inputs)
        max_length = max_length or pre.sequence_length
        rows = [pre.encode_prompt(p) for p in batch.prompts]
        for p, ids in zip(batch.prompts, rows, strict=True):
            if len(ids) > max_length:
                raise InputError(f"prompt {p!r} is {len(ids)} tokens, more than max_length={max_length}")
        stop_ids = self._stop_ids(stop_token_ids)
        new = self._generate_ids(batch.pixel_values, rows, [max_length - len(r) for r in rows], stop_ids)
        texts = []
        for ids, tokens in zip(rows, new, strict=True):
            if tokens and tokens[-1] in stop_ids:
                tokens = tokens[:-1]
            texts.append(pre.tokenizer.detokenize(tokens if strip_prompt else ids + tokens))
        return texts[0] if batch.unbatched else texts

    def _generate_from_ids(self, inputs: dict[str, Any], stop_token_ids) -> dict[str, Any]:
        """keras-hub's path without preprocessing: rows are right-padded to the target length T and
        generation fills each row after its prompt, up to T. Without a preprocessor,
        ``stop_token_ids="auto"`` stops at the config's EOS (keras-hub raises instead)."""
        as_numpy = isinstance(inputs["token_ids"], np.ndarray)
        token_ids = torch.as_tensor(np.asarray(inputs["token_ids"]) if as_numpy else inputs["token_ids"]).long()
        padding_mask = torch.as_tensor(np.asarray(inputs["padding_mask"])).bool()
        if token_ids.ndim == 1:
            token_ids, padding_mask = token_ids[None], padding_mask[None]
        b, t = token_ids.shape
        if "images" in inputs and "pixel_values" in inputs:
            raise InputError('pass the images under "images" or "pixel_values", not both')
        images = inputs["images"] if "images" in inputs else inputs.get("pixel_values")
        if images is None:
            raise InputError('generate() with token_ids needs the images under "images" (or "pixel_values")')
        pixel_values = self._pixel_values(images, b)
        rows = [token_ids[i][padding_mask[i]].tolist() for i in range(b)]
        stop_ids = self._stop_ids(stop_token_ids)
        new = self._generate_ids(pixel_values, rows, [t - len(r) for r in rows], stop_ids)
        out_ids = torch.full((b, t), self.backbone.config.pad_token_id, dtype=torch.long)
        out_mask = torch.zeros(b, t, dtype=torch.bool)
        for i, (prompt, tokens) in enumerate(zip(rows, new, strict=True)):
            row = prompt + tokens  # a stop token stays in the mask, as in keras-hub; nothing after it
            out_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            out_mask[i, : len(row)] = True
        if as_numpy:
            return {"token_ids": out_ids.numpy(), "padding_mask": out_mask.numpy()}
        return {"token_ids": out_ids, "padding_mask": out_mask}

    def segment(self, image: Any, objects: str | Sequence[str], max_new_tokens: int = 256) -> list:
        """Segments ``objects`` (``"cat ; dog"``) in one image: a list of
        ``engine.processing.segmentation.Segment`` (label, pixel box, bool mask of the upright
        image). The mask decoder is loaded once, on first use, by
        ``engine.checkpoints.seg_decoder`` ($PALI_SEG_DECODER, the cache, or one download)."""
        from engine.processing.image import load_image
        from engine.processing.segmentation import parse_segmentation
        from engine.processing.tasks import segment_prompt

        if self.mask_decoder is None:
            from engine.processing.mask_decoder import load_mask_decoder

            self.mask_decoder = load_mask_decoder()
        picture = load_image(image)
        [answer] = self.complete([picture], [segment_prompt(objects)], max_new_tokens=max_new_tokens)
        return parse_segmentation(answer.text, picture.size, decoder=self.mask_decoder)

    # ------------------------------------------------------------------ training

    def fit(self, dataset: Any, **options: Any):
        """Train on ``{"images", "prefixes", "suffixes"}`` data (or keras-hub's ``"prompts"`` and
        ``"responses"``), keras-hub style:
        ``lm.fit(data, epochs=2, batch_size=8, learning_rate=1e-4)``. Options and dataset forms are
        documented in engine.train; returns its TrainHistory."""
        from engine.train import fit

        return fit(self, dataset, **options)
