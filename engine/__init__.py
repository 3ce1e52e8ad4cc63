"""pali's engine: PaliGemma and PaliGemma 2 in plain PyTorch (no transformers at run time).

The public API mirrors keras-hub's PaliGemma classes; see causal_lm.py. Names are imported lazily
(PEP 562) so that torch-free modules -- engine.presets, engine.hub, engine.image, engine.tasks --
can be imported by the CLI without paying for torch.
"""

from importlib import import_module

_EXPORTS = {
    "PaliGemmaBackbone": "backbone",
    "PaliGemmaCausalLM": "causal_lm",
    "Completion": "causal_lm",
    "PaliGemmaConfig": "config",
    "TextConfig": "config",
    "VisionConfig": "config",
    "from_hf_config": "config",
    "load_config": "config",
    "PaliGemmaCausalLMPreprocessor": "preprocessor",
    "set_num_threads": "runtime",
    "GreedySampler": "samplers",
    "RandomSampler": "samplers",
    "TopKSampler": "samplers",
    "TopPSampler": "samplers",
    "PaliGemmaTokenizer": "tokenizer",
    "CheckpointError": "weights",
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
