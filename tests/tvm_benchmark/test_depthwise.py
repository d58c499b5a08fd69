"""Depthwise NHWC kernel (tvm_benchmark.depthwise): planning and its refusals, bit-exact results at
worst-case bounds for every activation container, stride, kernel size and column tail (natively for
each vector width this CPU runs, as the identical emulated schedule where it does not), the kernel
called from a Relax program, and the 512-bit multiply in the assembly compiled for such a CPU."""
from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
import tvm
from tvm import relax

from tvm_benchmark import isa as I
from tvm_benchmark.compile import build
from tvm_benchmark.depthwise import DepthwisePlan, column_tiles, plan_depthwise
from tvm_benchmark.schedules import SCHEDULED
from tvm_benchmark.targets import host_cpu, make_target

HOST = I.cpu_flags()
BOUNDS = {"uint8": (0, 255), "int8": (-128, 127), "int16": (-32768, 32767)}
#: Each width's family and reference CPU (cross-compiling: its instruction must show in the assembly).
WIDTHS = {8: ("avx2", "haswell"), 16: ("avx512", "skylake-avx512")}


def _ref(d: np.ndarray, w: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    b, h, wd, cp = d.shape
    c, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride[0] + 1, (wd - kw) // stride[1] + 1
    out = np.zeros((b, oh, ow, cp), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = d[:, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1], :c]
            out[..., :c] += patch.astype(np.int64) * w[:, 0, i, j].astype(np.int64)
    return out


def _worst_case(rng, dtype: str, wmax: int, b: int, h: int, w_: int, c: int, k: tuple[int, int]):
    """Activations mostly at the container's extremes, weights at ±wmax (channel 0 all −wmax−1 or
    −wmax, channel 1 all +wmax, so one channel's whole sum sits at each bound)."""
    lo, hi = BOUNDS[dtype]
    d = rng.integers(lo, hi + 1, (b, h, w_, c))
    d = np.where(rng.random(d.shape) < 0.7, np.where(rng.random(d.shape) < 0.5, lo, hi), d)
    d[..., 0], d[..., 1] = hi, hi
    d[0, ..., 2] = lo
    wlo = -wmax - 1 if wmax == 127 else -wmax
    w = rng.integers(wlo, wmax + 1, (c, 1, *k))
    w[0], w[1], w[2] = wlo, wmax, wlo
    return d, w.astype(np.int8)


def _compile_prim(func: tvm.tirx.PrimFunc, target: tvm.target.Target):
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)


def _target(lanes: int) -> tuple[tvm.target.Target, bool]:
    """(host target for ``lanes``' family, native): emulated schedule on this CPU's own target when it
    lacks the family."""
    family = I.ISAS[WIDTHS[lanes][0]]
    native = family.runs_on(HOST)
    return (make_target("llvm", 2, family) if native else make_target("llvm", 2)), native


CASES = [  # (batch, padded H, W, C, kernel, stride, act dtype, |w| max)
    (1, 16, 16, 32, (3, 3), (1, 1), "uint8", 127),
    (1, 9, 9, 144, (3, 3), (2, 2), "int8", 127),
    (1, 14, 14, 40, (5, 5), (1, 1), "int16", 127),
    (2, 12, 12, 24, (3, 3), (1, 1), "uint8", 8),      # batch 2, 4-bit weights; C=24: lane padding
    (1, 15, 15, 48, (3, 3), (1, 1), "int8", 8),       # OW 13: an 8-column segment and a 5-column tail
    (2, 27, 27, 16, (5, 5), (2, 2), "int16", 127),    # OW 12: tile 6
    (1, 6, 5, 20, (3, 3), (1, 1), "uint8", 127),      # OW 3 < 4, OH 4; C=20
]


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("case", CASES,
                         ids=lambda c: f"b{c[0]}_{c[1]}x{c[2]}_c{c[3]}_k{c[4][0]}s{c[5][0]}_{c[6]}_w{c[7]}")
def test_bit_exact_at_worst_case_bounds(case, lanes):
    b, h, w_, c, k, s, dtype, wmax = case
    rng = np.random.default_rng(zlib.crc32(repr((case, lanes)).encode()))
    target, native = _target(lanes)
    d, w = _worst_case(rng, dtype, wmax, b, h, w_, c, k)
    lo, hi = BOUNDS[dtype]
    plan = plan_depthwise(I.ISAS[WIDTHS[lanes][0]], dtype, lo, hi, w, c)
    assert plan is not None and plan.lanes == lanes and plan.act_dtype == dtype
    if not native:
        plan = DepthwisePlan(dtype, lanes, emulate=True)
    cp = plan.padded(c)
    assert cp % lanes == 0 and cp - c < lanes
    data = np.zeros((b, h, w_, cp), dtype)
    data[..., :c] = d
    data[..., c:] = hi                                   # padded channels meet zero weights
    func = plan.prim_func(b, (h, w_), c, k, s)
    assert func.attrs[SCHEDULED]
    lib = _compile_prim(func, target)
    oh, ow = (h - k[0]) // s[0] + 1, (w_ - k[1]) // s[1] + 1
    out = tvm.runtime.tensor(np.zeros((b, oh, ow, cp), "int32"))
    packed = plan.pack(w)
    assert packed.dtype == plan.weight_dtype and packed.shape == (*k, cp)
    lib(tvm.runtime.tensor(data), tvm.runtime.tensor(packed), out)
    expect = _ref(data, w, s)
    np.testing.assert_array_equal(out.numpy(), expect)
    taps = k[0] * k[1]
    assert expect[..., 1].max() == hi * wmax * taps          # the extreme sums are reached
    assert expect[..., 0].min() == hi * int(w[0].min()) * taps


def test_emulated_schedule_is_exact():
    """The scalar-description build (what runs where the host lacks a width) on a tail shape."""
    rng = np.random.default_rng(3)
    d, w = _worst_case(rng, "int16", 127, 1, 11, 13, 32, (3, 3))
    plan = DepthwisePlan("int16", 16, emulate=True)
    lib = _compile_prim(plan.prim_func(1, (11, 13), 32, (3, 3), (1, 1)), make_target("llvm", 2))
    out = tvm.runtime.tensor(np.zeros((1, 9, 11, 32), "int32"))
    lib(tvm.runtime.tensor(d.astype("int16")), tvm.runtime.tensor(plan.pack(w)), out)
    np.testing.assert_array_equal(out.numpy(), _ref(d, w, (1, 1)))


def test_column_tiles_cover_the_row_exactly():
    for ow in range(1, 120):
        segs = column_tiles(ow)
        assert segs[0][0] == 0 and sum(wd for _, wd, _ in segs) == ow
        assert all(wd % t == 0 and 1 <= t <= 8 for _, wd, t in segs)
        assert all(a[0] + a[1] == b[0] for a, b in zip(segs, segs[1:]))
    assert column_tiles(56) == [(0, 56, 8)] and column_tiles(7) == [(0, 7, 7)]
    assert column_tiles(13) == [(0, 8, 8), (8, 5, 5)]


def test_plan_refuses_what_it_cannot_prove():
    vnni = I.ISAS["vnni"]
    dw = np.full((32, 1, 3, 3), -128, np.int8)
    assert plan_depthwise(vnni, "uint8", 0, 255, dw, 32) == DepthwisePlan("uint8", 16)
    assert plan_depthwise(I.ISAS["avx2"], "int16", -32768, 32767, dw, 32) == DepthwisePlan("int16", 8)
    assert plan_depthwise(I.ISAS["avxvnni"], "int8", -128, 127, dw, 32).lanes == 8
    assert plan_depthwise(I.ISAS["amx"], "int8", -128, 127, dw, 32).lanes == 16
    assert plan_depthwise(None, "uint8", 0, 255, dw, 32) is None                       # no ISA
    assert plan_depthwise(vnni, "uint8", 0, 255, np.ones((32, 32, 3, 3), np.int8), 1) is None  # dense conv
    assert plan_depthwise(vnni, "uint8", 0, 255, np.ones((32, 2, 3, 3), np.int8), 16) is None  # grouped
    assert plan_depthwise(vnni, "uint8", 0, 255, dw, 16) is None                       # groups != C
    assert plan_depthwise(vnni, "int32", 0, 255, dw, 32) is None                       # container
    assert plan_depthwise(vnni, "uint8", 0, 300, dw, 32) is None                       # bound beyond it
    # 23x23 taps at 127: Σ|w| = 67183; 255·67183 fits int32, 32767·67183 does not.
    big = np.full((8, 1, 23, 23), 127, np.int8)
    assert plan_depthwise(vnni, "uint8", 0, 255, big, 8) is not None
    assert plan_depthwise(vnni, "int16", -32768, 32767, big, 8) is None
    # Exactly at the bound: 32767·65537 = 2^31 − 32769 fits, 32768·65537 does not (int16 weights).
    edge = np.zeros((4, 1, 1, 3), np.int16)
    edge[:, 0, 0] = (32767, 32767, 3)
    assert plan_depthwise(vnni, "int16", -32767, 32767, edge, 4) is not None
    assert plan_depthwise(vnni, "int16", -32768, 32767, edge, 4) is None


def test_called_from_relax_and_left_alone_by_the_generic_scheduler():
    """call_tir from a Relax function, built as the hand-scheduled program is (generic schedule on)."""
    isa = I.detect()
    if isa is None:
        pytest.skip("no AVX2 on this CPU")
    rng = np.random.default_rng(7)
    b, h, w_, c, k, s = 2, 10, 10, 40, (3, 3), (1, 1)
    d, w = _worst_case(rng, "uint8", 127, b, h - 2, w_ - 2, c, k)
    plan = plan_depthwise(isa, "uint8", 0, 255, w, c)
    cp = plan.padded(c)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([b, h - 2, w_ - 2, c], "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            # the caller's job: spatial pad (here the zero point 0) and channels up to Cp, in one pad
            xp = bb.emit(relax.op.nn.pad(x, [0, 0, 1, 1, 1, 1, 0, cp - c], pad_value=0.0))
            gv = bb.add_func(plan.prim_func(b, (h, w_), c, k, s), "depthwise")
            y = bb.emit(relax.call_tir(gv, [xp, relax.const(plan.pack(w), plan.weight_dtype)],
                                       relax.TensorType([b, h - 2, w_ - 2, cp], "int32")))
            y = bb.emit(relax.op.strided_slice(y, [3], [0], [c]))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    ex = build(bb.get(), make_target("llvm", 2, isa), schedule=True)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(d.astype("uint8"))).numpy()
    padded = np.pad(d, ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_array_equal(got, _ref(padded, w, s))


@pytest.mark.parametrize("family,mcpu,pattern", [
    ("avx512", "skylake-avx512", r"\tvpmaddwd\t[^\n]*%zmm"),
    ("vnni", "icelake-server", r"\tvp(maddwd|dpwssd)\t[^\n]*%zmm"),   # LLVM fuses the add where tuned
    ("vnni", "znver4", r"\tvpdpwssd\t[^\n]*%zmm"),                 # (Zen 4: vpdpwssd; Intel: madd + add)
    ("avx2", "haswell", r"\tvpmaddwd\t[^\n]*%ymm"),
])
def test_vector_multiply_in_assembly(family, mcpu, pattern):
    """Compiled (not run) for a CPU of each family: the full-width multiply is in the assembly, and
    a 256-bit family's program holds no 512-bit register."""
    isa = I.ISAS[family]
    mcpu, mattr = I.llvm_attrs(isa, mcpu, flags=set(isa.flags))
    plan = plan_depthwise(isa, "int8", -128, 127, np.ones((144, 1, 3, 3), np.int8), 144)
    lib = _compile_prim(plan.prim_func(1, (30, 30), 144, (3, 3), (1, 1)),
                        tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mattr": mattr}))
    asm = lib.mod.inspect_source("asm")
    assert re.search(pattern, asm)
    assert "vpmulld" not in asm
    if isa.vector_bits == 256:
        assert "zmm" not in asm
