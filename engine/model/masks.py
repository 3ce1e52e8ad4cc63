"""Attention masks for the prefix-LM (pure functions on bool tensors; True = may attend)."""

from __future__ import annotations

import torch


def prefix_lm_mask(input_mask: torch.Tensor, mask_ar: torch.Tensor) -> torch.Tensor:
    """big_vision's prefix-LM rule. input_mask bool[B, S] (False = padding); mask_ar bool[B, S]
    (True = autoregressive suffix token). Returns bool[B, 1, S, S].

    Token i may attend to token j iff both are real and cumsum(mask_ar)[j] <= cumsum(mask_ar)[i]:
    the prefix (image, BOS, prompt, "\\n") sees all of itself, including later prefix tokens; each
    suffix token sees the prefix and the suffix up to itself. Example, 2 image + 2 prompt + 2 suffix:

        mask_ar  0 0 0 0 1 1        allowed (rows = queries)
        cumsum   0 0 0 0 1 2        i0..i3: 1 1 1 1 0 0
                                    i4:     1 1 1 1 1 0
                                    i5:     1 1 1 1 1 1

    A padding query would see nothing and turn its softmax row into NaN, so it sees itself; its
    output is never read.
    """
    c = torch.cumsum(mask_ar.long(), dim=1)  # (B, S)
    allowed = c[:, None, :] <= c[:, :, None]  # (B, S_query, S_key)
    allowed &= input_mask[:, None, :] & input_mask[:, :, None]
    allowed |= torch.eye(input_mask.shape[1], dtype=torch.bool, device=input_mask.device)
    return allowed[:, None]  # (B, 1, S, S)


def window_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, q_prefix: torch.Tensor, k_prefix: torch.Tensor, window: int
) -> torch.Tensor:
    """transformers 5's Gemma 2 sliding window for PaliGemma, as a restriction to AND onto a base mask.

    q_pos int[B, T], k_pos int[B, S] token positions; q_prefix bool[B, T], k_prefix bool[B, S].
    A key stays visible if it is fewer than `window` positions back, or if query and key are both in
    the bidirectional prefix (transformers keeps the prefix block whole). Returns bool[B, 1, T, S].
    """
    near = (q_pos[:, :, None] - k_pos[:, None, :]) < window  # (B, T, S)
    both_prefix = q_prefix[:, :, None] & k_prefix[:, None, :]
    return (near | both_prefix)[:, None]
