"""config.json -> frozen dataclasses: the defaults serialized configs omit, and the variant switches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.errors import InputError
from engine.model.config import from_hf_config
from engine.model.masks import prefix_lm_mask, window_mask

# The PaliGemma 1 config as the hub's converter writes it: defaults (head_dim, rope_theta, image_size 224,
# eps) omitted (the PaliGemma 448 config quoted by transformers' ColPali conversion script, with the 224
# values).
PG1_HUB = {
    "model_type": "paligemma",
    "hidden_size": 2048,
    "projection_dim": 2048,
    "image_token_index": 257152,
    "text_config": {
        "hidden_size": 2048,
        "intermediate_size": 16384,
        "model_type": "gemma",
        "num_attention_heads": 8,
        "num_hidden_layers": 18,
        "num_image_tokens": 256,
        "num_key_value_heads": 1,
        "vocab_size": 257216,
    },
    "vision_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "num_image_tokens": 256,
        "patch_size": 14,
        "projection_dim": 2048,
        "projector_hidden_act": "gelu_fast",
        "vision_use_head": False,
    },
}


def test_pg1_hub_config_fills_paligemma_defaults():
    cfg = from_hf_config(PG1_HUB)
    assert cfg.text.variant == "gemma"
    assert cfg.text.head_dim == 256 and cfg.text.attn_scale == 256**-0.5
    assert cfg.text.rope_theta == 10000.0 and cfg.text.rms_norm_eps == 1e-6
    assert cfg.text.attn_logit_softcap is None and cfg.text.final_logit_softcap is None
    assert cfg.vision.image_size == 224 and cfg.num_image_tokens == 256
    assert cfg.vision.layer_norm_eps == 1e-6


def _pg2(hidden, heads, kv, **extra):
    text = {
        "model_type": "gemma2",
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        **extra,
    }
    return {"model_type": "paligemma", "text_config": text, "vision_config": {"image_size": 448}}


def test_pg2_defaults_are_gemma2s_and_28b_gets_its_query_scale():
    cfg = from_hf_config(_pg2(2304, 8, 4, intermediate_size=9216, num_hidden_layers=26))
    assert cfg.text.final_logit_softcap == 30.0 and cfg.text.attn_logit_softcap == 50.0
    assert cfg.text.sliding_window == 4096 and cfg.text.attn_scale == 256**-0.5
    assert cfg.num_image_tokens == 1024
    # 28B: head_dim 128 and queries scaled by (4608/32)**-0.5 = 1/12 when the file omits them.
    big = from_hf_config(_pg2(4608, 32, 16))
    assert big.text.head_dim == 128 and big.text.attn_scale == pytest.approx(1 / 12)
    # ...but an explicit value in the file always wins.
    assert from_hf_config(_pg2(4608, 32, 16, query_pre_attn_scalar=128)).text.attn_scale == pytest.approx(128**-0.5)


def test_softcaps_can_be_switched_off_by_config():
    cfg = from_hf_config(_pg2(2304, 8, 4, final_logit_softcapping=None, attn_logit_softcapping=None))
    assert cfg.text.final_logit_softcap is None and cfg.text.attn_logit_softcap is None


def test_window_policy_chooses_sliding_layers():
    raw = _pg2(2304, 8, 4, num_hidden_layers=4)
    assert not any(from_hf_config(raw).text.is_sliding_layer(i) for i in range(4))
    trans = from_hf_config(raw, window_policy="transformers").text
    assert [trans.is_sliding_layer(i) for i in range(4)] == [True, False, True, False]
    with pytest.raises(InputError):  # an argument of ours, not a fault of the file
        from_hf_config(raw, window_policy="keras")  # type: ignore[arg-type]  # on purpose


def test_configs_are_frozen():
    cfg = from_hf_config(PG1_HUB)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.text.head_dim = 128  # type: ignore[misc]


def test_prefix_lm_mask_literal():
    """2 image + 2 prompt + 2 suffix tokens, then one pad (big_vision make_attn_mask)."""
    input_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    mask_ar = torch.tensor([[0, 0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    expected = torch.tensor(
        [
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 1],  # a pad query sees only itself (finite softmax, never read)
        ],
        dtype=torch.bool,
    )
    assert torch.equal(prefix_lm_mask(input_mask, mask_ar)[0, 0], expected)


def test_window_mask_keeps_prefix_block_whole():
    pos = torch.arange(6)[None]
    prefix = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    got = window_mask(pos, pos, prefix, prefix, window=2)[0, 0]
    assert got[3, 0] and got[0, 3]  # prefix <-> prefix, 3 apart: kept
    assert not got[5, 2] and got[5, 4] and got[4, 3]  # suffix sees only the last 2 positions
