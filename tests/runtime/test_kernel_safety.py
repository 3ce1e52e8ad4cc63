"""Every CPU kernel pali uses, fed weights at every byte offset within a cache line, row widths that
are and are not multiples of 16, and 1-64 rows, under each set of torch's own kernels this host can
run (``ATEN_CPU_CAPABILITY``) and each set of pali's choices (AVX2 and AMX capabilities, injected).

int4 weights (group-wise, packed in the layout the process's kernel set reads) get the same
offsets and row counts wherever a group size divides the width.

Why: torch's packed int8 GEMV crashed (SIGSEGV) on AVX512 CPUs when its weight was not 16-byte
aligned or its rows not a multiple of 16 bytes long, and memory-mapped safetensors put tensors
wherever the header ends. Each case runs in its own process (the ``isolated`` marker), so a crash
fails that case, naming it, instead of killing the run. Results are checked against float64.

A weight reaches a kernel the way a load hands it over: through ``aligned()`` (what the loaders
apply to memory-mapped tensors) and, for element-aligned offsets, also as it lies; int8 weights are
also handed over raw at every offset, since the int8 modules must protect the kernel themselves.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from engine.model.text import TiedEmbedding
from engine.runtime.capabilities import AMX, AVX2, CpuCapabilities, detect_cpu
from engine.runtime.int4 import Int4Linear, Int4TiedEmbedding
from engine.runtime.int4_format import group_size_for, kernel_layout
from engine.runtime.kernels import aligned
from engine.runtime.optimize import cpu_linear, cpu_tied_embedding, matmul_dtype
from engine.runtime.quantize import Int8Linear, Int8TiedEmbedding, dequantize, quantize_rows

OFFSETS = range(64)
INT4_OFFSETS = (0, 1, 2, 3, 8, 16, 24, 32, 48, 63)
WIDTHS = (40, 64)  # row lengths K: 64 is a multiple of 16, 40 is not
ROWS = (1, 2, 4, 8, 16, 32, 64)
OUT = 24
CPU = torch.device("cpu")


def _isa(name: str, present: bool) -> object:
    marks = [pytest.mark.isolated(env={"ATEN_CPU_CAPABILITY": name})]
    if not present:
        reason = f"this CPU lacks {name.upper()}: torch's {name} kernels cannot run here (they die of SIGILL)"
        marks.append(pytest.mark.skip(reason=reason))
    return pytest.param(name, marks=marks, id=f"aten-{name}")


HOST = detect_cpu()
ISAS = [_isa("default", True), _isa("avx2", HOST.avx2), _isa("avx512", HOST.avx512)]
CHOICES = {"pali-avx2": AVX2, "pali-amx": AMX}  # pali's two sets of choices, both on any host


def at_offset(t: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of ``t`` whose data starts ``offset`` bytes past a 64-byte boundary."""
    nbytes = t.numel() * t.element_size()
    raw = torch.empty(nbytes + 128, dtype=torch.uint8)
    start = -raw.data_ptr() % 64 + offset
    view = torch.frombuffer(raw.numpy().data, dtype=t.dtype, count=t.numel(), offset=start)
    view = view.view(t.shape)
    view.copy_(t)
    assert view.data_ptr() % 64 == offset
    return view


def _dense(weight: torch.Tensor, cpu: CpuCapabilities) -> tuple[nn.Module, TiedEmbedding]:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    layer.weight = nn.Parameter(weight, requires_grad=False)
    embed = TiedEmbedding(weight.shape[0], weight.shape[1], _weight=weight.detach())
    embed.weight = nn.Parameter(weight, requires_grad=False)
    return cpu_linear(layer, cpu), cpu_tied_embedding(embed, cpu)


def _int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, cpu: CpuCapabilities):
    compute = matmul_dtype(CPU, dtype, cpu)
    linear = Int8Linear(q.shape[1], q.shape[0], False, dtype, compute)
    linear.weight, linear.scale = q, scale
    head = Int8TiedEmbedding(q.shape[0], q.shape[1], dtype, compute)
    head.weight, head.scale = q, scale
    return linear, head


def _int4(w: torch.Tensor, dtype: torch.dtype, cpu: CpuCapabilities):
    """int4 modules over ``w`` in the layout this process's kernel set reads (None: no group fits)."""
    group = group_size_for(w.shape[1], 128)
    if group is None:
        return None
    compute = matmul_dtype(CPU, dtype, cpu)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    layer.weight = nn.Parameter(w, requires_grad=False)
    layout = kernel_layout()
    assert layout is not None, f"torch {torch.__version__} packs int4 in no layout pali knows"
    embedding = nn.Embedding(w.shape[0], w.shape[1])
    embedding.weight = layer.weight
    linear = Int4Linear.from_linear(layer, dtype, compute, group, layout, True)
    head = Int4TiedEmbedding.from_embedding(embedding, dtype, compute, group, layout, True)
    return linear, head


def _int4_cases(int4, x_all, dtype, k: int, offset: int, failures: list[str]) -> int:
    """int4 weights and scales handed over at ``offset`` (off their alignment the modules must
    dequantize instead of calling the kernel) and aligned; the reference is the dequantized weight."""
    linear, head = int4
    packed, scales_zeros = linear.weight, linear.scales_zeros
    exact = x_all.to(dtype).double() @ linear.dequantized(torch.float64).T
    done = 0
    for how, p, sz in (
        ("raw", at_offset(packed, offset), at_offset(scales_zeros, offset - offset % 2)),
        ("aligned", aligned(at_offset(packed, offset)), scales_zeros),
    ):
        for module in (linear, head):
            module.weight, module.scales_zeros = p, sz
        for rows in ROWS:
            x = x_all[:rows].to(dtype)
            with torch.inference_mode():
                _check(
                    f"int4/{dtype} linear {how} k={k} off={offset} rows={rows}", linear(x), exact[:rows], 2e-2, failures
                )
                _check(
                    f"int4/{dtype} head {how} k={k} off={offset} rows={rows}",
                    head.attend(x),
                    exact[:rows],
                    2e-2,
                    failures,
                )
            done += 2
    return done


def _check(name: str, got: torch.Tensor, expected: torch.Tensor, tol: float, failures: list[str]) -> None:
    err = (got.double() - expected).abs().max().item()
    bound = tol * max(expected.abs().max().item(), 1e-6)
    if not err <= bound:  # also catches NaN
        failures.append(f"{name}: max error {err:.3g} > {bound:.3g}")


def _run_cases(cpu: CpuCapabilities) -> list[str]:
    g = torch.Generator().manual_seed(0)
    failures: list[str] = []
    done = 0
    for k in WIDTHS:
        w32 = torch.randn(OUT, k, generator=g)
        x_all = torch.randn(max(ROWS), k, generator=g)
        q, scale = quantize_rows(w32)
        for dtype in (torch.float32, torch.bfloat16):
            w = w32.to(dtype)
            exact = {rows: x_all[:rows].to(dtype).double() @ w.double().T for rows in ROWS}
            qexact = {rows: x_all[:rows].to(dtype).double() @ dequantize(q, scale, torch.float64).T for rows in ROWS}
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            int4 = _int4(w32, dtype, cpu)
            for offset in OFFSETS:
                # the case names itself before it runs: a crash's last line says which one died
                print(f"case k={k} dtype={dtype} offset={offset}", flush=True)
                handed = [("aligned", aligned(at_offset(w, offset)))]
                if offset % w.element_size() == 0:
                    handed.append(("as-is", at_offset(w, offset)))
                for how, weight in handed:
                    linear, head = _dense(weight, cpu)
                    for rows in ROWS:
                        x = x_all[:rows].to(dtype)
                        with torch.inference_mode():
                            _check(
                                f"{dtype} linear {how} k={k} off={offset} rows={rows}",
                                linear(x),
                                exact[rows],
                                tol,
                                failures,
                            )
                            _check(
                                f"{dtype} head {how} k={k} off={offset} rows={rows}",
                                head.attend(x[None])[0],
                                exact[rows],
                                tol,
                                failures,
                            )
                        done += 2
                # int8: bf16 activations inside the packed kernel, so bf16-level tolerance
                for how, qw, sw in (
                    ("raw", at_offset(q, offset), at_offset(scale, offset - offset % 2)),
                    ("aligned", aligned(at_offset(q, offset)), scale),
                ):
                    linear, head = _int8(qw, sw, dtype, cpu)
                    for rows in ROWS:
                        x = x_all[:rows].to(dtype)
                        with torch.inference_mode():
                            _check(
                                f"int8/{dtype} linear {how} k={k} off={offset} rows={rows}",
                                linear(x),
                                qexact[rows],
                                2e-2,
                                failures,
                            )
                            _check(
                                f"int8/{dtype} head {how} k={k} off={offset} rows={rows}",
                                head.attend(x),
                                qexact[rows],
                                2e-2,
                                failures,
                            )
                        done += 2
                # int4 at a sample of offsets: its modules call the kernel only on 64-byte aligned
                # data and dequantize (plain torch) otherwise, so more offsets test nothing new
                if int4 is not None and offset in INT4_OFFSETS:  # bf16 activations in the kernel, as int8
                    done += _int4_cases(int4, x_all, dtype, k, offset, failures)
    print(f"{done} kernel calls checked", file=sys.stderr)
    return failures


@pytest.mark.parametrize("isa", ISAS)
def test_every_kernel_at_every_offset_width_and_row_count(isa: str) -> None:
    """One process per kernel set (a process costs seconds); both sets of pali's choices in it."""
    assert torch.backends.cpu.get_cpu_capability() == isa.upper()  # the child really runs that kernel set
    failures = [f"{name}: {f}" for name, cpu in CHOICES.items() for f in _run_cases(cpu)]
    assert not failures, f"{len(failures)} wrong results, e.g.:\n" + "\n".join(failures[:20])


def test_aligned_copies_only_what_falls_short() -> None:
    w = torch.randn(8, 16)
    for offset in range(0, 64, 4):
        t = at_offset(w, offset)
        assert aligned(t) is t  # element-aligned floats are handed over in place
        assert aligned(t, 64).data_ptr() % 64 == 0 and torch.equal(aligned(t, 64), w)
    odd = at_offset(w, 3)
    fixed = aligned(odd)
    assert fixed is not odd and fixed.data_ptr() % 4 == 0 and torch.equal(fixed, w)
    q = torch.randint(-127, 128, (8, 48), dtype=torch.int8)
    for offset in range(64):
        a = aligned(at_offset(q, offset))
        assert a.data_ptr() % 64 == 0 and torch.equal(a, q)  # int8 weights feed the packed kernel: a cache line
