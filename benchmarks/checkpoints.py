"""Full-size random-weight checkpoints at the real preset configs, cached on disk outside the repo.

    python -m benchmarks.checkpoints                       # PaliGemma 1 3B 224 + PaliGemma 2 3B 224, bf16
    python -m benchmarks.checkpoints --fp32 pali_gemma_3b_224   # also an fp32 copy (as PG1's hub main branch)

Tensor names and shapes come from transformers itself (the reference model built on the meta device
from ``engine.checkpoints.presets.hf_config_for``), renamed to the released hub naming and sharded with an index,
as the hub files are. Values are drawn by us, seeded per tensor: transformers' own init (std 0.02)
leaves the residual stream all embedding, so a greedy run just echoes the prompt and top-1 parity
would prove nothing. Here every matrix has std fan_in**-0.5 and every norm a random scale, so each
layer moves the output, and the embedding is small enough that the tied head does not echo. Shards
are generated and written one at a time (peak memory ~ one shard).

Directory layout: ``<root>/<preset>/`` (bf16) and ``<root>/<preset>-fp32/``; ``config.json`` is
written last, so its presence marks a complete checkpoint. Root: ``--root``, else ``$PALI_BENCH_CACHE``,
else ``~/.cache/pali-bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import torch

from engine.checkpoints.names import hub_name

DEFAULT_PRESETS = ("pali_gemma_3b_224", "pali_gemma2_pt_3b_224")
SHARD_BYTES = 2 * 1024**3  # the PaliGemma 1 converter's max_shard_size


def default_root() -> Path:
    return Path(os.environ.get("PALI_BENCH_CACHE") or Path.home() / ".cache" / "pali-bench")


def checkpoint_dir(preset: str, root: Path | None = None, fp32: bool = False) -> Path:
    return (root or default_root()) / (preset + ("-fp32" if fp32 else ""))


def released_name(name: str) -> str:
    """A transformers parameter name -> the released Hub naming (engine.checkpoints.names' table)."""
    hub = hub_name(name)
    if hub is None:
        raise KeyError(f"{name}: no row of engine.checkpoints.names.NAMES matches this transformers parameter")
    return hub


def reference_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Hub tensor name -> shape, read off transformers' model built on the meta device (the tied
    LM head is not a separate parameter, and the hub files normally omit it)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    with torch.device("meta"):
        model = PaliGemmaForConditionalGeneration(PaliGemmaConfig(**config))
    return {released_name(n): tuple(p.shape) for n, p in model.named_parameters()}


def draw(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A random fp32 tensor for one checkpoint entry (see the module docstring for why not std 0.02)."""
    x = torch.randn(shape, generator=generator)
    if name.endswith(".bias"):
        return x.mul_(0.02)
    if "norm" in name:  # SigLIP LayerNorm scales w; Gemma RMSNorm stores w of its (1 + w) scale
        return x.mul_(0.1).add_(1.0 if name.startswith("vision_tower.") else 0.0)
    if "position_embedding" in name:
        return x.mul_(0.5)
    if "embed_tokens" in name:
        # Small, so that the (tied) head does not just echo the last input token: a token's own
        # embedding must be a minor part of the final residual (input RMS 0.1 against ~5 from layers).
        return x.mul_(0.1 * shape[-1] ** -0.5)
    fan_in = 1
    for d in shape[1:]:
        fan_in *= d
    return x.mul_(fan_in**-0.5)


def _shards(shapes: dict[str, tuple[int, ...]], element_size: int) -> list[list[str]]:
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name, shape in shapes.items():
        nbytes = element_size
        for d in shape:
            nbytes *= d
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    return shards + [current] if current else shards


def _write(directory: Path, shapes: dict, dtype: torch.dtype, tensor_for) -> None:
    from safetensors.torch import save_file

    element = torch.empty(0, dtype=dtype).element_size()
    shards = _shards(shapes, element)
    weight_map, total = {}, 0
    for i, names in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: tensor_for(n).to(dtype).contiguous() for n in names}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, directory / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in names})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def build(preset: str, root: Path | None = None, seed: int = 0) -> Path:
    """Build (once) the bf16 checkpoint of ``preset``; returns its directory."""
    from benchmarks.tokenizer import build_full_layout_tokenizer
    from engine.checkpoints.presets import hf_config_for

    directory = checkpoint_dir(preset, root)
    if (directory / "config.json").exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    config = hf_config_for(preset)
    shapes = reference_shapes(config)
    order = {name: i for i, name in enumerate(sorted(shapes))}

    def tensor_for(name: str) -> torch.Tensor:
        return draw(name, shapes[name], torch.Generator().manual_seed(seed * 1_000_003 + order[name]))

    _write(directory, shapes, torch.bfloat16, tensor_for)
    build_full_layout_tokenizer(directory / "tokenizer.model")
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def build_fp32(preset: str, root: Path | None = None) -> Path:
    """An fp32 copy of the bf16 checkpoint (same values), laid out like PaliGemma 1's hub main branch."""
    from safetensors import safe_open

    source = build(preset, root)
    directory = checkpoint_dir(preset, root, fp32=True)
    if (directory / "config.json").exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    weight_map = json.loads((source / "model.safetensors.index.json").read_text())["weight_map"]
    shapes = {}
    for fname in sorted(set(weight_map.values())):
        with safe_open(str(source / fname), framework="pt") as f:
            shapes.update({n: tuple(f.get_slice(n).get_shape()) for n in f.keys()})

    def tensor_for(name: str) -> torch.Tensor:
        with safe_open(str(source / weight_map[name]), framework="pt") as f:
            return f.get_tensor(name)

    _write(directory, shapes, torch.float32, tensor_for)
    shutil.copyfile(source / "tokenizer.model", directory / "tokenizer.model")
    config = json.loads((source / "config.json").read_text())
    config["torch_dtype"] = config["text_config"]["torch_dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("presets", nargs="*", default=list(DEFAULT_PRESETS))
    parser.add_argument(
        "--root", type=Path, default=None, help="cache directory (default: $PALI_BENCH_CACHE or ~/.cache/pali-bench)"
    )
    parser.add_argument("--fp32", action="store_true", help="also write an fp32 copy")
    args = parser.parse_args(argv)
    for preset in args.presets:
        print(build(preset, args.root))
        if args.fp32:
            print(build_fp32(preset, args.root))


if __name__ == "__main__":
    main()
