"""The sampler configuration: one frozen value, its defaults, and the checks on its fields.

``SamplerConfig`` is what a front end fills (the CLI fills it from its options, unchanged) and what
``PaliGemmaCausalLM.compile(sampler=...)`` accepts; ``engine.samplers.get_sampler`` turns it into
a sampler object. The sampler classes take their defaults from the constants below, so there is
one set of defaults for the API and the CLI alike.

The defaults are keras-hub's (``TopKSampler(k=5)``, ``TopPSampler(p=0.1)``, temperature 1.0),
chosen on purpose over transformers' ``GenerationConfig`` (``top_k=50``, ``top_p=1.0``): pali's
API is keras-hub's, so ``compile(sampler="top_k")`` must mean what it means there; and
transformers' ``top_p=1.0`` switches nucleus sampling off, so it is no default for a top-p
sampler. Both keras-hub defaults are conservative, which suits PaliGemma's short factual answers
(captions, boxes, OCR); ask for more variety explicitly (``top_k=50``, ``top_p=0.9``).

Torch-free: the CLI imports this module to build its options and their help.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import InputError

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_K",
    "DEFAULT_TOP_P",
    "SAMPLER_NAMES",
    "SamplerConfig",
    "check_k",
    "check_p",
    "check_seed",
    "check_temperature",
    "normalize_name",
]

SAMPLER_NAMES: tuple[str, ...] = ("greedy", "top_k", "top_p", "random")
DEFAULT_TOP_K = 5  # keras_hub.samplers.TopKSampler
DEFAULT_TOP_P = 0.1  # keras_hub.samplers.TopPSampler
DEFAULT_TEMPERATURE = 1.0  # keras-hub and transformers alike

# torch.Generator.manual_seed accepts any value representable in 64 bits; we keep seeds non-negative
# so that a seed prints and round-trips through a CLI flag unambiguously.
_MAX_SEED = 2**64 - 1


def normalize_name(name: str) -> str:
    """``"Top-K"`` -> ``"top_k"``; raises InputError for a name that is no sampler."""
    key = name.strip().lower().replace("-", "_")
    if key not in SAMPLER_NAMES:
        raise InputError(
            f"unknown sampler {name!r}; valid names: {', '.join(SAMPLER_NAMES)} "
            "(or pass a sampler object such as TopKSampler(k=10))"
        )
    return key


def check_k(k: object, where: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"{where}: k must be an integer >= 1, got {k!r}")
    return k


def check_p(p: object, where: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 < p <= 1.0):
        raise InputError(f"{where}: p must be a number in (0, 1], got {p!r}")
    return float(p)


def check_temperature(temperature: object, where: str) -> float:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise InputError(f"{where}: temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    return float(temperature)


def check_seed(seed: object, where: str) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not (0 <= seed <= _MAX_SEED):
        raise InputError(f"{where}: seed must be None or an integer in [0, 2**64), got {seed!r}")
    return seed


@dataclass(frozen=True)
class SamplerConfig:
    """How to pick each next token. ``name`` is one of SAMPLER_NAMES ("top-k" style is accepted).

    ``top_k`` is read by "top_k" only and ``top_p`` by "top_p" only (no top-k cap: the sampler
    objects offer one, ``TopPSampler(p, k)``); "greedy" reads nothing. Every field is checked here,
    whichever sampler reads it, so a bad value never waits for a sampler that needs it.
    """

    name: str = "greedy"
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    top_p: float = DEFAULT_TOP_P
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))
        where = "SamplerConfig"
        check_temperature(self.temperature, where)
        check_k(self.top_k, where)
        check_p(self.top_p, where)
        check_seed(self.seed, where)
