"""What this CPU's vector units can do, as a value that pali's kernel choices take.

Every CPU-dependent choice in the engine (the dtype ``"auto"`` picks, which matmuls
:func:`engine.runtime.optimize.optimize` swaps, which dtype quantized layers compute in) reads a
:class:`CpuCapabilities` handed to it, never the host directly, so tests run the choices of an
AVX2-only CPU and of an AVX512-BF16/AMX CPU on whichever machine they are on. Only the kernels
inside torch follow the real hardware (ATen dispatches them itself; ``ATEN_CPU_CAPABILITY`` can
lower that choice, never raise it).

:func:`cpu_capabilities` is the one place the host is asked. ``PALI_CPU`` overrides it for pali's
choices only (``avx2``, ``avx512``, ``avx512_bf16`` or ``amx``; ``auto`` or unset detects), e.g.
to compare the two sets of choices on one machine. Torch-free at import time.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import InputError

ENV_VAR = "PALI_CPU"


@dataclass(frozen=True)
class CpuCapabilities:
    """The instruction-set features pali's choices depend on."""

    avx2: bool = False
    avx512: bool = False  # AVX512 F/BW/VL/DQ: what ATen's AVX512 kernels need
    avx512_bf16: bool = False  # native bf16 dot products
    amx: bool = False  # AMX tiles with bf16/int8 (Sapphire Rapids and later)

    @property
    def fast_bf16(self) -> bool:
        """bf16 matmuls run in hardware; elsewhere torch emulates them and fp32 is faster."""
        return self.avx512_bf16 or self.amx

    @property
    def name(self) -> str:
        """The highest level present, as ``PALI_CPU`` spells it."""
        for level in reversed(LEVELS):
            if LEVELS[level] == self:
                return level
        return "+".join(f for f in ("avx2", "avx512", "avx512_bf16", "amx") if getattr(self, f)) or "baseline"


BASELINE = CpuCapabilities()
AVX2 = CpuCapabilities(avx2=True)
AVX512 = replace(AVX2, avx512=True)
AVX512_BF16 = replace(AVX512, avx512_bf16=True)
AMX = replace(AVX512_BF16, amx=True)
LEVELS: dict[str, CpuCapabilities] = {
    "baseline": BASELINE,
    "avx2": AVX2,
    "avx512": AVX512,
    "avx512_bf16": AVX512_BF16,
    "amx": AMX,
}


def from_cpuinfo_flags(flags: set[str]) -> CpuCapabilities:
    """Capabilities from the ``flags`` line of Linux's /proc/cpuinfo."""
    return CpuCapabilities(
        avx2="avx2" in flags,
        avx512={"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags,
        avx512_bf16="avx512_bf16" in flags,
        amx={"amx_tile", "amx_bf16"} <= flags,
    )


def _cpuinfo_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


@functools.cache
def detect_cpu() -> CpuCapabilities:
    """The host's capabilities: torch's own probes (any OS), else /proc/cpuinfo."""
    try:
        import torch

        probe = torch.cpu
        return CpuCapabilities(
            avx2=bool(probe._is_avx2_supported()),
            avx512=bool(probe._is_avx512_supported()),
            avx512_bf16=bool(probe._is_avx512_bf16_supported()),
            amx=bool(probe._is_amx_tile_supported()),
        )
    except (ImportError, AttributeError):  # private probes moved or renamed: read the kernel's flags
        flags = _cpuinfo_flags()
        return BASELINE if flags is None else from_cpuinfo_flags(flags)


def parse_level(spec: str) -> CpuCapabilities | None:
    """``PALI_CPU``'s value -> capabilities (None for ``auto``); InputError names the choices."""
    key = spec.strip().lower().replace("-", "_")
    if key in ("", "auto"):
        return None
    if key not in LEVELS:
        raise InputError(f"{ENV_VAR}={spec!r} is not a CPU level; use auto or one of: {', '.join(LEVELS)}")
    return LEVELS[key]


def cpu_capabilities() -> CpuCapabilities:
    """The capabilities pali's choices should assume: ``PALI_CPU`` if set, else the host's."""
    override = parse_level(os.environ.get(ENV_VAR, ""))
    return detect_cpu() if override is None else override


def host_flags_line() -> str:
    """One line naming the host CPU and the flags that matter here (for CI logs and benchmarks)."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = _cpuinfo_flags() or set()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
    present = [f for f in wanted if f in flags]
    return f"{model}; flags: {' '.join(present) or 'none of ' + ' '.join(wanted)}; pali level: {detect_cpu().name}"
