"""Samplers: seeded determinism, support of each filter, and draw statistics.

Many independent draws are taken in one call by repeating a logits row over the batch axis, so the
statistical checks stay fast. Expected probabilities are computed by hand from explicit
probability vectors (logits = log p, so softmax(logits / t) is proportional to p ** (1 / t)), not
from the code under test. Seeds are fixed; bounds are several standard deviations wide.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from engine.samplers import (
    GreedySampler,
    RandomSampler,
    Sampler,
    TopKSampler,
    TopPSampler,
    greedy,
    make_generator,
    sample_random,
    sample_top_k,
    sample_top_p,
)

N = 20_000  # draws per statistical check


def gen(seed: int) -> torch.Generator:
    return make_generator(seed, "cpu")


def repeated(probs: list[float], n: int = N) -> torch.Tensor:
    """float[n, V]: the row log(probs) repeated n times (log(0) = -inf masks an id)."""
    row = torch.tensor(probs, dtype=torch.float64).log().float()
    return row.expand(n, -1).contiguous()


def counts(ids: torch.Tensor, vocab: int) -> list[int]:
    return torch.bincount(ids, minlength=vocab).tolist()


def chi_square(observed: list[int], expected_probs: list[float]) -> float:
    """Pearson statistic over the ids with non-zero expected probability."""
    n = sum(observed)
    return sum((o - n * q) ** 2 / (n * q) for o, q in zip(observed, expected_probs, strict=True) if q > 0)


# Upper 1e-4 tail of chi-square with df degrees of freedom is below 2 * df + 16 for df <= 10;
# a wrong distribution in these tests gives statistics in the hundreds or more.
def chi_square_bound(df: int) -> float:
    return 2.0 * df + 16.0


def sample_fns(temperature: float):
    """One closure per sampler kind, with filters wide enough to keep the whole vocabulary."""
    return {
        "random": lambda x, g: sample_random(x, temperature, g),
        "top_k": lambda x, g: sample_top_k(x, 10_000, temperature, g),
        "top_p": lambda x, g: sample_top_p(x, 1.0, None, temperature, g),
        "top_p_k": lambda x, g: sample_top_p(x, 1.0, 10_000, temperature, g),
    }


# --- shapes, greedy, temperature 0 --------------------------------------------------------------


@pytest.mark.parametrize("name", ["random", "top_k", "top_p", "top_p_k"])
def test_shape_dtype_and_device(name: str) -> None:
    logits = torch.randn(7, 33, generator=gen(0))
    out = sample_fns(1.0)[name](logits, gen(1))
    assert out.shape == (7,)
    assert out.dtype == torch.int64
    assert out.device == logits.device
    assert ((out >= 0) & (out < 33)).all()


def test_greedy_is_argmax_per_row() -> None:
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9], [5.0, -math.inf, 4.0, 0.0], [-1.0, -2.0, -3.0, 9.0]])
    assert greedy(logits).tolist() == [1, 0, 3]
    assert GreedySampler()(logits, None).tolist() == [1, 0, 3]


@pytest.mark.parametrize("name", ["random", "top_k", "top_p", "top_p_k"])
def test_temperature_zero_equals_greedy(name: str) -> None:
    logits = torch.randn(64, 50, generator=gen(2))
    expected = logits.argmax(dim=-1)
    # different generators must not matter: nothing random happens at t = 0
    for seed in (3, 4):
        assert torch.equal(sample_fns(0.0)[name](logits, gen(seed)), expected)
    assert torch.equal(TopPSampler(p=0.5, k=3, temperature=0.0)(logits, gen(5)), expected)


# --- reproducibility ----------------------------------------------------------------------------


def run_steps(sampler: Sampler, seed: int | None, steps: int = 50) -> list[list[int]]:
    """Mimics the generation loop: one generator per call, reused for every step."""
    g = make_generator(seed, "cpu")
    logits_gen = gen(99)  # same logits sequence in every run
    out = []
    for _ in range(steps):
        logits = torch.randn(4, 40, generator=logits_gen)
        out.append(sampler(logits, g).tolist())
    return out


@pytest.mark.parametrize(
    "sampler",
    [TopKSampler(k=8), TopPSampler(p=0.9), TopPSampler(p=0.9, k=6), RandomSampler(temperature=1.5)],
    ids=["top_k", "top_p", "top_p_k", "random"],
)
def test_same_seed_same_draws_different_seed_differs(sampler: Sampler) -> None:
    a = run_steps(sampler, 1234)
    assert a == run_steps(sampler, 1234)
    assert a != run_steps(sampler, 1235)


def test_unseeded_generators_differ() -> None:
    logits = torch.zeros(1000, 50)  # uniform: 1000 draws from 50 ids
    a = sample_random(logits, 1.0, make_generator(None, "cpu"))
    b = sample_random(logits, 1.0, make_generator(None, "cpu"))
    assert not torch.equal(a, b)


def test_make_generator_is_seeded_on_device() -> None:
    g = make_generator(7, torch.device("cpu"))
    assert g.device.type == "cpu"
    assert g.initial_seed() == 7
    again = make_generator(7, "cpu")
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=again))


def test_sampler_object_matches_function() -> None:
    logits = torch.randn(16, 30, generator=gen(8))
    pairs: list[tuple[Sampler, Callable[[torch.Generator], torch.Tensor]]] = [
        (TopKSampler(k=4, temperature=0.7), lambda g: sample_top_k(logits, 4, 0.7, g)),
        (TopPSampler(p=0.6, k=5, temperature=1.3), lambda g: sample_top_p(logits, 0.6, 5, 1.3, g)),
        (RandomSampler(temperature=2.0), lambda g: sample_random(logits, 2.0, g)),
    ]
    for sampler, fn in pairs:
        assert torch.equal(sampler(logits, gen(9)), fn(gen(9)))


# --- top-k --------------------------------------------------------------------------------------


def test_top_k_never_leaves_the_top_k() -> None:
    k = 5
    logits = torch.randn(N, 60, generator=gen(10))
    ids = sample_top_k(logits, k, 2.0, gen(11))  # high temperature: the tail would be hit often
    top = logits.topk(k, dim=-1).indices
    assert (top == ids[:, None]).any(dim=-1).all()
    # and it does sample: every rank among the k is used
    rank = (top == ids[:, None]).float().argmax(dim=-1)
    assert set(rank.tolist()) == set(range(k))


def test_top_k_exactly_k_candidates_on_ties() -> None:
    logits = torch.zeros(N, 10)  # all tied: only k distinct ids may come out
    assert len(set(sample_top_k(logits, 3, 1.0, gen(12)).tolist())) == 3


def test_top_k_renormalises_over_the_kept_ids() -> None:
    probs = [0.05, 0.4, 0.1, 0.3, 0.15]  # top 3: ids 1, 3, 4 with mass 0.85
    ids = sample_top_k(repeated(probs), 3, 1.0, gen(13))
    expected = [0.0, 0.4 / 0.85, 0.0, 0.3 / 0.85, 0.15 / 0.85]
    observed = counts(ids, 5)
    assert observed[0] == observed[2] == 0
    assert chi_square(observed, expected) < chi_square_bound(2)


def test_top_k_larger_than_vocab_keeps_everything() -> None:
    ids = sample_top_k(torch.zeros(N, 6), 100, 1.0, gen(14))
    assert set(ids.tolist()) == set(range(6))


# --- top-p --------------------------------------------------------------------------------------

# Known probabilities placed out of order so that index mapping after sorting is exercised:
# id 2 -> 0.5, id 0 -> 0.3, id 3 -> 0.15, id 1 -> 0.05.
NUCLEUS_PROBS = [0.3, 0.05, 0.5, 0.15]


@pytest.mark.parametrize(
    ("p", "allowed"),
    [
        (0.01, {2}),  # the top token alone already reaches p
        (0.45, {2}),  # the top token (0.5) alone reaches p
        (0.7, {2, 0}),  # 0.5 < 0.7 <= 0.8
        (0.85, {2, 0, 3}),  # 0.8 < 0.85 <= 0.95
        (0.99, {2, 0, 3, 1}),
        (1.0, {2, 0, 3, 1}),
    ],
)
def test_top_p_keeps_smallest_set_reaching_p(p: float, allowed: set[int]) -> None:
    ids = sample_top_p(repeated(NUCLEUS_PROBS), p, None, 1.0, gen(15))
    assert set(ids.tolist()) == allowed


@pytest.mark.parametrize(("p", "kept"), [(0.5, 2), (0.75, 3), (0.7, 3), (0.8, 4)])
def test_top_p_boundary_is_reached_not_exceeded(p: float, kept: int) -> None:
    # uniform over 4 ids: every probability and partial sum (0.25, 0.5, 0.75) is exact in binary,
    # so "reaches p" is tested at equality: at p = 0.5 two ids suffice, a third must not be added.
    ids = sample_top_p(torch.zeros(N // 4, 4), p, None, 1.0, gen(30))
    assert len(set(ids.tolist())) == kept


def test_top_p_renormalises_over_the_nucleus() -> None:
    ids = sample_top_p(repeated(NUCLEUS_PROBS), 0.85, None, 1.0, gen(16))
    expected = [0.3 / 0.95, 0.0, 0.5 / 0.95, 0.15 / 0.95]
    assert chi_square(counts(ids, 4), expected) < chi_square_bound(2)


def test_top_p_k_cap() -> None:
    # p alone would keep all four ids; k=2 caps to the two most likely
    ids = sample_top_p(repeated(NUCLEUS_PROBS), 0.99, 2, 1.0, gen(17))
    assert set(ids.tolist()) == {2, 0}
    # k=1 is greedy whatever p is
    assert set(sample_top_p(repeated(NUCLEUS_PROBS), 1.0, 1, 1.0, gen(18)).tolist()) == {2}


def test_top_p_applies_after_renormalising_top_k() -> None:
    # Hugging Face order: top-2 of [0.4, 0.3, 0.2, 0.1] renormalises to [4/7, 3/7]; 4/7 >= 0.5, so
    # only id 0 survives. (keras-hub, which does not renormalise, would keep both: 0.4 < 0.5.)
    ids = sample_top_p(repeated([0.4, 0.3, 0.2, 0.1]), 0.5, 2, 1.0, gen(19))
    assert set(ids.tolist()) == {0}


def test_top_p_after_temperature() -> None:
    # At t = 0.5, probs go as p ** 2: [0.25, 0.09, 0.0225, 0.0025] / 0.365 -> top = 0.685 >= 0.6,
    # so only id 2 survives; at t = 1 the same p keeps ids 2 and 0.
    assert set(sample_top_p(repeated(NUCLEUS_PROBS), 0.6, None, 0.5, gen(20)).tolist()) == {2}
    assert set(sample_top_p(repeated(NUCLEUS_PROBS), 0.6, None, 1.0, gen(20)).tolist()) == {2, 0}


# --- temperature and the full distribution ------------------------------------------------------

DIST = [0.35, 0.2, 0.15, 0.1, 0.08, 0.06, 0.04, 0.02]


def tempered(probs: list[float], t: float) -> list[float]:
    w = [q ** (1.0 / t) for q in probs]
    return [x / sum(w) for x in w]


@pytest.mark.parametrize("t", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("name", ["random", "top_k", "top_p", "top_p_k"])
def test_empirical_frequencies_match_softmax(name: str, t: float) -> None:
    ids = sample_fns(t)[name](repeated(DIST), gen(21))
    assert chi_square(counts(ids, 8), tempered(DIST, t)) < chi_square_bound(7)


def test_temperature_flattens_and_sharpens() -> None:
    def top_share(t: float) -> float:
        return counts(sample_random(repeated(DIST), t, gen(22)), 8)[0] / N

    cold, base, hot = top_share(0.3), top_share(1.0), top_share(10.0)
    # expected shares: 0.69, 0.35, 0.14 (1/8 = 0.125 is the flat limit)
    assert cold > 0.6 and abs(base - 0.35) < 0.03 and hot < 0.2
    hot_counts = counts(sample_random(repeated(DIST), 10.0, gen(23)), 8)
    assert min(hot_counts) / N > 0.08  # even the 2% id is drawn often once flattened


def test_wrong_temperature_is_detected() -> None:
    # guards the chi-square test itself: draws at t = 1 do not pass as draws at t = 2.5
    ids = sample_random(repeated(DIST), 1.0, gen(24))
    assert chi_square(counts(ids, 8), tempered(DIST, 2.5)) > 10 * chi_square_bound(7)


# --- masked ids, batching -----------------------------------------------------------------------


@pytest.mark.parametrize("t", [1.0, 50.0])
@pytest.mark.parametrize("name", ["random", "top_k", "top_p", "top_p_k"])
def test_masked_ids_are_never_drawn(name: str, t: float) -> None:
    logits = torch.randn(N // 4, 16, generator=gen(25))
    masked = torch.tensor([0, 3, 4, 9, 15])
    logits[:, masked] = -math.inf
    ids = sample_fns(t)[name](logits, gen(26))
    assert not torch.isin(ids, masked).any()
    assert len(set(ids.tolist())) == 16 - len(masked)  # every unmasked id still shows up


def test_top_k_with_more_slots_than_unmasked_ids() -> None:
    logits = torch.full((N // 4, 8), -math.inf)
    logits[:, [2, 6]] = 0.0
    assert set(sample_top_k(logits, 5, 1.0, gen(27)).tolist()) == {2, 6}
    assert set(sample_top_p(logits, 0.99, 5, 1.0, gen(27)).tolist()) == {2, 6}


def test_rows_follow_their_own_logits() -> None:
    # row r allows only ids {r, r + 10}: any cross-talk between rows would show up
    rows, vocab = 10, 20
    logits = torch.full((rows, vocab), -math.inf)
    for r in range(rows):
        logits[r, [r, r + 10]] = 0.0
    for name, fn in sample_fns(1.0).items():
        seen: list[set[int]] = [set() for _ in range(rows)]
        g = gen(28)
        for _ in range(40):
            for r, i in enumerate(fn(logits, g).tolist()):
                seen[r].add(i)
        assert seen == [{r, r + 10} for r in range(rows)], name


def test_identical_rows_draw_independently() -> None:
    ids = sample_random(torch.zeros(N, 4), 1.0, gen(29))
    # pairs of consecutive rows: if rows were tied, all pairs would be equal
    same = (ids[0::2] == ids[1::2]).float().mean().item()
    assert abs(same - 0.25) < 0.03
