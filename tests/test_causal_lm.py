"""PaliGemmaCausalLM: keras-hub's generate() semantics on tiny checkpoints."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from engine import GreedySampler, InputError, PaliGemmaCausalLM, PaliGemmaCausalLMPreprocessor, TopKSampler, TopPSampler
from engine.generate import generate_tokens
from engine.samplers import greedy
from tests.helpers.checkpoints import TOKENIZER_VOCAB, TinySpec

SPEC = TinySpec(family="gemma2", kv_heads=2)


@pytest.fixture(scope="module")
def lm(checkpoints):
    return PaliGemmaCausalLM.from_preset(checkpoints.checkpoint(SPEC), dtype="float32", device="cpu")


def _image(seed=0, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_single_and_batched_prompts(lm):
    img = _image()
    out = lm.generate({"images": img, "text": "caption en\n"}, max_length=20)
    assert isinstance(out, str) and out.startswith("caption en\n")
    stripped = lm.generate({"images": img, "text": "caption en\n"}, max_length=20, strip_prompt=True)
    assert out == "caption en\n" + stripped
    batch = lm.generate(
        {"images": [img, _image(1)], "text": ["caption en\n", "answer en what is it?\n"]}, max_length=20
    )
    assert isinstance(batch, list) and batch[0] == out


def test_batched_rows_equal_one_by_one(lm):
    images = [_image(i) for i in range(3)]
    prompts = ["caption en", "answer en what color is the circle?", "detect square ; circle"]
    batch = lm.complete(images, prompts, max_new_tokens=16, stop_token_ids=None)
    pairs = zip(images, prompts, strict=True)
    single = [lm.complete([im], [p], max_new_tokens=16, stop_token_ids=None)[0] for im, p in pairs]
    assert [c.token_ids for c in batch] == [c.token_ids for c in single]
    assert all(len(c.token_ids) == 16 and c.finish_reason == "length" for c in batch)


def test_max_length_counts_prompt_tokens(lm):
    """max_length is the whole text length (BOS, prompt and "\n" included), image tokens excluded."""
    pre = lm.preprocessor
    prompt_len = len(pre.encode_prompt("caption en"))
    five = lm.complete([_image()], ["caption en"], max_new_tokens=5, stop_token_ids=None)[0]
    full = lm.generate({"images": _image(), "text": "caption en"}, max_length=prompt_len + 5, stop_token_ids=None)
    assert full == pre.tokenizer.detokenize(pre.encode_prompt("caption en") + five.token_ids)
    assert lm.generate({"images": _image(), "text": "caption en"}, max_length=prompt_len, strip_prompt=True) == ""
    with pytest.raises(ValueError, match="more than max_length"):
        lm.generate({"images": _image(), "text": "caption en"}, max_length=2)


def test_stop_token_ends_a_row_and_is_not_in_the_text(lm):
    free = lm.complete([_image()], ["caption en"], max_new_tokens=12, stop_token_ids=None)[0]
    stop = free.token_ids[3]
    first = free.token_ids.index(stop)
    stopped = lm.complete([_image()], ["caption en"], max_new_tokens=12, stop_token_ids=(stop,))[0]
    assert stopped.token_ids == free.token_ids[:first] and stopped.finish_reason == "stop"


def test_generate_without_preprocessor_fills_after_the_prompt(checkpoints, lm):
    raw = PaliGemmaCausalLM.from_preset(checkpoints.checkpoint(SPEC), dtype="float32", device="cpu", preprocessor=None)
    assert raw.preprocessor is None
    prompt = lm.preprocessor.encode_prompt("caption en")
    t = len(prompt) + 8
    token_ids = np.zeros((2, t), dtype=np.int64)
    padding_mask = np.zeros((2, t), dtype=bool)
    token_ids[:, : len(prompt)] = prompt
    padding_mask[:, : len(prompt)] = True
    img = np.asarray(_image(), dtype=np.uint8)
    out = raw.generate(
        {"images": [img, img], "token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=None
    )
    assert isinstance(out["token_ids"], np.ndarray) and out["token_ids"].shape == (2, t)
    assert (out["token_ids"][:, : len(prompt)] == prompt).all() and out["padding_mask"].all()
    expected = lm.complete([_image()], ["caption en"], max_new_tokens=8, stop_token_ids=None)[0].token_ids
    assert out["token_ids"][0, len(prompt) :].tolist() == expected
    with pytest.raises(ValueError, match="preprocessor=None"):
        raw.generate({"images": img, "text": "caption en"})


def test_image_inputs_of_every_kind_agree(lm, tmp_path):
    img = _image(size=(28, 28))
    path = tmp_path / "x.png"
    img.save(path)
    arr = np.asarray(img)
    outs = {
        "pil": lm.generate({"images": img, "text": "caption en"}, max_length=16),
        "path": lm.generate({"images": str(path), "text": "caption en"}, max_length=16),
        "uint8": lm.generate({"images": arr, "text": "caption en"}, max_length=16),
        "float01": lm.generate({"images": arr.astype(np.float32) / 255.0, "text": "caption en"}, max_length=16),
        "pixels": lm.generate(
            {"images": lm.preprocessor.preprocess_images([img]), "text": "caption en"}, max_length=16
        ),
    }
    assert len(set(outs.values())) == 1, outs


def test_sampler_seeds(lm):
    img = _image()

    def run(sampler):
        lm.compile(sampler=sampler)
        try:
            return lm.complete([img], ["caption en"], max_new_tokens=12, stop_token_ids=None)[0].token_ids
        finally:
            lm.compile("greedy")

    assert run(TopKSampler(k=50, temperature=2.0, seed=1)) == run(TopKSampler(k=50, temperature=2.0, seed=1))
    assert run(TopKSampler(k=50, temperature=2.0, seed=1)) != run(TopKSampler(k=50, temperature=2.0, seed=2))
    assert run(TopPSampler(p=1.0, temperature=0.0)) == run(GreedySampler()) == run("greedy")


def test_padding_rows_of_the_embedding_are_never_generated(checkpoints, tmp_path):
    """The checkpoint's embedding has rows past the tokenizer (<image> and padding to a multiple of
    64). Inflate them so the tied head prefers them: text generation must still never emit them."""
    path = shutil.copytree(checkpoints.checkpoint(SPEC), tmp_path / "ckpt")
    tensors = load_file(path / "model.safetensors")
    embed = tensors["language_model.model.embed_tokens.weight"]
    embed[TOKENIZER_VOCAB:] *= 50
    save_file(tensors, path / "model.safetensors")
    raw = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu", preprocessor=None)
    prompt = [2, 10, 20, 4]
    out = raw.generate(
        {
            "images": [_image()],
            "token_ids": np.array([prompt + [0] * 6]),
            "padding_mask": np.array([[1] * 4 + [0] * 6]),
        },
        stop_token_ids=None,
    )
    assert (out["token_ids"][0, 4:] >= TOKENIZER_VOCAB).any(), "the inflated rows should win without a tokenizer"
    lm = PaliGemmaCausalLM.from_preset(path, dtype="float32", device="cpu")
    [c] = lm.complete([_image()], ["caption en"], max_new_tokens=6, stop_token_ids=None)
    assert max(c.token_ids) < TOKENIZER_VOCAB


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precisions_run_and_stay_close_to_float32(checkpoints, lm, dtype):
    half = PaliGemmaCausalLM.from_preset(
        checkpoints.checkpoint(SPEC), dtype=str(dtype).removeprefix("torch."), device="cpu"
    )
    assert half.dtype == dtype
    pixels = lm.preprocessor.preprocess_images([_image()])
    ids = torch.tensor([lm.preprocessor.encode_prompt("caption en")])
    with torch.no_grad():
        a = lm.backbone(pixels, ids)[0, -1]
        b = half.backbone(pixels, ids)[0, -1]
    assert b.dtype == torch.float32 and torch.isfinite(b).all()  # logits always come back in fp32
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    assert half.complete([_image()], ["caption en"], max_new_tokens=4, stop_token_ids=None)[0].token_ids


# ----------------------------------------------------------------------------- keras-hub's API semantics


def test_preprocessor_takes_the_image_size_from_the_backbone_it_is_attached_to(lm):
    """keras-hub builds the preprocessor before the model: ``PaliGemmaCausalLMPreprocessor(tokenizer=...,
    sequence_length=...)``, then ``PaliGemmaCausalLM(backbone=..., preprocessor=...)``."""
    tokenizer = lm.preprocessor.tokenizer
    pre = PaliGemmaCausalLMPreprocessor(tokenizer=tokenizer, sequence_length=128)
    assert pre.image_size is None
    assert pre.encode_prompt("caption en") == lm.preprocessor.encode_prompt("caption en")  # text needs no size
    with pytest.raises(InputError, match=r"image size.*PaliGemmaCausalLM.*image_size="):
        pre.preprocess_images([_image()])
    attached = PaliGemmaCausalLM(backbone=lm.backbone, preprocessor=pre)
    assert pre.image_size == SPEC.image_size and attached.preprocessor is pre
    args = ({"images": _image(), "text": "caption en"},)
    assert attached.generate(*args, max_length=16) == lm.generate(*args, max_length=16)
    with pytest.raises(TypeError, match="by keyword"):
        PaliGemmaCausalLM(pre, lm.backbone)  # keras-hub's positional order
    wrong = PaliGemmaCausalLMPreprocessor(tokenizer, image_size=SPEC.image_size * 2)
    with pytest.raises(InputError, match=rf"image_size {SPEC.image_size * 2}.*{SPEC.image_size}"):
        PaliGemmaCausalLM(lm.backbone, wrong)


def test_generate_takes_generate_preprocess_output(checkpoints, lm):
    """keras-hub's ``lm.generate(lm.preprocessor.generate_preprocess(x))``, on a model with or
    without a preprocessor: rows padded to sequence_length are filled after their prompts."""
    raw = PaliGemmaCausalLM.from_preset(checkpoints.checkpoint(SPEC), dtype="float32", device="cpu", preprocessor=None)
    x = {"images": [_image(0), _image(1)], "prompts": ["caption en", "answer en what is it?"]}
    inputs = lm.preprocessor.generate_preprocess(x, sequence_length=20)
    # With a preprocessor: what the text path gives for max_length 20.
    out = lm.generate(inputs, stop_token_ids=None)
    assert out["token_ids"].shape == (2, 20) and out["padding_mask"].all()
    expected = lm.generate(x, max_length=20, stop_token_ids=None)
    assert lm.preprocessor.tokenizer.detokenize(out["token_ids"]) == expected
    # Without one: the same rows, generated by the loop without the tokenizer's vocabulary limit.
    rows = [lm.preprocessor.encode_prompt(p) for p in x["prompts"]]
    new = generate_tokens(raw.backbone, inputs["pixel_values"], rows, [20 - len(r) for r in rows], greedy)
    out = raw.generate(inputs, stop_token_ids=None)
    assert out["token_ids"].tolist() == [r + n for r, n in zip(rows, new, strict=True)]
    renamed = {("images" if k == "pixel_values" else k): v for k, v in inputs.items()}  # keras-hub's key
    assert torch.equal(raw.generate(renamed, stop_token_ids=None)["token_ids"], out["token_ids"])


def test_backbone_refuses_an_image_count_that_is_not_the_row_count(lm):
    pixels = lm.preprocessor.preprocess_images([_image()])
    ids = torch.tensor([lm.preprocessor.encode_prompt("caption en")] * 2)
    with pytest.raises(InputError, match=r"1 image.* 2 rows"):
        lm.backbone(pixels, ids)
    with pytest.raises(ValueError, match=r"3 images.* 2 rows"):  # InputError is a ValueError, as in transformers
        lm.backbone(pixels.expand(3, -1, -1, -1), ids)


def test_one_prompt_over_several_images_asks_each_image(lm):
    """The one rule of generate and generate_preprocess: a single image or a single prompt is used
    for every row (not transformers' one multi-image row: PaliGemma takes one image per row)."""
    images = [_image(i) for i in range(3)]
    each = [lm.generate({"images": im, "text": "caption en"}, max_length=16) for im in images]
    assert lm.generate({"images": images, "text": "caption en"}, max_length=16) == each
    assert len(set(each)) > 1, "different images should give different answers here"
    x = lm.preprocessor.generate_preprocess({"images": images, "text": "caption en"})
    assert torch.equal(x["pixel_values"], lm.preprocessor.preprocess_images(images))
    row = lm.preprocessor.encode_prompt("caption en")
    assert x["token_ids"][:, : len(row)].tolist() == [row] * 3
    for call in (lm.generate, lm.preprocessor.generate_preprocess):
        with pytest.raises(InputError, match="got 2 images for 3 prompts"):
            call({"images": images[:2], "text": ["a", "b", "c"]})
