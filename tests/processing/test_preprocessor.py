"""Prompt layout, packing and generation inputs, checked against transformers' PaliGemmaProcessor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.processing.image import preprocess_images
from engine.processing.preprocessor import PaliGemmaCausalLMPreprocessor
from engine.processing.tokenizer import PaliGemmaTokenizer
from tests.helpers.fixtures_text import hf_paligemma_processor

IMAGE_SIZE = 32
NUM_IMAGE_TOKENS = 4  # any count works: the reference puts them all before BOS and we drop them

PROMPTS = [
    "caption en",
    "answer en what color is the circle?",
    "detect cat ; dog",
    "",
    "ocr",
    "answer en how many shapes: 2, 3 or 10?!",
    "segment  the big red car",
    "question fr 42 is 6 x 7.",
    "describe en\nthe image",
]
SUFFIXES = [
    "a red circle",
    "<loc0051><loc0309><loc0708><loc0646> cat ; <loc0000><loc0001><loc1022><loc1023> dog",
    "<seg012><seg127> car",
    "yes",
    "",
    "3 shapes, 2 red.",
]


@pytest.fixture(scope="module")
def pre(tiny_tokenizer: PaliGemmaTokenizer) -> PaliGemmaCausalLMPreprocessor:
    return PaliGemmaCausalLMPreprocessor(tiny_tokenizer, image_size=IMAGE_SIZE, sequence_length=64)


@pytest.fixture(scope="module")
def hf_processor(tiny_tokenizer_dir: Path):
    import transformers

    transformers.logging.set_verbosity_error()  # it warns on every call without "<image>" in the text
    return hf_paligemma_processor(tiny_tokenizer_dir, IMAGE_SIZE, NUM_IMAGE_TOKENS)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))


def _without_image_tokens(ids, hf_processor) -> list[int]:
    ids = list(ids)
    assert ids[:NUM_IMAGE_TOKENS] == [hf_processor.image_token_id] * NUM_IMAGE_TOKENS
    assert hf_processor.image_token_id not in ids[NUM_IMAGE_TOKENS:]
    return ids[NUM_IMAGE_TOKENS:]


# ----------------------------------------------------------------------------- parity with transformers


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_ids_match_transformers(pre, hf_processor, image, prompt: str) -> None:
    hf = hf_processor(images=image, text=prompt, return_tensors="np")
    assert pre.encode_prompt(prompt) == _without_image_tokens(hf["input_ids"][0], hf_processor)


@pytest.mark.parametrize("prompt", ["caption en", "detect cat ; dog", ""])
def test_trailing_newline_is_accepted_without_doubling(pre, hf_processor, image, prompt: str) -> None:
    # transformers appends "\n" to whatever it is given, so a KerasHub-style prompt that already
    # ends in "\n" becomes "...\n\n" there (vLLM PR #13584). We drop one trailing "\n" first, so
    # both spellings give the reference ids of the prompt written without it.
    hf = hf_processor(images=image, text=prompt, return_tensors="np")
    assert pre.encode_prompt(prompt + "\n") == _without_image_tokens(hf["input_ids"][0], hf_processor)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("prompt", ["caption en", "detect cat ; dog", ""])
def test_training_example_matches_transformers(pre, hf_processor, image, prompt: str, suffix: str) -> None:
    hf = hf_processor(images=image, text=prompt, suffix=suffix, return_tensors="np")
    ids, mask = pre.encode_example(prompt, suffix)
    assert ids == _without_image_tokens(hf["input_ids"][0], hf_processor)
    # transformers marks the suffix with token_type 1 and trains only there (labels != -100).
    assert mask == (hf["token_type_ids"][0][NUM_IMAGE_TOKENS:] == 1).tolist()
    assert mask == (hf["labels"][0][NUM_IMAGE_TOKENS:] != -100).tolist()


def test_pixel_values_match_transformers_with_bicubic(tiny_tokenizer, hf_processor, image) -> None:
    pre = PaliGemmaCausalLMPreprocessor(tiny_tokenizer, IMAGE_SIZE, resample="bicubic")
    hf = hf_processor(images=image, text="caption en", return_tensors="np")
    # Same PIL resize on both sides; only float rounding of the rescale differs.
    np.testing.assert_allclose(pre.preprocess_images(image).numpy(), hf["pixel_values"], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- layout invariants


@pytest.mark.parametrize("prompt", ["caption en", "caption en\n", "", "\n", "a\nb\n"])
def test_exactly_one_bos_and_one_trailing_newline(pre, tiny_tokenizer, prompt: str) -> None:
    ids = pre.encode_prompt(prompt)
    nl = tiny_tokenizer.newline_token_id
    assert ids[0] == tiny_tokenizer.start_token_id
    assert ids.count(tiny_tokenizer.start_token_id) == 1
    assert ids[-1] == nl
    assert ids[-2] != nl  # never "\n\n" at the end


def test_empty_prompt_is_bos_newline(pre, tiny_tokenizer) -> None:
    # transformers' processing_paligemma.py: the empty prompt is [BOS, "\n"] ([2, 108] with the real vocabulary).
    assert pre.encode_prompt("") == [tiny_tokenizer.start_token_id, tiny_tokenizer.newline_token_id]


def test_example_ends_with_eos_and_masks_only_the_answer(pre, tiny_tokenizer) -> None:
    ids, mask = pre.encode_example("caption en\n", "a cow")
    prompt = pre.encode_prompt("caption en")
    assert ids[: len(prompt)] == prompt and ids[-1] == tiny_tokenizer.end_token_id
    assert ids[len(prompt) : -1] == tiny_tokenizer.tokenize("a cow")
    assert mask == [False] * len(prompt) + [True] * (len(ids) - len(prompt))


@pytest.mark.parametrize("prompt", ["<image>caption en", "<image><bos>caption en", "<bos>caption en"])
def test_transformers_style_markers_are_refused(pre, prompt: str) -> None:
    with pytest.raises(ValueError, match="added automatically"):
        pre.encode_prompt(prompt)


# ----------------------------------------------------------------------------- packing


def test_pack_right_pads_to_the_longest_row(pre) -> None:
    out = pre.pack([[5, 6, 7], [8]])
    assert out["token_ids"].dtype == torch.int64
    assert out["padding_mask"].dtype == torch.bool and out["response_mask"].dtype == torch.bool
    assert out["token_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["padding_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert not out["response_mask"].any()


def test_pack_to_a_fixed_length_with_response_masks(pre) -> None:
    rows, masks = zip(*(pre.encode_example("caption en", s) for s in ["red", "a blue square"]), strict=True)
    out = pre.pack(list(rows), sequence_length=20, response_masks=list(masks))
    assert out["token_ids"].shape == (2, 20)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        n = len(row)
        assert out["token_ids"][i, :n].tolist() == row and out["token_ids"][i, n:].eq(0).all()
        assert out["padding_mask"][i].tolist() == [True] * n + [False] * (20 - n)
        assert out["response_mask"][i].tolist() == mask + [False] * (20 - n)


def test_pack_refuses_overlong_rows(pre) -> None:
    with pytest.raises(ValueError, match=r"row 1 has 8 tokens.*sequence length 5"):
        pre.pack([[1, 2], list(range(8))], sequence_length=5)
    with pytest.raises(ValueError, match=r"has 65 tokens.*sequence length 64"):
        pre.pack([list(range(65))])  # the preprocessor's own limit applies by default


def test_pack_checks_response_mask_lengths(pre) -> None:
    with pytest.raises(ValueError, match="response_masks"):
        pre.pack([[1, 2, 3]], response_masks=[[True]])


# ----------------------------------------------------------------------------- generation inputs


def test_generate_preprocess_single(pre, image) -> None:
    """keras-hub's output: padded to the preprocessor's sequence_length, a response_mask (all False
    for a prompt); always a batch, with the pixels under "pixel_values"."""
    out = pre.generate_preprocess({"images": image, "text": "caption en\n"})
    assert set(out) == {"pixel_values", "token_ids", "padding_mask", "response_mask"}
    assert out["pixel_values"].shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(out["pixel_values"], preprocess_images(image, IMAGE_SIZE))
    ids = pre.encode_prompt("caption en")
    assert out["token_ids"].shape == (1, pre.sequence_length)
    assert out["token_ids"][0, : len(ids)].tolist() == ids and out["token_ids"][0, len(ids) :].eq(0).all()
    assert out["padding_mask"][0].tolist() == [True] * len(ids) + [False] * (pre.sequence_length - len(ids))
    assert not out["response_mask"].any()


def test_generate_preprocess_batch_with_keras_hub_key(pre, image) -> None:
    other = Image.new("RGB", (20, 20), (0, 128, 0))
    prompts = ["caption en", "answer en what color is the circle?"]
    out = pre.generate_preprocess({"images": [image, other], "prompts": prompts}, sequence_length=30)
    assert out["token_ids"].shape == (2, 30) and out["pixel_values"].shape[0] == 2
    assert torch.equal(out["pixel_values"][1], preprocess_images(other, IMAGE_SIZE)[0])
    for i, prompt in enumerate(prompts):
        ids = pre.encode_prompt(prompt)
        assert out["token_ids"][i, : len(ids)].tolist() == ids
        assert int(out["padding_mask"][i].sum()) == len(ids)


def test_generate_preprocess_broadcasts_one_image(pre, image) -> None:
    out = pre.generate_preprocess({"images": image, "text": ["caption en", "ocr", "detect cat"]})
    assert out["pixel_values"].shape[0] == 3 and out["pixel_values"].is_contiguous()
    assert torch.equal(out["pixel_values"][0], out["pixel_values"][2])


@pytest.mark.parametrize(
    "x",
    [
        {"images": [Image.new("RGB", (4, 4))] * 2, "text": ["a", "b", "c"]},
        {"images": Image.new("RGB", (4, 4)), "text": "a", "prompts": "a"},
        {"images": Image.new("RGB", (4, 4))},
        {"text": "caption en"},
    ],
)
def test_generate_preprocess_rejects_bad_input(pre, x) -> None:
    with pytest.raises(ValueError):
        pre.generate_preprocess(x)


def test_from_preset(tiny_tokenizer_dir, tiny_tokenizer) -> None:
    pre = PaliGemmaCausalLMPreprocessor.from_preset(tiny_tokenizer_dir, image_size=16, sequence_length=8)
    assert pre.encode_prompt("ocr") == [2, *tiny_tokenizer.tokenize("ocr"), tiny_tokenizer.newline_token_id]
    assert pre.preprocess_images(Image.new("RGB", (5, 5))).shape == (1, 3, 16, 16)
