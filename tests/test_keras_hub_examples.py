"""The three examples of keras-hub's PaliGemmaCausalLM docstring
(keras_hub/src/models/pali_gemma/pali_gemma_causal_lm.py), run as written: only the
``keras_hub.models.`` prefix becomes ``engine.`` and the downloaded preset a tiny local one.

The tiny preset has the released vocabulary size (257216 rows), because the second example feeds
real-vocabulary ids (214064). Its EOS embedding row is scaled up so that answers end after a few
tokens: the examples leave ``max_length`` at the preprocessor's 1024, which a random model would
otherwise fill.
"""

from __future__ import annotations

import ast
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import engine
from tests.helpers.checkpoints import TinySpec

SPEC = TinySpec(hidden=32, heads=2, head_dim=16, vocab=257216)
KERAS_PRESET = '"pali_gemma_3b_mix_224"'

# Verbatim from the docstring (its "\\n" in the source is "\n" in the rendered docs).
GENERATE = r"""
image = np.random.rand(224, 224, 3)
pali_gemma_lm = keras_hub.models.PaliGemmaCausalLM.from_preset(
    "pali_gemma_3b_mix_224"
)
pali_gemma_lm.generate(
  {
    "images": image,
    "text": ["answer en where is the cow standing?\n"]
  }
)

# Generate with batched prompts.
pali_gemma_lm.generate(
  {
    "images": [image, image],
    "text": ["answer en where is the cow standing?\n", "caption en\n"]
  }
)
"""

GENERATE_WITHOUT_PREPROCESSING = r"""
image = np.random.rand(224, 224, 3)
inputs = {
    "images": [image, image],
    # Token ids for "<bos> Keras is".
    "token_ids": np.array([[2, 214064, 603, 0, 0, 0, 0]] * 2),
    # Use `"padding_mask"` to indicate values that should not be overridden.
    "padding_mask": np.array([[1, 1, 1, 0, 0, 0, 0]] * 2),
}

pali_gemma_lm = keras_hub.models.PaliGemmaCausalLM.from_preset(
    "pali_gemma_3b_mix_224",
    preprocessor=None,
)
pali_gemma_lm.generate(inputs)
"""

CUSTOM_BACKBONE_AND_VOCABULARY = r"""
tokenizer = keras_hub.models.PaliGemmaTokenizer(
    proto="proto.spm",
)
preprocessor = keras_hub.models.PaliGemmaCausalLMPreprocessor(
    tokenizer=tokenizer,
    sequence_length=128,
)
backbone = keras_hub.models.PaliGemmaBackbone()
pali_gemma_lm = keras_hub.models.PaliGemmaCausalLM(
    backbone=backbone,
    preprocessor=preprocessor,
)
"""


@pytest.fixture(scope="module")
def preset(checkpoints, tmp_path_factory) -> str:
    path = shutil.copytree(checkpoints.checkpoint(SPEC), tmp_path_factory.mktemp("keras") / "tiny_mix")
    tensors = load_file(path / "model.safetensors")
    tensors["language_model.model.embed_tokens.weight"][1] *= 3  # EOS: answers end early (see above)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return str(path)


def _run(example: str, preset: str | None = None) -> dict:
    """Runs an example as keras-hub's docs write it, statement by statement; returns its variables,
    with the value of each bare expression (the ``generate`` calls) under ``_outputs``, as an
    interactive session would show them."""
    code = example.replace("keras_hub.models.", "engine.")
    if preset is not None:
        code = code.replace(KERAS_PRESET, repr(preset))
    namespace: dict = {"np": np, "engine": engine}
    outputs = []
    for node in ast.parse(code).body:
        if isinstance(node, ast.Expr):
            outputs.append(eval(compile(ast.Expression(node.value), "<example>", "eval"), namespace))
        else:
            exec(compile(ast.Module([node], type_ignores=[]), "<example>", "exec"), namespace)
    namespace["_outputs"] = outputs
    return namespace


def test_generate_example(preset):
    ns = _run(GENERATE, preset)
    single, batched = ns["_outputs"]
    assert isinstance(single, list) and len(single) == 1
    assert single[0].startswith("answer en where is the cow standing?\n")
    assert isinstance(batched, list) and len(batched) == 2
    assert batched[0] == single[0]  # the same image and prompt, in a batch
    assert batched[1].startswith("caption en\n")
    tokenizer = ns["pali_gemma_lm"].preprocessor.tokenizer
    assert all(len(tokenizer.tokenize(text)) < 1024 for text in batched)  # answers ended at EOS


def test_generate_without_preprocessing_example(preset):
    ns = _run(GENERATE_WITHOUT_PREPROCESSING, preset)
    [out] = ns["_outputs"]
    assert ns["pali_gemma_lm"].preprocessor is None
    assert isinstance(out["token_ids"], np.ndarray) and out["token_ids"].shape == (2, 7)
    assert (out["token_ids"][:, :3] == [2, 214064, 603]).all()  # the prompt is kept
    assert out["padding_mask"][:, :3].all()
    # The same image and prompt in both rows: the same continuation.
    assert (out["token_ids"][0] == out["token_ids"][1]).all()


def test_custom_backbone_and_vocabulary_example(tiny_tokenizer_dir, tmp_path, monkeypatch):
    """``PaliGemmaBackbone()`` is PaliGemma 1 3B at 224 px (keras-hub's argument defaults): built on
    the meta device, so that the test does not allocate 12 GB."""
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(tiny_tokenizer_dir / "tokenizer.model", "proto.spm")
    with torch.device("meta"):
        ns = _run(CUSTOM_BACKBONE_AND_VOCABULARY)
    lm = ns["pali_gemma_lm"]
    assert lm.backbone is ns["backbone"] and lm.preprocessor is ns["preprocessor"]
    assert lm.preprocessor.sequence_length == 128
    assert lm.preprocessor.image_size == 224 == lm.backbone.config.image_size  # taken from the backbone
    assert lm.backbone.num_image_tokens == 256
    assert 2.9e9 < sum(p.numel() for p in lm.backbone.parameters()) < 2.95e9  # "3B": 2.92 G parameters
    assert lm.preprocessor.encode_prompt("caption en")[0] == ns["tokenizer"].start_token_id
