"""Model configuration: frozen dataclasses built by pure functions from a checkpoint's config.json.

Serialized Hugging Face configs omit every value equal to the class default (``head_dim``,
``rope_theta``, ``image_size``...), and those class defaults are *not* PaliGemma's values for several
fields (transformers' SiglipVisionConfig defaults to patch 16 and width 768, PaliGemmaConfig to
image_token_index 256000). So every field here has an explicit PaliGemma default, and the decoder
variant is read from ``text_config.model_type`` -- never guessed: a PaliGemma 2 checkpoint run as
Gemma 1 repeats one token forever (hkproj/pytorch-paligemma issue #6).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from engine.errors import CheckpointError, InputError
from engine.model.config_values import JSON_LIMIT, MAX_LAYERS, Block, bad, read_json_file  # noqa: F401 (re-exported)

Variant = Literal["gemma", "gemma2"]
WindowPolicy = Literal["none", "transformers"]

# The released checkpoints' <image> id: the first id after the tokenizer's 257152 pieces (256000
# Gemma + 1024 <loc> + 128 <seg>; transformers' convert_paligemma_weights_to_hf.py).
IMAGE_TOKEN_INDEX = 257152
# What released text configs say (Gemma's training context); pali's RoPE has no limit of its own.
MAX_POSITION_EMBEDDINGS = 8192


@dataclass(frozen=True)
class VisionConfig:
    """SigLIP vision tower (So400m/14 in every released checkpoint)."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 27
    num_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextConfig:
    """Gemma (PaliGemma 1) or Gemma 2 (PaliGemma 2) decoder."""

    variant: Variant = "gemma"
    vocab_size: int = 257216
    hidden_size: int = 2048
    intermediate_size: int = 16384
    num_layers: int = 18
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # Attention scale is query_pre_attn_scalar ** -0.5; equal to head_dim except for PaliGemma 2 28B.
    query_pre_attn_scalar: float = 256.0
    attn_logit_softcap: float | None = None
    final_logit_softcap: float | None = None
    sliding_window: int | None = None
    # The checkpoints were trained without the sliding window (big_vision has none); "transformers"
    # reproduces transformers 5's window on the causal suffix. Only matters past `sliding_window` tokens.
    window_policy: WindowPolicy = "none"

    @property
    def attn_scale(self) -> float:
        return self.query_pre_attn_scalar**-0.5

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.hidden_size)

    def is_sliding_layer(self, index: int) -> bool:
        """Gemma 2 alternates local (even layers: 0, 2, ...) and global attention."""
        return (
            self.variant == "gemma2"
            and self.window_policy == "transformers"
            and self.sliding_window is not None
            and index % 2 == 0
        )


@dataclass(frozen=True)
class PaliGemmaConfig:
    vision: VisionConfig
    text: TextConfig
    pad_token_id: int = 0
    eos_token_id: int = 1
    bos_token_id: int = 2
    # Hugging Face's <image> placeholder id. pali never feeds it (image features are prepended), but
    # transformers reads it from config.json, and its class default (256000) is <loc0000> in the real
    # vocabulary, so it is kept on load and always written.
    image_token_index: int = IMAGE_TOKEN_INDEX

    @property
    def num_image_tokens(self) -> int:
        return self.vision.num_patches

    @property
    def image_size(self) -> int:
        return self.vision.image_size


# Values Gemma 2 configs omit when they equal transformers' Gemma2Config defaults (configuration_gemma2.py).
_GEMMA2_DEFAULTS = dict(attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=4096)
_GEMMA2_28B_HIDDEN = 4608  # the one variant whose query scale is not head_dim**-0.5 (big_vision
# models/ppp/gemma.py "rsqrt_emb_per_head"; transformers' convert_paligemma2_weights_to_hf.py: 4608 // 32)


def _rope_theta(text: Block) -> float:
    # transformers 5 writes rope_parameters={"rope_theta": ...}; 4.x wrote a top-level rope_theta.
    params = text.get("rope_parameters") or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return Block(params, text.name("rope_parameters")).number("rope_theta", 10000.0)
    return text.number("rope_theta", 10000.0)


def text_config_from_hf(text: dict) -> TextConfig:
    """Pure: the `text_config` block of a Hugging Face PaliGemma config.json -> TextConfig. Every
    value is checked (type, range) before anything is built from it: see engine.model.config_values."""
    t = Block(text, "text_config")
    variant = t.get("model_type")
    if variant not in ("gemma", "gemma2"):
        raise bad(f"text_config.model_type is {variant!r}; expected 'gemma' (PaliGemma 1) or 'gemma2' (PaliGemma 2)")
    hidden = t.count("hidden_size", 2048 if variant == "gemma" else 2304)
    heads = t.count("num_attention_heads", 8)
    is_28b = variant == "gemma2" and hidden == _GEMMA2_28B_HIDDEN
    head_dim = t.count("head_dim", 128 if is_28b else 256)
    common = dict(
        variant=variant,
        vocab_size=t.count("vocab_size", 257216),
        hidden_size=hidden,
        intermediate_size=t.count("intermediate_size", 16384 if variant == "gemma" else 9216),
        num_layers=t.count("num_hidden_layers", 18 if variant == "gemma" else 26, limit=MAX_LAYERS),
        num_heads=heads,
        num_kv_heads=t.count("num_key_value_heads", 1 if variant == "gemma" else 4),
        head_dim=head_dim,
        rms_norm_eps=t.number("rms_norm_eps", 1e-6),
        rope_theta=_rope_theta(t),
    )
    if variant == "gemma":
        return TextConfig(**common, query_pre_attn_scalar=float(head_dim))
    g = Block({**_GEMMA2_DEFAULTS, **text}, "text_config")
    default_scalar = hidden // heads if is_28b else 256
    window = g.optional_number("sliding_window", None)
    return TextConfig(
        **common,
        query_pre_attn_scalar=g.number("query_pre_attn_scalar", default_scalar),
        attn_logit_softcap=g.optional_number("attn_logit_softcapping", None),
        final_logit_softcap=g.optional_number("final_logit_softcapping", None),
        sliding_window=None if window is None else g.count("sliding_window", 4096),
    )


def vision_config_from_hf(vision: dict) -> VisionConfig:
    """Pure: the `vision_config` block -> VisionConfig (PaliGemma's values as defaults, not Siglip's)."""
    v = Block(vision, "vision_config")
    if v.get("vision_use_head"):
        raise bad("vision_config.vision_use_head is true; PaliGemma's tower has no pooling head")
    return VisionConfig(
        hidden_size=v.count("hidden_size", 1152),
        intermediate_size=v.count("intermediate_size", 4304),
        num_layers=v.count("num_hidden_layers", 27, limit=MAX_LAYERS),
        num_heads=v.count("num_attention_heads", 16),
        image_size=v.count("image_size", 224),
        patch_size=v.count("patch_size", 14),
        layer_norm_eps=v.number("layer_norm_eps", 1e-6),
    )


def from_hf_config(config: dict, window_policy: WindowPolicy = "none") -> PaliGemmaConfig:
    """Pure: a parsed Hugging Face PaliGemma config.json -> PaliGemmaConfig. A value that cannot
    make a model is a one-line CheckpointError starting "bad config.json:"."""
    top = Block(config, "")
    if top.get("model_type") not in (None, "paligemma"):
        raise bad(f"model_type is {top.get('model_type')!r}, not 'paligemma'")
    if "text_config" not in config or "vision_config" not in config:
        raise bad("it has no text_config/vision_config; is this a PaliGemma checkpoint?")
    text = text_config_from_hf(config["text_config"])
    if window_policy not in ("none", "transformers"):
        raise InputError(f"window policy {window_policy!r}: use 'none' or 'transformers'")
    text = replace(text, window_policy=window_policy)
    vision = vision_config_from_hf(config["vision_config"])
    if text.num_heads % text.num_kv_heads:
        raise bad(
            f"text_config.num_attention_heads ({text.num_heads}) is not a multiple of num_key_value_heads "
            f"({text.num_kv_heads})"
        )
    if vision.hidden_size % vision.num_heads:
        raise bad(
            f"vision_config.hidden_size ({vision.hidden_size}) is not a multiple of num_attention_heads "
            f"({vision.num_heads})"
        )
    if vision.image_size % vision.patch_size:
        raise bad(f"vision_config.image_size {vision.image_size} is not a multiple of patch_size {vision.patch_size}")
    return PaliGemmaConfig(
        vision=vision,
        text=text,
        pad_token_id=top.token_id("pad_token_id", 0),
        eos_token_id=top.token_id("eos_token_id", 1),
        bos_token_id=top.token_id("bos_token_id", 2),
        image_token_index=top.token_id("image_token_index", top.token_id("image_token_id", IMAGE_TOKEN_INDEX)),
    )


def load_config(checkpoint_dir: str | Path, window_policy: WindowPolicy = "none") -> PaliGemmaConfig:
    """Read ``config.json`` from a checkpoint directory, with errors that name the file. Only a
    regular file of sensible size is read (engine.model.config_values.read_json_file)."""
    path = Path(checkpoint_dir) / "config.json"
    try:
        raw = read_json_file(path, "config.json")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found; a checkpoint directory needs config.json") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        return from_hf_config(raw, window_policy)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except InputError:
        raise  # an argument of ours (the window policy), not the file


# Over 50 lines only because it is one literal dict: it reads as the config.json it writes.
def to_hf_config(config: PaliGemmaConfig, torch_dtype: str = "float32") -> dict:
    """Inverse of from_hf_config: a config.json dict in Hugging Face's PaliGemma layout, for
    checkpoints we save ourselves. Every field the released files carry is written out (nothing is
    left to transformers' class defaults, several of which are not PaliGemma's), except
    ``transformers_version``, which names the library that wrote the file. ``torch_dtype`` is the
    dtype the weights are stored in."""
    t, v = config.text, config.vision
    text: dict[str, Any] = {
        "model_type": t.variant,
        "vocab_size": t.vocab_size,
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads,
        "head_dim": t.head_dim,
        "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_theta,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": MAX_POSITION_EMBEDDINGS,
        "num_image_tokens": v.num_patches,
        "torch_dtype": torch_dtype,
    }
    if t.variant == "gemma2":
        text.update(
            # transformers validates this as an int; every released value (256, 144) is one.
            query_pre_attn_scalar=int(t.query_pre_attn_scalar)
            if t.query_pre_attn_scalar.is_integer()
            else t.query_pre_attn_scalar,
            attn_logit_softcapping=t.attn_logit_softcap,
            final_logit_softcapping=t.final_logit_softcap,
            sliding_window=t.sliding_window,
            cache_implementation="hybrid",  # Gemma 2's local/global cache, as the released files say
        )
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_hidden_layers": v.num_layers,
        "num_attention_heads": v.num_heads,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "layer_norm_eps": v.layer_norm_eps,
        "hidden_act": "gelu_pytorch_tanh",
        "vision_use_head": False,
        "projection_dim": t.hidden_size,
        "projector_hidden_act": "gelu_fast",  # released PaliGemma 1 files carry it; the projector is linear
        "num_image_tokens": v.num_patches,
        "num_positions": v.num_patches,
    }
    top: dict[str, Any] = {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "text_config": text,
        "vision_config": vision,
        "image_token_index": config.image_token_index,
        "ignore_index": -100,
        "projection_dim": t.hidden_size,
        "hidden_size": t.hidden_size,
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id,
        "bos_token_id": config.bos_token_id,
        "vocab_size": t.vocab_size,
        "torch_dtype": torch_dtype,
    }
    if t.variant == "gemma2":
        top["num_hidden_layers"] = t.num_layers  # transformers' PaliGemma 2 converter writes it
    return top
