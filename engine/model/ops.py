"""Stateless numerics shared by the vision tower and the decoder.

Axis legend used in shape comments: B batch, T query tokens, S key tokens (cache slots), N query
heads, K key/value heads, G = N // K query heads per kv head, D head dim, H hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def embedding(num: int, dim: int, cls: type[nn.Embedding] = nn.Embedding) -> nn.Embedding:
    """nn.Embedding (or a subclass) with its N(0, 1) init skipped on the meta device, where torch's
    normal_ costs seconds of one-off imports and the values are replaced by the checkpoint anyway."""
    weight = torch.empty(num, dim)
    if not weight.is_meta:
        nn.init.normal_(weight)
    return cls(num, dim, _weight=weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Gemma RMSNorm: fp32 math and a (1 + w) scale, cast back only at the end.

    Casting after the scale (not before, as Llama does) is what the checkpoints were trained with.
    """
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * (1.0 + weight.float())).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables for integer positions int[B, T] -> two float[B, 1, T, D] (fp32 math)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    freqs = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Split-half rotation (the layout the Hugging Face q/k weights are stored in). x: [B, *, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    logit_softcap: float | None = None,
) -> torch.Tensor:
    """Grouped-query attention. q float[B, N, T, D]; k, v float[B, K, S, D]; mask bool[B, 1, T, S]
    (True = may attend) or None for full attention. Returns float[B, N, T, D].

    Without a soft-cap this is torch's fused SDPA (any backend; the mask is always explicit, so no
    kernel can silently impose a causal prefix). Gemma 2's tanh soft-cap sits between the scores
    and the softmax, which SDPA cannot express, so that path is written out: scale, cap, mask,
    fp32 softmax, in the order the reference uses.
    """
    num_heads, num_kv = q.shape[1], k.shape[1]
    if logit_softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=num_heads != num_kv)
    b, _, t, d = q.shape
    g = num_heads // num_kv
    qg = q.reshape(b, num_kv, g * t, d)  # (B, K, G*T, D): heads of a group share one kv head
    scores = torch.matmul(qg, k.transpose(-1, -2)) * scale  # (B, K, G*T, S)
    scores = softcap(scores, logit_softcap).view(b, num_kv, g, t, -1)  # (B, K, G, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, :, None], float("-inf"))  # mask (B, 1, 1, T, S)
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype).view(b, num_kv, g * t, -1)
    out = torch.matmul(probs, v)  # (B, K, G*T, D)
    return out.view(b, num_heads, t, d)
