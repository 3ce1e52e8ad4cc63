"""Sampler arguments, defaults and resolution: the sampler objects' checks, SamplerConfig (what the
CLI fills) and get_sampler (what compile(sampler=...) calls)."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

from engine.errors import InputError
from engine.sampler_config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, SamplerConfig
from engine.samplers import (
    SAMPLER_NAMES,
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
    get_sampler,
    greedy,
    make_generator,
    sample_random,
    sample_top_k,
    sample_top_p,
)


def gen(seed: int) -> torch.Generator:
    return make_generator(seed, "cpu")


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: TopKSampler(k=0),
        lambda: TopKSampler(k=2.5),  # type: ignore[arg-type]  # wrong types on purpose
        lambda: TopKSampler(k=True),
        lambda: TopKSampler(temperature=-0.1),
        lambda: TopKSampler(temperature=math.inf),
        lambda: TopPSampler(p=0.0),
        lambda: TopPSampler(p=1.5),
        lambda: TopPSampler(p=math.nan),
        lambda: TopPSampler(p=0.5, k=0),
        lambda: RandomSampler(temperature=math.nan),
        lambda: RandomSampler(seed=-1),
        lambda: RandomSampler(seed="42"),  # type: ignore[arg-type]
        lambda: TopPSampler(seed=1.5),  # type: ignore[arg-type]
    ],
)
def test_invalid_sampler_arguments_raise(make) -> None:
    with pytest.raises(ValueError):
        make()


def test_invalid_function_arguments_raise() -> None:
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="k must be"):
        sample_top_k(logits, 0, 1.0, gen(0))
    with pytest.raises(ValueError, match="p must be"):
        sample_top_p(logits, 1.01, None, 1.0, gen(0))
    with pytest.raises(ValueError, match="temperature"):
        sample_random(logits, -1.0, gen(0))
    with pytest.raises(ValueError, match=r"\[B, V\]"):
        sample_random(torch.zeros(5), 1.0, gen(0))
    with pytest.raises(ValueError, match="floating point"):
        greedy(torch.zeros(2, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="seed"):
        make_generator(-3, "cpu")


def test_generator_on_another_device_is_rejected() -> None:
    logits = torch.zeros(2, 5, device="meta")
    with pytest.raises(ValueError, match="make_generator"):
        sample_random(logits, 1.0, gen(0))


def test_valid_edge_arguments_are_accepted() -> None:
    TopPSampler(p=1.0, k=1, temperature=0.0, seed=0)
    TopKSampler(k=1, seed=2**64 - 1)
    RandomSampler(temperature=0)


def test_samplers_are_frozen_with_keras_hub_defaults() -> None:
    s = TopKSampler()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.k = 3  # type: ignore[misc]
    assert (s.k, s.temperature, s.seed) == (5, 1.0, None)
    tp = TopPSampler()
    assert (tp.p, tp.k, tp.temperature, tp.seed) == (0.1, None, 1.0, None)
    assert (RandomSampler().temperature, RandomSampler().seed) == (1.0, None)
    assert GreedySampler().seed is None


# --- get_sampler --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        ("greedy", GreedySampler),
        ("top_k", TopKSampler),
        ("top-k", TopKSampler),
        ("top_p", TopPSampler),
        ("Top-P", TopPSampler),
        ("random", RandomSampler),
    ],
)
def test_get_sampler_names(spec: str, cls: type) -> None:
    s = get_sampler(spec)
    assert type(s) is cls
    assert s == cls()


def test_get_sampler_passes_objects_through() -> None:
    s = TopPSampler(p=0.9, k=40, temperature=0.8, seed=3)
    assert get_sampler(s) is s
    assert isinstance(GreedySampler(), Sampler)


def test_get_sampler_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        get_sampler("beam")
    for name in ("greedy", "top_k", "top_p", "random"):
        assert name in str(err.value)
    assert set(SAMPLER_NAMES) == {"greedy", "top_k", "top_p", "random"}


def test_get_sampler_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        get_sampler(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        get_sampler(lambda logits, g: logits.argmax(-1))  # type: ignore[arg-type]


# --- SamplerConfig ------------------------------------------------------------------------------


def test_sampler_config_defaults_are_the_sampler_defaults() -> None:
    config = SamplerConfig()
    assert (config.name, config.temperature, config.top_k, config.top_p, config.seed) == (
        "greedy",
        DEFAULT_TEMPERATURE,
        DEFAULT_TOP_K,
        DEFAULT_TOP_P,
        None,
    )
    assert (DEFAULT_TOP_K, DEFAULT_TOP_P, DEFAULT_TEMPERATURE) == (5, 0.1, 1.0)  # keras-hub's, see the docstring
    assert get_sampler(SamplerConfig(name="top_k")) == TopKSampler()
    assert get_sampler(SamplerConfig(name="top-p")) == TopPSampler()
    assert get_sampler(SamplerConfig(name="random")) == RandomSampler()


def test_sampler_config_builds_each_sampler_with_only_its_fields() -> None:
    def config(name: str) -> SamplerConfig:
        return SamplerConfig(name=name, temperature=0.7, top_k=7, top_p=0.8, seed=3)

    assert get_sampler(config("greedy")) == GreedySampler()
    assert get_sampler(config("Top-K")) == TopKSampler(k=7, temperature=0.7, seed=3)
    assert get_sampler(config("top_p")) == TopPSampler(p=0.8, temperature=0.7, seed=3)
    assert get_sampler(config("random")) == RandomSampler(temperature=0.7, seed=3)


@pytest.mark.parametrize(
    "fields",
    [{"name": "beam"}, {"top_k": 0}, {"top_p": 0.0}, {"temperature": -1.0}, {"seed": -1}],
)
def test_sampler_config_checks_every_field(fields) -> None:
    with pytest.raises(InputError):
        SamplerConfig(**fields)


def test_sampler_config_is_frozen_and_torch_free() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplerConfig().top_k = 3  # type: ignore[misc]
    code = "import sys, engine.sampler_config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
