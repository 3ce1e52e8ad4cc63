"""pali's engine: PaliGemma and PaliGemma 2 in plain PyTorch (no transformers at run time).

The public API mirrors keras-hub's PaliGemma classes; see causal_lm.py. Names are imported lazily
(PEP 562) so that torch-free modules (engine.checkpoints.presets, engine.checkpoints.hub,
engine.processing.image, engine.processing.tasks) can be imported by the CLI without paying for
torch. The layers are described in ARCHITECTURE.md.
"""

from importlib import import_module

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
    "GreedySampler": "samplers",
    "RandomSampler": "samplers",
    "TopKSampler": "samplers",
    "TopPSampler": "samplers",
    "PaliGemmaTokenizer": "processing.tokenizer",
    "CheckpointError": "checkpoints.weights",
    "MaskDecoder": "processing.mask_decoder",
    "Segment": "processing.segmentation",
    "parse_segmentation": "processing.segmentation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
