"""The generation loop, on token ids only (text lives in the preprocessor), written as gpt-fast does.

Layout: each row is ``[image tokens][padding][prompt]`` -- prompts are right-aligned so that every
row's next token lands in the same cache slot, and positions count real tokens only, so padding
changes no number. The prompt is one bidirectional prefix; every generated token is causal.

Pieces: ``prefill`` runs image + prompt once and returns the first logits and a ``Running`` state;
``decode_step`` feeds one token per running row; ``Running.keep`` is the one place where finished
rows leave (every per-row tensor and the KV caches together), so they cost nothing afterwards.
``stream_tokens`` is the loop: sample, hand out, drop the finished rows, decode. It reads the
device once per step (the sampled tokens, as a list); stop ids and budgets are checked on the host.
The prefill's logits are checked once for NaN/Inf (one more read per batch, none per step): weights
holding such values would otherwise give empty or garbage text without a word.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from engine.errors import NonFiniteLogitsError
from engine.model.backbone import PaliGemmaBackbone
from engine.model.kv_cache import KVCache

Sample = Callable[[torch.Tensor], torch.Tensor]  # fp32 logits float[b, V] -> ids int[b]
OnStep = Callable[[list[int], list[int]], None]  # (rows still running, their new tokens), each step


@dataclass
class Running:
    """The rows still generating: host-side bookkeeping plus every per-row tensor of the loop."""

    rows: list[int]  # original index of each running row
    budgets: list[int]  # the most new tokens each running row may produce
    next_pos: torch.Tensor  # int[b]: position of each row's next token
    key_valid: torch.Tensor  # bool[b, S]: cache slots holding a real token
    key_pos: torch.Tensor  # int[b, S]: the position of the token in each cache slot
    caches: list[KVCache]  # one per decoder layer, each [b, K, S, D]

    def keep(self, keep: Sequence[int]) -> torch.Tensor:
        """Keep only the running rows at indices ``keep`` (into the current batch), in that order;
        returns those indices as a tensor, for the caller's own per-row tensors."""
        index = torch.tensor(list(keep), dtype=torch.long, device=self.next_pos.device)
        self.rows = [self.rows[i] for i in keep]
        self.budgets = [self.budgets[i] for i in keep]
        self.next_pos = self.next_pos[index]
        self.key_valid = self.key_valid[index]
        self.key_pos = self.key_pos[index]
        for cache in self.caches:
            cache.keep_rows(index)
        return index


def _right_align(
    prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> ids int[B, T] and real-token mask bool[B, T], padded on the left."""
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), t, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, t - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, t - len(p) :] = True
    return ids.to(device), mask.to(device)


def prefill(
    backbone: PaliGemmaBackbone,
    pixel_values: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
) -> tuple[torch.Tensor, Running]:
    """Image + prompt in one pass with the prefix-LM mask (the whole prompt is prefix).

    Returns the logits of each row's first new token, fp32 float[B, V], and the running state with
    caches sized for the largest budget. The first generated token goes to the slot right after the
    prompts: num_image_tokens + the longest prompt.
    """
    lm, cfg = backbone.language_model, backbone.config.text
    device, dtype = pixel_values.device, lm.dtype
    b, n_img = len(prompts), backbone.num_image_tokens
    ids, text_mask = _right_align(prompts, backbone.config.pad_token_id, device)
    prompt_end = n_img + ids.shape[1]
    total = prompt_end + max(max_new_tokens)
    caches = [KVCache(b, cfg.num_kv_heads, total, cfg.head_dim, dtype, device) for _ in lm.layers]
    input_mask = torch.cat([torch.ones(b, n_img, dtype=torch.bool, device=device), text_mask], dim=1)
    positions = (torch.cumsum(input_mask.long(), dim=1) - 1).clamp(min=0)  # (B, N_img + T)
    x = torch.cat([backbone.encode_images(pixel_values).to(dtype), lm.embed(ids)], dim=1)  # (B, N_img + T, H)
    masks = backbone.prefill_masks(input_mask, torch.zeros_like(input_mask), positions)
    logits = lm.logits(lm(x, positions, masks, caches, start=0)[:, -1])  # (B, V)
    _check_finite(backbone, logits)
    key_valid = torch.zeros(b, total, dtype=torch.bool, device=device)
    key_valid[:, :prompt_end] = input_mask
    key_pos = torch.zeros(b, total, dtype=torch.long, device=device)
    key_pos[:, :prompt_end] = positions
    state = Running(list(range(b)), list(max_new_tokens), positions[:, -1] + 1, key_valid, key_pos, caches)
    return logits, state


def _check_finite(backbone: PaliGemmaBackbone, logits: torch.Tensor) -> None:
    """The first logits of every row must be finite; one device read."""
    if bool(torch.isfinite(logits).all()):
        return
    where = backbone.checkpoint or "the model"
    dtype = backbone.language_model.dtype
    overflow = " (or float16 overflowed: run in bfloat16 or float32)" if dtype == torch.float16 else ""
    raise NonFiniteLogitsError(
        f"{where}: the model computed NaN or Inf logits for the first token: the checkpoint's weights hold "
        f"NaN/Inf values{overflow}; re-download or re-export the checkpoint"
    )


def decode_step(backbone: PaliGemmaBackbone, state: Running, tokens: torch.Tensor, slot: int) -> torch.Tensor:
    """Feed one token per running row (int[b]) at cache slot ``slot``; returns the next logits fp32
    float[b, V]. The new token sees every real cached token and itself."""
    lm = backbone.language_model
    state.key_valid[:, slot] = True
    state.key_pos[:, slot] = state.next_pos
    q_pos = state.next_pos[:, None]  # (b, 1)
    masks = backbone.decode_masks(q_pos, state.key_valid[:, : slot + 1], state.key_pos[:, : slot + 1])
    hidden = lm(lm.embed(tokens[:, None]), q_pos, masks, state.caches, start=slot)  # (b, 1, H)
    state.next_pos = state.next_pos + 1
    return lm.logits(hidden[:, -1])


@torch.inference_mode()
def stream_tokens(
    backbone: PaliGemmaBackbone,
    pixel_values: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    sample: Sample,
    stop_ids: Sequence[int] = (),
    vocab_limit: int | None = None,
) -> Iterator[tuple[list[int], list[int]]]:
    """Yield, per step, the original indices of the rows still running and their new tokens.

    pixel_values float[B, 3, R, R]; prompts: B lists of token ids (BOS first); max_new_tokens: a
    budget >= 1 per row; ids >= vocab_limit (padding rows of the embedding, <image>) are never
    produced. A row leaves the batch at a stop id or at its budget.
    """
    logits, state = prefill(backbone, pixel_values, prompts, max_new_tokens)
    stops = set(stop_ids)
    slot = backbone.num_image_tokens + max(len(p) for p in prompts)  # the first generated token's slot
    for step in range(1, max(max_new_tokens) + 1):
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        tokens = sample(logits)
        new = tokens.tolist()  # the one device -> host sync of the step
        yield state.rows, new
        running = [i for i, token in enumerate(new) if token not in stops and state.budgets[i] > step]
        if not running:
            return
        if len(running) < len(new):
            tokens = tokens[state.keep(running)]
        logits = decode_step(backbone, state, tokens, slot)
        slot += 1


def generate_tokens(
    backbone: PaliGemmaBackbone,
    pixel_values: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    sample: Sample,
    stop_ids: Sequence[int] = (),
    vocab_limit: int | None = None,
    on_step: OnStep | None = None,
) -> list[list[int]]:
    """All new tokens per row (a stop token, when produced, is the last one). ``on_step`` sees each
    step as it comes (e.g. to print text as it is generated)."""
    out: list[list[int]] = [[] for _ in prompts]
    for rows, tokens in stream_tokens(backbone, pixel_values, prompts, max_new_tokens, sample, stop_ids, vocab_limit):
        for row, token in zip(rows, tokens, strict=True):
            out[row].append(token)
        if on_step is not None:
            on_step(rows, tokens)
    return out
