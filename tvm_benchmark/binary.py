"""Exact binary (±1 × ±1) convolutions for x86: XOR + popcount on channels packed 64 to a word.

Semantics, bit for bit: activations ``x`` ∈ {−1, +1} (int8 NHWC ``[B, H, W, C]``) and weights ``w`` ∈
{−1, +1} (int8 OIHW ``[O, C, KH, KW]``) give the int32 NHWC ``[B, OH, OW, O]`` of an ordinary
**zero-padded** convolution (padding ``(top, left, bottom, right)``, stride ``(SH, SW)``, dilation 1,
groups 1): exactly ``torch.nn.functional.conv2d`` of the ±1 tensors.

Encoding: +1 -> bit 0, −1 -> bit 1; channel ``c`` is bit ``c mod 64`` of word ``c div 64`` (uint64,
``CW = ceil(C / 64)`` words per pixel). Channel bits beyond ``C`` are 0 in both operands, so they add 0
to ``popcount(x ⊕ w)``, and for one in-bounds tap ``Σ_c x_c·w_c = C − 2·Σ_words popcount(x ⊕ w)``.

Padding: **zero words around the packed input, and a correction from the weights**. The packing
(:func:`pack_activation_func` with ``pad``) writes the input already padded with 0 words, so the main
loop runs over every tap with no bounds test, no clamped address and no mask. A 0 word is the pixel
"all +1", not the zero of the convolution: each out-of-bounds tap adds ``P[o, kh, kw] = Σ_words
popcount(w[o, kh, kw])`` (the number of −1 weights of that tap) to the popcount sum. So

    S[b, y, x, o]   = Σ_{all (kh, kw)} Σ_words popcount(xpad ⊕ w)
    out[b, y, x, o] = C · nvalid(y, x) − 2 · (S − Σ_{invalid (kh, kw)} P[o, kh, kw])

with ``nvalid(y, x) = nh(y) · nw(x)`` (in-bounds window rows times columns, closed form). ``P`` is
precomputed by :func:`pack_weight_bits` as one extra word per tap (word ``CW``, an integer, not bits)
and the correction runs in the epilogue behind a per-pixel border test, so interior pixels (most of
them) pay nothing. Why not the in-kernel bounds condition (a mask on each tap's XOR, or a select on
its popcount, on the unpadded input)? It was built and measured: the mask itself folds into
``vpternlogq`` for free, but each (column, tap) needs a clamped address, a scalar validity test and a
broadcast of the mask into a vector register (a port-5 µop shared with ``vpopcntq``), which costs
little at 256 channels (4 words per tap: 56 µs either way for 3x3, 256->256 channels, 14x14) and
about 50% at 64 channels (one word per tap: 88 µs against 58 for 3x3, 64->64, 56x56; Xeon with AMX
and AVX512-VPOPCNTDQ, 2 threads).

Kernel (:func:`binary_compute`, scheduled after fusion by :func:`schedule_binary`): weights ``[O/L, KH, KW, CW + 1, L]`` (L = 8 uint64 lanes at 512
bits, 4 at 256; one vector load per lane block, tap and word). A register tile of ``cols`` output
columns × ``blocks`` lane blocks is accumulated in uint64 vector registers over (kh, kw, word): per
column one broadcast activation word, XOR with the block's weight vector, ``ctpop`` (LLVM emits
``vpopcntq`` with AVX512-VPOPCNTDQ; the ``vpshufb`` nibble lookup + ``vpsadbw`` on AVX2), add.
Parallel over output rows (each task walks its row's lane-block tiles and column tiles; finer tasks
measured slower: their per-task accumulator workspace and epilogue). The epilogue subtracts the
correction on border pixels and narrows to int32; FuseOps appends the bias and the requantization
(and whatever elementwise ops follow), which run in the same per-row epilogue, so the int32 sums
never reach memory. The step is three vector µops (XOR, popcount, add)
for 512 one-bit products; a 512-bit ``vpdpbusd`` is one µop for 64 8-bit products, and both run on
the same two vector ports, so the binary kernel's ceiling is about 3x the 8-bit one's, not 8x.

:func:`pack_activation_func`: the Relax-callable int8 ±1 NHWC -> uint64 packing (one 64-lane sign
test and OR-reduction per word; ``vpmovb2m`` on AVX-512BW), zero words at the padding, parallel
over rows.

ISA: ``ctpop`` becomes ``vpopcntq`` only where the target has ``avx512vpopcntdq``. Ice Lake and later
CPUs (``icelake-server``, ``sapphirerapids``, ``rocketlake``) imply it through ``-mcpu``; the ``vnni``
family does not require it (Cascade Lake has AVX512-VNNI without it; there LLVM emits the lookup
popcount on zmm: exact, slower). :func:`tvm_benchmark.isa.llvm_attrs` adds ``+avx512vpopcntdq``
where the host has the ``avx512_vpopcntdq`` flag (for hosts whose LLVM CPU name does not imply it)
and switches GFNI off below ``amx``.

Latency against the project's 8-bit convolution of the same shape on this host:
:func:`compare_latency`, run by ``python -m tvm_benchmark.apps.binary_kernels`` (``make bench``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import Schedule
from tvm.script import tirx as T

from tvm_benchmark import isa as I
from tvm_benchmark.schedules import (CONV, INT32_MAX, conv_schedule, finish_schedule, schedule_conv_func,
                                     with_output)
from tvm_benchmark.targets import make_target

__all__ = ["WORD_BITS", "Pad", "words", "out_hw", "pack_bits", "pack_weight_bits",
           "pack_activation_func", "binary_compute", "BinaryConvPlan", "schedule_binary", "plan_binary", "compare_latency"]

WORD_BITS = 64
#: Spatial padding ``(top, left, bottom, right)``.
Pad = tuple[int, int, int, int]


def words(channels: int) -> int:
    """``CW``: uint64 words per pixel for ``channels`` packed channels."""
    return -(-channels // WORD_BITS)


def out_hw(in_hw: tuple[int, int], ksize: tuple[int, int], stride: tuple[int, int], pad: Pad) -> tuple[int, int]:
    """``(OH, OW)`` of the convolution of an unpadded ``in_hw`` input."""
    (h, w), (kh, kw), (sh, sw) = in_hw, ksize, stride
    return (h + pad[0] + pad[2] - kh) // sh + 1, (w + pad[1] + pad[3] - kw) // sw + 1


def pack_bits(x: np.ndarray) -> np.ndarray:
    """NumPy reference packing: ±1 ``[..., C]`` -> uint64 ``[..., CW]``, channel ``c`` -> bit ``c mod 64``
    of word ``c div 64``, set for −1; bits beyond ``C`` are 0."""
    c = x.shape[-1]
    bits = np.zeros((*x.shape[:-1], words(c) * WORD_BITS), np.uint64)
    bits[..., :c] = np.asarray(x) < 0
    bits = bits.reshape(*x.shape[:-1], words(c), WORD_BITS)
    return np.bitwise_or.reduce(bits << np.arange(WORD_BITS, dtype=np.uint64), axis=-1)


def pack_weight_bits(w: np.ndarray, lanes: int = 8) -> np.ndarray:
    """OIHW ±1 int8 ``[O, C, KH, KW]`` -> uint64 ``[O/lanes, KH, KW, CW + 1, lanes]``: ``lanes``
    consecutive output channels adjacent; words ``0..CW-1`` are the bits of :func:`pack_bits`, word
    ``CW`` is the integer ``P[o, kh, kw]`` = the tap's number of −1 weights (the padding correction).
    ``O`` must be a multiple of ``lanes`` (8 for 512-bit vectors, 4 for 256)."""
    w = np.asarray(w)
    o, _, kh, kw = w.shape
    if o % lanes:
        raise ValueError(f"{o} output channels are not a multiple of {lanes} lanes")
    hwc = w.transpose(0, 2, 3, 1)                                       # [O, KH, KW, C]
    packed = np.concatenate([pack_bits(hwc), (hwc < 0).sum(-1, keepdims=True).astype(np.uint64)], axis=-1)
    return np.ascontiguousarray(packed.reshape(o // lanes, lanes, kh, kw, -1).transpose(0, 2, 3, 4, 1))


def _sign_word(x, n, y, col, first: int, lanes: int, dtype: str):
    """uint64 whose bit ``i`` is set where ``x[n, y, col, first + i]`` (``i < lanes``) is negative."""
    zero = T.Cast(dtype, 0)
    if lanes == 1:
        return T.Cast("uint64", x[n, y, col, first] < zero)
    return T.call_llvm_pure_intrin("uint64", "llvm.vector.reduce.or", T.Select(
        x.vload([n, y, col, first], f"{dtype}x{lanes}") < T.broadcast(zero, lanes),
        T.shift_left(T.broadcast(T.uint64(1), lanes), T.Ramp(T.uint64(0), T.uint64(1), lanes)),
        T.broadcast(T.uint64(0), lanes)))


def pack_activation_func(batch: int, h: int, w: int, channels: int, pad: Pad = (0, 0, 0, 0),
                         dtype: str = "int8") -> tvm.tirx.PrimFunc:
    """Scheduled PrimFunc ``(x dtype [B, H, W, C], out uint64 [B, H + top + bottom, W + left +
    right, CW])``: :func:`pack_bits` of ``sign(x)`` (a bit set where ``x < 0``), with 0 words at the
    ``pad`` border (the layout :func:`binary_compute` reads; no ``pad``: ``[B, H, W, CW]``). ``x`` is
    the ±1 tensor itself or, ``dtype`` int16/int32, the signed integers the sign is taken of, so the
    sign needs no kernel and no tensor of its own. One vector sign test and OR-reduction per word;
    parallel over (batch, padded rows). Marked by :func:`~tvm_benchmark.schedules.finish_schedule`."""
    pt, pl, pb, pr = pad
    hp, wp = h + pt + pb, w + pl + pr
    cw, full, tail = words(channels), channels // WORD_BITS, channels % WORD_BITS

    def word(x, n, y, col, j):
        if not tail:
            return _sign_word(x, n, y, col, j * WORD_BITS, WORD_BITS, dtype)
        last = _sign_word(x, n, y, col, full * WORD_BITS, tail, dtype)
        if not full:
            return last
        return T.if_then_else(j < full, _sign_word(x, n, y, col, j * WORD_BITS, WORD_BITS, dtype), last)

    @T.prim_func(s_tir=True)
    def pack(x: T.Buffer((batch, h, w, channels), dtype), out: T.Buffer((batch, hp, wp, cw), "uint64")):
        for r in T.parallel(batch * hp):
            for col, j in T.grid(wp, cw):
                with T.sblock("pack"):
                    vr, vc, vj = T.axis.remap("SSS", [r, col, j])
                    T.reads(x[vr // hp, 0:h, 0:w, 0:channels])
                    T.writes(out[vr // hp, vr % hp, vc, vj])
                    if pt <= vr % hp and vr % hp < pt + h and pl <= vc and vc < pl + w:
                        out[vr // hp, vr % hp, vc, vj] = word(x, vr // hp, vr % hp - pt, vc - pl, vj)
                    else:
                        out[vr // hp, vr % hp, vc, vj] = T.uint64(0)

    return finish_schedule(Schedule(pack))


def _register_tile(ow: int, lane_blocks: int, registers: int, reserved: int, max_cols: int = 8,
                   max_blocks: int = 2) -> tuple[int, int]:
    """(columns, lane blocks) of uint64 accumulators held in vector registers: the largest product
    with ``cols·blocks + blocks + reserved <= registers`` (ties: more columns per weight load)."""
    best = (1, 1)
    for cols in range(min(ow, max_cols), 0, -1):
        if ow % cols:
            continue
        for blocks in range(1, max_blocks + 1):
            if lane_blocks % blocks or cols * blocks + blocks + reserved > registers:
                continue
            if cols * blocks > best[0] * best[1]:
                best = (cols, blocks)
    return best


def _valid_count(pos, k: int, size: int, before: int):
    """In-bounds taps of a window starting at padded position ``pos`` (``before`` = leading pad)."""
    start = pos - before
    return tvm.tirx.max(tvm.tirx.min(start + k, size) - tvm.tirx.max(start, 0), 0)


def binary_compute(plan: "BinaryConvPlan", batch: int, in_hw: tuple[int, int], channels: int, out_channels: int,
                   ksize: tuple[int, int], stride: tuple[int, int], pad: Pad) -> tvm.tirx.PrimFunc:
    """Unscheduled, output-elementwise-fusable ``(data uint64 [B, H + top + bottom, W + left + right,
    CW] (the packed input with 0-word padding: :func:`pack_activation_func`), weight uint64 [O/L, KH,
    KW, CW + 1, L] (:func:`pack_weight_bits`)) -> int32 [B, OH, OW, O]``: the exact zero-padded ±1
    convolution of the unpadded ``in_hw`` = (H, W) input, L = ``plan.lanes``. FuseOps appends the
    bias and requantization that read it; :func:`schedule_binary` schedules the fused function."""
    lanes = plan.lanes
    (h, w_), (kh, kw), (sh, sw) = in_hw, ksize, stride
    pt, pl, pb, pr = pad
    oh, ow = out_hw(in_hw, ksize, stride, pad)
    cw = words(channels)
    if out_channels % lanes:
        raise ValueError(f"{out_channels} output channels are not a multiple of {lanes} lanes")
    if channels * kh * kw > INT32_MAX:
        raise ValueError(f"|out| <= C·KH·KW = {channels * kh * kw} does not fit int32")
    data = te.placeholder((batch, h + pt + pb, w_ + pl + pr, cw), "uint64", name="data")
    wt = te.placeholder((out_channels // lanes, kh, kw, cw + 1, lanes), "uint64", name="weight")
    rh, rw, rc = te.reduce_axis((0, kh), "rh"), te.reduce_axis((0, kw), "rw"), te.reduce_axis((0, cw), "rc")
    acc = te.compute((batch, oh, ow, out_channels // lanes, lanes), lambda n, y, x, ob, oi: te.sum(
        tvm.tirx.popcount(data[n, y * sh + rh, x * sw + rw, rc] ^ wt[ob, rh, rw, rc, oi]), axis=[rh, rw, rc]),
        name=CONV)
    zero = tvm.tirx.const(0, "uint64")

    def correction(y, x, ob, oi):
        """Σ P over the out-of-bounds taps; evaluated (lazily) only on border pixels."""
        total = zero
        for a in range(kh):
            for b in range(kw):
                iy, ix = y * sh + a - pt, x * sw + b - pl
                outside = tvm.tirx.any(iy < 0, iy >= h, ix < 0, ix >= w_)
                total = total + tvm.tirx.Select(outside, wt[ob, a, b, cw, oi], zero)
        border = tvm.tirx.any(y * sh < pt, y * sh - pt + kh > h, x * sw < pl, x * sw - pl + kw > w_)
        return tvm.tirx.if_then_else(border, total, zero)

    def value(n, y, x, o):
        return ((channels * _valid_count(y * sh, kh, h, pt) * _valid_count(x * sw, kw, w_, pl)).astype("int32")
                - 2 * (acc[n, y, x, o // lanes, o % lanes] - correction(y, x, o // lanes, o % lanes)).astype("int32"))
    return with_output(acc, [data, wt], plan, False, value)


@dataclass(frozen=True)
class BinaryConvPlan:
    """One binary convolution: ``lanes`` uint64 output channels per vector (8 at 512 bits, 4 at 256).
    The schedule is the same on every CPU (LLVM splits 512-bit vectors on a narrower target and lowers
    ``ctpop`` to what the target has), so no emulated variant is needed for tests."""
    lanes: int = 8
    tile: tuple[int, int] | None = None     # (columns, lane blocks) instead of the planner's

    def pack(self, w: np.ndarray) -> np.ndarray:
        """OIHW ±1 int8 -> uint64 ``[O/L, KH, KW, CW + 1, L]`` (:func:`pack_weight_bits`)."""
        return pack_weight_bits(w, self.lanes)

    @property
    def name(self) -> str:
        """The kernel's name in a fused function's conv block."""
        return f"popcount_{self.lanes}"

    def compute_func(self, batch: int, in_hw: tuple[int, int], channels: int, out_channels: int,
                     ksize: tuple[int, int], stride: tuple[int, int], pad: Pad) -> tvm.tirx.PrimFunc:
        """:func:`binary_compute`: unscheduled, its epilogue fused by FuseOps."""
        return binary_compute(self, batch, in_hw, channels, out_channels, ksize, stride, pad)

    def prim_func(self, batch: int, in_hw: tuple[int, int], channels: int, out_channels: int,
                  ksize: tuple[int, int], stride: tuple[int, int], pad: Pad) -> tvm.tirx.PrimFunc:
        """The kernel alone, scheduled: ``(data uint64 [B, H + top + bottom, W + left + right, CW],
        weight = pack(w), out int32 [B, OH, OW, O])`` for the unpadded ``in_hw``."""
        return schedule_conv_func(self.compute_func(batch, in_hw, channels, out_channels, ksize, stride, pad))


@conv_schedule(BinaryConvPlan)
def schedule_binary(sch: Schedule, blk, plan: BinaryConvPlan, emulate: bool, epilogue: str) -> None:
    """Register-tiled schedule of a popcount conv block (uint64 accumulators of ``cols`` columns ×
    ``blocks`` lane blocks in vector registers), parallel over output rows, and its epilogue (the
    border correction, bias and requantization) per row from the row's accumulators. ``emulate`` is
    ignored: the schedule is the same on every CPU."""
    n, y, x, ob, oi, lh, lw, lc = sch.get_loops(blk)
    ow, lane_blocks, cw = (int(sch.get(loop).extent) for loop in (x, ob, lc))
    # 32 zmm: the tile, the weight vectors, a broadcast and a temporary; 16 ymm: the lookup
    # popcount also holds its nibble mask, table and psadbw zero, and two temporaries. Two lane
    # blocks only from two words per tap on (measured on the 56x56x64 layer, one word: 8x1 columns x
    # blocks 56-59 µs, 8x2 62-63, 4x4 61-62; 14x14x256, four words: 7x1, 7x2, 14x1, 7x4 within 3%).
    wide = plan.lanes >= 8
    cols, blocks = plan.tile or _register_tile(ow, lane_blocks, 32 if wide else 16, 3 if wide else 6,
                                               max_blocks=2 if cw >= 2 else 1)
    xo, xi = sch.split(x, [None, cols])
    obo, obi = sch.split(ob, [None, blocks])
    sch.reorder(n, y, obo, xo, lh, lw, lc, xi, obi, oi)
    task = sch.fuse(n, y)
    sch.parallel(task)
    sch.set_scope(blk, 0, "local")
    epi = sch.get_sblock(epilogue)
    sch.reverse_compute_at(epi, task)
    sch.unroll(xi)
    sch.unroll(obi)
    sch.vectorize(oi)                         # before the init is split off (then it is no reduction)
    init = sch.decompose_reduction(blk, lh)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.split(sch.get_loops(epi)[-1], [None, plan.lanes])[1])


def plan_binary(isa: I.Isa | None, w: np.ndarray, act_binary: bool, groups: int) -> BinaryConvPlan | None:
    """The binary kernel for ``isa`` (lanes from ``isa.vector_bits``) when the activations are ±1
    (``act_binary``), ``groups == 1``, every OIHW weight is exactly ±1 and the output channels fill
    whole vectors; else None."""
    w = np.asarray(w)
    if isa is None or not act_binary or groups != 1 or w.ndim != 4 or not np.isin(w, (-1, 1)).all():
        return None
    lanes = isa.vector_bits // WORD_BITS
    return BinaryConvPlan(lanes) if w.shape[0] % lanes == 0 else None


def _median_us(lib, args: list, number: int, repeat: int) -> float:
    timer = lib.mod.time_evaluator("main", tvm.cpu(0), number=number, repeat=repeat)
    return float(np.median(timer(*args).results)) * 1e6


def compare_latency(isa: I.Isa, channels: int, out_channels: int, hw: int, k: int = 3, pad: int = 1,
                    threads: int = 2, int8_weights: str = "int8", number: int = 20, repeat: int = 30,
                    seed: int = 0) -> dict[str, float | str]:
    """Median latencies (µs) on this host of the binary conv (:meth:`BinaryConvPlan.prim_func`, on packed padded
    input), its activation packing, and the project's 8-bit conv of the same shape
    (:func:`~tvm_benchmark.schedules.plan_conv` for ``uint8`` data in [0, 255], pre-padded, batch 1,
    stride 1), all built with ``threads`` threads (the caller sets ``TVM_NUM_THREADS`` to match).
    ``int8_weights``: ``"int8"`` (uniform in [−128, 127]: the general 8-bit conv) or ``"pm1"`` (the
    same ±1 weights, which let the avx2 planner take its faster small-weight kernel)."""
    from tvm_benchmark.runtime import request_amx
    from tvm_benchmark.schedules import plan_conv

    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-1, 1], np.int8), (1, hw, hw, channels))
    w = rng.choice(np.array([-1, 1], np.int8), (out_channels, channels, k, k))
    p4 = (pad,) * 4
    oh, ow = out_hw((hw, hw), (k, k), (1, 1), p4)
    target = make_target("llvm", threads, isa)

    def build(func):
        return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)

    plan = plan_binary(isa, w, True, 1)
    packer = build(pack_activation_func(1, hw, hw, channels, p4))
    packed = tvm.runtime.tensor(np.zeros((1, hw + 2 * pad, hw + 2 * pad, words(channels)), "uint64"))
    t_pack = _median_us(packer, [tvm.runtime.tensor(x), packed], number, repeat)
    conv = build(plan.prim_func(1, (hw, hw), channels, out_channels, (k, k), (1, 1), p4))
    t_bin = _median_us(conv, [packed, tvm.runtime.tensor(plan.pack(w)),
                              tvm.runtime.tensor(np.zeros((1, oh, ow, out_channels), "int32"))], number, repeat)

    w8 = rng.integers(-128, 128, w.shape).astype(np.int8) if int8_weights == "int8" else w
    plan8 = plan_conv(isa, "uint8", 0, 255, w8, 1, out_w=ow)
    hp = hw + 2 * pad
    d = rng.integers(0, 256, (1, hp, hp, channels)).astype(plan8.kernel.act_dtype)   # vpmaddwd: int16
    if plan8.pixel_groups:      # (stride 1: groups of one pixel, the NHWC array itself)
        request_amx()
    lib8 = tvm.compile(tvm.IRModule({"main": plan8.prim_func(1, (hp, hp), channels, out_channels, (k, k), (1, 1))
                                     .with_attr("global_symbol", "main")}), make_target("llvm", threads, isa))
    t8 = _median_us(lib8, [tvm.runtime.tensor(d), tvm.runtime.tensor(plan8.pack(w8)),
                           tvm.runtime.tensor(np.zeros((1, oh, ow, out_channels), "int32"))],
                    number, repeat)
    return {"binary_us": t_bin, "pack_us": t_pack, "int8_us": t8, "int8_kernel": plan8.kernel.name,
            "ratio": t8 / t_bin, "ratio_with_pack": t8 / (t_bin + t_pack)}
