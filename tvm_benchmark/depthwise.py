"""Hand-scheduled NHWC integer depthwise convolution for x86 (TensorIR, called via ``relax.call_tir``).

``out[b, y, x, c] = Σ_{kh,kw} int32(data[b, y·SH + kh, x·SW + kw, c]) · int32(w[c, 0, kh, kw])``, exact.

- One vector step per tap and lane block: ``acc[L] += vpmaddwd(int32(a[L]), w32[L])`` (L = 8 int32
  lanes at 256 bits, 16 at 512), where each weight is packed as the int32 ``w & 0xFFFF`` (its int16 in
  the low half, 0 in the high half). ``vpmaddwd`` multiplies the int16 halves pairwise and adds the
  two products: low ``a·w`` (a's low half is a itself for any uint8 / int8 / int16 a) plus high
  ``(0 or −1)·0``, so the step is the exact product for every activation container. Where LLVM's
  tuning says so it fuses the add in (non-saturating ``vpdpwssd``: znver4 does; its Intel VNNI
  tunings keep ``vpmaddwd`` + ``vpaddd``). Measured on Zen 4 (C=144 56x56 3x3, one thread): 51-56
  GMAC/s for uint8, int8 and int16 data alike, vs 37-41 for int8/int16 through a plain int32
  multiply (``vpmulld`` + ``vpaddd``: what LLVM emits for signed data, where no operand is known to
  have a zero high half; for zero-extended uint8 it finds ``vpmaddwd`` itself).
- Register tile: ``cols`` output columns × one lane block, accumulated in place in the output (no
  ``local`` cache: a ``local`` tile becomes a workspace allocation per task, which cost 2-3x on
  7x7 layers); kh/kw/columns unrolled, so LLVM keeps the tile in registers and reuses each widened
  input vector across the taps that read it (stride 1: ``cols+KW-1`` loads per row for ``cols·KW``
  steps). Measured 4/7/8 columns equal within noise, two lane blocks no faster (Zen 4), so one.
- Fused form (:meth:`DepthwisePlan.compute_func`, every output width with a tile: OW <= 8 or a
  divisor of OW in [4, 8]): an unscheduled compute that FuseOps extends with the bias,
  requantization, ReLU and cast, scheduled after fusion (:func:`schedule_depthwise`) with one task
  per (batch, row, lane block, column tile) whose epilogue runs from the tile's accumulators — the
  int32 sums never reach memory (mobilenetv2_w1, batch 1: see docs/tvm.md).
- Otherwise (a prime width above 8, say) :func:`depthwise_nhwc`: parallel over (batch, output rows,
  lane blocks), each task walking its row's column tiles, a second segment computing the ``OW mod 8``
  last columns with a tile of that width (its own parallel loop), so no column is guarded or
  computed twice; its int32 output is requantized by a separate kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T

from tvm_benchmark.isa import Isa
from tvm_benchmark.schedules import (CONV, INT32_MAX, conv_schedule, epilogue_at, finish_schedule,
                                     schedule_conv_func, with_output)
from tvm_benchmark.tensorcore import i64

__all__ = ["ACT_DTYPES", "MAX_COLS", "intrinsic", "column_tiles", "fused_columns", "DepthwisePlan",
           "schedule_depthwise", "plan_depthwise", "depthwise_nhwc"]

ACT_DTYPES = ("uint8", "int8", "int16")
_MADD = {8: "llvm.x86.avx2.pmadd.wd", 16: "llvm.x86.avx512.pmaddw.d.512"}
MAX_COLS = 8


def _desc(act: str, lanes: int):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((lanes,), act, offset_factor=1), B: T.Buffer((lanes,), "int32", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes], B[0:lanes])
            T.writes(C[0:lanes])
            for i in T.serial(lanes):
                with T.sblock("update"):
                    vi = T.axis.remap("S", [i])
                    C[vi] = C[vi] + T.Cast("int32", A[vi]) * T.Cast("int32", T.Cast("int16", B[vi]))
    return desc


def _impl(act: str, lanes: int):
    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((lanes,), act, offset_factor=1), B: T.Buffer((lanes,), "int32", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:lanes], B[0:lanes])
            T.writes(C[0:lanes])
            # (no let-bound temporaries: they lower to a workspace allocation per call)
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=f"int32x{lanes}") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(_MADD[lanes]),
                T.reinterpret(T.Cast(f"int32x{lanes}", A.vload([0], f"{act}x{lanes}")), dtype=f"int16x{2 * lanes}"),
                T.reinterpret(B.vload([0], f"int32x{lanes}"), dtype=f"int16x{2 * lanes}"),
                dtype=f"int32x{lanes}")
    return impl


def intrinsic(act: str, lanes: int, emulate: bool = False) -> str:
    """Register the step ``C[L] += int32(A[L]) · int16(B[L])`` once and return its name; ``emulate``
    registers the scalar description as the implementation (runs the same schedule on a CPU that
    lacks the vector width, as :func:`tvm_benchmark.intrinsics.intrinsic` does)."""
    name = f"hawq_dw_madd_{act}_{lanes}" + ("_emulated" if emulate else "")
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, _desc(act, lanes), _desc(act, lanes) if emulate else _impl(act, lanes))
    return name


def column_tiles(ow: int) -> list[tuple[int, int, int]]:
    """``(first column, width, tile)`` segments covering ``[0, ow)``, each width a multiple of its tile."""
    if ow <= MAX_COLS:
        return [(0, ow, ow)]
    for cols in range(MAX_COLS, 3, -1):
        if ow % cols == 0:
            return [(0, ow, cols)]
    main = ow - ow % MAX_COLS
    return [(0, main, MAX_COLS), (main, ow - main, ow - main)]


@dataclass(frozen=True)
class DepthwisePlan:
    """One depthwise convolution: data read in ``act_dtype``, ``lanes`` int32 outputs per vector step.
    ``emulate``: the identical schedule with the step's scalar description (tests on CPUs lacking
    the vector width)."""
    act_dtype: str
    lanes: int
    emulate: bool = False

    @property
    def weight_dtype(self) -> str:
        return "int32"

    def padded(self, channels: int) -> int:
        """``Cp``: ``channels`` rounded up to a multiple of ``lanes`` (data, weights and output)."""
        return -(-channels // self.lanes) * self.lanes

    def pack(self, w: np.ndarray) -> np.ndarray:
        """int8 (any int16-range) ``[C, 1, KH, KW]`` -> int32 ``[KH, KW, Cp]`` holding ``w & 0xFFFF``
        (the int16 in the low half, zero high half), channels zero-filled up to ``Cp``."""
        if w.ndim != 4 or w.shape[1] != 1:
            raise ValueError(f"depthwise weights are [C, 1, KH, KW], got {w.shape}")
        c, _, kh, kw = w.shape
        w64 = w[:, 0].astype(np.int64)
        if w64.max(initial=0) > 32767 or w64.min(initial=0) < -32768:
            raise ValueError("depthwise weights beyond int16")
        w64 = np.pad(w64, ((0, self.padded(c) - c), (0, 0), (0, 0)))
        return np.ascontiguousarray((w64 & 0xFFFF).transpose(1, 2, 0)).astype(np.int32)

    @property
    def name(self) -> str:
        """The kernel's name in a fused function's conv block (:func:`tvm_benchmark.schedules.with_output`)."""
        return f"dw_{self.act_dtype}_{self.lanes}"

    @staticmethod
    def fusable(out_w: int) -> bool:
        """True when the output width has a register tile (:func:`fused_columns`): the kernel is then
        built by :meth:`compute_func` and its epilogue fused; else the two-segment
        :func:`depthwise_nhwc`, whose int32 output a separate kernel requantizes."""
        return fused_columns(out_w) > 0

    def compute_func(self, batch: int, in_hw: tuple[int, int], channels: int, ksize: tuple[int, int],
                     stride: tuple[int, int]) -> tvm.tirx.PrimFunc:
        """Unscheduled ``(data [B, H, W, Cp] act (already padded), weight [KH, KW, Cp] int32 (see
        :meth:`pack`)) -> acc [B, OH, OW, Cp] int32``, output-elementwise fusable like the other
        planned convolutions (the bias, requantization, ReLU and cast run per task, from the task's
        accumulators, scheduled by :func:`schedule_depthwise` after fusion)."""
        (h, w_), (kh, kw), (sh, sw) = (tuple(int(v) for v in t) for t in (in_hw, ksize, stride))
        oh, ow, cp, lanes = (h - kh) // sh + 1, (w_ - kw) // sw + 1, self.padded(channels), self.lanes
        data = te.placeholder(i64(batch, h, w_, cp), self.act_dtype, name="data")
        wt = te.placeholder(i64(kh, kw, cp), "int32", name="weight")
        rh, rw = te.reduce_axis(i64(0, kh), "rh"), te.reduce_axis(i64(0, kw), "rw")
        acc = te.compute(i64(batch, oh, ow, cp // lanes, lanes), lambda n, y, x, cb, ci: te.sum(
            data[n, y * sh + rh, x * sw + rw, cb * lanes + ci].astype("int32")
            * wt[rh, rw, cb * lanes + ci].astype("int16").astype("int32"), axis=[rh, rw]), name=CONV)
        return with_output(acc, [data, wt], self, self.emulate)

    def prim_func(self, batch: int, in_hw: tuple[int, int], channels: int, ksize: tuple[int, int],
                  stride: tuple[int, int]) -> tvm.tirx.PrimFunc:
        """The scheduled kernel alone (no epilogue): :meth:`compute_func` scheduled where the output
        width is :meth:`fusable`, else :func:`depthwise_nhwc`."""
        ow = (int(in_hw[1]) - int(ksize[1])) // int(stride[1]) + 1
        if self.fusable(ow):
            return schedule_conv_func(self.compute_func(batch, in_hw, channels, ksize, stride))
        return depthwise_nhwc(self.act_dtype, self.lanes, batch, in_hw, channels, ksize, stride, self.emulate)


def fused_columns(ow: int) -> int:
    """Columns of the fused kernel's register tile: ``ow`` itself up to :data:`MAX_COLS`, else its
    largest divisor in [4, MAX_COLS]; 0 when there is none (a prime width above 8, say)."""
    if ow <= MAX_COLS:
        return ow
    return next((c for c in range(MAX_COLS, 3, -1) if ow % c == 0), 0)


@conv_schedule(DepthwisePlan)
def schedule_depthwise(sch: Schedule, blk, plan: DepthwisePlan, emulate: bool, epilogue: str) -> None:
    """One task per (batch, row, lane block, column tile): ``cols`` columns × ``lanes`` accumulators
    (at most 8 × 16 int32, 512 bytes: a stack buffer, not a workspace allocation), taps and columns
    unrolled so LLVM keeps the tile in registers and reuses each widened input across the taps that
    read it; then the task's epilogue from those accumulators."""
    n, y, x, cb, ci, rh, rw = sch.get_loops(blk)
    xo, xi = sch.split(x, [None, fused_columns(int(sch.get(x).extent))])
    sch.reorder(n, y, cb, xo, rh, rw, xi, ci)
    task = sch.fuse(n, y, cb, xo)
    sch.parallel(task)
    epilogue_at(sch, epilogue, task, plan.lanes)
    init = sch.decompose_reduction(blk, rh)
    sch.tensorize(ci, intrinsic(plan.act_dtype, plan.lanes, emulate))
    for loop in (rh, rw, xi):
        sch.unroll(loop)
    init_x, init_c = sch.get_loops(init)[-2:]
    sch.unroll(init_x)
    sch.vectorize(init_c)


def plan_depthwise(isa: Isa | None, act_dtype: str, act_lo: int, act_hi: int, w: np.ndarray,
                   groups: int, emulate: bool = False) -> DepthwisePlan | None:
    """The depthwise kernel for ``isa`` or None (not depthwise, no ISA, another container, weights
    beyond int16, or the int32 accumulator not proven: ``max(|lo|, |hi|) · max_c Σ|w_c| > 2^31 − 1``;
    the bias is added by the caller, who bounds the total)."""
    if isa is None or act_dtype not in ACT_DTYPES or w.ndim != 4:
        return None
    c = w.shape[0]
    if w.shape[1] != 1 or groups != c or groups < 1:
        return None
    w64 = np.abs(w.astype(np.int64))
    if int(w64.max(initial=0)) > 32767 or int(w.astype(np.int64).min(initial=0)) < -32768:
        return None
    a_abs = max(abs(int(act_lo)), abs(int(act_hi)))
    info = np.iinfo(act_dtype)
    if act_lo < info.min or act_hi > info.max:
        return None
    if a_abs * int(w64.reshape(c, -1).sum(1).max(initial=0)) > INT32_MAX:
        return None
    return DepthwisePlan(act_dtype, isa.vector_bits // 32, emulate)


def depthwise_nhwc(act: str, lanes: int, batch: int, in_hw: tuple[int, int], channels: int,
                   ksize: tuple[int, int], stride: tuple[int, int], emulate: bool = False) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc ``(data [B, H, W, Cp] act (already padded), weight [KH, KW, Cp] int32 (see
    :meth:`DepthwisePlan.pack`)) -> acc [B, OH, OW, Cp] int32``; ``Cp`` = ``channels`` rounded up to
    ``lanes``, ``OH = (H − KH) // SH + 1`` (OW likewise)."""
    batch, channels = int(batch), int(channels)
    (h, w_), (kh, kw), (sh, sw) = (tuple(int(v) for v in t) for t in (in_hw, ksize, stride))
    oh, ow = (h - kh) // sh + 1, (w_ - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"depthwise conv: input {in_hw} smaller than kernel {ksize}")
    cp = -(-channels // lanes) * lanes
    segs = column_tiles(ow)
    x0, w0, _ = segs[0]
    x1, w1, _ = segs[1] if len(segs) > 1 else (ow, 0, 0)
    cb = cp // lanes

    # Each column segment is its own scope block, so each reduction is the only writer in its scope.
    # The segment's first column is added in the indices, not the bindings (blockize drops a
    # constant offset in a binding).
    @T.prim_func(s_tir=True)
    def func(data: T.Buffer((batch, h, w_, cp), act), weight: T.Buffer((kh, kw, cp), "int32"),
             acc: T.Buffer((batch, oh, ow, cp), "int32")) -> None:
        T.func_attr({"tirx.noalias": True})
        with T.sblock("seg0"):
            for n, y, co, x, ci, rh, rw in T.grid(batch, oh, cb, w0, lanes, kh, kw):
                with T.sblock("dw0"):
                    vn, vy, vco, vx, vci, vrh, vrw = T.axis.remap("SSSSSRR", [n, y, co, x, ci, rh, rw])
                    with T.init():
                        acc[vn, vy, x0 + vx, vco * lanes + vci] = 0
                    acc[vn, vy, x0 + vx, vco * lanes + vci] = acc[vn, vy, x0 + vx, vco * lanes + vci] + T.Cast(
                        "int32", data[vn, vy * sh + vrh, (x0 + vx) * sw + vrw, vco * lanes + vci]) * T.Cast(
                        "int32", T.Cast("int16", weight[vrh, vrw, vco * lanes + vci]))
        if bool(w1 > 0):
            with T.sblock("seg1"):
                for n, y, co, x, ci, rh, rw in T.grid(batch, oh, cb, w1, lanes, kh, kw):
                    with T.sblock("dw1"):
                        vn, vy, vco, vx, vci, vrh, vrw = T.axis.remap("SSSSSRR", [n, y, co, x, ci, rh, rw])
                        with T.init():
                            acc[vn, vy, x1 + vx, vco * lanes + vci] = 0
                        acc[vn, vy, x1 + vx, vco * lanes + vci] = acc[vn, vy, x1 + vx, vco * lanes + vci] + T.Cast(
                            "int32", data[vn, vy * sh + vrh, (x1 + vx) * sw + vrw, vco * lanes + vci]) * T.Cast(
                            "int32", T.Cast("int16", weight[vrh, vrw, vco * lanes + vci]))

    sch = Schedule(func)
    step = intrinsic(act, lanes, emulate)
    for i, (_, _, cols) in enumerate(segs):
        blk = sch.get_sblock(f"dw{i}")
        n, y, co, x, ci, rh, rw = sch.get_loops(blk)
        xo, xi = sch.split(x, [None, cols])
        sch.reorder(xo, rh, rw, xi, ci)
        sch.parallel(sch.fuse(n, y, co))
        init = sch.decompose_reduction(blk, rh)
        sch.tensorize(ci, step)
        for loop in (rh, rw, xi):
            sch.unroll(loop)
        init_x, init_c = sch.get_loops(init)[-2:]
        sch.unroll(init_x)
        sch.vectorize(init_c)
    return finish_schedule(sch)
