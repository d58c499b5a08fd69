"""Hand-written CPU schedules for the integer program (TVM's default Relax pipeline schedules nothing).

- :func:`conv2d_pmaddwd`: an NHWC integer convolution tensorized with AVX2 ``vpmaddwd``
  (``llvm.x86.avx2.pmadd.wd``: 16 int16·int16 products summed pairwise into 8 int32 lanes). Both
  operands fit int16 exactly (uint8/int8 activations widened on load, int8 weights stored as int16),
  and each pair sum is at most 2·255·128 < 2^31, so it is exact — unlike ``vpmaddubsw``, whose int16
  pair sums saturate. Weights are laid out ``[O/8, KH, KW, C/2, 8, 2]`` so one 256-bit load feeds one
  instruction; the output is tiled over 4 (or 7) output columns × 16 output channels in registers.
- :func:`schedule_generic`: every other kernel (the fused requantization epilogues, pads, pooling,
  the classifier): inline producers, then parallelize and vectorize the spatial loops.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import Schedule, ScheduleError, TensorIntrin
from tvm.script import tirx as T

PMADDWD = "hawq_avx2_pmaddwd_u8_8x2"
SCHEDULED = "hawq.scheduled"
LANES, PAIR = 8, 2


def _pmaddwd_intrin(act_dtype: str):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((2,), act_dtype, offset_factor=1), B: T.Buffer((8, 2), "int16", offset_factor=1),
             C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                for k in T.serial(0, 2):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

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

    return desc, impl


def _intrin_name(act_dtype: str) -> str:
    return f"{PMADDWD}_{act_dtype}"


def _register(act_dtype: str) -> str:
    name = _intrin_name(act_dtype)
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, *_pmaddwd_intrin(act_dtype))
    return name


def pmaddwd_supported(act_dtype: str, channels: int, out_channels: int, groups: int) -> bool:
    """Whether :func:`conv2d_pmaddwd` applies (else the generic Relax conv2d is used)."""
    return act_dtype in ("uint8", "int8") and groups == 1 and out_channels % LANES == 0 and channels >= 1


def pmaddwd_weight(w: np.ndarray) -> np.ndarray:
    """OIHW int8 weights -> int16 ``[O/8, KH, KW, C'/2, 8, 2]`` (C' = C rounded up to even, zero-filled)."""
    o, c, kh, kw = w.shape
    c2 = c + (c % 2)
    w = np.pad(w.astype(np.int16), ((0, 0), (0, c2 - c), (0, 0), (0, 0)))
    return np.ascontiguousarray(
        w.reshape(o // LANES, LANES, c2 // PAIR, PAIR, kh, kw).transpose(0, 4, 5, 2, 1, 3))


def _column_tile(ow: int) -> int:
    for t in (4, 7, 3, 2):
        if ow % t == 0:
            return t
    return 1


def conv2d_pmaddwd(batch: int, in_hw: tuple[int, int], channels: int, out_channels: int,
                   kernel: tuple[int, int], stride: tuple[int, int], act_dtype: str) -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc ``(data [B,H,W,C'] act_dtype (already padded), w [O/8,KH,KW,C'/2,8,2] int16)
    -> acc [B,OH,OW,O/8,8] int32`` where C' = channels (even). Exact integer convolution."""
    h, w_ = in_hw
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = (h - kh) // sh + 1, (w_ - kw) // sw + 1
    data = te.placeholder((batch, h, w_, channels), act_dtype, name="data")
    wt = te.placeholder((out_channels // LANES, kh, kw, channels // PAIR, LANES, PAIR), "int16", name="weight")
    rh, rw = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw")
    rc, rp = te.reduce_axis((0, channels // PAIR), "rc"), te.reduce_axis((0, PAIR), "rp")
    acc = te.compute(
        (batch, oh, ow, out_channels // LANES, LANES),
        lambda n, y, x, ob, oi: te.sum(
            data[n, y * sh + rh, x * sw + rw, rc * PAIR + rp].astype("int32")
            * wt[ob, rh, rw, rc, oi, rp].astype("int32"), axis=[rh, rw, rc, rp]),
        name="acc")
    sch = Schedule(te.create_prim_func([data, wt, acc]))
    blk = sch.get_sblock("acc")
    n, y, x, ob, oi, lh, lw, lc, lp = sch.get_loops(blk)
    xo, xi = sch.split(x, [None, _column_tile(ow)])
    ob_tile = 2 if (out_channels // LANES) % 2 == 0 else 1
    obo, obi = sch.split(ob, [None, ob_tile])
    sch.reorder(n, y, xo, obo, lh, lw, lc, xi, obi, oi, lp)
    sch.parallel(sch.fuse(n, y, xo, obo))
    init = sch.decompose_reduction(blk, lh)
    sch.tensorize(oi, _register(act_dtype))
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
    n_spatial = 0
    for iv in sch.get(block).iter_vars:
        if int(iv.iter_type) != 0:
            break
        n_spatial += 1
    if n_spatial:
        lead = loops[:n_spatial]
        sch.parallel(sch.fuse(*lead) if len(lead) > 1 else lead[0])


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
