"""engine.train: the suffix-only objective, the prefix-LM mask in training, and the fit loop."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import PaliGemmaBackbone, PaliGemmaCausalLM, PaliGemmaCausalLMPreprocessor, PaliGemmaTokenizer
from engine.model.config import PaliGemmaConfig, TextConfig, Variant, VisionConfig
from engine.train import StepReport, _lr_factor, compute_loss, next_token_targets, suffix_loss
from engine.train_data import prepare_batch
from tests.helpers.checkpoints import MODEL_VOCAB
from tests.helpers.tiny_tokenizer import train_tiny_tokenizer

IMAGE = 28


def _pre(lm: PaliGemmaCausalLM) -> PaliGemmaCausalLMPreprocessor:
    assert lm.preprocessor is not None
    return lm.preprocessor


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return PaliGemmaTokenizer(train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model"))


def tiny_lm(tokenizer, variant: Variant = "gemma2", seed: int = 0) -> PaliGemmaCausalLM:
    torch.manual_seed(seed)
    softcaps = (50.0, 30.0) if variant == "gemma2" else (None, None)
    config = PaliGemmaConfig(
        vision=VisionConfig(
            hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, image_size=IMAGE, patch_size=7
        ),
        text=TextConfig(
            variant=variant,
            vocab_size=MODEL_VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=16,
            query_pre_attn_scalar=16.0,
            attn_logit_softcap=softcaps[0],
            final_logit_softcap=softcaps[1],
        ),
    )
    backbone = PaliGemmaBackbone(config)
    with torch.no_grad():  # unit-scale inputs and logits (N(0, 1) rows would start the loss near 30)
        backbone.language_model.embed_tokens.weight.mul_(64**-0.5)
    return PaliGemmaCausalLM(backbone, PaliGemmaCausalLMPreprocessor(tokenizer, IMAGE, sequence_length=64))


def solid(rgb) -> np.ndarray:
    return np.full((IMAGE, IMAGE, 3), rgb, dtype=np.uint8)


EXAMPLES: dict[str, list[Any]] = {
    "images": [solid((220, 30, 30)), solid((30, 30, 220)), solid((30, 200, 30)), solid((220, 30, 30))],
    "prefixes": ["answer en what color is it?", "answer en what color is it?", "caption en", "detect circle"],
    "suffixes": ["red", "blue", "a green square", "<loc0100><loc0200><loc0700><loc0900> circle"],
}


def test_next_token_targets_literal():
    ids = torch.tensor([[2, 10, 11, 108, 20, 1, 0], [2, 12, 108, 21, 22, 23, 1]])
    response = torch.tensor([[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    scored, targets = next_token_targets(ids, response)
    assert scored.int().tolist() == [[0, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0]]
    assert targets[0, 3].item() == 20 and targets[0, 4].item() == 1  # "\n" predicts the answer, the answer EOS
    assert targets[1, 2:6].tolist() == [21, 22, 23, 1]


def test_loss_equals_cross_entropy_on_the_answer_tokens_only(tokenizer):
    lm = tiny_lm(tokenizer)
    pre = _pre(lm)
    batch = prepare_batch(pre, EXAMPLES["images"], EXAMPLES["prefixes"], EXAMPLES["suffixes"])
    loss = compute_loss(lm.backbone, batch)
    # Independently: full logits from the backbone, then each example's answer scored by hand.
    logits = lm.backbone(batch["pixel_values"], batch["token_ids"], batch["padding_mask"], batch["response_mask"])
    per_example = []
    for row, (prefix, suffix) in enumerate(zip(EXAMPLES["prefixes"], EXAMPLES["suffixes"], strict=True)):
        prompt_len = len(pre.encode_prompt(prefix))
        answer = tokenizer.tokenize(suffix) + [tokenizer.end_token_id]
        terms = [
            F.cross_entropy(logits[row, prompt_len - 1 + k][None], torch.tensor([tok])) for k, tok in enumerate(answer)
        ]
        per_example.append(sum(terms) / len(terms))
    torch.testing.assert_close(loss, sum(per_example) / len(per_example))


def test_prefix_tokens_carry_no_loss(tokenizer):
    lm = tiny_lm(tokenizer)
    batch = prepare_batch(_pre(lm), EXAMPLES["images"], EXAMPLES["prefixes"], EXAMPLES["suffixes"])
    hidden = lm.backbone.text_hidden_states(
        batch["pixel_values"], batch["token_ids"], batch["padding_mask"], batch["response_mask"]
    )
    hidden = hidden.detach().requires_grad_(True)
    loss = suffix_loss(lm.backbone, hidden, batch["token_ids"], batch["response_mask"])
    loss.backward()
    scored, _ = next_token_targets(batch["token_ids"], batch["response_mask"])
    assert hidden.grad is not None
    grad_norm = hidden.grad.norm(dim=-1)  # (B, T)
    assert torch.all(grad_norm[~scored] == 0), "a position predicting a prompt token (or padding) got gradient"
    assert torch.all(grad_norm[scored] > 0)
    # Whatever the model predicts at those positions is irrelevant to the loss.
    noisy = hidden.detach() + 100 * torch.randn_like(hidden) * (~scored)[..., None]
    torch.testing.assert_close(
        suffix_loss(lm.backbone, noisy, batch["token_ids"], batch["response_mask"]), loss.detach()
    )


@pytest.mark.parametrize("variant", ["gemma", "gemma2"])
def test_training_forward_is_prefix_lm(tokenizer, variant):
    """Prompt positions see the whole prompt (and not the answer); answer positions are causal."""
    lm = tiny_lm(tokenizer, variant)
    pre = _pre(lm)
    batch = prepare_batch(pre, [EXAMPLES["images"][2]], ["caption en"], ["a green square"])
    n_prompt = len(pre.encode_prompt("caption en"))

    def hidden(ids):
        with torch.no_grad():
            return lm.backbone.text_hidden_states(
                batch["pixel_values"], ids, batch["padding_mask"], batch["response_mask"]
            )[0]

    base = hidden(batch["token_ids"])
    later_answer = batch["token_ids"].clone()
    later_answer[0, n_prompt + 2] = tokenizer.loc_token_id(5)
    h = hidden(later_answer)
    torch.testing.assert_close(h[: n_prompt + 2], base[: n_prompt + 2], rtol=0, atol=1e-6)  # prompt + earlier answer
    assert not torch.allclose(h[n_prompt + 2 :], base[n_prompt + 2 :])
    last_prompt = batch["token_ids"].clone()
    last_prompt[0, n_prompt - 2] = tokenizer.loc_token_id(5)  # the prompt's last word
    assert not torch.allclose(hidden(last_prompt)[0], base[0]), "BOS must see later prompt tokens (bidirectional)"


def test_lr_schedule_warmup_then_cosine():
    f = _lr_factor(warmup=4, total=12, schedule="cosine")
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == pytest.approx(0.0)
    assert _lr_factor(2, None, "cosine")(100) == 1.0 and _lr_factor(0, 10, "constant")(7) == 1.0


@pytest.mark.slow  # 80 epochs: 2-3 s on a quiet 2-core machine, 100+ s when the CPUs are shared
def test_fit_overfits_a_handful_of_examples_and_generates_them(tokenizer):
    lm = tiny_lm(tokenizer)
    torch.set_num_threads(2)
    steps: list[StepReport] = []
    history = lm.fit(EXAMPLES, epochs=80, batch_size=4, learning_rate=3e-3, warmup_steps=5, callback=steps.append)
    assert history.steps == 80 and len(steps) == 80 and steps[-1].total_steps == 80
    assert history.losses[0] > 3.0 and history.losses[-1] < 0.05
    assert not any(p.requires_grad for p in lm.backbone.parameters()) and not lm.backbone.training
    out = lm.complete(EXAMPLES["images"], EXAMPLES["prefixes"], max_new_tokens=12)
    # Same prompt, different images, different answers: the answer comes from the image.
    assert [c.text for c in out] == EXAMPLES["suffixes"]
    assert all(c.finish_reason == "stop" for c in out)


def test_checkpoint_reloads_to_the_same_model(tokenizer, tmp_path):
    lm = tiny_lm(tokenizer)
    lm.fit(EXAMPLES, epochs=2, batch_size=2, learning_rate=1e-3, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",  # the processor files transformers reads (test_transformers_interop.py)
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert not (tmp_path / "ckpt.partial").exists()
    again = PaliGemmaCausalLM.from_preset(tmp_path / "ckpt", dtype="float32", device="cpu")
    batch = prepare_batch(_pre(lm), EXAMPLES["images"], EXAMPLES["prefixes"], EXAMPLES["suffixes"])
    with torch.no_grad():  # from_preset may pick other matmul kernels: equal up to rounding
        torch.testing.assert_close(
            compute_loss(again.backbone, batch), compute_loss(lm.backbone, batch), rtol=1e-5, atol=1e-5
        )
    assert _pre(again).tokenizer.tokenize("a green square") == tokenizer.tokenize("a green square")


def test_a_loaded_checkpoint_fine_tunes(tokenizer, tmp_path):
    """The path users take: from_preset (eval mode, gradients off, load-time optimisations), then fit."""
    tiny_lm(tokenizer).fit(EXAMPLES, epochs=1, batch_size=4, checkpoint_dir=tmp_path / "base")
    lm = PaliGemmaCausalLM.from_preset(tmp_path / "base", dtype="float32", device="cpu")
    before = {n: p.detach().clone() for n, p in lm.backbone.named_parameters()}
    history = lm.fit(EXAMPLES, epochs=25, batch_size=4, learning_rate=3e-3)
    assert history.losses[-1] < 0.3 * history.losses[0]
    assert all(not torch.equal(p, before[n]) for n, p in lm.backbone.named_parameters()), "a parameter got no update"


def test_freeze_keeps_those_parameters(tokenizer):
    lm = tiny_lm(tokenizer)
    before = {n: p.detach().clone() for n, p in lm.backbone.named_parameters()}
    lm.fit(EXAMPLES, epochs=2, batch_size=4, learning_rate=1e-3, freeze=("vision_tower",))
    for name, p in lm.backbone.named_parameters():
        same = torch.equal(p, before[name])
        assert same == name.startswith("vision_tower."), name
    with pytest.raises(ValueError, match="matches no parameter"):
        lm.fit(EXAMPLES, batch_size=4, freeze=("vision",))  # whole module names only
    with pytest.raises(ValueError, match="nothing to train"):
        lm.fit(EXAMPLES, batch_size=4, freeze=("vision_tower", "projector", "language_model"))


def test_bfloat16_autocast_trains(tokenizer):
    lm = tiny_lm(tokenizer)
    history = lm.fit(EXAMPLES, epochs=15, batch_size=4, learning_rate=3e-3, precision="bfloat16")
    assert all(math.isfinite(x) for x in history.losses)
    assert history.losses[-1] < 0.5 * history.losses[0]
    assert lm.backbone.projector.weight.dtype == torch.float32  # master weights untouched by autocast


def test_dataset_forms_are_equivalent(tokenizer):
    """An in-memory dict, an iterable of single examples and an iterable of batches train alike."""
    n = len(EXAMPLES["prefixes"])
    examples = [{k: EXAMPLES[k][i] for k in EXAMPLES} for i in range(n)]
    batches = [{k: EXAMPLES[k][:2] for k in EXAMPLES}, {k: EXAMPLES[k][2:] for k in EXAMPLES}]
    runs = [
        tiny_lm(tokenizer).fit(EXAMPLES, epochs=2, batch_size=2, shuffle=False).losses,
        tiny_lm(tokenizer).fit(examples, epochs=2, batch_size=2).losses,
        tiny_lm(tokenizer).fit(batches, epochs=2).losses,
    ]
    assert len(runs[0]) == 4
    assert runs[0] == pytest.approx(runs[1], abs=1e-5) and runs[0] == pytest.approx(runs[2], abs=1e-5)


def test_keras_hub_keys_train_alike(tokenizer):
    """keras-hub's documented keys, prompts/responses, mean prefixes/suffixes in every dataset form."""
    keras = {"images": EXAMPLES["images"], "prompts": EXAMPLES["prefixes"], "responses": EXAMPLES["suffixes"]}
    examples = [{k: keras[k][i] for k in keras} for i in range(len(EXAMPLES["prefixes"]))]
    batches = [{k: keras[k][:2] for k in keras}, {k: keras[k][2:] for k in keras}]
    expected = tiny_lm(tokenizer).fit(EXAMPLES, epochs=2, batch_size=2, shuffle=False).losses
    assert tiny_lm(tokenizer).fit(keras, epochs=2, batch_size=2, shuffle=False).losses == pytest.approx(expected)
    assert tiny_lm(tokenizer).fit(examples, epochs=2, batch_size=2).losses == pytest.approx(expected, abs=1e-5)
    assert tiny_lm(tokenizer).fit(batches, epochs=2).losses == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="'prompts' or 'prefixes', not both"):
        tiny_lm(tokenizer).fit({**EXAMPLES, "prompts": EXAMPLES["prefixes"]})


def test_dataset_errors_name_the_fix(tokenizer):
    lm = tiny_lm(tokenizer)
    batches = [{k: EXAMPLES[k][:2] for k in EXAMPLES}]
    with pytest.raises(ValueError, match="batch_size does not apply"):
        lm.fit(batches, batch_size=2)
    with pytest.raises(ValueError, match="one-shot iterator"):
        lm.fit(iter(batches), epochs=2)
    with pytest.raises(ValueError, match="keys"):
        lm.fit({"images": EXAMPLES["images"], "prompts": EXAMPLES["prefixes"]})
    with pytest.raises(ValueError, match="has 3 items"):
        lm.fit({**EXAMPLES, "suffixes": EXAMPLES["suffixes"][:3]})
    with pytest.raises(ValueError, match="learning_rate"):
        lm.fit(EXAMPLES, learning_rate=0)
    with pytest.raises(TypeError):
        lm.fit(EXAMPLES, epoch=2)  # a misspelt option is not silently ignored
