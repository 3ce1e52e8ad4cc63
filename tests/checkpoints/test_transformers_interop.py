"""Checkpoints pali writes (save_checkpoint, fit's checkpoints, the bundled demo model) load in
transformers -- PaliGemmaForConditionalGeneration.from_pretrained and PaliGemmaProcessor -- and give
pali's logits and greedy tokens.

The test goes through transformers' own processor, so the ``<image>`` id it uses comes from the
files pali wrote, not from our side: a config.json without ``image_token_index`` makes transformers
fall back to 256000 and its processor refuse the input ("Image features and image tokens do not
match"), which a test that feeds pali's own ids back in cannot see.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import PaliGemmaCausalLM
from engine.model.config import from_hf_config, to_hf_config
from engine.train import save_checkpoint
from tests.helpers.checkpoints import TOKENIZER_VOCAB, TinySpec

PG1 = TinySpec()
PG2 = TinySpec(family="gemma2", kv_heads=2)
DEMO_DIR = Path(__file__).resolve().parents[2] / "engine" / "demo_model"
PROMPTS = ("caption en", "answer en what color is the circle?")
NEW_TOKENS = 10

# The fields of released PaliGemma config.json files (google/paligemma-3b-* and paligemma2-*; the
# PaliGemma 1 example is the config quoted by transformers' convert_colpali_weights_to_hf.py, the
# PaliGemma 2 additions come from transformers' convert_paligemma2_weights_to_hf.py). Left out:
# transformers_version and the legacy _vocab_size, which name the writing library, not the model.
RELEASED_TOP = {
    "architectures",
    "model_type",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "image_token_index",
    "ignore_index",
    "projection_dim",
    "hidden_size",
    "torch_dtype",
}
RELEASED_TEXT = {
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "num_image_tokens",
    "torch_dtype",
}
RELEASED_TEXT_PG2 = {
    "query_pre_attn_scalar",
    "sliding_window",
    "final_logit_softcapping",
    "attn_logit_softcapping",
    "hidden_activation",
    "rope_theta",
    "rms_norm_eps",
    "max_position_embeddings",
    "cache_implementation",
}
RELEASED_VISION = {
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "patch_size",
    "image_size",
    "num_image_tokens",
    "projection_dim",
    "vision_use_head",
}
RELEASED_VISION_PG1 = {"projector_hidden_act"}
RELEASED_VISION_PG2 = {"hidden_act", "num_positions"}


def _image(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))


def _transformers(path: Path):
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    model = PaliGemmaForConditionalGeneration.from_pretrained(path, attn_implementation="eager").eval()
    return model.float(), PaliGemmaProcessor.from_pretrained(path)


def _assert_same_as_transformers(lm: PaliGemmaCausalLM, path: Path) -> None:
    """Per prompt: transformers' processor output through its model and through ours -- the same
    text ids after the image tokens, logits within 1e-4, the same greedy tokens."""
    model, processor = _transformers(path)
    pre = lm.preprocessor
    assert pre is not None
    n_img, vocab = lm.backbone.num_image_tokens, pre.tokenizer.vocabulary_size()
    for seed, prompt in enumerate(PROMPTS):
        inputs = processor(text=prompt, images=_image(seed), return_tensors="pt")
        ids = inputs["input_ids"]
        assert ids[0, :n_img].eq(model.config.image_token_id).all()
        assert ids[0, n_img:].tolist() == pre.encode_prompt(prompt)
        with torch.no_grad():
            theirs = model(**inputs).logits[0, n_img:].float()
            ours = lm.backbone(inputs["pixel_values"], ids[:, n_img:])[0]
        assert (theirs - ours).abs().max().item() <= 1e-4
        generated = model.generate(
            **inputs,
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            suppress_tokens=list(
                range(vocab, model.config.text_config.vocab_size)
            ),  # as pali: no <image>, no padding rows
        )
        expected = generated[0, ids.shape[1] :].tolist()
        t = ids.shape[1] - n_img
        row = torch.zeros(1, t + NEW_TOKENS, dtype=torch.long)
        row[0, :t] = ids[0, n_img:]
        mask = torch.arange(t + NEW_TOKENS)[None] < t
        out = lm.generate({"images": inputs["pixel_values"], "token_ids": row, "padding_mask": mask})
        got = out["token_ids"][0, t:][out["padding_mask"][0, t:]].tolist()
        assert got == expected[: len(got)] and len(got) == len(expected), (got, expected)


@pytest.fixture(scope="module", params=[PG1, PG2], ids=["pg1", "pg2"])
def spec(request) -> TinySpec:
    return request.param


def _lm(checkpoints, spec: TinySpec) -> PaliGemmaCausalLM:
    return PaliGemmaCausalLM.from_preset(checkpoints.checkpoint(spec), dtype="float32", device="cpu")


def test_save_checkpoint_loads_in_transformers(checkpoints, spec, tmp_path):
    lm = _lm(checkpoints, spec)
    path = save_checkpoint(lm, tmp_path / "saved")
    assert json.loads((path / "config.json").read_text())["image_token_index"] == TOKENIZER_VOCAB
    _assert_same_as_transformers(lm, path)


def test_fit_checkpoint_loads_in_transformers_and_gives_pali_tokens(checkpoints, spec, tmp_path):
    lm = _lm(checkpoints, spec)
    data = {
        "images": [_image(10), _image(11)],
        "prefixes": ["caption en", "answer en what is it?"],
        "suffixes": ["a red circle", "a square"],
    }
    lm.fit(data, epochs=1, batch_size=2, learning_rate=1e-2, checkpoint_dir=tmp_path / "trained")
    _assert_same_as_transformers(lm, tmp_path / "trained")
    reloaded = PaliGemmaCausalLM.from_preset(tmp_path / "trained", dtype="float32", device="cpu")
    _assert_same_as_transformers(reloaded, tmp_path / "trained")


def test_bundled_demo_model_loads_in_transformers(tmp_path):
    lm = PaliGemmaCausalLM.from_preset("pali-demo-shapes", dtype="float32", device="cpu")
    # The bundled config.json is what pali's saver writes for the bundled weights and tokenizer...
    saved = save_checkpoint(lm, tmp_path / "demo")
    assert json.loads((DEMO_DIR / "config.json").read_text()) == json.loads((saved / "config.json").read_text())
    # ...and transformers runs the bundled directory itself: <image> placeholders at its id.
    from transformers import PaliGemmaForConditionalGeneration

    model = PaliGemmaForConditionalGeneration.from_pretrained(DEMO_DIR, attn_implementation="eager").eval()
    pre = lm.preprocessor
    assert pre is not None and model.config.image_token_id == pre.tokenizer.vocabulary_size()
    pixels = pre.preprocess_images([_image(0)])
    text = torch.tensor([pre.encode_prompt("caption en")])
    n_img = lm.backbone.num_image_tokens
    ids = torch.cat([torch.full((1, n_img), model.config.image_token_id), text], dim=1)
    with torch.no_grad():
        theirs = model(input_ids=ids, pixel_values=pixels, token_type_ids=torch.zeros_like(ids)).logits[0, n_img:]
        ours = lm.backbone(pixels, text)[0]
    assert (theirs - ours).abs().max().item() <= 1e-4
    _assert_same_as_transformers(lm, saved)  # and through transformers' processor
    for name in ("tokenizer_config.json", "preprocessor_config.json"):  # the bundled ones are the saver's
        assert json.loads((DEMO_DIR / name).read_text()) == json.loads((saved / name).read_text()), name
    _assert_same_as_transformers(lm, DEMO_DIR)  # so the bundled directory works with the processor too


def test_config_json_has_every_released_field(checkpoints, spec):
    config = to_hf_config(_lm(checkpoints, spec).backbone.config)
    text, vision = config["text_config"], config["vision_config"]
    pg2 = spec.family == "gemma2"
    assert RELEASED_TOP | ({"num_hidden_layers"} if pg2 else set()) <= set(config)
    assert RELEASED_TEXT | (RELEASED_TEXT_PG2 if pg2 else set()) <= set(text)
    assert RELEASED_VISION | (RELEASED_VISION_PG2 if pg2 else RELEASED_VISION_PG1) <= set(vision)
    if pg2:
        assert config["num_hidden_layers"] == text["num_hidden_layers"] == spec.layers
        assert text["cache_implementation"] == "hybrid"
    assert vision["num_image_tokens"] == text["num_image_tokens"] == (spec.image_size // spec.patch) ** 2


def test_image_token_index_is_kept_on_load(checkpoints, spec):
    raw = json.loads((checkpoints.checkpoint(spec) / "config.json").read_text())
    for key in ("image_token_index", "image_token_id"):  # transformers 5 also reads image_token_id
        source = {k: v for k, v in raw.items() if k not in ("image_token_index", "image_token_id")}
        source[key] = 1234
        assert to_hf_config(from_hf_config(source))["image_token_index"] == 1234
