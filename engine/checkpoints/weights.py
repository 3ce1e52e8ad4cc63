"""Loading Hugging Face safetensors checkpoints into PaliGemmaBackbone.

This is the only module that knows checkpoint tensor names. Three namings exist in the wild
(spec §9.4): the released hub files (``vision_tower.vision_model.*``, ``language_model.model.*``),
transformers 5's ``save_pretrained`` output (``vision_tower.*`` without ``vision_model``) and
transformers' in-memory names (``model.vision_tower.*``, ``model.language_model.*``). One table of
anchored patterns maps all of them onto our module names; the loader then checks, exhaustively,
that nothing is missing, unused or mis-shaped. The model is built on the meta device and filled
with ``assign=True``, one tensor at a time, so weights are materialised once, in the target dtype.
Pickled weights (.bin/.pt) are never loaded: they can run arbitrary code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.checkpoints.reader import TensorReader
from engine.model.backbone import PaliGemmaBackbone
from engine.model.config import PaliGemmaConfig
from engine.runtime.kernels import aligned
from engine.runtime.memory import empty_weight

# (checkpoint pattern, our name). Anchored at the start; the first match wins.
NAME_TABLE: tuple[tuple[str, str], ...] = (
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?embeddings\.patch_embedding\.", "vision_tower.patch_embedding."),
    (
        r"^(?:model\.)?vision_tower\.(?:vision_model\.)?embeddings\.position_embedding\.",
        "vision_tower.position_embedding.",
    ),
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?encoder\.layers\.", "vision_tower.layers."),
    (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?post_layernorm\.", "vision_tower.post_layernorm."),
    (r"^(?:model\.)?multi_modal_projector\.linear\.", "projector."),
    (r"^(?:language_model\.model\.|model\.language_model\.)", "language_model."),
)
# Where our parameters go when we save: the released hub naming, which every loader accepts.
SAVE_TABLE: tuple[tuple[str, str], ...] = (
    (r"^vision_tower\.(patch_embedding|position_embedding)\.", r"vision_tower.vision_model.embeddings.\1."),
    (r"^vision_tower\.layers\.", "vision_tower.vision_model.encoder.layers."),
    (r"^vision_tower\.post_layernorm\.", "vision_tower.vision_model.post_layernorm."),
    (r"^projector\.", "multi_modal_projector.linear."),
    (r"^language_model\.", "language_model.model."),
)
# Gemma 1's "post_attention_layernorm" is the norm *before* the MLP (Gemma 2 renamed roles).
GEMMA1_NORM = (r"^(language_model\.layers\.\d+\.)post_attention_layernorm\.", r"\1pre_feedforward_layernorm.")
TIED_HEAD = re.compile(r"^(?:language_model\.lm_head|lm_head)\.weight$")
IGNORED = re.compile(r"(?:^|\.)position_ids$")  # non-persistent buffers some exporters write
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: the message names the file and tensor."""


def map_name(name: str, variant: str) -> str | None:
    """Checkpoint tensor name -> our parameter name, or None when no rule applies."""
    for pattern, repl in NAME_TABLE:
        mapped, n = re.subn(pattern, repl, name)
        if n:
            return re.sub(GEMMA1_NORM[0], GEMMA1_NORM[1], mapped) if variant == "gemma" else mapped
    return None


def hub_name(name: str, variant: str) -> str:
    """Our parameter name -> the released hub naming (inverse of map_name)."""
    if variant == "gemma":
        name = re.sub(
            r"^(language_model\.layers\.\d+\.)pre_feedforward_layernorm\.", r"\1post_attention_layernorm.", name
        )
    for pattern, repl in SAVE_TABLE:
        name, n = re.subn(pattern, repl, name)
        if n:
            return name
    raise ValueError(f"no checkpoint name for parameter {name}")


def save_backbone(model: PaliGemmaBackbone, directory: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write config.json + model.safetensors in the released hub layout (loadable by us and by
    transformers). The tokenizer is the caller's to copy."""
    from safetensors.torch import save_file

    from engine.model.config import to_hf_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    variant = model.config.text.variant
    tensors = {
        hub_name(name, variant): (p.detach().to(dtype) if dtype is not None else p.detach()).cpu().contiguous()
        for name, p in model.named_parameters()
    }
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(to_hf_config(model.config), indent=2) + "\n")
    return directory


def weight_files(checkpoint_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: sharded (index.json) or single."""
    index = checkpoint_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a safetensors index ({e}); re-download the checkpoint") from None
        files = [checkpoint_dir / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{f}: shard listed in {index.name} is missing; re-download the checkpoint")
        return files
    single = checkpoint_dir / "model.safetensors"
    if single.exists():
        return [single]
    pickled = [p for p in PICKLED if (checkpoint_dir / p).exists()]
    if pickled:
        raise CheckpointError(
            f"{checkpoint_dir / pickled[0]}: pickled weights are never loaded (they can run code); "
            "convert the checkpoint to safetensors"
        )
    raise CheckpointError(f"{checkpoint_dir}: no model.safetensors or model.safetensors.index.json found")


def _read(
    reader: TensorReader, f, ckpt_name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """One checkpoint tensor in ``dtype`` on ``device``. Stored in that dtype on CPU: a view of the
    memory-mapped file (zero-copy). To be cast on CPU: read into memory of its own (huge pages
    where large, engine.runtime.memory). Other devices: moved over from the mapping."""
    if device.type != "cpu":
        return f.get_tensor(ckpt_name).to(device=device, dtype=dtype)
    if reader.dtype(ckpt_name) == dtype:
        return aligned(f.get_tensor(ckpt_name))  # in place unless the file misaligns it for its dtype
    return reader.read_into(ckpt_name, empty_weight(shape, dtype))


def _keep_fp32(name: str) -> bool:
    # RMSNorm scales are applied in fp32 anyway; keeping them there avoids rounding (1 + w).
    return name.startswith("language_model.") and name.endswith("norm.weight")


def load_backbone(
    checkpoint_dir: str | Path,
    config: PaliGemmaConfig,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> PaliGemmaBackbone:
    """Build the model on the meta device and fill it from the checkpoint, checking every tensor."""
    checkpoint_dir = Path(checkpoint_dir)
    with torch.device("meta"):
        model = PaliGemmaBackbone(config)
    expected = {name: p.shape for name, p in model.named_parameters()}
    state: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    heads: list[tuple[Path, str]] = []
    unused: list[str] = []
    device = torch.device(device)
    for path in weight_files(checkpoint_dir):
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
            reader = TensorReader(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors file ({e}); the download may be truncated") from None
        with handle as f, reader:
            for ckpt_name in f.keys():
                if IGNORED.search(ckpt_name):
                    continue
                if TIED_HEAD.match(ckpt_name):
                    heads.append((path, ckpt_name))
                    continue
                name = map_name(ckpt_name, config.text.variant)
                if name is None or name not in expected:
                    unused.append(ckpt_name)
                    continue
                if name in state:
                    raise CheckpointError(f"{path}: {ckpt_name} duplicates {sources[name]} (both map to {name})")
                shape = tuple(f.get_slice(ckpt_name).get_shape())
                if shape != tuple(expected[name]):
                    raise CheckpointError(
                        f"{path}: tensor {ckpt_name} has shape {list(shape)} but config.json implies "
                        f"{list(expected[name])}; config.json and the weights disagree"
                    )
                target = torch.float32 if _keep_fp32(name) else dtype
                try:
                    state[name] = _read(reader, f, ckpt_name, shape, target, device)
                except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as e:
                    raise CheckpointError(f"{path}: cannot read {ckpt_name} ({e}); re-download the file") from None
                sources[name] = ckpt_name
    if unused:
        raise CheckpointError(
            f"{checkpoint_dir}: {len(unused)} checkpoint tensor(s) match nothing in the model, e.g. "
            f"{', '.join(unused[:3])}; is this a PaliGemma checkpoint of the kind config.json says?"
        )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(
            f"{checkpoint_dir}: {len(missing)} tensor(s) missing from the checkpoint, e.g. {', '.join(missing[:3])}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    for path, ckpt_name in heads:
        _check_tied_head(model, path, ckpt_name)
    return model.eval().requires_grad_(False)


def _check_tied_head(model: PaliGemmaBackbone, path: Path, ckpt_name: str) -> None:
    """The LM head is the embedding; an exporter may still write it. Refuse one that differs."""
    embed = model.language_model.embed_tokens.weight
    with safe_open(str(path), framework="pt", device="cpu") as f:
        head = f.get_tensor(ckpt_name)
    if head.shape != embed.shape or not torch.equal(head.to(device=embed.device, dtype=embed.dtype), embed):
        raise CheckpointError(
            f"{path}: {ckpt_name} differs from the token embedding; PaliGemma ties them and untied heads are not supported"
        )
