"""Loading Hugging Face safetensors checkpoints into PaliGemmaBackbone, and saving them.

Tensor names go through the one table in engine.checkpoints.names (any of the three namings in
the wild -> ours when loading, ours -> the released Hub naming when saving); the loader then checks,
exhaustively, that nothing is missing, unused or mis-shaped. The model is built on the meta device and filled
with ``assign=True``, one tensor at a time, so weights are materialised once, in the target dtype.
Pickled weights (.bin/.pt) are never loaded: they can run arbitrary code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.checkpoints.names import IGNORED, TIED_HEAD, checkpoint_name, our_name
from engine.checkpoints.reader import TensorReader
from engine.errors import CheckpointError
from engine.model.backbone import PaliGemmaBackbone
from engine.model.config import PaliGemmaConfig
from engine.model.config_values import read_json_file
from engine.runtime.kernels import aligned
from engine.runtime.memory import empty_weight

PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "model.ckpt")


def save_backbone(
    model: PaliGemmaBackbone,
    directory: str | Path,
    dtype: torch.dtype | None = None,
    config: PaliGemmaConfig | None = None,
) -> Path:
    """Write config.json + model.safetensors in the released hub layout (loadable by us and by
    transformers). ``config`` overrides what config.json says of the model (the caller's
    ``image_token_index``, from the tokenizer); the tokenizer itself is the caller's to copy."""
    from safetensors.torch import save_file

    from engine.model.config import to_hf_config

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    variant = model.config.text.variant
    tensors = {
        checkpoint_name(name, variant): (p.detach().to(dtype) if dtype is not None else p.detach()).cpu().contiguous()
        for name, p in model.named_parameters()
    }
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    # The dtype of the matrices (Gemma's norm scales stay float32 in a bf16 model: engine.runtime keeps them).
    stored = dtype or model.language_model.embed_tokens.weight.dtype
    hf = to_hf_config(config or model.config, torch_dtype=str(stored).removeprefix("torch."))
    (directory / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    return directory


def weight_files(checkpoint_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: sharded (index.json) or single."""
    index = checkpoint_dir / "model.safetensors.index.json"
    if index.exists():
        raw = read_json_file(index, "a safetensors index")  # a regular file of sane size, or a clear error
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: not a safetensors index (no weight_map of file names); re-download it")
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


@dataclass
class _Fill:
    """What a load has gathered so far, over all shards."""

    expected: dict[str, tuple[int, ...]]  # our parameter name -> shape the config implies
    variant: str
    dtype: torch.dtype
    device: torch.device
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # our name -> checkpoint name
    heads: list[tuple[Path, str]] = field(default_factory=list)  # tied LM heads written anyway
    unused: list[str] = field(default_factory=list)


def load_backbone(
    checkpoint_dir: str | Path,
    config: PaliGemmaConfig,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> PaliGemmaBackbone:
    """Build the model on the meta device and fill it from the checkpoint, checking every tensor."""
    checkpoint_dir = Path(checkpoint_dir)
    files = weight_files(checkpoint_dir)
    _check_layer_counts(checkpoint_dir, files, config)  # before building: config.json may ask for millions
    with torch.device("meta"):
        model = PaliGemmaBackbone(config)
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}
    fill = _Fill(expected, config.text.variant, dtype, torch.device(device))
    for path in files:
        _fill_from(path, fill)
    if fill.unused:
        raise CheckpointError(
            f"{checkpoint_dir}: {len(fill.unused)} checkpoint tensor(s) match nothing in the model, e.g. "
            f"{', '.join(fill.unused[:3])}; is this a PaliGemma checkpoint of the kind config.json says?"
        )
    missing = sorted(set(expected) - set(fill.state))
    if missing:
        raise CheckpointError(
            f"{checkpoint_dir}: {len(missing)} tensor(s) missing from the checkpoint, e.g. {', '.join(missing[:3])}"
        )
    model.load_state_dict(fill.state, strict=True, assign=True)
    for path, ckpt_name in fill.heads:
        _check_tied_head(model, path, ckpt_name)
    model.checkpoint = str(checkpoint_dir)
    return model.eval().requires_grad_(False)


_LAYER_INDEX = re.compile(r"^(language_model|vision_tower)\.layers\.(\d+)\.")


def _check_layer_counts(checkpoint_dir: Path, files: list[Path], config: PaliGemmaConfig) -> None:
    """The layers config.json asks for against those the files hold (their headers only): a model
    is only built with layers that have weights."""
    found = {"language_model": -1, "vision_tower": -1}
    for path in files:
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                names = list(f.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors file ({e}); the download may be truncated") from None
        for ckpt_name in names:
            match = _LAYER_INDEX.match(our_name(ckpt_name, config.text.variant) or "")
            if match:
                found[match[1]] = max(found[match[1]], int(match[2]))
    for tower, key, wanted in (
        ("language_model", "text_config", config.text.num_layers),
        ("vision_tower", "vision_config", config.vision.num_layers),
    ):
        held = found[tower] + 1
        if wanted > held:  # fewer asked for: the tensors left over are named by the check after the load
            raise CheckpointError(
                f"{checkpoint_dir}: config.json says {key}.num_hidden_layers is {wanted} but the weights hold "
                f"{held} {tower} layers; config.json and the weights disagree"
            )


def _fill_from(path: Path, fill: _Fill) -> None:
    """Every tensor of one safetensors file into ``fill``, each name and shape checked."""
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
                fill.heads.append((path, ckpt_name))
                continue
            name = our_name(ckpt_name, fill.variant)
            if name is None or name not in fill.expected:
                fill.unused.append(ckpt_name)
                continue
            if name in fill.state:
                raise CheckpointError(f"{path}: {ckpt_name} duplicates {fill.sources[name]} (both map to {name})")
            shape = tuple(f.get_slice(ckpt_name).get_shape())
            if shape != fill.expected[name]:
                raise CheckpointError(
                    f"{path}: tensor {ckpt_name} has shape {list(shape)} but config.json implies "
                    f"{list(fill.expected[name])}; config.json and the weights disagree"
                )
            target = torch.float32 if _keep_fp32(name) else fill.dtype
            try:
                fill.state[name] = _read(reader, f, ckpt_name, shape, target, fill.device)
            except (SafetensorError, OSError, RuntimeError, ValueError, KeyError) as e:
                raise CheckpointError(f"{path}: cannot read {ckpt_name} ({e}); re-download the file") from None
            fill.sources[name] = ckpt_name


def _check_tied_head(model: PaliGemmaBackbone, path: Path, ckpt_name: str) -> None:
    """The LM head is the embedding; an exporter may still write it. Refuse one that differs."""
    embed = model.language_model.embed_tokens.weight
    with safe_open(str(path), framework="pt", device="cpu") as f:
        head = f.get_tensor(ckpt_name)
    if head.shape != embed.shape or not torch.equal(head.to(device=embed.device, dtype=embed.dtype), embed):
        raise CheckpointError(
            f"{path}: {ckpt_name} differs from the token embedding; PaliGemma ties them and untied heads "
            "are not supported"
        )
