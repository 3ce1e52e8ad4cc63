"""Tiny random-weight PaliGemma checkpoints built with transformers (the reference).

Each checkpoint is a directory in Hugging Face layout (config.json, safetensors, tokenizer.model)
written by ``save_pretrained``, optionally renamed to the tensor naming of the released hub files or
to transformers' in-memory naming, or re-sharded, so the loader is exercised on every layout it
meets in the wild (transformers' conversion scripts write the Hub naming).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tests.helpers.tiny_tokenizer import train_tiny_tokenizer

TOKENIZER_VOCAB = 1600  # pieces in the tiny tokenizer; <image> is the next id
IMAGE_TOKEN_ID = TOKENIZER_VOCAB
MODEL_VOCAB = 1664  # TOKENIZER_VOCAB + 1 rounded up to a multiple of 64, as the real checkpoints are


@dataclass(frozen=True)
class TinySpec:
    """Shape knobs for a tiny checkpoint; defaults are a small PaliGemma 1."""

    family: str = "gemma"  # "gemma" (PaliGemma 1) or "gemma2" (PaliGemma 2)
    hidden: int = 64
    intermediate: int = 96
    layers: int = 2
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 16
    image_size: int = 28
    patch: int = 7
    vision_hidden: int = 32
    vision_intermediate: int = 48
    vision_layers: int = 2
    vision_heads: int = 2
    text_extra: tuple = ()  # (key, value) pairs for text_config, e.g. (("sliding_window", 8),)
    vocab: int = MODEL_VOCAB  # embedding rows; the released 257216 for ids of the real vocabulary


def hf_config(spec: TinySpec):
    from transformers import PaliGemmaConfig

    text = dict(
        model_type=spec.family,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        vocab_size=spec.vocab,
        hidden_activation="gelu_pytorch_tanh",
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    if spec.family == "gemma2":
        text.update(query_pre_attn_scalar=spec.head_dim, sliding_window=4096)
    text.update(dict(spec.text_extra))
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch,
        vision_use_head=False,
    )
    # The special-token ids reach PaliGemmaConfig through **kwargs, which its stubs do not declare.
    return PaliGemmaConfig(  # type: ignore[call-arg]
        text_config=text,
        vision_config=vision,
        image_token_index=IMAGE_TOKEN_ID,
        projection_dim=spec.hidden,
        hidden_size=spec.hidden,
        vocab_size=spec.vocab,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )


def build_reference(spec: TinySpec, seed: int = 0):
    """A random-weight transformers model in fp32, eager attention, eval mode."""
    from transformers import PaliGemmaForConditionalGeneration

    torch.manual_seed(seed)
    config = hf_config(spec)
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    model = PaliGemmaForConditionalGeneration(config).eval()
    # transformers initialises with std 0.02, so the residual stream is all embedding and the tied
    # head just echoes the last token. Re-draw every tensor so that every layer, norm, bias and
    # position table shapes the output and no bug can hide behind a near-identity.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
            elif "embed" in name:
                p.copy_(torch.randn_like(p) * 0.3 * p.shape[-1] ** -0.5)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) * 2 * fan_in**-0.5)
    return model


HUB_RENAMES = (  # transformers-5 save_pretrained naming -> released hub naming
    (r"^vision_tower\.(?!vision_model\.)", "vision_tower.vision_model."),
)
STATE_DICT_RENAMES = (  # released hub naming -> transformers-5 in-memory naming
    (r"^vision_tower\.vision_model\.", "model.vision_tower."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
)


def _rename(tensors: dict, rules) -> dict:
    out = {}
    for name, t in tensors.items():
        for pattern, repl in rules:
            name = re.sub(pattern, repl, name)
        out[name] = t
    return out


def _weight_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors"))


def _read_all(path: Path) -> dict:
    tensors = {}
    for f in _weight_files(path):
        tensors.update(load_file(f))
    return tensors


def rewrite(path: Path, naming: str = "hub", shards: int = 1, dtype: torch.dtype | None = None) -> None:
    """Rewrite the weights of a checkpoint dir with another naming / shard count / dtype.
    naming: "hub" (released files), "save_pretrained" (transformers 5 output), "state_dict"."""
    tensors = _read_all(path)
    if naming != "save_pretrained":  # keep transformers 5's own save naming as it is
        tensors = _rename(tensors, HUB_RENAMES)  # normalise to the hub naming first
    if naming == "state_dict":
        tensors = _rename(tensors, STATE_DICT_RENAMES)
    elif naming not in ("hub", "save_pretrained"):
        raise ValueError(naming)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    for f in _weight_files(path):
        f.unlink()
    (path / "model.safetensors.index.json").unlink(missing_ok=True)
    names = sorted(tensors)
    if shards == 1:
        save_file({k: tensors[k].contiguous() for k in names}, path / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, path / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
        "weight_map": weight_map,
    }
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def save_checkpoint(model, path: str | Path, naming: str = "hub", shards: int = 1, dtype=None) -> Path:
    """save_pretrained + tokenizer.model, then rewrite to the requested naming/sharding/dtype."""
    path = Path(path)
    model.save_pretrained(path)
    tokenizer = path.parent / "_tiny_tokenizer.model"
    if not tokenizer.exists():  # training is cheap but deterministic: do it once per directory
        train_tiny_tokenizer(tokenizer, vocab_size=TOKENIZER_VOCAB)
    shutil.copyfile(tokenizer, path / "tokenizer.model")
    rewrite(path, naming=naming, shards=shards, dtype=dtype)
    return path


def make_tiny_checkpoint(path: str | Path, spec: TinySpec = TinySpec(), seed: int = 0, **kw) -> Path:
    """Build a random reference model and save it; returns the checkpoint directory."""
    return save_checkpoint(build_reference(spec, seed), path, **kw)


def write_safetensors_at(path: str | Path, tensors: dict, shift: int, metadata: dict | None = None) -> Path:
    """A safetensors file with ``tensors`` back to back (name order) and the data section starting
    ``shift`` bytes past a 64-byte boundary: memory-mapped, every tensor sits off its natural
    alignment when ``shift`` is odd. Any safetensors reader accepts it."""
    codes = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int8: "I8", torch.uint8: "U8"}
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": codes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * ((-(8 + len(text)) % 64) + shift)
    path = Path(path)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name in sorted(tensors):
            f.write(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return path
