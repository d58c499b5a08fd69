"""Hand-written CPU schedules for the integer program (TVM's default Relax pipeline schedules nothing).

- :func:`conv2d_tensorized`: an NHWC integer convolution tensorized with one of two exact AVX2
  dot-product steps (:class:`DotKernel`):
  ``vpmaddwd`` (``llvm.x86.avx2.pmadd.wd``: 16 int16·int16 products summed pairwise into 8 int32
  lanes; activations arrive widened to int16 (done in the producing epilogue), weights stored as
  int16; a pair sum is at most
  2·255·128 < 2^31, so always exact), and ``vpmaddubsw`` + ``vpmaddwd(1)`` (32 uint8·int8
  products per instruction, summed by 4), whose int16 pair sums saturate above 32767 and which is
  therefore chosen only where the layer's static bounds prove 2·max|a|·max|w| <= 32767 — in practice
  the 4-bit layers (15·127·2 or 255·8·2). Weights are packed ``[O/8, KH, KW, C/k, 8, k]`` so one
  256-bit load feeds one step; the output is tiled over 4 (or 7) columns × 16 channels in registers.
- :func:`schedule_generic`: every other kernel (the fused requantization epilogues, pads, pooling,
  the classifier): inline producers, then parallelize and vectorize the spatial loops.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import Schedule, ScheduleError, TensorIntrin
from tvm.script import tirx as T

SCHEDULED = "hawq.scheduled"
LANES = 8          # int32 accumulator lanes per 256-bit register


@dataclass(frozen=True)
class DotKernel:
    """An exact AVX2 dot-product step: 8 int32 lanes += Σ_k act[k]·w[lane, k] over ``k`` channels."""
    name: str
    k: int               # input channels reduced per instruction group
    weight_dtype: str    # weight container in the packed layout


#: vpmaddwd on int16-widened operands: exact for any uint8/int8 activation and int8 weight.
PMADDWD = DotKernel("pmaddwd", 2, "int16")
#: vpmaddubsw + vpmaddwd(1): twice the products per instruction; its int16 pair sums saturate, so it
#: is used only where the bounds prove 2·max|act|·max|w| <= 32767 (4-bit activations or weights).
PMADDUBSW = DotKernel("pmaddubsw", 4, "int8")


def _desc(k: int, act_dtype: str, w_dtype: str):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((k,), act_dtype, offset_factor=1), B: T.Buffer((8, k), w_dtype, offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:k], B[0:8, 0:k])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for r in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vr = T.axis.remap("SR", [i, r])
                        C[vi] = C[vi] + T.cast(A[vr], "int32") * T.cast(B[vi, vr], "int32")
    return desc


def _pmaddwd_impl(act_dtype: str):
    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), act_dtype, offset_factor=1), B: T.Buffer((8, 2), "int16", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            # The activation pair, widened to int16 and viewed as one int32, is broadcast to 8 lanes.
            a = T.reinterpret(T.Cast("int16x2", A.vload([0], act_dtype + "x2")), dtype="int32")
            a16 = T.reinterpret(T.broadcast(a, 8), dtype="int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a16, B.vload([0, 0], dtype="int16x16"),
                dtype="int32x8")
    return impl


def _pmaddubsw_impl(act_dtype: str):
    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((8, 4), "int8", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:4], B[0:8, 0:4])
            T.writes(C[0:8])
            a = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            pairs = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                T.reinterpret(T.broadcast(a, 8), dtype="uint8x32"), B.vload([0, 0], dtype="int8x32"),
                dtype="int16x16")
            C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.int16x16(1), dtype="int32x8")
    return impl


_IMPLS = {"pmaddwd": _pmaddwd_impl, "pmaddubsw": _pmaddubsw_impl}


def _register(kernel: DotKernel, act_dtype: str) -> str:
    name = f"hawq_avx2_{kernel.name}_{act_dtype}_8x{kernel.k}"
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, _desc(kernel.k, act_dtype, kernel.weight_dtype), _IMPLS[kernel.name](act_dtype))
    return name


def choose_kernel(act_dtype: str, act_absmax: int, w: np.ndarray, groups: int) -> DotKernel | None:
    """The fastest exact kernel for this conv (None: use the generic Relax conv2d).

    ``act_absmax``: bound on |activation| (of the stored, uncentered values); ``w``: OIHW int8.
    vpmaddubsw reads its activation operand as unsigned, so it is only chosen for ``uint8`` data (a
    range proven non-negative: the builder gives profile ``hawq``'s post-ReLU int8-declared values
    [0, 127] a uint8 container, where 2·127·128 <= 32767 makes it exact for any int8 weight); signed
    ``int8`` data (e.g. profile ``hawq``'s symmetric input quantizer) always gets vpmaddwd.
    """
    if act_dtype not in ("uint8", "int8") or groups != 1 or w.shape[0] % LANES:
        return None
    if act_dtype == "uint8" and 2 * act_absmax * int(np.abs(w.astype(np.int64)).max(initial=0)) <= 32767:
        return PMADDUBSW
    return PMADDWD


def pack_weight(w: np.ndarray, kernel: DotKernel) -> np.ndarray:
    """OIHW int8 weights -> ``[O/8, KH, KW, C'/k, 8, k]`` in the kernel's weight dtype
    (C' = C rounded up to a multiple of k, zero-filled)."""
    o, c, kh, kw = w.shape
    k = kernel.k
    cp = -(-c // k) * k
    w = np.pad(w.astype(kernel.weight_dtype), ((0, 0), (0, cp - c), (0, 0), (0, 0)))
    return np.ascontiguousarray(w.reshape(o // LANES, LANES, cp // k, k, kh, kw).transpose(0, 4, 5, 2, 1, 3))


def _column_tile(ow: int) -> int:
    for t in (4, 7, 3, 2):
        if ow % t == 0:
            return t
    return 1


def conv2d_tensorized(kernel: DotKernel, batch: int, in_hw: tuple[int, int], channels: int, out_channels: int,
                      ksize: tuple[int, int], stride: tuple[int, int], act_dtype: str) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc ``(data [B,H,W,C'] act_dtype (already padded), w = pack_weight(...))
    -> acc [B,OH,OW,O/8,8] int32``, C' a multiple of ``kernel.k``. Exact integer convolution."""
    h, w_ = in_hw
    (kh, kw), (sh, sw), k = ksize, stride, kernel.k
    oh, ow = (h - kh) // sh + 1, (w_ - kw) // sw + 1
    data = te.placeholder((batch, h, w_, channels), act_dtype, name="data")
    wt = te.placeholder((out_channels // LANES, kh, kw, channels // k, LANES, k), kernel.weight_dtype, name="weight")
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    rc, rk = te.reduce_axis((0, channels // k), "rc"), te.reduce_axis((0, k), "rk")
    acc = te.compute(
        (batch, oh, ow, out_channels // LANES, LANES),
        lambda n, y, x, ob, oi: te.sum(
            data[n, y * sh + rh, x * sw + rw, rc * k + rk].astype("int32")
            * wt[ob, rh, rw, rc, oi, rk].astype("int32"), axis=[rh, rw, rc, rk]),
        name="acc")
    sch = Schedule(te.create_prim_func([data, wt, acc]))
    blk = sch.get_sblock("acc")
    n, y, x, ob, oi, lh, lw, lc, lk = sch.get_loops(blk)
    xo, xi = sch.split(x, [None, _column_tile(ow)])
    ob_tile = 2 if (out_channels // LANES) % 2 == 0 else 1
    obo, obi = sch.split(ob, [None, ob_tile])
    sch.reorder(n, y, xo, obo, lh, lw, lc, xi, obi, oi, lk)
    sch.parallel(sch.fuse(n, y, xo, obo))
    init = sch.decompose_reduction(blk, lh)
    sch.tensorize(oi, _register(kernel, act_dtype))
    sch.unroll(xi)
    sch.unroll(obi)
    sch.vectorize(sch.get_loops(init)[-1])
    func = sch.mod["main"].without_attr("global_symbol")
    return func.with_attr(SCHEDULED, True).with_attr("op_pattern", 8)   # opaque: never fused


def _is_spatial(sch: Schedule, block) -> bool:
    return all(int(iv.iter_type) == 0 for iv in sch.get(block).iter_vars)


def _schedule_block(sch: Schedule, block, vector: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    if _is_spatial(sch, block):
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        extent = sch.get(fused).extent
        if isinstance(extent, tvm.tirx.IntImm) and int(extent) % vector == 0 and int(extent) > vector:
            outer, inner = sch.split(fused, [None, vector])
            sch.parallel(outer)
            sch.vectorize(inner)
        else:
            sch.parallel(fused)
        return
    ivs = sch.get(block).iter_vars
    n_spatial = next((i for i, iv in enumerate(ivs) if int(iv.iter_type) != 0), len(ivs))
    if not n_spatial or len(loops) != len(ivs):
        return
    # Reductions (pooling, global sum, classifier): the innermost spatial loop (NHWC channels,
    # output features) moves inside the reduction and is vectorized; the others run in parallel.
    lead, inner, reduce = loops[:n_spatial - 1], loops[n_spatial - 1], loops[n_spatial:]
    sch.reorder(*reduce, inner)
    init = sch.decompose_reduction(block, reduce[0])
    _vectorize_inner(sch, inner, vector)
    _vectorize_inner(sch, sch.get_loops(init)[-1], vector)
    if lead:
        sch.parallel(sch.fuse(*lead) if len(lead) > 1 else lead[0])


def _vectorize_inner(sch: Schedule, loop, vector: int) -> None:
    extent = sch.get(loop).extent
    if isinstance(extent, tvm.tirx.IntImm) and int(extent) % vector == 0 and int(extent) > vector:
        sch.vectorize(sch.split(loop, [None, vector])[1])
    elif isinstance(extent, tvm.tirx.IntImm) and int(extent) <= 64:
        sch.vectorize(loop)


def schedule_function(func: tvm.tirx.PrimFunc, vector: int = 16) -> tvm.tirx.PrimFunc:
    """Inline every non-output block, then parallelize/vectorize what is left (best effort)."""
    sch = Schedule(func)
    root = sch.get_sblock("root") if _has_root(sch) else None
    blocks = sch.get_child_blocks(root) if root is not None else []
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
        except ScheduleError:
            try:
                sch.reverse_compute_inline(b)
            except ScheduleError:
                pass
    for b in sch.get_child_blocks(root) if root is not None else []:
        try:
            _schedule_block(sch, b, vector)
        except ScheduleError:
            pass
    return sch.mod["main"]


def _has_root(sch: Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001
        return False


def schedule_generic(mod: tvm.IRModule) -> tvm.IRModule:
    """Apply :func:`schedule_function` to every PrimFunc not already hand-scheduled."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and not (func.attrs is not None and SCHEDULED in func.attrs):
            mod[gv] = schedule_function(func)
    return mod
