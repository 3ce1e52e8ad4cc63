"""The preset catalogue: short names for the released PaliGemma checkpoints.

Every preset is one row of ``_TABLE`` below. Names follow keras-hub's preset names (so code written
for keras-hub finds the same models here); the names keras-hub used before renaming them are kept as
aliases. Each row points at the Hugging Face repository that holds the same weights.

This module must stay import-light (no torch, no huggingface_hub): the CLI imports it to list presets
and to complete names on the command line.

Sources: big_vision models/ppp/gemma.py and transformers' convert_paligemma{,2}_weights_to_hf.py
(decoder sizes, config.json fields), the Hugging Face model pages (repositories, branches), keras-hub
src/models/pali_gemma/pali_gemma_presets.py (preset names, parameter counts) and the big_vision
PaliGemma README (text sequence lengths).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import LocalModelError, UnknownPresetError

__all__ = [
    "DEFAULT_PRESET",
    "IMAGE_TOKEN_INDEX",
    "Preset",
    "UnknownPresetError",
    "get_preset",
    "hf_config_for",
    "list_presets",
]

DEFAULT_PRESET = "pali_gemma2_mix_3b_224"

# SentencePiece vocabulary (256000 Gemma + 1024 <loc> + 128 <seg>); Hugging Face adds "<image>" as the next id
# and pads the embedding matrix to a multiple of 64 (big_vision README "Tokenizer"; transformers'
# image_token_index).
IMAGE_TOKEN_INDEX = 257152
HF_VOCAB_SIZE = 257216

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # engine/


@dataclass(frozen=True)
class Preset:
    """One named checkpoint.

    ``params`` counts parameters the way keras-hub and big_vision do (embedding with 257152 rows); the
    Hugging Face files hold ``64 * hidden`` more because of the padded embedding. ``revision`` None
    means the repository's default branch. ``package_dir`` is set only for models shipped inside the
    ``engine`` package (relative to it); such presets have no ``hf_repo``.
    """

    name: str
    family: str  # "paligemma" | "paligemma2" | "demo"
    size: str  # "3b" | "10b" | "28b" | "tiny"
    kind: str  # "mix" | "pt" | "ft"
    image_size: int
    hf_repo: str | None
    revision: str | None
    sequence_length: int | None  # text tokens used in training (prefix + suffix), None if unknown
    params: int | None  # None where unknown (the demo model)
    description: str
    aliases: tuple[str, ...] = ()
    package_dir: str | None = None

    @property
    def bundled_dir(self) -> Path | None:
        """Where the weights of a bundled preset live (the directory may be absent)."""
        return _PACKAGE_ROOT / self.package_dir if self.package_dir else None


# PaliGemma 1 repos keep float32 weights on main (11 GB); the bfloat16 branch holds the same model at half the
# size, and bf16 is what we run (big_vision README: "reference float32 checkpoint (11GB)... bfloat16 and
# float16 variants"). PaliGemma 2 main is already bfloat16.
_PG1_REVISION = "bfloat16"

_Row = tuple[str, int, str, str, int, int | None, int, str]

# fmt: off
_TABLE: tuple[_Row, ...] = (
    # name                           PG size   kind   res  seq   params          hf_repo
    ("pali_gemma_3b_mix_224",        1, "3b",  "mix", 224, 256,  2_923_335_408,  "google/paligemma-3b-mix-224"),
    ("pali_gemma_3b_mix_448",        1, "3b",  "mix", 448, 512,  2_924_220_144,  "google/paligemma-3b-mix-448"),
    ("pali_gemma_3b_224",            1, "3b",  "pt",  224, 128,  2_923_335_408,  "google/paligemma-3b-pt-224"),
    ("pali_gemma_3b_448",            1, "3b",  "pt",  448, 512,  2_924_220_144,  "google/paligemma-3b-pt-448"),
    ("pali_gemma_3b_896",            1, "3b",  "pt",  896, 512,  2_927_759_088,  "google/paligemma-3b-pt-896"),
    ("pali_gemma2_mix_3b_224",       2, "3b",  "mix", 224, None, 3_032_094_960,  "google/paligemma2-3b-mix-224"),
    ("pali_gemma2_mix_3b_448",       2, "3b",  "mix", 448, None, 3_032_979_696,  "google/paligemma2-3b-mix-448"),
    ("pali_gemma2_mix_10b_224",      2, "10b", "mix", 224, None, 9_662_409_456,  "google/paligemma2-10b-mix-224"),
    ("pali_gemma2_mix_10b_448",      2, "10b", "mix", 448, None, 9_663_294_192,  "google/paligemma2-10b-mix-448"),
    ("pali_gemma2_mix_28b_224",      2, "28b", "mix", 224, None, 27_650_192_112, "google/paligemma2-28b-mix-224"),
    ("pali_gemma2_mix_28b_448",      2, "28b", "mix", 448, None, 27_651_076_848, "google/paligemma2-28b-mix-448"),
    ("pali_gemma2_pt_3b_224",        2, "3b",  "pt",  224, None, 3_032_094_960,  "google/paligemma2-3b-pt-224"),
    ("pali_gemma2_pt_3b_448",        2, "3b",  "pt",  448, None, 3_032_979_696,  "google/paligemma2-3b-pt-448"),
    ("pali_gemma2_pt_3b_896",        2, "3b",  "pt",  896, None, 3_036_518_640,  "google/paligemma2-3b-pt-896"),
    ("pali_gemma2_pt_10b_224",       2, "10b", "pt",  224, None, 9_662_409_456,  "google/paligemma2-10b-pt-224"),
    ("pali_gemma2_pt_10b_448",       2, "10b", "pt",  448, None, 9_663_294_192,  "google/paligemma2-10b-pt-448"),
    ("pali_gemma2_pt_10b_896",       2, "10b", "pt",  896, None, 9_666_833_136,  "google/paligemma2-10b-pt-896"),
    ("pali_gemma2_pt_28b_224",       2, "28b", "pt",  224, None, 27_650_192_112, "google/paligemma2-28b-pt-224"),
    # keras-hub's metadata repeats the 224 count for 28B 448/896; these are recomputed from the architecture.
    ("pali_gemma2_pt_28b_448",       2, "28b", "pt",  448, None, 27_651_076_848, "google/paligemma2-28b-pt-448"),
    ("pali_gemma2_pt_28b_896",       2, "28b", "pt",  896, None, 27_654_615_792, "google/paligemma2-28b-pt-896"),
    ("pali_gemma_2_ft_docci_3b_448", 2, "3b",  "ft",  448, None, 3_032_979_696,  "google/paligemma2-3b-ft-docci-448"),
    ("pali_gemma2_ft_docci_10b_448", 2, "10b", "ft",  448, None, 9_663_294_192,  "google/paligemma2-10b-ft-docci-448"),
)

# Other names users may have: keras-hub called the PaliGemma 2 presets pali_gemma2_<size>_<kind>_<res>
# in PR #1998 before renaming them (PRs #2003, #2024); its Kaggle handles for the 28B mix models still
# put the size first; and its 3B DOCCI name is spelt unlike the 10B one.
_ALIASES: dict[str, tuple[str, ...]] = {
    "pali_gemma2_mix_28b_224": ("pali_gemma2_28b_mix_224",),
    "pali_gemma2_mix_28b_448": ("pali_gemma2_28b_mix_448",),
    **{f"pali_gemma2_pt_{size}_{res}": (f"pali_gemma2_{size}_pt_{res}",)
       for size in ("3b", "10b", "28b") for res in (224, 448, 896)},
    "pali_gemma_2_ft_docci_3b_448": ("pali_gemma2_3b_ft_docci_448", "pali_gemma2_ft_docci_3b_448"),
    "pali_gemma2_ft_docci_10b_448": ("pali_gemma2_10b_ft_docci_448",),
}
# fmt: on

_FAMILY_TITLE = {"paligemma": "PaliGemma", "paligemma2": "PaliGemma 2"}
_KIND_TEXT = {
    "mix": "mix: tuned on a mixture of tasks (caption, OCR, VQA, detect, segment), ready to prompt",
    "pt": "pretrained: a base for fine-tuning, not tuned to follow task prompts",
    "ft": "fine-tuned on DOCCI: long, detailed image descriptions",
}


_FAMILY = {1: "paligemma", 2: "paligemma2"}  # the table's PG column: PaliGemma 1 or 2


def _row_to_preset(row: _Row) -> Preset:
    name, generation, size, kind, res, seq, params, repo = row
    family = _FAMILY[generation]
    title = f"{_FAMILY_TITLE[family]} {size.upper()} {res} px"
    return Preset(
        name=name,
        family=family,
        size=size,
        kind=kind,
        image_size=res,
        hf_repo=repo,
        revision=_PG1_REVISION if family == "paligemma" else None,
        sequence_length=seq,
        params=params,
        description=f"{title}, {_KIND_TEXT[kind]}.",
        aliases=_ALIASES.get(name, ()),
    )


_DEMO = Preset(
    name="pali-demo-shapes",
    family="demo",
    size="tiny",
    kind="ft",
    image_size=112,
    hf_repo=None,
    revision=None,
    sequence_length=None,
    params=None,
    description="Tiny demo model shipped with pali (synthetic shapes): no download, for trying the "
    "commands; not a real PaliGemma.",
    package_dir="demo_model",
)

_PRESETS: tuple[Preset, ...] = tuple(_row_to_preset(row) for row in _TABLE) + (_DEMO,)


def _key(name: str) -> str:
    # Users mix "-" and "_" and capitals; the catalogue never relies on either to tell names apart.
    return name.strip().lower().replace("-", "_")


_BY_KEY: dict[str, Preset] = {}
for _preset in _PRESETS:
    for _name in (_preset.name, *_preset.aliases):
        if _key(_name) in _BY_KEY:
            raise AssertionError(f"preset name {_name!r} is listed twice")
        _BY_KEY[_key(_name)] = _preset
del _preset, _name


def list_presets() -> list[Preset]:
    """All presets in catalogue order (PaliGemma 1, PaliGemma 2, then the demo)."""
    return list(_PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (canonical name or alias; case and "-"/"_" do not matter)."""
    preset = _BY_KEY.get(_key(name))
    if preset is not None:
        return preset
    raise UnknownPresetError(name, _close_matches(name))


def _close_matches(name: str) -> list[str]:
    hits = difflib.get_close_matches(_key(name), list(_BY_KEY), n=5, cutoff=0.6)
    canonical: list[str] = []
    for hit in hits:  # an alias hit suggests its canonical name, once
        if _BY_KEY[hit].name not in canonical:
            canonical.append(_BY_KEY[hit].name)
    return canonical[:3]


# Decoder shapes per (family, size): big_vision gemma_2b / gemma2_{2b,9b,27b}, transformers' VARIANT_CONFIGS.
# query_pre_attn_scalar is Gemma 2's query scale denominator: head_dim, except 28B where big_vision scales by
# hidden / heads = 144.
_DECODER_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "intermediate_size",
    "query_pre_attn_scalar",
)
# fmt: off
_DECODERS: dict[tuple[str, str], tuple[int | None, ...]] = {
    #                      layers  hidden  heads  kv heads  head_dim  intermediate  query scale
    ("paligemma", "3b"):   (18,    2048,   8,     1,        256,      16384,        None),
    ("paligemma2", "3b"):  (26,    2304,   8,     4,        256,      9216,         256),
    ("paligemma2", "10b"): (42,    3584,   16,    8,        256,      14336,        256),
    ("paligemma2", "28b"): (46,    4608,   32,    16,       128,      36864,        144),
}
# fmt: on

# SigLIP So400m/14 without its pooling head, identical in every preset (big_vision models/vit.py "So400m").
_PATCH_SIZE = 14
_VISION: dict[str, Any] = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_channels": 3,
    "patch_size": _PATCH_SIZE,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": False,
}


def hf_config_for(preset: Preset | str) -> dict[str, Any]:
    """A ``config.json``-style dict (Hugging Face ``PaliGemmaConfig`` layout) for ``preset``.

    Lets callers build any preset's architecture without downloading it (parameter counts, full-size
    benchmarks on random weights). Written from the tables above, with every field spelled out
    instead of relying on Hugging Face's class defaults. The demo preset's config is its bundled
    ``config.json``.
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    if preset.family == "demo":
        return _bundled_config(preset)
    shape = _DECODERS[(preset.family, preset.size)]
    decoder = {key: value for key, value in zip(_DECODER_FIELDS, shape, strict=True) if value is not None}
    hidden = decoder["hidden_size"]
    num_image_tokens = (preset.image_size // _PATCH_SIZE) ** 2
    vision = {
        **_VISION,
        "image_size": preset.image_size,
        "num_image_tokens": num_image_tokens,
        "projection_dim": hidden,
    }
    config: dict[str, Any] = {
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma",
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "image_token_index": IMAGE_TOKEN_INDEX,
        "projection_dim": hidden,
        "torch_dtype": "bfloat16",
        "text_config": _text_config(preset.family, decoder, num_image_tokens),
        "vision_config": vision,
    }
    if preset.family == "paligemma":
        config["hidden_size"] = hidden  # PaliGemma 1 files carry it; the PaliGemma 2 converter drops it
    return config


def _text_config(family: str, decoder: dict[str, int], num_image_tokens: int) -> dict[str, Any]:
    text: dict[str, Any] = {
        "model_type": "gemma" if family == "paligemma" else "gemma2",
        **decoder,
        "vocab_size": HF_VOCAB_SIZE,
        "num_image_tokens": num_image_tokens,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 8192,  # Gemma's training context; RoPE itself has no limit
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    }
    if family == "paligemma2":
        text.update(
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            sliding_window=4096,  # on even layers (0, 2, ...); a no-op below 4096 tokens
            cache_implementation="hybrid",
        )
    return text


def _bundled_config(preset: Preset) -> dict[str, Any]:
    path = preset.bundled_dir / "config.json" if preset.bundled_dir else None
    if path is None or not path.is_file():
        raise LocalModelError(
            f"preset {preset.name!r} ships inside the pali package but {path} is missing: "
            "this installation does not include the demo model; reinstall pali.",
            label=preset.name,
        )
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config
