"""Tensor-core convolutions and classifier for ``--target cuda``: implicit GEMM on ``mma.sync``.

Every convolution (groups = 1) and the classifier is one GEMM ``C[m, n] = Σ_k A[m, k] · W[n, k]``
over ``m`` = output pixel (batch · OH · OW, NHWC order), ``k`` = (kh, kw, c) and ``n`` = output
channel. ``A`` is never materialized: the im2col gather — spatial padding with the centered zero
included — is computed while each thread block stages its ``BM × BK`` tile in shared memory
(implicit GEMM). Weights are packed once at export as ``[Np, Kp]`` int8 (OHWI rows, zero-padded).

Kernel choice (:func:`plan_tensorcore`): int8 ``mma.sync m16n8k32`` (:mod:`tvm_benchmark.intrinsics.cuda_mma`)
for every 8- and 4-bit layer on sm_80 and newer (s4 ``m16n8k64`` where the GPU has it and the
operands fit), and ``m16n8k256 b1 .xor.popc`` for binary layers (±1 activations and weights, sm_75+). Activations are stored as signed bytes: unsigned
data is shifted by −128 in its producer's epilogue and the front end folds 128·ΣW into the bias
(exact; the padded positions carry the shifted zero, so the fold holds at the borders too).

**Fused epilogue.** The GEMM PrimFunc declares ``op_pattern`` 4 (output-elementwise fusable), so Relax's
FuseOps puts the bias add, requantization, clip, ReLU, cast and the residual add that follow it into
the same function; :func:`schedule_tensorcore` then inlines all of them into one block that reads the
accumulator tile from shared memory and writes the layer's narrow output. One kernel per layer.

**Schedule** (per thread block ``BM × BN``, 2 × 2 warps, each warp ``FM × FN`` 16×16 fragments):
stage ``A`` (gathered) and ``W`` tiles of ``BK`` = 64 in shared memory (vectorized, rows padded
against bank conflicts), ``ldmatrix`` them into warp fragments, ``mma.sync``, store the int32
accumulators to shared memory, run the epilogue from there. ``emulate`` (tests) keeps every loop
transformation and swaps each intrinsic for loops over the same fragment layouts, without thread
binding: the program compiles for llvm and is checked bit-exact against the NumPy reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te, tirx
from tvm.s_tir import Schedule

from hawq.errors import HawqError
from tvm_benchmark.bundle_files.bundle_params import pack_gemm   # NumPy only: the GPU bundle packs the same way
from tvm_benchmark.intrinsics.cuda_mma import (FRAG, INT4_SMS, MmaStep, AB_LAYOUT, ACC_LAYOUT, b1_step, int4_step,
                                                int8_step, nibble_hi, nibble_lo, popc_xor)

__all__ = ["BK", "PER_BYTE", "has_block", "i64", "WARPS", "INT32_MAX", "OUT_EWISE_FUSABLE", "sm_number", "Tile", "choose_tile", "GemmPlan",
           "GemmShape", "plan_tensorcore", "gemm_func", "schedule_tensorcore", "schedule_gemm"]

GEMM, GEMM_OUT, IM2COL = "hawq_gemm", "hawq_gemm_out", "hawq_im2col"
BK = 64                       # reduction bytes staged per shared-memory step (2 steps of 32 bytes)
WARPS = (2, 2)                # warps per block along M and N
INT32_MAX = 2 ** 31 - 1
OUT_EWISE_FUSABLE = 4         # relax op pattern: elementwise consumers fuse into this kernel
#: K elements per operand byte at each operand width
PER_BYTE = {8: 1, 4: 2, 1: 8}


def sm_number(arch: str) -> int:
    """``sm_90`` -> 90."""
    try:
        return int(arch.lower().removeprefix("sm_"))
    except ValueError:
        raise HawqError(f"not a CUDA architecture: {arch!r} (expected e.g. sm_90)") from None


@dataclass(frozen=True)
class Tile:
    """Thread-block tile ``bm × bn`` (multiples of 32) of the output."""
    bm: int
    bn: int

    @property
    def frags(self) -> tuple[int, int]:
        """16×16 fragments per warp along M and N."""
        return self.bm // FRAG // WARPS[0], self.bn // FRAG // WARPS[1]

    @property
    def threads(self) -> int:
        return 32 * WARPS[0] * WARPS[1]


def choose_tile(m: int, n: int) -> Tile:
    """128 rows where the layer has enough pixels to fill the GPU with such blocks, else 64 (fewer
    padded rows at batch 1); 64 output channels (the accumulator tile stays ≤ 32 KiB of shared)."""
    return Tile(128 if m >= 16384 else 64, 64)


@dataclass(frozen=True)
class GemmPlan:
    """One conv/dense as a tensor-core implicit GEMM on ``bits``-bit signed operands (8: s8
    ``m16n8k32``; 4: s4 ``m16n8k64``, two values per byte along K; 1: ±1 as bits, ``m16n8k256
    .xor.popc``, eight per byte). ``act_shift``: added to the stored activations before the GEMM
    (−128 for uint8 data on s8, −8 for 0..15 data on s4); ``sm``: the GPU."""
    sm: int
    bits: int = 8
    act_shift: int = 0
    emulate: bool = False
    act_dtype: str = "int8"
    weight_dtype: str = "int8"

    @property
    def step(self) -> MmaStep:
        return {4: int4_step, 1: b1_step}.get(self.bits, int8_step)(self.emulate, self.sm)

    def fits(self, value: int) -> bool:
        """True when a (shifted) stored value is a ``bits``-bit signed operand."""
        lim = 1 << (self.bits - 1)
        return -lim <= value < lim

    def as_int8(self, act_dtype: str) -> "GemmPlan":
        """The s8 plan for the same layer (used when a 4-bit plan's padding value would not fit s4)."""
        return GemmPlan(self.sm, 8, -128 if act_dtype == "uint8" else 0, self.emulate)

    def pack(self, w: np.ndarray, shape: "GemmShape") -> np.ndarray:
        """OIHW int8 -> ``[Np, Kp bytes (+ 2 per tap at 1 bit)]`` int8, rows in (kh, kw, c) order,
        zero-padded; 4-bit: element 2j in the low nibble of byte j, 2j + 1 in the high one; 1-bit:
        element 8j + i (1 where −1) in bit i of byte j, then each tap's count of −1 weights (int16
        little endian), which the epilogue's padding correction reads."""
        return pack_gemm(w, [shape.np_, shape.weight_bytes], self.bits)

    def prim_func(self, shape: "GemmShape", pad_value: int) -> tvm.tirx.PrimFunc:
        return gemm_func(shape, pad_value, self.sm)


@dataclass(frozen=True)
class GemmShape:
    """A convolution's implicit-GEMM geometry (input ``[batch, H, W, C]`` NHWC, unpadded)."""
    batch: int
    in_hw: tuple[int, int]
    channels: int
    out_channels: int
    ksize: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    bits: int = 8                 # operand width: 4 packs two K elements per byte, 1 eight

    @property
    def per_byte(self) -> int:
        return PER_BYTE[self.bits]

    @property
    def weight_bytes(self) -> int:
        """Bytes per packed weight row: Kp, and at 1 bit two more per tap (its count of −1 weights),
        padded to the staging step (the fragment layouts split the row into 32-byte steps)."""
        tail = 2 * self.ksize[0] * self.ksize[1] if self.bits == 1 else 0
        return self.kp_bytes + -(-tail // BK) * BK

    @property
    def out_hw(self) -> tuple[int, int]:
        (h, w), (kh, kw), (sh, sw), (ph, pw) = self.in_hw, self.ksize, self.stride, self.pad
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    @property
    def m(self) -> int:
        oh, ow = self.out_hw
        return self.batch * oh * ow

    @property
    def k(self) -> int:
        return self.ksize[0] * self.ksize[1] * self.channels

    @property
    def tile(self) -> Tile:
        return choose_tile(self.m, self.out_channels)

    @property
    def mp(self) -> int:
        return -(-self.m // self.tile.bm) * self.tile.bm

    @property
    def np_(self) -> int:
        return -(-self.out_channels // self.tile.bn) * self.tile.bn

    @property
    def kp(self) -> int:
        """K padded to the staging step, in elements."""
        step = BK * self.per_byte
        return -(-self.k // step) * step

    @property
    def kp_bytes(self) -> int:
        return self.kp // self.per_byte


def plan_tensorcore(sm: int, act_dtype: str, act_lo: int, act_hi: int, w: np.ndarray, groups: int,
                    out_w: int | None = None, emulate: bool = False, binary: bool = False) -> GemmPlan | None:
    """The tensor-core GEMM for a conv with ``groups == 1`` on 8-bit containers, or None (TVM's
    generic GPU convolution: depthwise layers, wider data, GPUs before sm_75). ``act_lo``/``act_hi``
    bound the stored activations. s4 where the GPU has int4 MMA (sm_75/80/86/87) and both the shifted
    activations (0..15 - 8) and the weights fit 4 bits; else s8. The raw int32 sum of the shifted
    operands must be proven to fit. ``binary`` (±1 activations and weights) changes nothing: they run
    as b1 operands where the GPU has the b1 MMA (sm_75+) and every weight is ±1 (else s4/s8)."""
    if groups != 1 or act_dtype not in ("uint8", "int8") or sm < int8_step(emulate, sm).min_sm:
        return None
    w64 = w.astype(np.int64)
    if binary and act_dtype == "int8" and act_lo >= -1 and act_hi <= 1 and np.isin(w64, (-1, 1)).all():
        return GemmPlan(sm, 1, 0, emulate)
    plan = None
    if sm in INT4_SMS:
        shift = -8 if act_dtype == "uint8" else 0
        p4 = GemmPlan(sm, 4, shift, emulate)
        if all(p4.fits(v) for v in (act_lo + shift, act_hi + shift, int(w64.min(initial=0)), int(w64.max(initial=0)))):
            plan = p4
    plan = plan or GemmPlan(sm, 8, -128 if act_dtype == "uint8" else 0, emulate)
    a_abs = max(abs(act_lo + plan.act_shift), abs(act_hi + plan.act_shift), abs(plan.act_shift))
    if int(np.abs(w64).reshape(w.shape[0], -1).sum(1).max(initial=0)) * a_abs > INT32_MAX:
        return None
    return plan


def gemm_func(s: GemmShape, pad_value: int, sm: int = 80) -> tvm.tirx.PrimFunc:
    """Unscheduled ``(data [B,H,W,C] int8, weight [Np,Kp] int8) -> acc [B,OH,OW,O] int32``: the
    im2col gather (``pad_value`` outside the image), the padded GEMM and the unpadding copy; scheduled
    after fusion by :func:`schedule_tensorcore`."""
    b, (h, w), c = s.batch, s.in_hw, s.channels
    (kh, kw), (sh, sw), (ph, pw) = s.ksize, s.stride, s.pad
    oh, ow = s.out_hw
    m_real, k_real = s.m, s.k
    data = te.placeholder(i64(b, h, w, c), "int8", name="data")
    weight = te.placeholder(i64(s.np_, s.weight_bytes), "int8", name="weight")

    def gather(m, k):
        n, r = m // (oh * ow), m % (oh * ow)
        y, x = r // ow, r % ow
        rh, rw, ch = k // (kw * c), k // c % kw, k % c
        iy, ix = y * sh + rh - ph, x * sw + rw - pw
        inside = tirx.all(m < m_real, k < k_real, iy >= 0, iy < h, ix >= 0, ix < w)
        return tirx.if_then_else(inside, data[n, iy, ix, ch], tirx.const(pad_value, "int8"))

    if s.bits == 4:
        def packed(m, kb):   # two signed nibbles per byte, element 2·kb low
            lo = gather(m, 2 * kb).astype("int32") & 15
            hi = gather(m, 2 * kb + 1).astype("int32") & 15
            return ((hi << 4) | lo).astype("int8")
        a = te.compute(i64(s.mp, s.kp_bytes), packed, name=IM2COL)
    elif s.bits == 1:
        def bits(m, kb):     # bit i of byte kb: element 8·kb + i is −1 (padding of every kind: 0)
            v = tirx.const(0, "int32")
            for i in range(8):
                v = v | (tirx.if_then_else(gather(m, 8 * kb + i) < 0, 1, 0) << i)
            return v.astype("int8")
        a = te.compute(i64(s.mp, s.kp_bytes), bits, name=IM2COL)
    else:
        a = te.compute(i64(s.mp, s.kp_bytes), gather, name=IM2COL)
    r = te.reduce_axis((tirx.IntImm("int64", 0), tirx.IntImm("int64", s.kp_bytes)), "k")
    tile = s.tile
    attrs = {"hawq.tile": [tile.bm, tile.bn], "hawq.bits": s.bits, "hawq.sm": sm,
             "hawq.vector_gather": int(c % (16 * s.per_byte) == 0 and s.bits != 1)}
    if s.bits == 1:
        acc = te.compute(i64(s.mp, s.np_), lambda i, j: te.sum(popc_xor(a[i, r], weight[j, r]), axis=r),
                         name=GEMM, attrs=attrs)
    elif s.bits == 4:
        acc = te.compute(i64(s.mp, s.np_), lambda i, j: te.sum(
            nibble_lo(a[i, r]) * nibble_lo(weight[j, r]) + nibble_hi(a[i, r]) * nibble_hi(weight[j, r]), axis=r),
            name=GEMM, attrs=attrs)
    else:
        acc = te.compute(i64(s.mp, s.np_), lambda i, j: te.sum(
            a[i, r].astype("int32") * weight[j, r].astype("int32"), axis=r), name=GEMM, attrs=attrs)
    if s.bits == 1:
        out = te.compute(i64(b, oh, ow, s.out_channels), _signed_dot(s, acc, weight), name=GEMM_OUT)
    else:
        out = te.compute(i64(b, oh, ow, s.out_channels), lambda n, y, x, o: acc[(n * oh + y) * ow + x, o],
                         name=GEMM_OUT)
    func = te.create_prim_func([data, weight, out]).without_attr("global_symbol")
    return func.with_attr("op_pattern", OUT_EWISE_FUSABLE).with_attr("hawq.gemm", True)


def _signed_dot(s: GemmShape, acc: te.Tensor, weight: te.Tensor):
    """The ±1 convolution from the b1 GEMM's count ``acc`` of differing signs: over the taps inside
    the image (K_valid = C · valid rows · valid columns of the window) the dot product is
    ``K_valid − 2·differing``; ``acc`` also counted, at every padded tap (activation bits 0), the
    weight's −1 bits there, which the tap counts stored after the row's Kp bytes subtract again:
    ``out = K_valid − 2·(acc − Σ_padded taps count)``. Zero padding stays zero padding (the
    reference's), as in the CPU popcount kernels."""
    (h, w), c = s.in_hw, s.channels
    (kh, kw), (sh, sw), (ph, pw) = s.ksize, s.stride, s.pad
    oh, ow = s.out_hw

    def count(o, tap):   # int16 little endian at bytes Kp + 2·tap, Kp + 2·tap + 1 (non-negative)
        lo = weight[o, s.kp_bytes + 2 * tap].astype("int32") & 255
        return lo | ((weight[o, s.kp_bytes + 2 * tap + 1].astype("int32") & 255) << 8)

    def f(n, y, x, o):
        iy, ix = y * sh - ph, x * sw - pw
        rows = [tirx.all(iy + i >= 0, iy + i < h) for i in range(kh)]
        cols = [tirx.all(ix + j >= 0, ix + j < w) for j in range(kw)]
        n_rows = sum(tirx.if_then_else(v, 1, 0) for v in rows)
        n_cols = sum(tirx.if_then_else(v, 1, 0) for v in cols)
        padded = sum(tirx.if_then_else(tirx.all(rows[i], cols[j]), 0, count(o, i * kw + j))
                     for i in range(kh) for j in range(kw))
        differing = acc[(n * oh + y) * ow + x, o] - padded
        return c * n_rows * n_cols - 2 * differing
    return f


def i64(*dims) -> tuple:
    """int64 extents, as Relax's legalized ops have (FuseTIR unifies buffers by structural type)."""
    return tuple(tirx.IntImm("int64", int(d)) for d in dims)


def has_block(func: tvm.tirx.PrimFunc, name: str) -> bool:
    """True when ``func`` holds a block named ``name`` (fused functions keep their blocks' names)."""
    try:
        Schedule(func).get_sblock(name)
        return True
    except Exception:  # noqa: BLE001  (no such block)
        return False


def schedule_tensorcore(mod: tvm.IRModule, emulate: bool = False) -> tvm.IRModule:
    """Schedule every (fused) PrimFunc holding an implicit GEMM; marks them scheduled so TVM's
    default GPU rules leave them alone."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and has_block(func, GEMM):
            mod[gv] = schedule_gemm(func, emulate).with_attr("tirx.is_scheduled", True)
    return mod


def _gemm_geometry(sch: Schedule) -> tuple[int, int, int, tuple[int, int]]:
    """(Mp, Np, Kp, (OH, OW)) read off the GEMM and unpadding blocks."""
    mp, np_, kp = (int(sch.get(lp).extent) for lp in sch.get_loops(sch.get_sblock(GEMM)))
    out_shape = [int(iv.dom.extent) for iv in sch.get(sch.get_sblock(GEMM_OUT)).iter_vars]
    return mp, np_, kp, (out_shape[1], out_shape[2])


def schedule_gemm(func: tvm.tirx.PrimFunc, emulate: bool = False) -> tvm.tirx.PrimFunc:
    """The tensor-core schedule of one GEMM function (with whatever epilogue FuseOps put after it)."""
    sch = Schedule(func)
    bind = (lambda loop, tag: None) if emulate else sch.bind
    mp, np_, kp, (oh, ow) = _gemm_geometry(sch)
    ann = sch.get(sch.get_sblock(GEMM)).annotations    # block annotations survive FuseTIR
    tile = Tile(*(int(v) for v in ann["hawq.tile"]))
    step = {4: int4_step, 1: b1_step}.get(int(ann["hawq.bits"]), int8_step)(emulate, int(ann["hawq.sm"]))
    warps = WARPS[0] * WARPS[1]
    fm, fn = tile.frags
    gemm = sch.get_sblock(GEMM)

    # The epilogue: every block after the GEMM inlines into the last one, which then reads the
    # accumulator as C[(n·OH + y)·OW + x, o] and is re-indexed to (m, o) to sit inside the GEMM tile.
    blocks = [b for b in sch.get_child_blocks(sch.get_sblock("root"))]
    names = [sch.get(b).name_hint for b in blocks]
    if len(set(names)) != len(names):
        raise HawqError(f"tensor-core schedule: duplicate block names {names}")
    after = names[names.index(GEMM) + 1:]
    for name in after[:-1]:
        sch.compute_inline(sch.get_sblock(name))
    last = sch.get_sblock(after[-1])
    if len(sch.get(last).iter_vars) != 4:
        raise HawqError(f"tensor-core schedule: epilogue block {after[-1]} is not 4-D")
    sch.transform_block_layout(last, lambda n, y, x, o: ((n * oh + y) * ow + x, o))

    i, j, k = sch.get_loops(gemm)
    i, i_tc = sch.split(i, [None, FRAG])
    j, j_tc = sch.split(j, [None, FRAG])
    k, k_tc = sch.split(k, [None, step.k])
    sch.reorder(i, j, k, i_tc, j_tc, k_tc)
    outer = sch.blockize(i_tc)
    i0, i1, i2 = sch.split(i, [None, WARPS[0], fm])
    j0, j1, j2 = sch.split(j, [None, WARPS[1], fn])
    k0, k1 = sch.split(k, [None, BK // step.k])
    sch.reorder(i0, j0, i1, j1, k0, k1, i2, j2)
    block_x = sch.fuse(i0, j0)
    warp_y = sch.fuse(i1, j1)
    bind(block_x, "blockIdx.x")
    bind(warp_y, "threadIdx.y")

    staged = []
    for operand in (0, 1):
        # only the GEMM reads the staged copy: a b1 epilogue reads its weight rows' tap counts itself
        shared = sch.cache_read(outer, operand, "shared", consumer_blocks=[outer])
        sch.compute_at(shared, k0)
        staged.append(shared)
    sch.compute_inline(sch.get_sblock(IM2COL))       # the gather happens while staging: implicit GEMM
    channels_aligned = bool(int(ann["hawq.vector_gather"]))
    for n_operand, shared in enumerate(staged):
        # The gathered operand moves 4 bytes a lane: its padding is a vector constant, and TVM's CUDA
        # codegen prints an int8x16 one as make_int4(16 chars), which nvcc rejects (int8x4 is packed).
        vec = 16 if n_operand == 1 else (4 if channels_aligned else 1)
        fused = sch.fuse(*sch.get_loops(shared)[-2:])
        parts = sch.split(fused, [None, warps, 32, vec] if vec > 1 else [None, warps, 32])
        bind(parts[2], "threadIdx.x")
        bind(parts[1], "threadIdx.y")
        if vec > 1:
            sch.vectorize(parts[3])
        sch.storage_align(shared, 0, axis=-2, factor=32, offset=16)

    frag_a = sch.cache_read(outer, 0, "warp")
    frag_b = sch.cache_read(outer, 1, "warp")
    sch.compute_at(frag_a, k1)
    sch.compute_at(frag_b, k1)
    acc = sch.cache_write(outer, 0, "warp")
    sch.reverse_compute_at(acc, warp_y)
    ii, jj = sch.get_loops(acc)[-2:]
    io, ii = sch.split(ii, [None, FRAG])
    jo, ji = sch.split(jj, [None, FRAG])
    sch.reorder(io, jo, ii, ji)
    sch.decompose_reduction(outer, sch.get_loops(outer)[2])

    def fragment_loop(block, rows, cols):
        a, b = sch.get_loops(block)[-2:]
        a0, a1 = sch.split(a, [None, rows])
        b0, b1 = sch.split(b, [None, cols])
        sch.reorder(a0, b0, a1, b1)
        return a1

    load_a = fragment_loop(frag_a, FRAG, step.k)
    load_b = fragment_loop(frag_b, FRAG, step.k)
    sch.transform_layout(frag_a, ("write", 0), lambda r, c: (r // FRAG, c // step.k, *AB_LAYOUT(r % FRAG, c % step.k)))
    sch.transform_layout(frag_b, ("write", 0), lambda r, c: (r // FRAG, c // step.k, *AB_LAYOUT(r % FRAG, c % step.k)))
    sch.transform_layout(acc, ("read", 0), lambda r, c: (r // FRAG, c // FRAG,
                                                         *ACC_LAYOUT(r % FRAG, c % FRAG)))
    sch.set_scope(acc, 0, "shared")                  # the accumulator tile, read by the epilogue
    sch.reverse_compute_at(last, block_x)
    fused = sch.fuse(*sch.get_loops(last)[1:])
    _, e_warp, e_lane = sch.split(fused, [None, warps, 32])
    bind(e_lane, "threadIdx.x")
    bind(e_warp, "threadIdx.y")

    sch.tensorize(load_a, step.load_a)
    sch.tensorize(load_b, step.load_b)
    sch.tensorize(sch.get_loops(gemm)[-3], step.mma)
    sch.tensorize(sch.get_loops(sch.get_sblock(GEMM + "_init"))[-2], step.fill)
    sch.tensorize(sch.get_loops(acc)[-2], step.store)
    return sch.mod["main"]

