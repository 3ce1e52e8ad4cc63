"""Shared text fixtures: the tiny PaliGemma-layout tokenizer and transformers' reference processor.

Import the fixtures into a test module (``from tests.helpers.fixtures_text import tiny_tokenizer``)
to use them there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny_tokenizer import train_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding only ``tokenizer.model`` (a tiny SentencePiece model, PaliGemma ids)."""
    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    train_tiny_tokenizer(directory / "tokenizer.model")
    return directory


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path):
    from engine.processing.tokenizer import PaliGemmaTokenizer

    return PaliGemmaTokenizer.from_preset(tiny_tokenizer_dir)


def hf_paligemma_processor(tokenizer_dir: Path, image_size: int, num_image_tokens: int):
    """transformers' PaliGemmaProcessor (the reference) over the same tokenizer.model.

    transformers 5 converts the SentencePiece model into its own BPE ``GemmaTokenizer`` (that
    conversion reads the proto, hence the ``protobuf`` test dependency). The image processor is the
    PIL backend of SigLIP's, which is what the slow processor of released checkpoints used, with
    PaliGemma's [-1, 1] normalisation spelled out rather than relying on class defaults.
    """
    from transformers import GemmaTokenizer, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    hf_tokenizer = GemmaTokenizer.from_pretrained(str(tokenizer_dir))
    image_processor = SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size},
        resample=3,  # PIL BICUBIC, as in released preprocessor_config.json files
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        image_seq_length=num_image_tokens,
    )
    return PaliGemmaProcessor(image_processor=image_processor, tokenizer=hf_tokenizer)
