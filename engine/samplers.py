"""Token samplers: pick the next token id from one step of logits.

Contract: every sampler maps fp32 logits `float[B, V]` to token ids `int64[B]` on the same device.
Logits may hold `-inf` for ids that must never be produced (padding rows of the embedding, the
`<image>` token); such ids get probability 0 and are never drawn. A row made only of `-inf` is a
caller bug (there is nothing to draw) and is not checked here, because checking would force a
device-to-host sync on every step.

Order of operations, the Hugging Face order (and llama2.c's):

    1. temperature  `logits / t`; t == 0 means greedy (argmax), so the rest is skipped
    2. top-k        keep the k largest scaled logits
    3. top-p        over the softmax of what is left (so renormalised after top-k), keep the
                    smallest prefix of most probable tokens whose cumulative probability
                    reaches p; the most probable token is always kept
    4. draw         one categorical draw per row from the softmax of what is left

Note for keras-hub users: `TopPSampler(p, k)` there applies p to the *un*-renormalised top-k
probabilities; here p applies after renormalising over the k kept tokens (Hugging Face). The two
agree whenever k is None.

Randomness comes only from the explicit `torch.Generator` argument, which must live on the logits'
device. The generation loop makes one generator per call with `make_generator(sampler.seed, device)`
and passes it to every step, so the same seed gives the same tokens (for the same device and torch
build). Passing `generator=None` falls back to torch's global RNG.

Everything is tensor ops (no `.item()`, no numpy), so the functions run unchanged on cpu, cuda and
mps. Sampler objects are frozen dataclasses named as in keras-hub; `get_sampler` resolves what
`compile(sampler=...)` accepts: a name, a `SamplerConfig` (what the CLI fills) or a sampler object.

Defaults (engine.sampler_config says why these): keras-hub's, for the API and the CLI alike.

    sampler   temperature   k             p
    greedy    -             -             -
    top_k     1.0           5             -
    top_p     1.0           None (no cap) 0.1
    random    1.0           -             -
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch

from engine.errors import InputError
from engine.sampler_config import (
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_K,
    DEFAULT_TOP_P,
    SAMPLER_NAMES,
    SamplerConfig,
    check_k,
    check_p,
    check_seed,
    check_temperature,
    normalize_name,
)

__all__ = [
    "SAMPLER_NAMES",
    "GreedySampler",
    "RandomSampler",
    "Sampler",
    "SamplerConfig",
    "TopKSampler",
    "TopPSampler",
    "from_config",
    "get_sampler",
    "greedy",
    "make_generator",
    "sample_random",
    "sample_top_k",
    "sample_top_p",
]


def _check_inputs(logits: torch.Tensor, generator: torch.Generator | None, where: str) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise InputError(f"{where}: logits must be a float tensor of shape [B, V], got {shape}")
    if not logits.is_floating_point():
        raise InputError(f"{where}: logits must be floating point, got {logits.dtype}")
    if logits.shape[-1] == 0:
        raise InputError(f"{where}: logits have an empty vocabulary axis (V == 0)")
    # A generator on another device would fail deep inside torch with a confusing message.
    if generator is not None and generator.device.type != logits.device.type:
        raise InputError(
            f"{where}: generator is on {generator.device} but logits are on {logits.device}; "
            "create it with make_generator(seed, logits.device)"
        )


# --- pure functions ------------------------------------------------------------------------------


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """Most likely id per row: `float[B, V] -> int64[B]`. Ties go to the lowest id."""
    _check_inputs(logits, None, "greedy")
    return logits.argmax(dim=-1)


def _draw(scores: torch.Tensor, ids: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
    """One categorical draw per row from softmax(scores); map positions back through `ids`.

    scores: float[B, C] (may hold -inf), ids: int64[B, C] or None when scores cover the whole vocab.
    """
    probs = torch.softmax(scores, dim=-1)  # -inf -> probability exactly 0, never drawn
    choice = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
    if ids is not None:
        choice = ids.gather(-1, choice)
    return choice.squeeze(-1)


def _sample(
    logits: torch.Tensor,
    *,
    temperature: float,
    k: int | None,
    p: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    # 1. temperature; 0 is the documented alias of greedy (a division by 0 would give nan/inf).
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature  # fp32 whatever the model dtype: softmax needs the range
    vocab = scores.shape[-1]

    # 2. top-k. topk also sorts, which top-p needs; ids maps sorted positions back to vocab ids.
    ids: torch.Tensor | None = None
    if k is not None and k < vocab:
        scores, ids = scores.topk(k, dim=-1)  # (B, k) each, descending
    elif p < 1.0:
        scores, ids = scores.sort(dim=-1, descending=True)  # (B, V) each

    # 3. top-p on the (renormalised) remaining tokens, sorted descending. A token stays when the
    # mass of the tokens strictly before it is still below p: this is the smallest prefix whose
    # cumulative probability reaches p, and the first token (mass before = 0 < p) always stays.
    if p < 1.0:
        probs = torch.softmax(scores, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        scores = scores.masked_fill(mass_before >= p, -math.inf)

    # 4. draw
    return _draw(scores, ids, generator)


def sample_random(
    logits: torch.Tensor, temperature: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw from the full distribution softmax(logits / temperature): `float[B, V] -> int64[B]`."""
    where = "sample_random"
    _check_inputs(logits, generator, where)
    t = check_temperature(temperature, where)
    return _sample(logits, temperature=t, k=None, p=1.0, generator=generator)


def sample_top_k(
    logits: torch.Tensor,
    k: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw among the k most likely ids (renormalised): `float[B, V] -> int64[B]`.

    Exactly k candidates are kept even when logits tie at the k-th place; k > V keeps the whole row.
    """
    where = "sample_top_k"
    _check_inputs(logits, generator, where)
    k = check_k(k, where)
    t = check_temperature(temperature, where)
    return _sample(logits, temperature=t, k=k, p=1.0, generator=generator)


def sample_top_p(
    logits: torch.Tensor,
    p: float,
    k: int | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Nucleus sampling, optionally capped to the k most likely ids: `float[B, V] -> int64[B]`.

    Keeps the smallest set of most probable ids whose cumulative probability reaches p (at least one
    id), renormalises and draws. With k set, top-k runs first and p applies to the renormalised k.
    """
    where = "sample_top_p"
    _check_inputs(logits, generator, where)
    p = check_p(p, where)
    if k is not None:
        k = check_k(k, where)
    t = check_temperature(temperature, where)
    return _sample(logits, temperature=t, k=k, p=p, generator=generator)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A generator on `device`, seeded with `seed`; None seeds it from OS entropy (runs differ).

    Torch's global RNG is not used for the None case: it starts from a fixed seed in every fresh
    process, so two unseeded CLI runs would otherwise sample the same text.
    """
    seed = check_seed(seed, "make_generator")
    generator = torch.Generator(device=torch.device(device))
    if seed is None:
        generator.seed()  # non-deterministic (std::random_device / time)
    else:
        generator.manual_seed(seed)
    return generator


# --- sampler objects -----------------------------------------------------------------------------


@runtime_checkable
class Sampler(Protocol):
    """What the generation loop needs from a sampler: a seed and a per-step call."""

    @property
    def seed(self) -> int | None: ...

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class GreedySampler:
    """Always the most likely id (keras-hub `"greedy"`, the default)."""

    name: ClassVar[str] = "greedy"
    seed: ClassVar[None] = None  # nothing random; present so every sampler has a seed

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_inputs(logits, generator, type(self).__name__)
        return logits.argmax(dim=-1)


@dataclass(frozen=True)
class TopKSampler:
    """Sample among the k most likely ids (keras-hub `"top_k"`; defaults in engine.sampler_config)."""

    k: int = DEFAULT_TOP_K
    temperature: float = DEFAULT_TEMPERATURE
    seed: int | None = None
    name: ClassVar[str] = "top_k"

    def __post_init__(self) -> None:
        where = type(self).__name__
        check_k(self.k, where)
        check_temperature(self.temperature, where)
        check_seed(self.seed, where)

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_top_k(logits, self.k, self.temperature, generator)


@dataclass(frozen=True)
class TopPSampler:
    """Nucleus sampling, optional top-k cap (keras-hub `"top_p"`; defaults in engine.sampler_config, no k)."""

    p: float = DEFAULT_TOP_P
    k: int | None = None
    temperature: float = DEFAULT_TEMPERATURE
    seed: int | None = None
    name: ClassVar[str] = "top_p"

    def __post_init__(self) -> None:
        where = type(self).__name__
        check_p(self.p, where)
        if self.k is not None:
            check_k(self.k, where)
        check_temperature(self.temperature, where)
        check_seed(self.seed, where)

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_top_p(logits, self.p, self.k, self.temperature, generator)


@dataclass(frozen=True)
class RandomSampler:
    """Sample from the full distribution (keras-hub `"random"`)."""

    temperature: float = DEFAULT_TEMPERATURE
    seed: int | None = None
    name: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        where = type(self).__name__
        check_temperature(self.temperature, where)
        check_seed(self.seed, where)

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_random(logits, self.temperature, generator)


def from_config(config: SamplerConfig) -> Sampler:
    """The sampler object a SamplerConfig describes (each reads only its own fields)."""
    if config.name == "greedy":
        return GreedySampler()
    if config.name == "top_k":
        return TopKSampler(k=config.top_k, temperature=config.temperature, seed=config.seed)
    if config.name == "top_p":
        return TopPSampler(p=config.top_p, k=None, temperature=config.temperature, seed=config.seed)
    return RandomSampler(temperature=config.temperature, seed=config.seed)


def get_sampler(spec: str | Sampler | SamplerConfig) -> Sampler:
    """Resolve `compile(sampler=...)`: a name (the default configuration of that sampler), a
    SamplerConfig, or a sampler object (as is).

    Names: "greedy", "top_k", "top_p", "random"; "top-k"/"top-p" and any letter case also work.
    """
    if isinstance(spec, str):
        return from_config(SamplerConfig(name=normalize_name(spec)))
    if isinstance(spec, SamplerConfig):
        return from_config(spec)
    if isinstance(spec, Sampler):
        return spec
    raise TypeError(
        f"sampler must be a name ({', '.join(SAMPLER_NAMES)}), a SamplerConfig or a sampler object, "
        f"got {type(spec).__name__}"
    )
