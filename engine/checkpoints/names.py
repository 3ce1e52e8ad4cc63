"""Checkpoint tensor names <-> our parameter names: one table, read in both directions.

Three namings exist in the wild (transformers' PaliGemma conversion script and ``modeling_paligemma.py``):

* the released Hub files: ``vision_tower.vision_model.*``, ``multi_modal_projector.linear.*``,
  ``language_model.model.*`` -- the naming we save, which every loader accepts;
* transformers 5's ``save_pretrained`` output: ``vision_tower.*`` without ``vision_model``;
* transformers' in-memory names: ``model.vision_tower.*``, ``model.multi_modal_projector.*``,
  ``model.language_model.*``.

``NAMES`` has one row per module: our prefix, then every checkpoint prefix that means it, the Hub's
first. Loading reads a row left to right (any naming -> ours), saving right to left (ours -> the
Hub's), and ``hub_name`` rewrites any naming to the Hub's without going through ours. One rename
depends on the decoder: Gemma 1 calls its pre-MLP norm ``post_attention_layernorm`` (Gemma 2 uses
that name for the norm after attention), so for ``variant == "gemma"`` that name is ours
``pre_feedforward_layernorm`` and back. Torch-free.
"""

from __future__ import annotations

import re

__all__ = ["IGNORED", "NAMES", "TIED_HEAD", "checkpoint_name", "hub_name", "our_name"]


def _vision(rest: str) -> tuple[str, ...]:
    return tuple(f"{model}vision_tower.{inner}{rest}" for model in ("", "model.") for inner in ("vision_model.", ""))


# (our prefix, (checkpoint prefixes: the released Hub naming first, then the others))
NAMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vision_tower.patch_embedding.", _vision("embeddings.patch_embedding.")),
    ("vision_tower.position_embedding.", _vision("embeddings.position_embedding.")),
    ("vision_tower.layers.", _vision("encoder.layers.")),
    ("vision_tower.post_layernorm.", _vision("post_layernorm.")),
    ("projector.", ("multi_modal_projector.linear.", "model.multi_modal_projector.linear.")),
    ("language_model.", ("language_model.model.", "model.language_model.")),
)
# Gemma 1's layer norm names: (checkpoint, ours).
_GEMMA1_NORM = ("post_attention_layernorm.", "pre_feedforward_layernorm.")
_LAYER = re.compile(r"^(language_model\.layers\.\d+\.)")

TIED_HEAD = re.compile(r"^(?:language_model\.lm_head|lm_head)\.weight$")  # the embedding, tied
IGNORED = re.compile(r"(?:^|\.)position_ids$")  # non-persistent buffers some exporters write


def _split(name: str) -> tuple[str, str, str] | None:
    """(our prefix, Hub prefix, rest) of a checkpoint name in any naming, or None."""
    for ours, prefixes in NAMES:
        for prefix in prefixes:
            if name.startswith(prefix):
                return ours, prefixes[0], name[len(prefix) :]
    return None


def _rename_norm(name: str, old: str, new: str) -> str:
    match = _LAYER.match(name)
    if match and name[match.end() :].startswith(old):
        return match.group(1) + new + name[match.end() + len(old) :]
    return name


def our_name(name: str, variant: str) -> str | None:
    """Checkpoint tensor name (any naming) -> our parameter name, or None when no row applies."""
    parts = _split(name)
    if parts is None:
        return None
    ours = parts[0] + parts[2]
    return _rename_norm(ours, *_GEMMA1_NORM) if variant == "gemma" else ours


def checkpoint_name(name: str, variant: str) -> str:
    """Our parameter name -> its name in the released Hub naming (what we save)."""
    if variant == "gemma":
        name = _rename_norm(name, _GEMMA1_NORM[1], _GEMMA1_NORM[0])
    for ours, prefixes in NAMES:
        if name.startswith(ours):
            return prefixes[0] + name[len(ours) :]
    raise AssertionError(f"no checkpoint name for parameter {name}; add its module to NAMES")


def hub_name(name: str) -> str | None:
    """A checkpoint name in any naming -> the same tensor in the released Hub naming (None: unknown)."""
    parts = _split(name)
    return None if parts is None else parts[1] + parts[2]
