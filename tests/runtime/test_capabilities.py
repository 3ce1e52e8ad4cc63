"""CPU capabilities as a value: parsed from flags, overridden by PALI_CPU, and deciding the dtype
"auto" picks and the kernel swaps, for both kinds of CPU on any host."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.causal_lm import PaliGemmaCausalLM
from engine.runtime.capabilities import (
    AMX,
    AVX2,
    AVX512,
    AVX512_BF16,
    BASELINE,
    CpuCapabilities,
    cpu_capabilities,
    detect_cpu,
    from_cpuinfo_flags,
    host_flags_line,
    parse_level,
)
from engine.runtime.devices import resolve_dtype
from engine.runtime.optimize import CpuLinear, UpcastAttention
from tests.helpers.checkpoints import TinySpec

EPYC = "fpu vme sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 bmi1 bmi2 sha_ni"
SAPPHIRE_RAPIDS = EPYC + " avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"


def test_flags_parse_into_levels():
    assert from_cpuinfo_flags(set(EPYC.split())) == AVX2
    assert from_cpuinfo_flags(set(SAPPHIRE_RAPIDS.split())) == AMX
    assert from_cpuinfo_flags(set((EPYC + " avx512f avx512dq avx512bw avx512vl").split())) == AVX512
    assert from_cpuinfo_flags(set()) == BASELINE
    assert AMX.fast_bf16 and AVX512_BF16.fast_bf16 and not AVX512.fast_bf16 and not AVX2.fast_bf16
    assert [c.name for c in (BASELINE, AVX2, AVX512, AVX512_BF16, AMX)] == [
        "baseline",
        "avx2",
        "avx512",
        "avx512_bf16",
        "amx",
    ]
    assert CpuCapabilities(avx2=True, amx=True).name == "avx2+amx"  # not a level: named by its features


def test_pali_cpu_overrides_the_host(monkeypatch):
    monkeypatch.delenv("PALI_CPU", raising=False)
    assert cpu_capabilities() == detect_cpu()
    for level, caps in (("avx2", AVX2), ("AMX", AMX), ("avx512-bf16", AVX512_BF16), ("auto", detect_cpu())):
        monkeypatch.setenv("PALI_CPU", level)
        assert cpu_capabilities() == caps
    assert parse_level("") is None
    with pytest.raises(ValueError, match="PALI_CPU='sse9' is not a CPU level; use auto or one of: baseline"):
        parse_level("sse9")


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux /proc/cpuinfo to cross-check")
def test_torch_probes_agree_with_the_kernel_flags():
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            break
    from_flags, probed = from_cpuinfo_flags(flags), detect_cpu()
    assert (probed.avx2, probed.avx512_bf16, probed.amx) == (from_flags.avx2, from_flags.avx512_bf16, from_flags.amx)
    line = host_flags_line()
    assert "flags:" in line and f"pali level: {probed.name}" in line


def test_auto_dtype_follows_the_capabilities_given():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, AVX2) == (
        torch.float32,
        "CPU lacks AVX512-BF16/AMX, where bfloat16 is emulated and slower",
    )
    assert resolve_dtype("auto", cpu, AVX512)[0] == torch.float32
    assert resolve_dtype("auto", cpu, AVX512_BF16) == (torch.bfloat16, "CPU has AVX512-BF16/AMX")
    assert resolve_dtype("auto", cpu, AMX)[0] == torch.bfloat16
    assert resolve_dtype("bf16", cpu, AVX2) == (torch.bfloat16, "requested")  # asked for: always given


@pytest.mark.parametrize("level", ["avx2", "amx"])
def test_from_preset_takes_each_levels_path_on_any_host(checkpoints, monkeypatch, level):
    """End to end: dtype "auto" and the kernel swaps follow PALI_CPU, whatever this host is."""
    monkeypatch.setenv("PALI_CPU", level)
    path = checkpoints.checkpoint(TinySpec(family="gemma2", kv_heads=2))
    lm = PaliGemmaCausalLM.from_preset(path, device="cpu")
    attention = [layer.self_attn for layer in lm.backbone.language_model.layers]
    swapped = [m for m in lm.backbone.modules() if isinstance(m, CpuLinear)]
    if level == "amx":
        assert lm.dtype == torch.bfloat16 and not swapped  # bf16 on torch's own kernels
        assert not any(isinstance(a, UpcastAttention) for a in attention)
    else:
        assert lm.dtype == torch.float32 and swapped and all(m.compute_dtype == torch.float32 for m in swapped)
        bf16 = PaliGemmaCausalLM.from_preset(path, device="cpu", dtype="bfloat16")
        assert all(isinstance(layer.self_attn, UpcastAttention) for layer in bf16.backbone.language_model.layers)
    text = lm.generate({"images": [torch.rand(28, 28, 3).numpy()], "text": ["caption en"]}, max_length=12)
    assert isinstance(text, list) and len(text) == 1
