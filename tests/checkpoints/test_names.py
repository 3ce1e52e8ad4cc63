"""engine.checkpoints.names: the one table of tensor names, read both ways.

The oracle is independent of the table: the tensor names that transformers itself writes (through
the test helpers' own renames to the released Hub naming) and its in-memory parameter names.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from engine.checkpoints.names import NAMES, checkpoint_name, hub_name, our_name
from engine.model.backbone import PaliGemmaBackbone
from engine.model.config import load_config
from tests.helpers.checkpoints import TinySpec

SPECS = {"pg1": TinySpec(), "pg2": TinySpec(family="gemma2", kv_heads=2)}


def _our_parameters(path) -> tuple[list[str], str]:
    config = load_config(path)
    with torch.device("meta"):
        model = PaliGemmaBackbone(config)
    return [name for name, _ in model.named_parameters()], config.text.variant


def _file_names(path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {name for name in f.keys() if "lm_head" not in name}


@pytest.mark.parametrize("family", SPECS)
def test_saving_names_every_parameter_as_the_released_files_do(checkpoints, family):
    path = checkpoints.checkpoint(SPECS[family])
    ours, variant = _our_parameters(path)
    assert {checkpoint_name(n, variant) for n in ours} == _file_names(path)


@pytest.mark.parametrize("family", SPECS)
@pytest.mark.parametrize("naming", ["hub", "save_pretrained", "state_dict"])
def test_loading_reads_every_naming_back_to_our_names(checkpoints, family, naming):
    path = checkpoints.checkpoint(SPECS[family], naming=naming)
    ours, variant = _our_parameters(path)
    assert {our_name(n, variant) for n in _file_names(path)} == set(ours)


@pytest.mark.parametrize("variant", ["gemma", "gemma2"])
def test_both_directions_are_inverse(variant):
    for ours, _ in NAMES:
        for leaf in ("weight", "0.self_attn.q_proj.weight", "3.post_attention_layernorm.weight"):
            name = ours + leaf
            assert our_name(checkpoint_name(name, variant), variant) == name


def test_gemma1_pre_mlp_norm_is_renamed_and_gemma2s_is_not():
    stored = "language_model.model.layers.0.post_attention_layernorm.weight"
    assert our_name(stored, "gemma") == "language_model.layers.0.pre_feedforward_layernorm.weight"
    assert our_name(stored, "gemma2") == "language_model.layers.0.post_attention_layernorm.weight"
    assert checkpoint_name("language_model.layers.0.pre_feedforward_layernorm.weight", "gemma") == stored


def test_hub_name_rewrites_transformers_in_memory_names(checkpoints):
    reference = checkpoints.reference(SPECS["pg2"])
    in_memory = {name for name, _ in reference.named_parameters()}
    assert any(name.startswith("model.") for name in in_memory)  # the fixture really is another naming
    released = _file_names(checkpoints.checkpoint(SPECS["pg2"]))
    assert {hub_name(name) for name in in_memory} == released


def test_names_outside_the_table():
    assert our_name("text_encoder.layers.0.weight", "gemma") is None
    assert hub_name("lm_head.weight") is None
    with pytest.raises(AssertionError, match="NAMES"):
        checkpoint_name("adapter.weight", "gemma")
