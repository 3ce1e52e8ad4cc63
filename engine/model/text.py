"""Gemma (PaliGemma 1) and Gemma 2 (PaliGemma 2) decoders in one set of modules.

The two differ only in switches read from TextConfig: Gemma 2 adds a norm after attention and
after the MLP, soft-caps attention logits, and scales queries by query_pre_attn_scalar. Note the
name trap: the checkpoint's ``post_attention_layernorm`` is Gemma 1's *pre-MLP* norm; weights.py
maps it to ``pre_feedforward_layernorm`` here so the block reads the same for both variants.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import TextConfig
from engine.model.kv_cache import KVCache
from engine.model.ops import apply_rope, attention, embedding, gelu_tanh, rms_norm, rope_cos_sin


class Masks(NamedTuple):
    """bool[B, 1, T, S] masks (True = may attend): one for global layers, one for sliding layers."""

    full: torch.Tensor
    sliding: torch.Tensor | None = None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))  # stored as w in the (1 + w) form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class TiedEmbedding(nn.Embedding):
    """The token embedding, which is also the LM head (tied weights): ``forward`` looks rows up,
    ``attend`` scores hidden states against every row. Quantized replacements (engine.runtime.quantize)
    provide the same two methods and ``dtype``, so the decoder never reads ``.weight`` itself."""

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the activations this embedding produces."""
        return self.weight.dtype

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        """float[..., H] -> float[..., V]; F.linear reads the matrix in place, never copying its ~1 GB."""
        return F.linear(hidden, self.weight)


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.num_heads, self.num_kv, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.scale, self.softcap = cfg.attn_scale, cfg.attn_logit_softcap
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, start: int) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, N, T, D)
        k = self.k_proj(x).view(b, t, self.num_kv, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(b, t, self.num_kv, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(start, k, v)  # (B, K, start + T, D)
        out = self.attend(q, k, v, mask)  # (B, N, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))

    def attend(self, q, k, v, mask) -> torch.Tensor:
        """Scores, soft-cap, mask, softmax and the weighted sum (engine.runtime.optimize may swap the dtype)."""
        return attention(q, k, v, mask, self.scale, self.softcap)


class MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(gelu_tanh(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, index: int):
        super().__init__()
        gemma2 = cfg.variant == "gemma2"
        self.sliding = cfg.is_sliding_layer(index)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if gemma2 else None
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps) if gemma2 else None

    def forward(self, x, cos, sin, masks: Masks, cache: KVCache | None, start: int) -> torch.Tensor:
        mask = masks.sliding if self.sliding else masks.full
        h = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, start)
        if self.post_attention_layernorm is not None:
            h = self.post_attention_layernorm(h)
        x = x + h
        h = self.mlp(self.pre_feedforward_layernorm(x))
        if self.post_feedforward_layernorm is not None:
            h = self.post_feedforward_layernorm(h)
        return x + h


class Decoder(nn.Module):
    """Token embedding, decoder layers, final norm and the tied LM head."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        # Typed as what the decoder calls; engine.runtime.quantize may swap in an int8 module with the
        # same dtype, forward and attend.
        self.embed_tokens = cast(TiedEmbedding, embedding(cfg.vocab_size, cfg.hidden_size, TiedEmbedding))
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    @property
    def dtype(self) -> torch.dtype:
        """The activation dtype (also that of the KV cache)."""
        return self.embed_tokens.dtype

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings scaled by sqrt(H) rounded to the embedding dtype, as every reference does
        (45.25 rather than 45.2548 in bf16 for H=2048). Image features are never scaled."""
        x = self.embed_tokens(token_ids)
        return x * torch.tensor(self.cfg.embed_scale, dtype=x.dtype)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        masks: Masks,
        caches: list[KVCache] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """x float[B, T, H] input embeddings; positions int[B, T]; returns normed hidden float[B, T, H].

        With caches, the T new tokens are written at cache slots start..start+T-1 and the masks
        cover slots 0..start+T-1.
        """
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, masks, None if caches is None else caches[i], start)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float[..., H] -> fp32 logits float[..., V]. The head is the embedding matrix itself (tied)."""
        logits = self.embed_tokens.attend(hidden).float()
        if self.cfg.final_logit_softcap is not None:
            logits = torch.tanh(logits / self.cfg.final_logit_softcap) * self.cfg.final_logit_softcap
        return logits
