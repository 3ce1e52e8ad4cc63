"""engine.generate: prefill / decode_step / Running.keep, rows that finish early, one host sync per step."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.overrides import TorchFunctionMode

from engine.checkpoints.weights import load_backbone
from engine.generate import Running, decode_step, generate_tokens, prefill, stream_tokens
from engine.model.config import load_config
from engine.model.kv_cache import KVCache
from engine.samplers import greedy
from tests.helpers.checkpoints import TOKENIZER_VOCAB, TinySpec

SPEC = TinySpec(family="gemma2", kv_heads=2, text_extra=(("sliding_window", 8),))
PROMPTS = [[2, 11, 12, 13, 4], [2, 21, 4], [2, 31, 32, 33, 34, 35, 4]]


@pytest.fixture(scope="module")
def backbone(checkpoints):
    path = checkpoints.checkpoint(SPEC)
    return load_backbone(path, load_config(path, window_policy="transformers"), torch.float32)


def _pixels(b: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 3, SPEC.image_size, SPEC.image_size, generator=g) * 2 - 1


def _row_values(state: Running) -> list[list]:
    """Every per-row field of the state, row by row (tensors and caches compared as lists)."""
    values = []
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor):
            values.append([row.tolist() for row in value])
        elif f.name == "caches":
            values.append([[c.k[i].tolist() + c.v[i].tolist() for c in value] for i in range(len(state.rows))])
        else:
            values.append(list(value))
    return values


def test_keep_reindexes_every_per_row_field_and_the_caches_together():
    b, slots = 4, 6
    g = torch.Generator().manual_seed(0)
    caches = [KVCache(b, 2, slots, 3, torch.float32, "cpu") for _ in range(2)]
    for cache in caches:
        cache.k.copy_(torch.randn(cache.k.shape, generator=g))
        cache.v.copy_(torch.randn(cache.v.shape, generator=g))
    state = Running(
        rows=[10, 11, 12, 13],
        budgets=[5, 6, 7, 8],
        next_pos=torch.tensor([3, 4, 5, 6]),
        key_valid=torch.rand(b, slots, generator=g) > 0.5,
        key_pos=torch.randint(0, 9, (b, slots), generator=g),
        caches=caches,
    )
    before = _row_values(state)
    index = state.keep([3, 1])
    after = _row_values(state)
    assert index.tolist() == [3, 1]
    for field_before, field_after in zip(before, after, strict=True):  # every field, not a chosen few
        assert field_after == [field_before[3], field_before[1]]
    assert all(c.k.shape[0] == 2 and c.v.shape[0] == 2 for c in state.caches)


def test_prefill_then_decode_steps_equal_the_loop(backbone):
    pixels = _pixels(3)
    logits, state = prefill(backbone, pixels, PROMPTS, [4, 4, 4])
    slot = backbone.num_image_tokens + max(map(len, PROMPTS))
    by_hand = []
    for _ in range(4):
        tokens = greedy(logits)
        by_hand.append(tokens.tolist())
        logits = decode_step(backbone, state, tokens, slot)
        slot += 1
    streamed = [tokens for _, tokens in stream_tokens(backbone, pixels, PROMPTS, [4, 4, 4], greedy)]
    assert streamed == by_hand


def test_rows_that_finish_early_leave_and_the_rest_match_one_by_one(backbone):
    pixels = _pixels(3)
    budgets = [3, 12, 7]
    free = generate_tokens(backbone, pixels, PROMPTS, budgets, greedy, vocab_limit=TOKENIZER_VOCAB)
    stop = free[1][5]  # row 1 stops at its first occurrence of this token, the others maybe too
    steps = list(stream_tokens(backbone, pixels, PROMPTS, budgets, greedy, (stop,), TOKENIZER_VOCAB))
    batched: list[list[int]] = [[] for _ in PROMPTS]
    for rows, tokens in steps:
        for row, token in zip(rows, tokens, strict=True):
            batched[row].append(token)
    alone = [
        generate_tokens(backbone, pixels[i : i + 1], [p], [n], greedy, (stop,), TOKENIZER_VOCAB)[0]
        for i, (p, n) in enumerate(zip(PROMPTS, budgets, strict=True))
    ]
    assert batched == alone
    assert len(batched[0]) <= 3 and batched[1][-1] == stop and len(batched[1]) <= 6
    assert [len(rows) for rows, _ in steps] != [3] * len(steps), "some row should have left the batch"
    assert steps[-1][0] != [0, 1, 2]


class CountHostSyncs(TorchFunctionMode):
    """Counts the tensor methods that make the host wait for the device (on any device)."""

    SYNCS = frozenset({"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "numpy", "cpu"})

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.SYNCS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_one_host_sync_per_decode_step(backbone):
    pixels = _pixels(3)
    budgets = [2, 9, 5]  # rows leave at steps 2 and 5: the drop must not add syncs either
    with CountHostSyncs() as counter:
        steps = list(stream_tokens(backbone, pixels, PROMPTS, budgets, greedy, (), TOKENIZER_VOCAB))
    assert len(steps) == 9
    # One read for the check of the first logits (NaN/Inf), then one per step: the sampled tokens.
    assert counter.calls == ["__bool__"] + ["tolist"] * len(steps)


# ----------------------------------------------------------------------------- non-finite weights (issue 13)


@pytest.fixture
def nan_checkpoint(checkpoints, tmp_path):
    """A copy of the tiny checkpoint with NaN in one weight of the last decoder layer."""
    import shutil

    from safetensors.torch import load_file, save_file

    source = checkpoints.checkpoint(TinySpec())
    target = tmp_path / "nan-ckpt"
    shutil.copytree(source, target)
    [weights] = target.glob("*.safetensors")
    tensors = load_file(weights)
    name = next(n for n in tensors if "layers.1.mlp.down_proj" in n)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, weights, metadata={"format": "pt"})
    return target


def test_nan_weights_fail_at_the_first_logits_naming_the_checkpoint(nan_checkpoint):
    from engine import CheckpointError, NonFiniteLogitsError, PaliGemmaCausalLM

    lm = PaliGemmaCausalLM.from_preset(nan_checkpoint, dtype="float32", device="cpu")
    with pytest.raises(NonFiniteLogitsError) as caught:
        lm.complete([torch.zeros(3, 28, 28).numpy().transpose(1, 2, 0)], ["caption en"], max_new_tokens=3)
    assert isinstance(caught.value, CheckpointError)
    message = str(caught.value)
    assert str(nan_checkpoint) in message and "NaN" in message and "\n" not in message


def test_the_finite_check_adds_no_host_sync_per_decode_step(backbone, monkeypatch):
    """One check on the prefill logits: the decode steps sync once each (the sampled tokens), as before."""
    import engine.generate as generate

    calls: list[int] = []
    real = generate._check_finite

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(generate, "_check_finite", counted)
    generate_tokens(backbone, _pixels(1), PROMPTS[:1], [6], greedy)
    assert len(calls) == 1


def test_on_step_sees_every_step(backbone):
    seen: list[tuple[list[int], list[int]]] = []
    out = generate_tokens(backbone, _pixels(2), PROMPTS[:2], [4, 4], greedy, on_step=lambda r, t: seen.append((r, t)))
    rebuilt: list[list[int]] = [[], []]
    for rows, tokens in seen:
        for row, token in zip(rows, tokens, strict=True):
            rebuilt[row].append(token)
    assert rebuilt == out
