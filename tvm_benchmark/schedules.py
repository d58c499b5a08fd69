"""Hand-written CPU schedules for the integer program (TVM's default Relax pipeline schedules nothing).

- :func:`plan_conv` picks, per convolution, the fastest exact kernel of the ISA family
  (:mod:`tvm_benchmark.isa`) from the layer's proven bounds — AMX tiles, ``vpdpbusd``, grouped or
  plain ``vpmaddubsw``, ``vpmaddwd`` (:mod:`tvm_benchmark.intrinsics`) — or None (generic conv2d).
- :func:`conv2d_tensorized`: an NHWC integer convolution tensorized with one vector
  :class:`~tvm_benchmark.intrinsics.DotKernel` step; weights packed
  ``[O/L, KH, KW, C/(G·k), G, L, k]`` at export so one vector load feeds one step; the output is
  tiled over columns × lane blocks in registers, parallel over (batch, rows, column tiles, channel
  tiles).
- :func:`conv2d_amx`: the same convolution on AMX tiles (``M`` output pixels × 16·NT channels per
  step, accumulators held in tile registers across the reduction).
- :func:`schedule_generic`: every other kernel (the fused requantization epilogues, pads, pooling,
  the classifier): inline producers, then parallelize and vectorize the spatial loops.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import Schedule, ScheduleError
from tvm.tirx.analysis import undefined_vars

from tvm_benchmark.intrinsics import DotKernel, intrinsic
from tvm_benchmark.intrinsics.x86_amx import K_BYTES, AmxKernel, intrinsics as amx_intrinsics
from tvm_benchmark.intrinsics.x86_madd import pmaddubsw, pmaddwd
from tvm_benchmark.intrinsics.x86_vnni import vpdpbusd
from tvm_benchmark.isa import Isa
from tvm_benchmark.tensorcore import OUT_EWISE_FUSABLE, has_block, i64

__all__ = ["SCHEDULED", "CONV", "CONV_OUT", "INT32_MAX", "GROUPS", "ConvPlan", "plan_conv",
           "pack_weight", "conv_schedule", "with_output", "epilogue_at", "schedule_conv_func", "schedule_convs",
           "finish_schedule", "schedule_function", "schedule_generic"]

SCHEDULED = "hawq.scheduled"
CONV, CONV_OUT = "hawq_conv", "hawq_conv_out"   # block names the post-fusion schedule looks for
INT32_MAX = 2 ** 31 - 1
GROUPS = (4, 2, 1)   # vpmaddubsw steps summed in int16 before widening, most first (8 measured no faster)
#: Kernels of the planned convolutions by name (a fused function's conv block names its kernel).
_KERNELS: dict[str, object] = {}
#: Schedule of a conv block per kernel type: ``fn(sch, conv block, kernel, emulate, epilogue block name)``.
_SCHEDULES: dict[type, object] = {}


def conv_schedule(kernel_type: type):
    """Decorator: register the post-fusion schedule of the conv blocks whose kernel is a
    ``kernel_type`` (:func:`schedule_conv_func` dispatches on the kernel the block names)."""
    def deco(fn):
        _SCHEDULES[kernel_type] = fn
        return fn
    return deco


@dataclass(frozen=True)
class ConvPlan:
    """How one convolution runs: ``kernel`` on activations shifted by ``act_shift`` (128 when signed
    int8 data feeds an unsigned-operand instruction: the front end adds 128 and folds −128·ΣW into
    the bias, exactly). ``emulate`` builds the identical schedule with the kernel's scalar description
    in place of the instruction (tests: proves a schedule on a CPU that lacks the instruction).
    ``groups``: the convolution's groups (vector kernels only: each group's output channels are whole
    lane blocks, each group's input channels whole steps, so a step broadcasts from its own group)."""
    kernel: DotKernel | AmxKernel
    act_shift: int = 0
    emulate: bool = False
    groups: int = 1
    #: An AMX 1x1, stride-1, unpadded conv over all B·H·W pixels as one row (the input viewed as
    #: ``[1, 1, B·H·W, C]``): tiles of up to 16 rows across image rows and images, where one image
    #: row (7 or 14 pixels in ResNet's last stages) would fill a tile only partly or pair no tiles.
    flat: bool = False

    @property
    def pixel_groups(self) -> bool:
        """True when the kernel reads its input as groups of stride-many pixels, ``[B, H, W/S, S·C]``
        (AMX; a reshape of NHWC whose width is a multiple of the stride)."""
        return isinstance(self.kernel, AmxKernel)

    def pack(self, w: np.ndarray) -> np.ndarray:
        if self.window:     # OIHW -> [O, 64 = (kw, channel) bytes of a window, KH, 1], zeros elsewhere
            o, c, kh, kw = w.shape
            pb = self.kernel.pixel_bytes
            wide = np.zeros((o, kw, pb, kh), w.dtype)
            wide[:, :, :c] = w.transpose(0, 3, 1, 2)
            w = np.pad(wide.reshape(o, kw * pb, kh), ((0, 0), (0, K_BYTES - kw * pb), (0, 0)))[..., None]
        return pack_weight(w, self.kernel)

    def compute_func(self, batch: int, in_hw: tuple[int, int], channels: int, out_channels: int,
                     ksize: tuple[int, int], stride: tuple[int, int]) -> tvm.tirx.PrimFunc:
        """Unscheduled ``(data, packed weight) -> acc [B,OH,OW,O] int32``, output-elementwise fusable:
        FuseOps appends the bias, requantization, clip, ReLU, residual add and cast that read it, and
        :func:`schedule_convs` schedules the fused function (the epilogue runs from each task's
        register tile, so the int32 accumulators never reach memory)."""
        kernel = self.kernel
        if self.window:
            kernel = dataclasses.replace(kernel, step=stride[1] * kernel.pixel_bytes)
        if self.flat:
            if ksize != (1, 1) or stride != (1, 1):
                raise ValueError(f"a flat conv is 1x1 with stride 1, not {ksize} / {stride}")
            return _amx_compute(kernel, 1, (1, batch * in_hw[0] * in_hw[1]), channels, out_channels, ksize, stride,
                                self.emulate, image=(batch, *in_hw))
        if isinstance(kernel, AmxKernel):
            return _amx_compute(kernel, batch, in_hw, channels, out_channels, ksize, stride, self.emulate)
        return _dot_compute(kernel, batch, in_hw, channels, out_channels, ksize, stride, self.emulate, self.groups)

    @property
    def window(self) -> bool:
        """True for the AMX window form (few input channels: the kernel reads ``[B, H, W·P]`` rows of
        ``P`` = ``kernel.pixel_bytes`` bytes per pixel, see :class:`AmxKernel`)."""
        return isinstance(self.kernel, AmxKernel) and self.kernel.pixel_bytes > 0

    def input_width(self, width: int, kw: int, sw: int) -> int:
        """Pixels per (padded) input row the kernel reads: ``width``, plus, in the window form, what
        the last output column's 64-byte window overhangs (those pixels meet zero weights)."""
        if not self.window:
            return width
        ow, pb = (width - kw) // sw + 1, self.kernel.pixel_bytes
        return max(width, -(-(sw * pb * (ow - 1) + K_BYTES) // pb))

    def prim_func(self, batch: int, in_hw: tuple[int, int], channels: int, out_channels: int,
                  ksize: tuple[int, int], stride: tuple[int, int]) -> tvm.tirx.PrimFunc:
        """:meth:`compute_func` scheduled on its own (no epilogue): kernel tests and benchmarks."""
        return schedule_conv_func(self.compute_func(batch, in_hw, channels, out_channels, ksize, stride))


def _vector_menu(isa: Isa, bits: int) -> list:
    if isa.name in ("vnni", "amx"):
        return [vpdpbusd(bits)]
    if isa.name == "avxvnni":
        return [vpdpbusd(256)] if bits == 256 else []
    if isa.name == "avx512" or bits == 256:
        return [pmaddubsw(bits, g) for g in GROUPS] + [pmaddwd(bits)]
    return []


def _amx_rows(ow: int) -> int:
    """The largest divisor of the output width that fits a tile (16 rows)."""
    return max(m for m in range(1, 17) if ow % m == 0)


def _amx_tiling(ow: int) -> tuple[int, int]:
    """(rows per A tile, A tiles per step): two tiles of at least 8 rows (four accumulators, each B
    tile used twice: measured 10–40 % faster than one tile on 3x3 and 1x1 convs at 28x28 and 56x56)
    where the output width splits so, else one tile of :func:`_amx_rows`."""
    pair = _amx_rows(ow // 2) if ow % 2 == 0 else 0
    return (pair, 2) if pair >= 8 else (_amx_rows(ow), 1)


def plan_conv(isa: Isa | None, act_dtype: str, act_lo: int, act_hi: int, w: np.ndarray, groups: int,
              out_w: int | None = None, emulate: bool = False) -> ConvPlan | None:
    """The fastest exact kernel of ``isa`` for this conv (None: the generic Relax conv2d).

    ``act_lo``/``act_hi``: bounds of the stored (uncentered) activations in container ``act_dtype``;
    ``w``: OIHW int8 weights (``[O, C/groups, KH, KW]``); ``out_w``: output width (AMX tiles rows
    along it). Unsigned-operand kernels (vpmaddubsw, vpdpbusd, AMX) read ``int8`` data shifted by
    +128; a grouped vpmaddubsw is chosen only where 2·G·max|a|·max|w| <= 32767, a plain one where
    2·max|a|·max|w| <= 32767. A grouped convolution (``groups`` > 1) gets a vector kernel whose lanes
    divide each group's output channels and whose step divides each group's input channels (the
    depthwise ones go to :mod:`tvm_benchmark.depthwise`).
    """
    if isa is None or act_dtype not in ("uint8", "int8") or groups < 1 or w.shape[0] % groups:
        return None
    o, c = w.shape[:2]
    og = o // groups
    w64 = np.abs(w.astype(np.int64))
    w_abs = int(w64.max(initial=0))
    shift = 128 if act_dtype == "int8" else 0
    a_abs = max(abs(act_lo + shift), abs(act_hi + shift))
    if int(w64.reshape(o, -1).sum(1).max(initial=0)) * max(a_abs, abs(act_lo), abs(act_hi)) > INT32_MAX:
        return None    # the kernel's raw (uncentered) int32 sum itself is not proven to fit
    # One-row tiles (output width 1 or a prime above 16) go to the vector kernels: a 1-row tile
    # wastes 15/16 of each tdpbusd, and TensorIR drops the unit row loop the AMX intrinsics match.
    if isa.name == "amx" and groups == 1 and o % 32 == 0 and out_w and _amx_rows(out_w) > 1:
        rows, atiles = _amx_tiling(out_w)
        if c % 64 == 0:
            return ConvPlan(AmxKernel(rows, 2, atiles), shift, emulate)
        pixel = next((p for p in (4, 8, 16) if c <= p), 0)
        if pixel and w.shape[3] * pixel <= K_BYTES:    # every kw tap of a kh in one 64-byte window
            return ConvPlan(AmxKernel(rows, 2, atiles, pixel_bytes=pixel), shift, emulate)
    for bits in ((isa.vector_bits, 256) if isa.vector_bits == 512 else (256,)):
        fits = [k for k in _vector_menu(isa, bits) if og % k.lanes == 0]
        for k in fits:
            unsigned = k.act_dtype == "uint8"
            exact = k.exact_for(a_abs if unsigned else max(abs(act_lo), abs(act_hi)), w_abs)
            # (C is zero-padded to the step; a group's channels cannot be)
            if exact and ((k.channels <= 4 and groups == 1) or c % k.channels == 0):
                return ConvPlan(k, shift if unsigned else 0, emulate, groups)
    return None


def pack_weight(w: np.ndarray, kernel: DotKernel | AmxKernel) -> np.ndarray:
    """OIHW int8 weights -> the kernel's packed layout, in its weight dtype (C zero-filled up to a
    multiple of ``kernel.channels``): ``[O/L, KH, KW, C/(G·k), G, L, k]`` for vector steps,
    ``[O/(16·NT), KH, KW, C/64, NT, 16, 16, 4]`` for AMX (one 16 x 64-byte B tile per innermost three,
    the NT tiles of one step adjacent)."""
    o, c, kh, kw = w.shape
    if isinstance(kernel, AmxKernel):
        cp = -(-c // 64) * 64
        w = np.pad(w.astype("int8"), ((0, 0), (0, cp - c), (0, 0), (0, 0)))
        w = w.reshape(o // (16 * kernel.ntiles), kernel.ntiles, 16, cp // 64, 16, 4, kh, kw)
        return np.ascontiguousarray(w.transpose(0, 6, 7, 3, 1, 4, 2, 5))
    lanes, groups, k = kernel.lanes, kernel.groups, kernel.k
    step = groups * k
    cp = -(-c // step) * step
    w = np.pad(w.astype(kernel.weight_dtype), ((0, 0), (0, cp - c), (0, 0), (0, 0)))
    w = w.reshape(o // lanes, lanes, cp // step, groups, k, kh, kw)
    return np.ascontiguousarray(w.transpose(0, 5, 6, 2, 3, 1, 4))


def _register_tile(ow: int, lane_blocks: int, registers: int, max_cols: int = 8,
                   max_blocks: int = 4) -> tuple[int, int]:
    """(columns, lane blocks) of accumulators held in vector registers: the largest product that
    leaves room for the weight vectors and the broadcast (``registers`` = 16 or 32), with at most
    ``max_cols`` columns and ``max_blocks`` lane blocks (ties: more columns per weight load)."""
    best = (1, 1)
    for cols in (8, 7, 6, 5, 4, 3, 2, 1):
        if ow % cols or cols > max_cols:
            continue
        for blocks in range(1, max_blocks + 1):
            if lane_blocks % blocks or cols * blocks + blocks + 1 > registers - 2:
                continue
            if cols * blocks > best[0] * best[1]:
                best = (cols, blocks)
    if best[0] * best[1] < 4 and max_cols < 8:   # e.g. 7 columns: more columns beat tiny tiles
        return _register_tile(ow, lane_blocks, registers, 8, max_blocks)
    return best


def with_output(acc: te.Tensor, args: list, kernel, emulate: bool, value=None,
                image: tuple[int, int, int] | None = None) -> tvm.tirx.PrimFunc:
    """The unscheduled, output-elementwise-fusable PrimFunc of ``acc`` [B,OH,OW,O/L,L] (block
    :data:`CONV`) plus its 4-D view ``[B,OH,OW,O]`` (block :data:`CONV_OUT`, the function's output;
    ``value(n, y, x, o)`` instead of ``acc[n, y, x, o // L, o % L]`` where the view also corrects
    it; ``image`` = (B, H, W) where ``acc`` is a flat conv's ``[1, 1, B·H·W, O/L, L]``): FuseOps
    appends the bias, requantization, clip, ReLU, residual add and cast that read it, and
    :func:`schedule_convs` schedules the fused function with ``kernel``'s registered schedule
    (:func:`conv_schedule`; ``kernel.name`` names it in the conv block)."""
    b, oh, ow, ob, lanes = (int(d) for d in acc.shape)
    if image is not None:   # acc [1, 1, B·H·W, ...] of a flat conv, viewed as the [B, H, W, O] image
        b, oh, ow = image
        value = value or (lambda n, y, x, o: acc[0, 0, (n * oh + y) * ow + x, o // lanes, o % lanes])
    out = te.compute(i64(b, oh, ow, ob * lanes), value or (lambda n, y, x, o: acc[n, y, x, o // lanes, o % lanes]),
                     name=CONV_OUT)
    sch = Schedule(te.create_prim_func([*args, out]))
    sch.annotate(sch.get_sblock(CONV), "hawq.kernel", kernel.name)
    sch.annotate(sch.get_sblock(CONV), "hawq.emulate", int(emulate))
    _KERNELS[kernel.name] = kernel
    return sch.mod["main"].without_attr("global_symbol").with_attr("op_pattern", OUT_EWISE_FUSABLE)


def _dot_compute(kernel: DotKernel, batch: int, in_hw: tuple[int, int], channels: int, out_channels: int,
                 ksize: tuple[int, int], stride: tuple[int, int], emulate: bool,
                 conv_groups: int = 1) -> tvm.tirx.PrimFunc:
    """``(data [B,H,W,C'] kernel.act_dtype (already padded), w = pack_weight(...)) -> [B,OH,OW,O]``
    int32, C' a multiple of ``kernel.channels`` (per conv group): the exact integer convolution,
    unscheduled. A grouped conv's lane block ``ob`` reads the input channels of its group
    ``ob // (O / (G·L))`` (from the channel ``group · C'/G`` on)."""
    h, w_ = in_hw
    (kh, kw), (sh, sw) = ksize, stride
    oh, ow = (h - kh) // sh + 1, (w_ - kw) // sw + 1
    lanes, g, k = kernel.lanes, kernel.groups, kernel.k
    cg, blocks = channels // conv_groups, out_channels // conv_groups // lanes

    def base(ob):   # the first input channel of lane block ob's conv group
        return (ob // blocks) * cg if conv_groups > 1 else 0

    data = te.placeholder(i64(batch, h, w_, channels), kernel.act_dtype, name="data")
    wt = te.placeholder(i64(out_channels // lanes, kh, kw, cg // (g * k), g, lanes, k), kernel.weight_dtype,
                        name="weight")
    rh, rw = te.reduce_axis(i64(0, kh), "rh"), te.reduce_axis(i64(0, kw), "rw")
    rc, rk = te.reduce_axis(i64(0, cg // (g * k)), "rc"), te.reduce_axis(i64(0, k), "rk")
    shape = i64(batch, oh, ow, out_channels // lanes, lanes)
    if g == 1:   # no unit group axis: TensorIR would keep its loop and tensorize would not match
        acc = te.compute(shape, lambda n, y, x, ob, oi: te.sum(
            data[n, y * sh + rh, x * sw + rw, base(ob) + rc * k + rk].astype("int32")
            * wt[ob, rh, rw, rc, 0, oi, rk].astype("int32"), axis=[rh, rw, rc, rk]), name=CONV)
    else:
        rg = te.reduce_axis(i64(0, g), "rg")
        acc = te.compute(shape, lambda n, y, x, ob, oi: te.sum(
            data[n, y * sh + rh, x * sw + rw, base(ob) + (rc * g + rg) * k + rk].astype("int32")
            * wt[ob, rh, rw, rc, rg, oi, rk].astype("int32"), axis=[rh, rw, rc, rg, rk]), name=CONV)
    return with_output(acc, [data, wt], kernel, emulate)


def _amx_compute(kernel: AmxKernel, batch: int, in_hw: tuple[int, int], channels: int, out_channels: int,
                 ksize: tuple[int, int], stride: tuple[int, int], emulate: bool,
                 image: tuple[int, int, int] | None = None) -> tvm.tirx.PrimFunc:
    """``(data [B,H,W/S,S·C] uint8, w = pack_weight(...)) -> [B,OH,OW,O]`` int32, unscheduled.

    ``data`` is the padded NHWC input viewed as groups of ``S`` = stride neighbouring pixels (a
    reshape, no copy: column ``x·S + rw`` is group ``x + rw div S``, member ``rw mod S`` at byte
    ``(rw mod S)·C`` of the group), so the M pixels of an A tile are one member of M consecutive
    groups: one strided ``tileloadd`` (row stride S·C bytes) for any stride.
    """
    if kernel.pixel_bytes:
        return _amx_window_compute(kernel, batch, in_hw, out_channels, ksize, stride, emulate)
    h, w_ = in_hw
    (kh, kw), (sh, sw) = ksize, stride
    oh, ow = (h - kh) // sh + 1, (w_ - kw) // sw + 1
    nt = kernel.ntiles
    data = te.placeholder(i64(batch, h, -(-w_ // sw), sw * channels), "uint8", name="data")
    wt = te.placeholder(i64(out_channels // (16 * nt), kh, kw, channels // 64, nt, 16, 16, 4), "int8", name="weight")
    rh, rw = te.reduce_axis(i64(0, kh), "rh"), te.reduce_axis(i64(0, kw), "rw")
    rc, rg, rk = (te.reduce_axis(i64(0, n), name) for n, name in ((channels // 64, "rc"), (16, "rg"), (4, "rk")))
    acc = te.compute(i64(batch, oh, ow, out_channels // 16, 16), lambda n, y, x, ob, oi: te.sum(
        data[n, y * sh + rh, x + rw // sw, rw % sw * channels + rc * 64 + rg * 4 + rk].astype("int32")
        * wt[ob // nt, rh, rw, rc, ob % nt, rg, oi, rk].astype("int32"), axis=[rh, rw, rc, rg, rk]), name=CONV)
    return with_output(acc, [data, wt], kernel, emulate, image=image)


def _amx_window_compute(kernel: AmxKernel, batch: int, in_hw: tuple[int, int], out_channels: int,
                        ksize: tuple[int, int], stride: tuple[int, int], emulate: bool) -> tvm.tirx.PrimFunc:
    """The window form (:class:`AmxKernel`): ``(data [B, H, W'·P] uint8, w) -> [B,OH,OW,O]`` int32,
    ``H × W`` the padded input, ``W'`` = :meth:`ConvPlan.input_width`, ``P`` bytes per pixel. A KH×1
    convolution over 64-byte windows starting every ``step`` = stride·P bytes (unit rw and rc axes
    keep the loop structure of the channel-tile form, so one schedule serves both)."""
    h, w_ = in_hw
    (kh, kw), (sh, sw) = ksize, stride
    oh, ow = (h - kh) // sh + 1, (w_ - kw) // sw + 1
    nt, pb, step = kernel.ntiles, kernel.pixel_bytes, kernel.step
    row = ConvPlan(kernel).input_width(w_, kw, sw) * pb
    data = te.placeholder(i64(batch, h, row), "uint8", name="data")
    wt = te.placeholder(i64(out_channels // (16 * nt), kh, 1, 1, nt, 16, 16, 4), "int8", name="weight")
    rh, rw, rc = (te.reduce_axis(i64(0, n), name) for n, name in ((kh, "rh"), (1, "rw"), (1, "rc")))
    rg, rk = te.reduce_axis(i64(0, 16), "rg"), te.reduce_axis(i64(0, 4), "rk")
    acc = te.compute(i64(batch, oh, ow, out_channels // 16, 16), lambda n, y, x, ob, oi: te.sum(
        data[n, y * sh + rh, x * step + (rw + rc) * K_BYTES + rg * 4 + rk].astype("int32")
        * wt[ob // nt, rh, rw, rc, ob % nt, rg, oi, rk].astype("int32"), axis=[rh, rw, rc, rg, rk]), name=CONV)
    return with_output(acc, [data, wt], kernel, emulate)


def _conv_loops(sch: Schedule, blk):
    """(n, y, x, ob, oi, rh, rw, rc, inner reduction loops) of a conv block."""
    loops = sch.get_loops(blk)
    return (*loops[:8], loops[8:])


def _extent(sch: Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _task_order(sch: Schedule, tasks: tuple, pixels: int, weight_rows: int) -> tuple:
    """The parallel task loops (n, y, column tile, channel block) in the order that streams the
    larger operand once: channel blocks fastest (each weight block read again per pixel tile) where
    the layer's input is the larger, channel blocks slowest (a thread's weight block stays in its
    cache over every pixel) where its weights are — ResNet's last stages, whose 3x3 weights (2.4 MB
    at 512 channels) exceed a core's L2. ``pixels`` = B·OH·OW against ``weight_rows`` = O·KH·KW
    (both times the input channels: the input and weight bytes, strides aside)."""
    n, y, xo, obo = tasks
    if _extent(sch, obo) > 1 and weight_rows > pixels:
        return obo, n, y, xo
    return n, y, xo, obo


def _conv_sizes(sch: Schedule, loops: tuple) -> tuple[int, int]:
    """(B·OH·OW, O·KH·KW) of a conv block from its loops (n, y, x, ob, oi, rh, rw, ...)."""
    n, y, x, ob, oi, lh, lw = (_extent(sch, lp) for lp in loops[:7])
    return n * y * x, ob * oi * lh * lw


@conv_schedule(DotKernel)
def _schedule_dot(sch: Schedule, blk, kernel: DotKernel, emulate: bool, epilogue: str) -> None:
    """Register-tiled, tensorized schedule of a vector conv block and its ``epilogue`` block."""
    n, y, x, ob, oi, lh, lw, lc, inner = _conv_loops(sch, blk)
    sizes = _conv_sizes(sch, (n, y, x, ob, oi, lh, lw))
    ow, lane_blocks, lanes = _extent(sch, x), _extent(sch, ob), kernel.lanes
    # Measured on znver3 (conv 3x3, 56x56x64): vpmaddwd, whose int16 weights are twice the bytes
    # per product, runs best with two lane blocks sharing each activation broadcast (4x2: 88-91
    # GMAC/s vs 73-83 for 8x1); the byte kernels best with one block and 7-8 columns (157-171).
    wide = lanes == 16
    if kernel.k == 2:
        cols, blocks = _register_tile(ow, lane_blocks, 32 if wide else 16, 4, 4 if wide else 2)
    else:
        cols, blocks = _register_tile(ow, lane_blocks, 32 if wide else 16, 8, 2 if wide else 1)
    xo, xi = sch.split(x, [None, cols])
    obo, obi = sch.split(ob, [None, blocks])
    order = _task_order(sch, (n, y, xo, obo), *sizes)
    sch.reorder(*order, lh, lw, lc, xi, obi, oi, *inner)
    task = sch.fuse(*order)
    sch.parallel(task)
    epilogue_at(sch, epilogue, task, lanes)
    init = sch.decompose_reduction(blk, lh)
    sch.tensorize(oi, intrinsic(kernel, emulate))
    sch.unroll(xi)
    sch.unroll(obi)
    sch.vectorize(sch.get_loops(init)[-1])


@conv_schedule(AmxKernel)
def _schedule_amx(sch: Schedule, blk, kernel: AmxKernel, emulate: bool, epilogue: str) -> None:
    """AMX tile schedule of a conv block (accumulators in tile registers across the reduction,
    stored once per task) and its ``epilogue`` block."""
    zero, dot, store = amx_intrinsics(kernel, emulate)
    n, y, x, ob, oi, lh, lw, lc, inner = _conv_loops(sch, blk)
    sizes = _conv_sizes(sch, (n, y, x, ob, oi, lh, lw))
    xo, xm = sch.split(x, [None, kernel.pixels])
    obo, obn = sch.split(ob, [None, kernel.ntiles])
    order = _task_order(sch, (n, y, xo, obo), *sizes)
    sch.reorder(*order, lh, lw, lc, xm, obn, oi, *inner)
    task = sch.fuse(*order)
    local = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(local, task)
    sch.parallel(task)
    epilogue_at(sch, epilogue, task, 16)
    init = sch.decompose_reduction(blk, lh)
    sch.tensorize(sch.get_loops(init)[-3], zero)
    sch.tensorize(xm, dot)
    sch.tensorize(sch.get_loops(local)[-3], store)


def _domain(sch: Schedule, name: str) -> list[int]:
    return [int(iv.dom.extent) for iv in sch.get(sch.get_sblock(name)).iter_vars]


def _inline_epilogue(sch: Schedule) -> tuple[str, str | None]:
    """Inline the per-element blocks after the conv (its 4-D view and whatever FuseOps put around
    it: bias, requantization, clip, ReLU, the residual operand's requantization and the add, cast)
    into the last of them; returns (that block, the last of what follows it or None). FuseOps may
    also append an injective op of another shape (the next conv's explicit padding): that part is
    inlined into its own last block, computed after the whole conv, not per task."""
    conv = sch.get_sblock(CONV)
    feeding = {sch.get(b).name_hint for b in sch.get_producers(conv)}
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    shape = _domain(sch, CONV_OUT)
    epilogue, rest, derived = [], [], {CONV}
    for name in names:
        if name == CONV or name in feeding:
            continue
        block = sch.get_sblock(name)
        if not any(sch.get(p).name_hint in derived for p in sch.get_producers(block)):
            # A block of parameters alone (a per-channel multiplier's cast, [1,1,1,O]): into its
            # readers; left in the chain, its other shape would end the per-task epilogue there.
            sch.compute_inline(block)
            continue
        derived.add(name)
        (epilogue if not rest and _domain(sch, name) == shape else rest).append(name)
    for name in epilogue[:-1] + rest[:-1]:
        sch.compute_inline(sch.get_sblock(name))
    return epilogue[-1], (rest[-1] if rest else None)


def epilogue_at(sch: Schedule, name: str, task, lanes: int) -> None:
    """Compute the epilogue block per task, right after the task's accumulators are complete (so
    they never leave the task's small buffer): iterated like the accumulators (channels split into
    lane blocks, which lets TensorIR match the regions), channels vectorized."""
    last = sch.get_sblock(name)
    conv = _domain(sch, CONV)
    b, h, w, _ = _domain(sch, name)
    if conv[:3] == [1, 1, b * h * w] and [b, h] != [1, 1]:     # a flat conv: pixels as one row, as its tasks
        # (n * 0: the index map must return expressions, not Python ints)
        sch.transform_block_layout(last, lambda n, y, x, o: (n * 0, n * 0, (n * h + y) * w + x, o // lanes, o % lanes))
    else:
        sch.transform_block_layout(last, lambda n, y, x, o: (n, y, x, o // lanes, o % lanes))
    sch.reverse_compute_at(last, task)
    sch.vectorize(sch.get_loops(last)[-1])


def schedule_conv_func(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """Schedule a function holding one planned conv block (:data:`CONV`) and the blocks after it."""
    sch = Schedule(func)
    blk = sch.get_sblock(CONV)
    ann = sch.get(blk).annotations
    kernel, emulate = _KERNELS[str(ann["hawq.kernel"])], bool(int(ann["hawq.emulate"]))
    last, after = _inline_epilogue(sch)
    _SCHEDULES[type(kernel)](sch, blk, kernel, emulate, last)
    if after is not None:
        _schedule_block(sch, sch.get_sblock(after), 16)
    return finish_schedule(sch)


def schedule_convs(mod: tvm.IRModule) -> tvm.IRModule:
    """Schedule every (fused) function holding a planned conv (:meth:`ConvPlan.compute_func`)."""
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and has_block(func, CONV):
            mod[gv] = schedule_conv_func(func)
    return mod


def finish_schedule(sch: Schedule) -> tvm.tirx.PrimFunc:
    """The scheduled function, marked so :func:`schedule_generic` leaves it alone; opaque to FuseOps
    (a function scheduled before fusion must not receive other blocks)."""
    func = sch.mod["main"].without_attr("global_symbol")
    return func.with_attr(SCHEDULED, True).with_attr("op_pattern", 8)


def _is_spatial(sch: Schedule, block) -> bool:
    return all(int(iv.iter_type) == 0 for iv in sch.get(block).iter_vars)


def _schedule_block(sch: Schedule, block, vector: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    if _is_spatial(sch, block):
        if len(loops) >= 3:
            # Image-shaped (NHWC, the phase layouts, flattened rows): tasks over the leading axes,
            # the innermost (two, of 4-D and more) fused and vectorized, so a lane's indices need one
            # division, not one per axis, and a padding test is uniform over a row.
            inner = 2 if len(loops) >= 4 else 1
            sch.parallel(sch.fuse(*loops[:-inner]))
            _vectorize_inner(sch, sch.fuse(*loops[-inner:]) if inner > 1 else loops[-1], vector)
            return
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
    # Vectorized (before the init is split off: TensorIR refuses the update block's loop after it;
    # the init's copy keeps the annotation) only where the lanes read contiguous memory (pools,
    # global sums, matmul). A generic (grouped) convolution's output channel also indexes its
    # weights' first axis and its input's group: its channel loop is only split by the vector
    # width and LLVM vectorizes that constant-trip loop itself (measured on regnetx006, batch 1:
    # 22 ms; 68 ms with TensorIR's gathers, 140 ms unsplit).
    if lead:
        sch.parallel(sch.fuse(*lead) if len(lead) > 1 else lead[0])
    if _lanes_contiguous(sch.get(block), ivs[n_spatial - 1].var, [iv.var for iv in ivs[n_spatial:]]):
        _vectorize_inner(sch, inner, vector)
    else:
        extent = sch.get(inner).extent
        if isinstance(extent, tvm.tirx.IntImm) and int(extent) % vector == 0 and int(extent) > vector:
            sch.split(inner, [None, vector])
    sch.decompose_reduction(block, reduce[0])


def _lanes_contiguous(block, lane, reduction: list) -> bool:
    """True when every buffer ``block`` reads or writes is indexed by the ``lane`` variable in its
    last axis only, and that axis reads no reduction variable with it (else lanes gather)."""
    for region in [*block.reads, *block.writes]:
        *outer, last = region.region
        if any(lane.same_as(v) for r in outer for v in undefined_vars(r.min)):
            return False
        used = undefined_vars(last.min)
        if any(lane.same_as(v) for v in used) and any(r.same_as(v) for v in used for r in reduction):
            return False
    return True


def _vectorize_inner(sch: Schedule, loop, vector: int) -> None:
    """Vectorize ``loop`` whole (extent <= 64) or by the widest of vector, vector/2, vector/4 that
    divides its extent."""
    extent = sch.get(loop).extent
    if not isinstance(extent, tvm.tirx.IntImm):
        return
    n = int(extent)
    if n <= 64 and n % vector:
        sch.vectorize(loop)
        return
    lanes = next((v for v in (vector, vector // 2, vector // 4) if v > 1 and n % v == 0), 0)
    if lanes:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


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
