"""PaliGemmaBackbone: vision tower -> linear projector -> Gemma decoder, as one prefix-LM.

Sequence layout fed to the decoder (big_vision models/proj/paligemma/paligemma.py; transformers
modeling_paligemma.py builds the same with <image> placeholders): ``[image tokens][text tokens]``; image features are
projected but never scaled, text embeddings are scaled by sqrt(H). Positions count real tokens
only (0-based, image tokens first), so any padding layout gives the same numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.errors import InputError
from engine.model.config import PaliGemmaConfig, TextConfig, VisionConfig
from engine.model.masks import prefix_lm_mask, window_mask
from engine.model.text import Decoder, Masks
from engine.model.vision import VisionTower


# Over 50 lines only because of keras-hub's 21-keyword signature, kept whole so that its argument
# names and defaults read side by side with keras-hub's PaliGemmaBackbone.
def _config_from_keras_kwargs(
    vocabulary_size: int = 257152,
    image_size: int = 224,
    num_layers: int = 18,
    num_query_heads: int = 8,
    num_key_value_heads: int = 1,
    hidden_dim: int = 2048,
    intermediate_dim: int = 32768,
    head_dim: int = 256,
    vit_patch_size: int = 14,
    vit_num_heads: int = 16,
    vit_hidden_dim: int = 1152,
    vit_num_layers: int = 27,
    vit_intermediate_dim: int = 4304,
    query_head_dim_normalize: bool = True,
    use_post_ffw_norm: bool = False,
    use_post_attention_norm: bool = False,
    attention_logit_soft_cap: float | None = None,
    final_logit_soft_cap: float | None = None,
    use_sliding_window_attention: bool = False,
    sliding_window_size: int = 4096,
    layer_norm_epsilon: float = 1e-6,
) -> PaliGemmaConfig:
    """keras-hub's PaliGemmaBackbone arguments (defaults: PaliGemma 1 224). As in keras-hub,
    intermediate_dim counts both GeGLU branches (2 x the per-branch width)."""
    gemma2 = use_post_ffw_norm or use_post_attention_norm or attention_logit_soft_cap is not None
    text = TextConfig(
        variant="gemma2" if gemma2 else "gemma",
        vocab_size=vocabulary_size,
        hidden_size=hidden_dim,
        intermediate_size=intermediate_dim // 2,
        num_layers=num_layers,
        num_heads=num_query_heads,
        num_kv_heads=num_key_value_heads,
        head_dim=head_dim,
        rms_norm_eps=layer_norm_epsilon,
        query_pre_attn_scalar=float(head_dim if query_head_dim_normalize else hidden_dim // num_query_heads),
        attn_logit_softcap=attention_logit_soft_cap,
        final_logit_softcap=final_logit_soft_cap,
        sliding_window=sliding_window_size if use_sliding_window_attention else None,
        window_policy="transformers" if use_sliding_window_attention else "none",
    )
    vision = VisionConfig(
        hidden_size=vit_hidden_dim,
        intermediate_size=vit_intermediate_dim,
        num_layers=vit_num_layers,
        num_heads=vit_num_heads,
        image_size=image_size,
        patch_size=vit_patch_size,
    )
    return PaliGemmaConfig(vision=vision, text=text)


class PaliGemmaBackbone(nn.Module):
    """PaliGemmaBackbone(config) or, as in keras-hub, PaliGemmaBackbone(vocabulary_size=..., ...)."""

    def __init__(self, config: PaliGemmaConfig | None = None, **keras_kwargs):
        super().__init__()
        if config is None:
            config = _config_from_keras_kwargs(**keras_kwargs)
        elif keras_kwargs:
            raise TypeError("pass either a PaliGemmaConfig or keras-hub style keyword arguments, not both")
        self.config = config
        self.checkpoint: str | None = None  # where the weights came from, for messages (set by the loader)
        self.vision_tower = VisionTower(config.vision)
        self.projector = nn.Linear(config.vision.hidden_size, config.text.hidden_size)
        self.language_model = Decoder(config.text)

    @property
    def num_image_tokens(self) -> int:
        return self.config.num_image_tokens

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """float[B, 3, R, R] in [-1, 1] -> projected image tokens float[B, N_img, H] (unscaled)."""
        size = self.config.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise InputError(f"pixel_values must be [B, 3, {size}, {size}], got {list(pixel_values.shape)}")
        return self.projector(self.vision_tower(pixel_values))

    def prefill_masks(self, input_mask: torch.Tensor, mask_ar: torch.Tensor, positions: torch.Tensor) -> Masks:
        """Masks for a whole sequence: input_mask, mask_ar bool[B, S]; positions int[B, S]."""
        prefix = ~mask_ar
        return self._masks(prefix_lm_mask(input_mask, mask_ar), positions, positions, prefix, prefix)

    def decode_masks(self, q_pos: torch.Tensor, key_valid: torch.Tensor, key_pos: torch.Tensor) -> Masks:
        """Masks for one new (causal) token per row against the cache: q_pos int[B, 1]; key_valid
        bool[B, S] (slots holding a real token, the new one included); key_pos int[B, S]."""
        full = key_valid[:, None, None, :]  # (B, 1, 1, S)
        not_prefix = torch.zeros_like(q_pos, dtype=torch.bool)  # a generated token is never prefix
        return self._masks(full, q_pos, key_pos, not_prefix, torch.zeros_like(key_valid))

    def _masks(
        self,
        full: torch.Tensor,
        q_pos: torch.Tensor,
        k_pos: torch.Tensor,
        q_prefix: torch.Tensor,
        k_prefix: torch.Tensor,
    ) -> Masks:
        """The global mask, plus the sliding layers' one when the model has any: the window rule
        (engine.model.masks.window_mask) is applied here for prefill and decode alike."""
        size = self.config.text.sliding_window
        if size is None or not any(layer.sliding for layer in self.language_model.layers):
            return Masks(full)
        window = window_mask(q_pos, k_pos, q_prefix, k_prefix, size)
        return Masks(full, full & window)

    def forward(
        self,
        pixel_values: torch.Tensor,
        token_ids: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        response_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of the text positions.

        pixel_values float[B, 3, R, R]; token_ids int[B, T] text tokens starting with BOS (no image
        placeholders); padding_mask bool[B, T] (True = real token, either padding side);
        response_mask bool[B, T] (True = causal suffix token, e.g. the answer during training).
        Returns fp32 float[B, T, V].
        """
        return self.language_model.logits(self.text_hidden_states(pixel_values, token_ids, padding_mask, response_mask))

    def text_hidden_states(self, pixel_values, token_ids, padding_mask=None, response_mask=None) -> torch.Tensor:
        """Final-norm hidden states of the text positions float[B, T, H] (for losses that need only
        some positions' logits)."""
        b, t = token_ids.shape
        if pixel_values.shape[0] != b:  # transformers refuses this too ("Image features and image tokens do not match")
            n = pixel_values.shape[0]
            raise InputError(
                f"got {n} image{'s' if n != 1 else ''} (pixel_values) for {b} rows of token_ids; pass one image per row"
            )
        n_img = self.num_image_tokens
        device = token_ids.device
        padding_mask = (
            torch.ones(b, t, dtype=torch.bool, device=device) if padding_mask is None else padding_mask.bool()
        )
        response_mask = (
            torch.zeros(b, t, dtype=torch.bool, device=device) if response_mask is None else response_mask.bool()
        )
        image = self.encode_images(pixel_values)  # (B, N_img, H)
        text = self.language_model.embed(token_ids)  # (B, T, H)
        x = torch.cat([image.to(text.dtype), text], dim=1)  # (B, N_img + T, H)
        input_mask = torch.cat([torch.ones(b, n_img, dtype=torch.bool, device=device), padding_mask], dim=1)
        mask_ar = torch.cat(
            [torch.zeros(b, n_img, dtype=torch.bool, device=device), response_mask & padding_mask], dim=1
        )
        positions = (torch.cumsum(input_mask.long(), dim=1) - 1).clamp(min=0)
        hidden = self.language_model(x, positions, self.prefill_masks(input_mask, mask_ar, positions))
        return hidden[:, n_img:]
