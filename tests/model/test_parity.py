"""Parity with the reference: random-weight transformers PaliGemma models, saved and loaded by us.

Every architecture switch is exercised by at least one tiny config: multi-query and grouped kv
heads, two image resolutions, odd sizes, Gemma 2 with a 28B-style query scale, a sliding window
shorter than the sequence, and with/without the final soft-cap.
"""

from __future__ import annotations

import pytest
import torch

from engine.checkpoints.weights import load_backbone
from engine.generate import generate_tokens
from engine.model.config import load_config
from engine.samplers import greedy
from tests.helpers.checkpoints import IMAGE_TOKEN_ID, TOKENIZER_VOCAB, TinySpec

SPECS = {
    "pg1-mqa-28px": TinySpec(),
    "pg1-gqa-42px": TinySpec(heads=4, kv_heads=2, image_size=42, layers=3),
    "pg1-odd": TinySpec(
        hidden=48,
        intermediate=77,
        heads=3,
        kv_heads=3,
        head_dim=20,
        vision_hidden=24,
        vision_heads=3,
        vision_intermediate=40,
        image_size=35,
        patch=5,
    ),
    "pg2-kv2": TinySpec(family="gemma2", kv_heads=2, layers=3),
    "pg2-kv4-42px": TinySpec(family="gemma2", heads=4, kv_heads=4, image_size=42),
    # head_dim 16 but queries scaled by 24**-0.5: PaliGemma 2 28B's head_dim/scalar mismatch.
    "pg2-28b-style": TinySpec(family="gemma2", kv_heads=2, text_extra=(("query_pre_attn_scalar", 24),)),
    "pg2-no-final-cap": TinySpec(family="gemma2", kv_heads=2, text_extra=(("final_logit_softcapping", None),)),
}
WINDOW_SPEC = TinySpec(family="gemma2", kv_heads=2, layers=2, text_extra=(("sliding_window", 8),))


def _inputs(spec: TinySpec, seed: int = 1):
    """Three rows: two prompt-only, one with a 4-token suffix; row 1 has 3 pads."""
    g = torch.Generator().manual_seed(seed)
    b, t = 3, 10
    pixels = torch.rand(b, 3, spec.image_size, spec.image_size, generator=g) * 2 - 1
    ids = torch.randint(5, TOKENIZER_VOCAB, (b, t), generator=g)
    ids[:, 0] = 2
    padding = torch.ones(b, t, dtype=torch.bool)
    padding[1, -3:] = False
    response = torch.zeros(b, t, dtype=torch.bool)
    response[2, -4:] = True
    return pixels, ids, padding, response


def _reference_logits(ref, n_img, pixels, ids, padding, response):
    """The reference's logits per row, each row run alone without padding (its own layout: image
    placeholders then text; token_type_ids 1 marks the causal suffix)."""
    out = []
    for i in range(ids.shape[0]):
        keep = padding[i]
        row = torch.cat([torch.full((n_img,), IMAGE_TOKEN_ID), ids[i][keep]])[None]
        types = torch.cat([torch.zeros(n_img, dtype=torch.long), response[i][keep].long()])[None]
        with torch.no_grad():
            logits = ref(input_ids=row, pixel_values=pixels[i : i + 1], token_type_ids=types).logits
        out.append(logits[0, n_img:])
    return out


def _load(path, dtype=torch.float32, window_policy="none"):
    return load_backbone(path, load_config(path, window_policy=window_policy), dtype)


@pytest.mark.parametrize("name", list(SPECS))
def test_logits_match_reference(checkpoints, name):
    spec = SPECS[name]
    ref = checkpoints.reference(spec)
    ours = _load(checkpoints.checkpoint(spec))
    pixels, ids, padding, response = _inputs(spec)
    with torch.no_grad():
        logits = ours(pixels, ids, padding, response)
    expected = _reference_logits(ref, ours.num_image_tokens, pixels, ids, padding, response)
    for i, exp in enumerate(expected):
        diff = (logits[i][padding[i]] - exp).abs().max().item()
        assert diff <= 1e-4, f"{name} row {i}: max |diff| {diff:.2e}"


def _greedy_reference(ref, n_img, pixels, prompts, new_tokens, suppress_from):
    """transformers' greedy generate on a left-padded batch (its own batching convention)."""
    t = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), n_img + t, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        row = [IMAGE_TOKEN_ID] * n_img + p
        ids[i, -len(row) :] = torch.tensor(row)
        mask[i, -len(row) :] = 1
    out = ref.generate(
        input_ids=ids,
        attention_mask=mask,
        pixel_values=pixels,
        token_type_ids=torch.zeros_like(ids),
        max_new_tokens=new_tokens,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        suppress_tokens=list(range(suppress_from, ref.config.text_config.vocab_size)),
    )
    return out[:, n_img + t :].tolist()


def _prompts(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [[2, *torch.randint(5, TOKENIZER_VOCAB, (n,), generator=g).tolist(), 4] for n in (3, 9, 1)]


@pytest.mark.parametrize("name", ["pg1-mqa-28px", "pg1-gqa-42px", "pg2-kv2", "pg2-28b-style"])
def test_greedy_tokens_match_reference_batched_and_single(checkpoints, name):
    spec, steps = SPECS[name], 24
    ref = checkpoints.reference(spec)
    ours = _load(checkpoints.checkpoint(spec))
    pixels = _inputs(spec)[0]
    prompts = _prompts(seed=7)
    expected = _greedy_reference(ref, ours.num_image_tokens, pixels, prompts, steps, TOKENIZER_VOCAB)
    batched = generate_tokens(ours, pixels, prompts, [steps] * 3, greedy, vocab_limit=TOKENIZER_VOCAB)
    assert batched == expected
    single = [
        generate_tokens(ours, pixels[i : i + 1], [p], [steps], greedy, vocab_limit=TOKENIZER_VOCAB)[0]
        for i, p in enumerate(prompts)
    ]
    assert single == batched
    assert len({tuple(r) for r in batched}) > 1, "rows should differ; identical rows would hide batching bugs"


@pytest.mark.parametrize("name", ["pg1-gqa-42px", "pg2-kv2"])
def test_cached_decode_equals_full_recompute(checkpoints, name):
    """Each decode step's logits equal a fresh forward over prompt + generated tokens in which the
    generated tokens are the causal suffix (response_mask) -- the mask the cache path implies."""
    spec = SPECS[name]
    ours = _load(checkpoints.checkpoint(spec))
    pixels = _inputs(spec)[0][:1]
    prompt = _prompts(seed=3)[1]
    steps = []

    def record(logits):
        steps.append(logits.clone())
        return logits.argmax(-1)

    tokens = generate_tokens(ours, pixels, [prompt], [12], record)[0]
    ids = torch.tensor([prompt + tokens])
    response = torch.tensor([[False] * len(prompt) + [True] * len(tokens)])
    with torch.no_grad():
        full = ours(pixels, ids, response_mask=response)[0]
    for k, step_logits in enumerate(steps):
        diff = (step_logits[0] - full[len(prompt) - 1 + k]).abs().max().item()
        assert diff <= 1e-4, f"step {k}: {diff:.2e}"
    # And the suffix really is causal: treating generated tokens as prefix changes the logits.
    with torch.no_grad():
        as_prefix = ours(pixels, ids)[0]
    assert (as_prefix[len(prompt) :] - full[len(prompt) :]).abs().max() > 1e-3


@pytest.mark.parametrize("policy", ["none", "transformers"])
def test_sliding_window_policies(checkpoints, policy):
    """Window 8 < sequence (16 image + 10 text tokens). "transformers" must equal the reference (which
    applies its window); "none" must equal the reference with the window disabled (as trained)."""
    spec = WINDOW_SPEC
    ref = checkpoints.reference(spec)
    ours = _load(checkpoints.checkpoint(spec), window_policy=policy)
    pixels, ids, padding, response = _inputs(spec)
    with torch.no_grad():
        logits = ours(pixels, ids, padding, response)
    saved = ref.config.text_config.sliding_window
    if policy == "none":  # the same weights without a window: a reference run with window >> sequence
        ref.config.text_config.sliding_window = 4096
    try:
        expected = _reference_logits(ref, ours.num_image_tokens, pixels, ids, padding, response)
    finally:
        ref.config.text_config.sliding_window = saved
    for i, exp in enumerate(expected):
        assert (logits[i][padding[i]] - exp).abs().max().item() <= 1e-4
    # The window must matter for the suffix row, or this test proves nothing.
    other = _load(checkpoints.checkpoint(spec), window_policy="none" if policy == "transformers" else "transformers")
    with torch.no_grad():
        assert (other(pixels, ids, padding, response)[2] - logits[2]).abs().max() > 1e-3


def test_sliding_window_generation_matches_reference(checkpoints):
    spec = WINDOW_SPEC
    ref = checkpoints.reference(spec)
    ours = _load(checkpoints.checkpoint(spec), window_policy="transformers")
    pixels = _inputs(spec)[0]
    prompts = _prompts(seed=11)
    expected = _greedy_reference(ref, ours.num_image_tokens, pixels, prompts, 16, TOKENIZER_VOCAB)
    assert generate_tokens(ours, pixels, prompts, [16] * 3, greedy, vocab_limit=TOKENIZER_VOCAB) == expected
