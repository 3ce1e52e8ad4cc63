"""The processor files of a Hugging Face PaliGemma checkpoint: what transformers'
``PaliGemmaProcessor.from_pretrained`` reads besides ``tokenizer.model``.

pali itself reads neither file (its preprocessor takes the image size from config.json and the ids
from tokenizer.model); it writes them so that a directory it saves loads in transformers as a
released one does. Both follow the released repositories' files (google/paligemma-3b-pt-224's
``preprocessor_config.json`` and ``tokenizer_config.json``):

* ``preprocessor_config.json``: SigLIP's image processor, squash-resized to the model's resolution
  with PIL bicubic, scaled to [-1, 1], and ``image_seq_length`` image tokens per image.
* ``tokenizer_config.json``: Gemma's tokenizer with BOS and EOS left to the processor, and
  ``<image>`` pinned to the id config.json names. Pinning matters for tokenizers other than the
  released one: transformers 5 appends Gemma's ``<mask>`` to a tokenizer.model that lacks it before
  adding ``<image>``, which would otherwise move ``<image>`` one id past the one the model expects.

Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.model.config import PaliGemmaConfig

__all__ = ["preprocessor_config", "tokenizer_config", "write_processor_files"]

_PIL_BICUBIC = 3


def preprocessor_config(config: PaliGemmaConfig) -> dict[str, Any]:
    """``preprocessor_config.json`` for a model of this config."""
    size = config.image_size
    return {
        "image_processor_type": "SiglipImageProcessor",
        "processor_class": "PaliGemmaProcessor",
        "do_convert_rgb": None,
        "do_resize": True,
        "size": {"height": size, "width": size},
        "resample": _PIL_BICUBIC,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_seq_length": config.num_image_tokens,
    }


def tokenizer_config(config: PaliGemmaConfig) -> dict[str, Any]:
    """``tokenizer_config.json``: Gemma's SentencePiece tokenizer, ``<image>`` at the config's id."""
    image = {
        "content": "<image>",
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }
    return {
        "tokenizer_class": "GemmaTokenizer",
        "processor_class": "PaliGemmaProcessor",
        "add_bos_token": False,  # the processor writes BOS (and the "\n" separator) itself
        "add_eos_token": False,
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "additional_special_tokens": ["<image>"],
        "added_tokens_decoder": {str(config.image_token_index): image},
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
    }


def write_processor_files(directory: str | Path, config: PaliGemmaConfig) -> None:
    """Write both files into ``directory`` (which must exist)."""
    directory = Path(directory)
    for name, content in (
        ("preprocessor_config.json", preprocessor_config(config)),
        ("tokenizer_config.json", tokenizer_config(config)),
    ):
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")
