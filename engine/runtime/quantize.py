"""Weight-only int8 quantization, applied after loading, with the result cached on disk.

``quantize_backbone(backbone, "int8")`` swaps every ``nn.Linear`` (vision tower, projector, decoder)
and the tied embedding / LM head for int8 versions: one int8 per weight plus one scale per output row
(symmetric, absmax / 127). Activations, norms, the patch convolution and the position table keep the
model's dtype. Decode reads about half the bytes of bf16 (a quarter of fp32).

Kernels (chosen per call from the number of rows, not by flags):
* few rows (decode): torch's ``_weight_int8pack_mm`` on CPU, fed bf16 activations -- its fp32 path is
  ~10x slower, and rounding activations to bf16 costs less accuracy than the int8 weights themselves;
* many rows (prefill, vision tower), and devices without that kernel: the weight is dequantized into a
  reused scratch buffer and multiplied in the fastest matmul dtype (``optimize.matmul_dtype``: fp32 on
  CPUs without fast bf16, else the model dtype), a slice of rows at a time (optimize.converted_linear).

Scales are stored in bf16 (what the int8 kernel takes); weights are rounded against the bf16 scale,
so dequantization is exact arithmetic on the stored values.

Cache: quantizing 3B weights takes tens of seconds, so ``from_preset(..., quantize="int8")`` saves
the quantized state once (``cache_path``) and later loads it like any safetensors checkpoint
(memory-mapped, no copy).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.checkpoints.weights import load_backbone, weight_files
from engine.model.backbone import PaliGemmaBackbone
from engine.model.config import PaliGemmaConfig
from engine.runtime.optimize import (
    SCRATCH_BYTES,
    converted_linear,
    linear,
    matmul_dtype,
    needs_grad,
    scratch,
    swap_linears,
)

QUANT_MODES = ("int8",)
CACHE_VERSION = 1  # bump when the stored layout changes, so stale caches are never read
PACK_MAX_ROWS = 32  # up to here _weight_int8pack_mm beats dequantize + GEMM (benchmarks/floors.py)


class QuantizeError(ValueError):
    """An unknown quantization mode or an unusable quantized cache."""


def check_mode(mode: str) -> str:
    if mode not in QUANT_MODES:
        raise QuantizeError(f"unknown quantization {mode!r}; use one of: {', '.join(QUANT_MODES)}")
    return mode


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float[N, K] -> (int8[N, K], bf16 scale[N]) with weight ~= q * scale per row."""
    n, k = weight.shape
    q = torch.empty(n, k, dtype=torch.int8, device=weight.device)
    scale = torch.empty(n, dtype=torch.bfloat16, device=weight.device)
    # In place, a slice of rows at a time, on the small reused fp32 buffer: fresh 100+ MB temporaries
    # cost more in page faults than the arithmetic (a 3B model quantizes in ~10 s instead of ~50 s).
    step = max(1, SCRATCH_BYTES // (4 * k))
    for i in range(0, n, step):
        w = scratch((min(step, n - i), k), torch.float32, weight.device).copy_(weight[i : i + step].detach())
        s = (torch.maximum(w.amax(dim=1), -w.amin(dim=1)) / 127).to(torch.bfloat16)
        s = torch.where(s == 0, torch.ones_like(s), s)  # all-zero rows stay zero
        q[i : i + step].copy_(w.div_(s.float()[:, None]).round_().clamp_(-127, 127))
        scale[i : i + step] = s
    return q, scale


def dequantize(
    q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None
) -> torch.Tensor:
    """int8[N, K] and scale[N] -> float[N, K] in ``dtype`` (into ``out`` when given)."""
    out = torch.empty(q.shape, dtype=dtype, device=q.device) if out is None else out
    return out.copy_(q).mul_(scale.to(dtype)[:, None])


def _use_int8_kernel(x: torch.Tensor, q: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.numel() <= PACK_MAX_ROWS * q.shape[1] and not needs_grad(x)


def int8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x float[..., K] @ dequant(q)[N, K].T -> float[..., N] in x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    compute_dtype = matmul_dtype(x.device, x.dtype)
    if _use_int8_kernel(x, q):
        y = torch.ops.aten._weight_int8pack_mm(rows.to(torch.bfloat16).contiguous(), q, scale)
    elif needs_grad(x):
        y = linear(rows.to(compute_dtype), dequantize(q, scale, compute_dtype))
    else:  # the scale goes on the output: converting the weight is then its only pass over it
        y = converted_linear(rows.to(compute_dtype), q, compute_dtype, scale=scale)
    return y.to(x.dtype).view(*x.shape[:-1], q.shape[0])


class Int8Linear(nn.Module):
    """Linear layer with int8 weights and per-output-row scales; activations in their own dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(out_features, dtype=torch.bfloat16, device=device))
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) if bias else None
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, dtype: torch.dtype | None = None) -> Int8Linear:
        w = linear.weight
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, dtype or w.dtype, w.device)
        if not w.is_meta:
            new.weight, new.scale = quantize_rows(w)
            if linear.bias is not None:
                new.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = int8_matmul(x, self.weight, self.scale)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8TiedEmbedding(nn.Module):
    """The tied token embedding / LM head in int8 (same interface as text.TiedEmbedding)."""

    def __init__(self, num: int, dim: int, dtype: torch.dtype, device=None):
        super().__init__()
        self._dtype = dtype  # of the activations it produces
        self.register_buffer("weight", torch.empty(num, dim, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(num, dtype=torch.bfloat16, device=device))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, dtype: torch.dtype | None = None) -> Int8TiedEmbedding:
        w = embedding.weight
        new = cls(w.shape[0], w.shape[1], dtype or w.dtype, w.device)
        if not w.is_meta:
            new.weight, new.scale = quantize_rows(w)
        return new

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(token_ids, self.weight).to(self._dtype)  # (..., H), exact for |q| <= 127
        return rows * self.scale[token_ids].to(self._dtype)[..., None]

    def attend(self, hidden: torch.Tensor) -> torch.Tensor:
        if _use_int8_kernel(hidden, self.weight):
            return int8_matmul(hidden, self.weight, self.scale)
        dtype = matmul_dtype(hidden.device, hidden.dtype)
        rows = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
        if needs_grad(hidden):
            y = linear(rows, dequantize(self.weight, self.scale, dtype))
        else:
            y = converted_linear(rows, self.weight, dtype, scale=self.scale)
        return y.to(hidden.dtype).view(*hidden.shape[:-1], -1)


def quantize_backbone(backbone: nn.Module, mode: str = "int8", dtype: torch.dtype | None = None) -> nn.Module:
    """Swap linears and the tied embedding for quantized versions, in place. On the meta device
    (to be filled from a cache) ``dtype`` gives the activation dtype the weights will not tell."""
    check_mode(mode)
    swap_linears(backbone, lambda linear: Int8Linear.from_linear(linear, dtype))
    lm = backbone.language_model
    lm.embed_tokens = Int8TiedEmbedding.from_embedding(lm.embed_tokens, dtype)
    return backbone


# ---------------------------------------------------------------------------------------- cache


def cache_key(checkpoint_dir: Path, weight_files: list[Path], mode: str, dtype: torch.dtype, extra: str = "") -> str:
    """Identity of a quantized state: the source files (path, size, mtime), mode, dtype, layout."""
    h = hashlib.sha256()
    for f in weight_files:
        st = os.stat(f)
        h.update(f"{os.path.realpath(f)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(f"{mode}|{dtype}|v{CACHE_VERSION}|{extra}".encode())
    return h.hexdigest()[:24]


def cache_path(
    cache_root: Path, checkpoint_dir: Path, weight_files: list[Path], mode: str, dtype: torch.dtype, extra: str = ""
) -> Path:
    name = Path(checkpoint_dir).resolve().name or "model"
    return (
        Path(cache_root)
        / "quantized"
        / f"{name}-{mode}-{str(dtype).removeprefix('torch.')}-{cache_key(checkpoint_dir, weight_files, mode, dtype, extra)}.safetensors"
    )


def save_quantized(backbone: nn.Module, path: Path, mode: str) -> Path:
    """Write the whole quantized state (every tensor) atomically: a crash leaves no half file."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file(state, tmp, metadata={"format": "pt", "pali_quantize": mode, "pali_cache_version": str(CACHE_VERSION)})
    os.replace(tmp, path)
    return path


def load_quantized(backbone: nn.Module, path: Path, device: torch.device) -> nn.Module:
    """Fill a meta-device quantized backbone from a cache file (memory-mapped when on CPU)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise QuantizeError(f"{path}: unreadable quantized cache ({e}); delete it to rebuild") from None
    if device.type != "cpu":
        state = {k: v.to(device) for k, v in state.items()}
    try:
        backbone.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise QuantizeError(
            f"{path}: does not match the model ({str(e).splitlines()[0]}); delete it to rebuild"
        ) from None
    return backbone.eval().requires_grad_(False)


def load_quantized_backbone(
    checkpoint_dir: str | Path,
    config: PaliGemmaConfig,
    mode: str,
    dtype: torch.dtype,
    device: torch.device,
    cache_root: str | Path,
) -> PaliGemmaBackbone:
    """The checkpoint's backbone quantized with ``mode``: from the cache when present, else loaded,
    quantized and cached (an unwritable cache only costs the next run the same work again)."""
    check_mode(mode)
    checkpoint_dir = Path(checkpoint_dir)
    sources = [checkpoint_dir / "config.json", *weight_files(checkpoint_dir)]
    path = cache_path(Path(cache_root), checkpoint_dir, sources, mode, dtype)
    if path.exists():
        with torch.device("meta"):
            backbone = quantize_backbone(PaliGemmaBackbone(config), mode, dtype)
        return load_quantized(backbone, path, device)
    backbone = quantize_backbone(load_backbone(checkpoint_dir, config, dtype, device), mode)
    try:
        save_quantized(backbone, path, mode)
    except OSError as e:
        warnings.warn(
            f"could not cache quantized weights at {path} ({e}); the next load will quantize again", stacklevel=2
        )
    return backbone
