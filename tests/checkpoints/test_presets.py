"""The preset catalogue against its public sources (keras-hub presets, big_vision and transformers configs)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine.checkpoints.presets import (
    DEFAULT_PRESET,
    Preset,
    get_preset,
    hf_config_for,
    list_presets,
)
from engine.errors import LocalModelError, UnknownPresetError

REPO_ROOT = Path(__file__).resolve().parents[2]

# keras-hub's preset names (keras_hub/src/models/pali_gemma/pali_gemma_presets.py).
KERAS_HUB_NAMES = {
    "pali_gemma_3b_mix_224",
    "pali_gemma_3b_mix_448",
    "pali_gemma_3b_224",
    "pali_gemma_3b_448",
    "pali_gemma_3b_896",
    "pali_gemma_2_ft_docci_3b_448",
    "pali_gemma2_ft_docci_10b_448",
    "pali_gemma2_mix_3b_224",
    "pali_gemma2_mix_3b_448",
    "pali_gemma2_mix_10b_224",
    "pali_gemma2_mix_10b_448",
    "pali_gemma2_mix_28b_224",
    "pali_gemma2_mix_28b_448",
    "pali_gemma2_pt_3b_224",
    "pali_gemma2_pt_3b_448",
    "pali_gemma2_pt_3b_896",
    "pali_gemma2_pt_10b_224",
    "pali_gemma2_pt_10b_448",
    "pali_gemma2_pt_10b_896",
    "pali_gemma2_pt_28b_224",
    "pali_gemma2_pt_28b_448",
    "pali_gemma2_pt_28b_896",
}


def hub_presets() -> list[Preset]:
    return [p for p in list_presets() if p.family != "demo"]


def test_catalogue_has_the_22_keras_hub_presets_and_the_demo():
    names = [p.name for p in list_presets()]
    assert len(names) == len(set(names)) == 23
    assert {p.name for p in hub_presets()} == KERAS_HUB_NAMES
    assert [p.name for p in list_presets() if p.family == "demo"] == ["pali-demo-shapes"]


def test_every_name_and_alias_is_unique_and_resolves_to_its_preset():
    seen: dict[str, str] = {}
    for preset in list_presets():
        for name in (preset.name, *preset.aliases):
            key = name.lower().replace("-", "_")
            assert key not in seen, f"{name} clashes with {seen[key]}"
            seen[key] = preset.name
            assert get_preset(name) is preset
    assert get_preset("PALI-GEMMA2-MIX-3B-224").name == "pali_gemma2_mix_3b_224"


def test_old_keras_hub_names_are_aliases():
    # Name history in keras-hub: PR #1998 names, renamed in PR #2003 / #2024.
    assert get_preset("pali_gemma2_3b_pt_224").name == "pali_gemma2_pt_3b_224"
    assert get_preset("pali_gemma2_28b_pt_896").name == "pali_gemma2_pt_28b_896"
    assert get_preset("pali_gemma2_3b_ft_docci_448").name == "pali_gemma_2_ft_docci_3b_448"
    assert get_preset("pali_gemma2_10b_ft_docci_448").name == "pali_gemma2_ft_docci_10b_448"


def test_default_preset_is_paligemma2_mix_3b_224():
    preset = get_preset(DEFAULT_PRESET)
    assert (preset.family, preset.kind, preset.size, preset.image_size) == ("paligemma2", "mix", "3b", 224)


def test_revisions_sizes_and_repo_names_follow_the_naming_scheme():
    for preset in hub_presets():
        assert preset.image_size in (224, 448, 896)
        assert preset.name.endswith(f"_{preset.image_size}")
        kind = "ft-docci" if preset.kind == "ft" else preset.kind
        if preset.family == "paligemma":
            assert preset.revision == "bfloat16"  # main holds float32 weights
            assert preset.hf_repo == f"google/paligemma-3b-{kind}-{preset.image_size}"
        else:
            assert preset.revision is None
            assert preset.hf_repo == f"google/paligemma2-{preset.size}-{kind}-{preset.image_size}"
        assert preset.size in preset.name or preset.family == "paligemma"
        assert preset.package_dir is None and preset.bundled_dir is None
        assert preset.description


def test_sequence_lengths_are_big_visions_for_paligemma1_and_unknown_for_paligemma2():
    lengths = {p.name: p.sequence_length for p in list_presets() if p.family == "paligemma"}
    assert lengths == {
        "pali_gemma_3b_224": 128,
        "pali_gemma_3b_448": 512,
        "pali_gemma_3b_896": 512,
        "pali_gemma_3b_mix_224": 256,
        "pali_gemma_3b_mix_448": 512,
    }
    assert all(p.sequence_length is None for p in list_presets() if p.family == "paligemma2")


def test_demo_preset_ships_inside_the_engine_package():
    demo = get_preset("pali-demo-shapes")
    assert demo.hf_repo is None and demo.package_dir and demo.bundled_dir is not None
    assert demo.bundled_dir.parent == REPO_ROOT / "engine"
    assert get_preset("pali_demo_shapes") is demo


def test_presets_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset(DEFAULT_PRESET).name = "x"  # type: ignore[misc]


def test_typo_suggests_the_close_names_first():
    with pytest.raises(UnknownPresetError) as caught:
        get_preset("pali_gema2_mix_3b_224")
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert message.index("did you mean") < message.index("'pali_gemma2_mix_3b_224'")
    assert caught.value.suggestions[0] == "pali_gemma2_mix_3b_224"
    assert "pali presets" not in message  # the CLI adds its own hint


def test_unrelated_name_has_no_suggestion_and_says_so():
    with pytest.raises(UnknownPresetError) as caught:
        get_preset("llama")
    assert caught.value.suggestions == []
    assert "did you mean" not in str(caught.value)
    assert str(caught.value) == "unknown preset 'llama': no preset has this name or alias."


# ------------------------------------------------------------------------------ hf_config_for


@pytest.mark.parametrize(
    "name, model_type, layers, hidden, heads, kv_heads, head_dim, intermediate",
    [  # big_vision gemma_2b / gemma2_{2b,9b,27b}; transformers VARIANT_CONFIGS
        ("pali_gemma_3b_mix_224", "gemma", 18, 2048, 8, 1, 256, 16384),
        ("pali_gemma2_mix_3b_448", "gemma2", 26, 2304, 8, 4, 256, 9216),
        ("pali_gemma2_pt_10b_896", "gemma2", 42, 3584, 16, 8, 256, 14336),
        ("pali_gemma2_mix_28b_224", "gemma2", 46, 4608, 32, 16, 128, 36864),
    ],
)
def test_hf_config_matches_the_spec_tables(name, model_type, layers, hidden, heads, kv_heads, head_dim, intermediate):
    preset = get_preset(name)
    config = hf_config_for(preset)
    text, vision = config["text_config"], config["vision_config"]
    assert config["model_type"] == "paligemma"
    assert config["image_token_index"] == 257152
    assert config["projection_dim"] == hidden == vision["projection_dim"]
    assert (text["model_type"], text["num_hidden_layers"], text["hidden_size"]) == (model_type, layers, hidden)
    assert (text["num_attention_heads"], text["num_key_value_heads"], text["head_dim"]) == (heads, kv_heads, head_dim)
    assert text["intermediate_size"] == intermediate
    assert text["vocab_size"] == 257216
    assert text["rms_norm_eps"] == 1e-6 and text["rope_theta"] == 10000
    tokens = {224: 256, 448: 1024, 896: 4096}[preset.image_size]
    assert text["num_image_tokens"] == vision["num_image_tokens"] == tokens
    assert vision["image_size"] == preset.image_size
    assert (vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]) == (1152, 4304, 27)
    assert (vision["num_attention_heads"], vision["patch_size"], vision["vision_use_head"]) == (16, 14, False)
    if model_type == "gemma2":
        assert text["attn_logit_softcapping"] == 50.0
        assert text["final_logit_softcapping"] == 30.0
        assert text["sliding_window"] == 4096
        # 28B scales queries by (4608 / 32) ** -0.5, the others by head_dim ** -0.5.
        assert text["query_pre_attn_scalar"] == (144 if hidden == 4608 else 256)
    else:
        assert "query_pre_attn_scalar" not in text and "sliding_window" not in text
        assert config["hidden_size"] == 2048


def test_hf_config_accepts_a_name_or_alias():
    assert hf_config_for("pali_gemma2_28b_pt_448") == hf_config_for(get_preset("pali_gemma2_pt_28b_448"))


def _vision_params(vision: dict) -> int:
    """SigLIP tower without head (big_vision models/vit.py So400m): conv + position table + 27 pre-LN
    blocks + final LN."""
    width, mlp, patch = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    tokens = (vision["image_size"] // patch) ** 2
    block = 2 * (2 * width) + 4 * (width * width + width) + (width * mlp + mlp) + (mlp * width + width)
    return (3 * patch * patch * width + width) + tokens * width + vision["num_hidden_layers"] * block + 2 * width


def _decoder_params(text: dict, vocab: int) -> int:
    """Gemma decoder (big_vision models/ppp/gemma.py): tied embedding, GeGLU MLP, 2 (Gemma 1) or 4 (Gemma 2) norms."""
    hidden, head_dim = text["hidden_size"], text["head_dim"]
    q = text["num_attention_heads"] * head_dim
    kv = text["num_key_value_heads"] * head_dim
    norms = 2 if text["model_type"] == "gemma" else 4
    block = hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * text["intermediate_size"] + norms * hidden
    return vocab * hidden + text["num_hidden_layers"] * block + hidden


def test_vision_parameter_counts_match_the_spec():
    # Counted from the architecture: ViT+projector 412,442,352 (224), 413,327,088 (448), 416,866,032 (896) + 1152·H + H.
    expected = {224: 412_442_352, 448: 413_327_088, 896: 416_866_032}
    for res, count in expected.items():
        config = hf_config_for(f"pali_gemma2_pt_3b_{res}")
        assert _vision_params(config["vision_config"]) == count


@pytest.mark.parametrize("preset", hub_presets(), ids=lambda p: p.name)
def test_params_column_equals_the_count_computed_from_the_config(preset):
    config = hf_config_for(preset)
    hidden = config["projection_dim"]
    projector = 1152 * hidden + hidden
    # keras-hub / big_vision count the 257152-row embedding (the real vocabulary), not HF's padded one.
    total = (
        _vision_params(config["vision_config"])
        + projector
        + _decoder_params(config["text_config"], vocab=config["image_token_index"])
    )
    assert total == preset.params


def test_hf_checkpoint_holds_64_more_embedding_rows():
    # PG1-224 = 2,923,466,480 with the padded 257216-row embedding (64·H more than keras-hub counts).
    config = hf_config_for("pali_gemma_3b_224")
    hidden = config["projection_dim"]
    total = (
        _vision_params(config["vision_config"])
        + 1152 * hidden
        + hidden
        + _decoder_params(config["text_config"], vocab=config["text_config"]["vocab_size"])
    )
    assert total == 2_923_466_480


def test_importing_presets_and_hub_loads_neither_torch_nor_huggingface_hub():
    code = (
        "import sys, engine.checkpoints.presets, engine.checkpoints.hub\n"
        "heavy = [m for m in ('torch', 'huggingface_hub', 'httpx2') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_demo_config_is_the_bundled_one_or_a_clear_error():
    demo = get_preset("pali-demo-shapes")
    assert demo.bundled_dir is not None
    if (demo.bundled_dir / "config.json").is_file():
        config = hf_config_for(demo)
        assert config["vision_config"].get("image_size", 224) == demo.image_size
    else:
        with pytest.raises(LocalModelError, match="pali-demo-shapes"):
            hf_config_for(demo)


def test_repo_names_are_valid_hub_ids():
    for preset in hub_presets():
        assert preset.hf_repo is not None and re.fullmatch(r"google/[a-z0-9.-]+", preset.hf_repo)
