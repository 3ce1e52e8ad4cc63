"""Choosing a device and dtype, and setting CPU threads."""

from __future__ import annotations

import torch

from engine.errors import InputError
from engine.runtime.capabilities import CpuCapabilities, cpu_capabilities

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {spec!r} requested but CUDA is not available; use device 'cpu' or 'auto'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {spec!r} requested but MPS is not available; use device 'cpu' or 'auto'")
    return device


def _mps_supports_bf16() -> bool:
    try:
        torch.ones(1, dtype=torch.bfloat16, device="mps")
        return True
    except (RuntimeError, TypeError):
        return False


def resolve_dtype(
    spec: str | torch.dtype, device: torch.device, cpu: CpuCapabilities | None = None
) -> tuple[torch.dtype, str]:
    """The dtype to run in and a short reason, for "auto" or an explicit name. On CPU "auto" follows
    ``cpu`` (default: :func:`cpu_capabilities`): bf16 only where its matmuls run in hardware."""
    if isinstance(spec, torch.dtype):
        return spec, "requested"
    name = DTYPE_ALIASES.get(spec, spec)
    if name in DTYPES:
        return DTYPES[name], "requested"
    if name != "auto":
        raise InputError(f"unknown dtype {spec!r}; use auto, bfloat16, float16 or float32")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "GPU supports bfloat16"
        return torch.float32, "GPU lacks bfloat16 (float16 overflows in Gemma 2)"
    if device.type == "mps":
        if _mps_supports_bf16():
            return torch.bfloat16, "MPS supports bfloat16"
        return torch.float32, "MPS lacks bfloat16 on this macOS"
    if (cpu or cpu_capabilities()).fast_bf16:
        return torch.bfloat16, "CPU has AVX512-BF16/AMX"
    return torch.float32, "CPU lacks AVX512-BF16/AMX, where bfloat16 is emulated and slower"


def set_num_threads(n: int | None) -> None:
    """Intra-op threads for CPU kernels (None keeps torch's default: one per core)."""
    if n is not None:
        if n < 1:
            raise InputError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(n)
