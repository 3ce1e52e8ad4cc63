"""Every preset's architecture, built on the meta device, has the parameter count keras-hub and
big_vision publish (keras-hub pali_gemma_presets.py metadata) -- plus the 64 padding rows of the
Hugging Face embedding."""

from __future__ import annotations

import pytest
import torch

from engine.checkpoints.presets import hf_config_for, list_presets
from engine.model.backbone import PaliGemmaBackbone
from engine.model.config import from_hf_config

HF_EXTRA_VOCAB_ROWS = 257216 - 257152  # <image> + padding to a multiple of 64, absent from KH/BV counts


@pytest.mark.parametrize("preset", [p for p in list_presets() if p.family != "demo"], ids=lambda p: p.name)
def test_parameter_count_matches_the_catalogue(preset):
    config = from_hf_config(hf_config_for(preset))
    with torch.device("meta"):
        model = PaliGemmaBackbone(config)
    count = sum(p.numel() for p in model.parameters())
    assert count == preset.params + HF_EXTRA_VOCAB_ROWS * config.text.hidden_size
    assert config.text.variant == ("gemma" if preset.family == "paligemma" else "gemma2")
    assert config.image_size == preset.image_size
