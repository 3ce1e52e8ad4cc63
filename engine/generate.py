"""The generation loop, on token ids only (text lives in the preprocessor).

Layout: each row is ``[image tokens][padding][prompt]`` -- prompts are right-aligned so that every
row's next token lands in the same cache slot, and positions count real tokens only, so padding
changes no number. The prompt is one bidirectional prefix; every generated token is causal.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from engine.model.backbone import PaliGemmaBackbone
from engine.model.kv_cache import KVCache
from engine.model.text import Masks


def _right_align(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> ids int[B, T] and real-token mask bool[B, T], padded on the left."""
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), t, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, t - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, t - len(p) :] = True
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def stream_tokens(
    backbone: PaliGemmaBackbone,
    pixel_values: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    sample,
    stop_ids: Sequence[int] = (),
    vocab_limit: int | None = None,
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield, per step, the original indices of the rows still running and their new tokens int[b].

    pixel_values float[B, 3, R, R]; prompts: B lists of token ids (BOS first); max_new_tokens: a
    budget >= 1 per row; sample(logits fp32[b, V]) -> int[b]; ids >= vocab_limit (padding rows of
    the embedding, <image>) are never produced. A row leaves the batch at a stop id or its budget,
    and its cache rows are dropped, so finished rows cost nothing.
    """
    lm, cfg = backbone.language_model, backbone.config.text
    device, dtype = pixel_values.device, lm.dtype
    b, n_img = len(prompts), backbone.num_image_tokens
    ids, text_mask = _right_align(prompts, backbone.config.pad_token_id, device)
    prompt_end = n_img + ids.shape[1]
    total = prompt_end + max(max_new_tokens)
    caches = [KVCache(b, cfg.num_kv_heads, total, cfg.head_dim, dtype, device) for _ in lm.layers]
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
    budget = torch.tensor(list(max_new_tokens), device=device)
    sliding = any(layer.sliding for layer in lm.layers)

    # 1. Prefill image + prompt in one pass with the prefix-LM mask (the whole prompt is prefix).
    input_mask = torch.cat([torch.ones(b, n_img, dtype=torch.bool, device=device), text_mask], dim=1)
    positions = (torch.cumsum(input_mask.long(), dim=1) - 1).clamp(min=0)  # (B, N_img + T)
    x = torch.cat([backbone.encode_images(pixel_values).to(dtype), lm.embed(ids)], dim=1)
    masks = backbone.prefill_masks(input_mask, torch.zeros_like(input_mask), positions)
    logits = lm.logits(lm(x, positions, masks, caches, start=0)[:, -1])  # (B, V)
    key_valid = torch.zeros(b, total, dtype=torch.bool, device=device)
    key_valid[:, :prompt_end] = input_mask
    key_pos = torch.zeros(b, total, dtype=torch.long, device=device)
    key_pos[:, :prompt_end] = positions
    next_pos = positions[:, -1] + 1  # (B,)
    rows = torch.arange(b, device=device)

    for step, slot in enumerate(range(prompt_end, total), start=1):
        # 2. Sample one token per running row and hand it out.
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        tokens = sample(logits)
        yield rows.tolist(), tokens
        # 3. Rows that hit a stop id or their budget leave the batch, cache rows included.
        done = torch.isin(tokens, stops) | (budget[rows] <= step)
        if bool(done.all()):
            return
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            rows, tokens, next_pos = rows[keep], tokens[keep], next_pos[keep]
            key_valid, key_pos = key_valid[keep], key_pos[keep]
            for cache in caches:
                cache.keep_rows(keep)
        # 4. Decode: the new token sees every real cached token and itself.
        key_valid[:, slot] = True
        key_pos[:, slot] = next_pos
        full = key_valid[:, None, None, : slot + 1]  # (b, 1, 1, S)
        window = None
        if sliding:
            near = (next_pos[:, None] - key_pos[:, : slot + 1]) < cfg.sliding_window
            window = full & near[:, None, None]
        hidden = lm(lm.embed(tokens[:, None]), next_pos[:, None], Masks(full, window), caches, start=slot)
        logits = lm.logits(hidden[:, -1])
        next_pos = next_pos + 1


def generate_tokens(
    backbone, pixel_values, prompts, max_new_tokens, sample, stop_ids=(), vocab_limit=None
) -> list[list[int]]:
    """All new tokens per row (a stop token, when produced, is the last one)."""
    out: list[list[int]] = [[] for _ in prompts]
    for rows, tokens in stream_tokens(backbone, pixel_values, prompts, max_new_tokens, sample, stop_ids, vocab_limit):
        for row, token in zip(rows, tokens.tolist()):
            out[row].append(token)
    return out
