"""pali's engine: PaliGemma and PaliGemma 2 in plain PyTorch (no transformers at run time).

The public API mirrors keras-hub's PaliGemma classes; see causal_lm.py. Names are imported lazily
(PEP 562) so that torch-free modules (the errors, the sampler configuration, engine.checkpoints.presets,
engine.checkpoints.hub, engine.processing.image, engine.processing.tasks) can be imported by the CLI
without paying for torch. The layers are described in ARCHITECTURE.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy table below hands out, spelt out for type checkers
    from engine.causal_lm import Completion, PaliGemmaCausalLM
    from engine.errors import (
        AccessDeniedError,
        AuthenticationRequiredError,
        CheckpointError,
        DownloadInterruptedError,
        ImageLoadError,
        InputError,
        LocalModelError,
        MaskDecoderError,
        ModelNotFoundError,
        ModelUnavailableError,
        NonFiniteLogitsError,
        OfflineError,
        PaliError,
        QuantizeError,
        TrainingError,
        UnknownPresetError,
        UnsupportedCheckpointError,
    )
    from engine.model.backbone import PaliGemmaBackbone
    from engine.model.config import PaliGemmaConfig, TextConfig, VisionConfig, from_hf_config, load_config
    from engine.processing.mask_decoder import MaskDecoder, load_mask_decoder
    from engine.processing.preprocessor import PaliGemmaCausalLMPreprocessor
    from engine.processing.segmentation import Segment, parse_segmentation
    from engine.processing.tokenizer import PaliGemmaTokenizer
    from engine.runtime.devices import set_num_threads
    from engine.sampler_config import SamplerConfig
    from engine.samplers import GreedySampler, RandomSampler, TopKSampler, TopPSampler

_EXPORTS = {
    "PaliGemmaBackbone": "model.backbone",
    "PaliGemmaCausalLM": "causal_lm",
    "Completion": "causal_lm",
    "PaliGemmaConfig": "model.config",
    "TextConfig": "model.config",
    "VisionConfig": "model.config",
    "from_hf_config": "model.config",
    "load_config": "model.config",
    "PaliGemmaCausalLMPreprocessor": "processing.preprocessor",
    "set_num_threads": "runtime.devices",
    "SamplerConfig": "sampler_config",
    "GreedySampler": "samplers",
    "RandomSampler": "samplers",
    "TopKSampler": "samplers",
    "TopPSampler": "samplers",
    "PaliGemmaTokenizer": "processing.tokenizer",
    # errors (torch-free): engine.errors documents the kinds
    "AccessDeniedError": "errors",
    "AuthenticationRequiredError": "errors",
    "CheckpointError": "errors",
    "DownloadInterruptedError": "errors",
    "ImageLoadError": "errors",
    "InputError": "errors",
    "LocalModelError": "errors",
    "MaskDecoderError": "errors",
    "ModelNotFoundError": "errors",
    "ModelUnavailableError": "errors",
    "NonFiniteLogitsError": "errors",
    "OfflineError": "errors",
    "PaliError": "errors",
    "QuantizeError": "errors",
    "TrainingError": "errors",
    "UnknownPresetError": "errors",
    "UnsupportedCheckpointError": "errors",
    "MaskDecoder": "processing.mask_decoder",
    "load_mask_decoder": "processing.mask_decoder",
    "Segment": "processing.segmentation",
    "parse_segmentation": "processing.segmentation",
}

# Spelt out (not sorted(_EXPORTS)) so that type checkers and linters see the public names;
# tests/test_public_api.py checks that the two agree.
__all__ = [
    "AccessDeniedError",
    "AuthenticationRequiredError",
    "CheckpointError",
    "Completion",
    "DownloadInterruptedError",
    "GreedySampler",
    "ImageLoadError",
    "InputError",
    "LocalModelError",
    "MaskDecoder",
    "MaskDecoderError",
    "ModelNotFoundError",
    "ModelUnavailableError",
    "NonFiniteLogitsError",
    "OfflineError",
    "PaliError",
    "PaliGemmaBackbone",
    "PaliGemmaCausalLM",
    "PaliGemmaCausalLMPreprocessor",
    "PaliGemmaConfig",
    "PaliGemmaTokenizer",
    "QuantizeError",
    "RandomSampler",
    "SamplerConfig",
    "Segment",
    "TextConfig",
    "TopKSampler",
    "TopPSampler",
    "TrainingError",
    "UnknownPresetError",
    "UnsupportedCheckpointError",
    "VisionConfig",
    "from_hf_config",
    "load_config",
    "load_mask_decoder",
    "parse_segmentation",
    "set_num_threads",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
