"""Integer artifact graph (``hawq-integer-graph/1``) -> a Relax IRModule of integer ops.

Relax's frontends lower QDQ graphs to float, so the integer program is built here directly from the
artifact's node list, with the semantics of :mod:`hawq.reference` (int64 throughout there). Every
value gets a static integer interval; the smallest container dtype holding it is used, and each
accumulator's worst case is bounded before int32 is chosen, so narrowing never changes a result:

- activations feeding a conv/dense: ``uint8`` (post-ReLU, 4 and 8 bit) or ``int8`` (a kernel that
  reads unsigned bytes gets ``int8`` data as ``q + 128`` at offset 128, the −128·ΣW folded into the bias). A requant of a
  provably non-negative input (post-ReLU) is non-negative too, so profile ``hawq``'s signed 8-bit
  post-ReLU activations (``qmin = -128``) get the interval [0, 127] and a ``uint8`` container;
- conv/dense: Relax ``conv2d``/``matmul`` with ``out_dtype="int32"`` (int64 when the bound says so);
- requantization (``requant``, both terms of ``requant_add``), ``t = int64(acc)·m`` per channel, by the
  node's ``rounding`` field (:func:`hawq.reference.rounding_of`, :func:`hawq.numerics.requantize`):
  ``half_up`` (absent field) ``(t + 2^(s-1)) >> s``, ``half_even`` ``(t + 2^(s-1) - 1 + ((t >> s) & 1)) >> s``;
  then ``clip`` to the node's ``qmin``/``qmax``;
- residual adds: both terms requantized in int64, summed, saturated to ``qmin``/``qmax``: ``int16``
  container for 16-bit bounds, ``int32`` for profile ``hawq``'s int32 bounds (then ReLU, the next
  requantization and the global sum see an int32 value; the sum goes to int64 where its bound needs it);
- max pool and global sum on the integer accumulators; ``global_avgpool_trunc`` (``divisor`` N):
  ``truncdiv(100·sum + N, 100·N)`` (truncation toward zero), int32 or int64 by its bound.

The input quantizer is the only float computation (the graph's boundary, §9 of docs/numerics.md):
float32 divide, round half to even, clip; with ``reciprocal: true`` (profile ``hawq``) a float32
multiply by the float32 ``1/S`` and the zero point added before rounding, ``round(f32(1/S)·x + z)``,
as :func:`hawq.reference._op_quantize`. A nonzero zero point never reaches the integer ops: the first
conv reads the uncentered ``uint8`` q, pads with z, and gets ``-z·ΣW`` folded into its bias.
"""
from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax, te, tirx

from hawq.errors import HawqError
from hawq import ir
from hawq.ir import Interval
from tvm_benchmark.binary import BinaryConvPlan, out_hw as binary_out_hw, pack_activation_func, words
from tvm_benchmark.depthwise import DepthwisePlan
from tvm_benchmark.tensorcore import GemmPlan, GemmShape
from tvm_benchmark.schedules import ConvPlan

__all__ = ["LUT_SELECTS", "container", "Value", "LOWER", "FLOAT_REQUANT_KERNEL", "pool_after_epilogue", "build_module", "value_ranges", "node_outputs"]

#: Name of the one kernel after the input quantizer allowed to use floating point: profile ort's
#: requantization (:meth:`_Builder.requant_float`), checked op by op by :mod:`tvm_benchmark.ir_check`.
FLOAT_REQUANT_KERNEL = "hawq_float_requant"

#: ``planner(act_dtype, act_lo, act_hi, weight_oihw, groups, out_w) -> ConvPlan | None``: the
#: back end's choice of a hand-scheduled kernel for one convolution (:func:`tvm_benchmark.schedules.plan_conv`
#: bound to an ISA), called with ``binary=True`` first where the activation is on the sign grid (a
#: :class:`~tvm_benchmark.binary.BinaryConvPlan` may answer). The front end knows no ISA: it only
#: prepares the operands a plan asks for.
ConvPlanner = Callable[..., object]

#: Unsigned word dtype holding one pixel of P channel bytes (:meth:`_Builder._pack_pixels`; the
#: 3-channel stems pad to P = 4, the case the tests run).
_WORDS = {4: "uint32"}
_CONTAINERS = ("uint8", "int8", "int16", "int32", "int64")
_I64 = np.iinfo(np.int64)


def container(lo: int, hi: int) -> str:
    """Smallest integer dtype holding every integer in [lo, hi]."""
    for dt in _CONTAINERS:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    raise HawqError(f"integer range [{lo}, {hi}] does not fit in int64")


def _arith(dtype: str) -> str:
    """The container arithmetic runs in: int32 for the narrow ones, else the container itself."""
    return "int32" if dtype in ("uint8", "int8", "int16") else dtype


#: Largest number of steps of a non-decreasing lookup table lowered as compare-and-selects (Builder.lut).
LUT_SELECTS = 16


@dataclass
class Value:
    """A Relax tensor standing for the graph value ``expr - offset`` with bounds [lo, hi]."""
    expr: relax.Expr
    lo: int
    hi: int
    offset: int = 0          # nonzero only for the uncentered input quantizer output (offset = z)
    signed_of: "Value | None" = None   # an IR ``sign``'s input: the popcount packing reads it, not the ±1 tensor

    @property
    def dtype(self) -> str:
        return _dt(self.expr)

    @property
    def binary(self) -> bool:
        """On the sign grid {-1, +1} (an IR ``sign``'s output): popcount kernels may read it."""
        return self.signed_of is not None

    def absmax(self) -> int:
        return max(abs(self.lo), abs(self.hi))


def _channel_products(absmax: int, m: np.ndarray, s: np.ndarray) -> list[tuple[int, int]]:
    """Per channel (the largest |v·m| + 2^(s−1) for |v| <= absmax, s): the pre-shift bound of a
    requantization and its shift (``m``, ``s`` broadcast against each other)."""
    pairs = zip(*np.broadcast_arrays(np.asarray(m, np.int64).reshape(-1), np.asarray(s, np.int64).reshape(-1)))
    return [(absmax * abs(int(mi)) + (1 << max(int(si) - 1, 0)), int(si)) for mi, si in pairs]


def _rescaled_bound(absmax: int, m: np.ndarray, s: np.ndarray) -> int:
    """The largest |round(v·m / 2^s)| over the channels for |v| <= absmax (half up or half even)."""
    return max(t >> si for t, si in _channel_products(absmax, m, s))


def _dt(e: relax.Expr) -> str:
    """Element dtype of a Relax tensor expression, as a string."""
    return str(e.ty.dtype)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _const(a: np.ndarray, dtype: str) -> tvm.ir.expr.Constant:
    return relax.const(np.ascontiguousarray(a).astype(dtype), dtype)


class _Builder:
    """Emits one Relax binding per graph node into an open dataflow block.

    ``layout`` is the layout of 4-D values inside the program (``NCHW`` as in the graph, or ``NHWC``
    for the hand-scheduled CPU convolutions); ``planner`` (:data:`ConvPlanner`) picks those kernels.
    """

    def __init__(self, bb: relax.BlockBuilder, layout: str = "NCHW", planner: ConvPlanner | None = None,
                 weights_as_params: bool = False):
        self.bb, self.layout, self.planner = bb, layout, planner
        #: (tensor, padding) -> its packed sign bits, for every binary conv that reads it
        self.packed: dict[tuple, relax.Expr] = {}
        #: (parameter, packed array, node name) per GEMM weight when weights are ``main`` parameters
        self.weight_params: list[tuple[relax.Var, np.ndarray, str]] | None = [] if weights_as_params else None

    def caxis(self, ndim: int) -> int:
        return 3 if ndim == 4 and self.layout == "NHWC" else 1

    def hw_axes(self) -> list[int]:
        return [1, 2] if self.layout == "NHWC" else [2, 3]

    def per_channel(self, v: np.ndarray, ndim: int) -> np.ndarray:
        """Per-channel vector [C] or [1] -> broadcastable along the channel axis of an ndim value."""
        shape = [1] * ndim
        shape[self.caxis(ndim)] = -1
        return np.asarray(v, dtype=np.int64).reshape(shape)

    def to_graph_layout(self, e: relax.Expr) -> relax.Expr:
        if self.layout == "NHWC" and len(e.ty.shape) == 4:
            return self.emit(relax.op.permute_dims(e, [0, 3, 1, 2]))
        return e

    def emit(self, expr: relax.Expr) -> relax.Expr:
        return self.bb.emit(expr)

    def cast(self, v: Value, dtype: str) -> relax.Expr:
        return v.expr if v.dtype == dtype else self.emit(relax.op.astype(v.expr, dtype))

    def centered(self, v: Value) -> Value:
        """The value itself (offset 0), in a container wide enough for it."""
        if not v.offset:
            return v
        dt = container(v.lo, v.hi)
        wide = _arith(dt)
        e = self.emit(relax.op.subtract(self.cast(v, wide), relax.const(v.offset, wide)))
        return Value(self.emit(relax.op.astype(e, dt)) if dt != wide else e, v.lo, v.hi)

    # -- ops: each returns the Relax expression of the node's value (quantize: with its offset);
    # the value's interval comes from the IR (:meth:`hawq.ir.Op.bounds`), see :func:`_emit_nodes`.
    def quantize(self, node: ir.Quantize, x: relax.Expr):
        scale = np.float32(_np(node.scale).reshape(-1)[0])
        z, qmin, qmax = int(node.zero_point), int(node.qmin), int(node.qmax)
        if self.layout == "NHWC" and len(x.ty.shape) == 4:
            x = self.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
        if node.reciprocal:
            # round(f32(1/S)·x + z): float32 reciprocal, float32 multiply, float32 add, half to even.
            recip = np.float32(1.0) / scale
            q = self.emit(relax.op.multiply(x, relax.const(recip, "float32")))
            if z:
                # A no-op after the final clip (p beyond [qmin-z-1, qmax-z+1] saturates either way), it
                # keeps the add's operand from being the multiply, so no backend contracts the two into
                # one FMA (a single rounding; the reference rounds the product and the sum separately).
                q = self.emit(relax.op.clip(q, float(qmin - z - 1), float(qmax - z + 1)))
                q = self.emit(relax.op.add(q, relax.const(np.float32(z), "float32")))
            q = self.emit(relax.op.round(q))                                  # half to even
        else:
            q = self.emit(relax.op.divide(x, relax.const(scale, "float32")))    # divide, never * 1/S
            q = self.emit(relax.op.round(q))                                  # half to even
            q = self.emit(relax.op.add(q, relax.const(np.float32(z), "float32")))
        q = self.emit(relax.op.clip(q, float(qmin), float(qmax)))
        return self.emit(relax.op.astype(q, container(qmin, qmax))), z

    def _accumulator(self, x: Value, w: np.ndarray, bias: np.ndarray, what: str) -> str:
        """The accumulator dtype of the raw sum x·W + b (before any offset correction)."""
        w_abs = np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(1)
        bound = int((w_abs * x.absmax()).max()) + int(np.abs(bias.astype(np.int64)).max(initial=0))
        bound += int(w_abs.max()) * abs(x.offset)
        if bound >= _I64.max // 2:
            raise HawqError(f"{what}: accumulator bound {bound} overflows int64")
        return "int32" if bound <= np.iinfo(np.int32).max else "int64"

    def _operand(self, x: Value, acc_dtype: str) -> relax.Expr:
        """Conv/dense input: uint8/int8 stay narrow (int32 acc); anything else is widened."""
        if acc_dtype == "int64" or x.dtype not in ("uint8", "int8"):
            return self.cast(x, acc_dtype)
        return x.expr

    def _pad_hw(self, data: relax.Expr, pad: list[int], value: int, extra_channels: int = 0,
                extra_width: int = 0) -> relax.Expr:
        """Pad H and W by ``pad`` ([pad H, pad W] on both sides, or [top, left, bottom, right]), and
        append ``extra_channels`` / ``extra_width`` (right side of W) — all with ``value`` — in one op."""
        if not any(pad) and not extra_channels and not extra_width:
            return data
        before, after = (pad[:2], pad[2:]) if len(pad) == 4 else (pad, pad)
        widths = [0, 0] * 4
        for axis, p0, p1 in zip(self.hw_axes(), before, after):
            widths[2 * axis], widths[2 * axis + 1] = p0, p1
        widths[2 * self.caxis(4) + 1] = extra_channels
        widths[2 * self.hw_axes()[1] + 1] += extra_width
        return self.emit(relax.op.nn.pad(data, widths, pad_value=float(value)))

    def conv2d(self, node: ir.Conv2d, x: Value) -> relax.Expr:
        w, bias = _np(node.weight), _np(node.bias).astype(np.int64)
        acc = self._accumulator(x, w, bias, node.name)
        t, l, b, r = node.pads()
        stride = [int(s) for s in node.stride]
        planned = self.planner is not None and acc == "int32"
        if planned and x.binary:
            plan = self.planner(x.dtype, x.lo, x.hi, w, int(node.groups), None, binary=True)
            if isinstance(plan, BinaryConvPlan):
                pre = x.signed_of
                src = pre if pre is not None and not pre.offset and pre.dtype.startswith("int") else x
                y = self._binary_planned(plan, src.expr, w, (t, l, b, r), stride)
                return self.emit(relax.op.add(y, _const(self.per_channel(bias, 4), acc)))
            if isinstance(plan, GemmPlan) and plan.bits == 1 and (t, l) == (b, r) and not x.offset:
                # the b1 tensor-core GEMM reads the ±1 bytes and packs their signs while staging
                y, _ = self._gemm_planned(plan, self._operand(x, acc), w, [t, l], stride, 0, node.name)
                return self.emit(relax.op.add(y, _const(self.per_channel(bias, 4), acc)))
        data = self._operand(x, acc)
        pad = [t, l]
        if (t, l) != (b, r):      # asymmetric ("same" of TF-ported models): an explicit pad, then none
            data, pad = self._pad_hw(data, [t, l, b, r], x.offset), [0, 0]
        groups = int(node.groups)
        plan = None
        if planned:
            out_w = (int(data.ty.shape[2]) + 2 * pad[1] - w.shape[3]) // stride[1] + 1
            plan = self.planner(_dt(data), x.lo + x.offset, x.hi + x.offset, w, groups, out_w)
        if isinstance(plan, DepthwisePlan):
            y, offset = self._depthwise_planned(plan, data, w, pad, stride, x.offset)
        elif isinstance(plan, GemmPlan):
            y, offset = self._gemm_planned(plan, data, w, pad, stride, x.offset, node.name)
        elif plan is not None:
            if (plan.pixel_groups and not plan.window and plan.kernel.atiles == 1 and w.shape[2:] == (1, 1)
                    and stride == [1, 1] and pad == [0, 0] and groups == 1):
                # 1x1, stride 1, an image row too short for two tiles (7 or 14 pixels): every pixel
                # of the batch in one row, so tiles span image rows (and pair)
                b_, h_, w_ = (int(d) for d in list(data.ty.shape)[:3])
                flat = self.planner(_dt(data), x.lo + x.offset, x.hi + x.offset, w, groups, b_ * h_ * w_)
                if (isinstance(flat, ConvPlan) and flat.pixel_groups and (b_, h_) != (1, 1)
                        and flat.kernel.pixels > plan.kernel.pixels):
                    plan = dataclasses.replace(flat, flat=True)
            y, offset = self._conv_planned(plan, data, w, pad, stride, x.offset)
        else:
            offset = x.offset
            if x.offset:
                data, pad = self._pad_hw(data, pad, x.offset), [0, 0]
            wdt = acc if acc == "int64" or _dt(data) not in ("uint8", "int8") else "int8"
            w_laid = w if self.layout == "NCHW" else w.transpose(0, 2, 3, 1)
            y = self.emit(relax.op.nn.conv2d(
                data, _const(w_laid, wdt), strides=stride, padding=pad,
                dilation=[int(d) for d in node.dilation], groups=groups, out_dtype=acc,
                data_layout=self.layout, kernel_layout="OIHW" if self.layout == "NCHW" else "OHWI"))
        if offset:
            # conv(q - z) = conv_pad_z(q) - z·ΣW: the uncentered q was padded with z (the centered zero).
            bias = bias - offset * w.astype(np.int64).reshape(w.shape[0], -1).sum(1)
        return self.emit(relax.op.add(y, _const(self.per_channel(bias, 4), acc)))

    def _conv_planned(self, plan, data: relax.Expr, w: np.ndarray, pad: list[int], stride: list[int],
                      offset: int) -> tuple[relax.Expr, int]:
        """NHWC conv through a hand-scheduled kernel: shift/widen the operand as the kernel reads it,
        pad (spatial with the centered zero, channels to the kernel's multiple), view pixel groups
        where the kernel asks (or flatten its rows: the AMX window form), call it. Returns (int32 acc
        [B,OH,OW,O], total offset)."""
        o, c, kh, kw = w.shape
        kernel = plan.kernel
        if plan.act_shift:
            # Signed data for an unsigned-operand instruction: q + 128 is the same value at offset + 128.
            data = self.emit(relax.op.add(self.emit(relax.op.astype(data, "int16")),
                                          relax.const(plan.act_shift, "int16")))
            data, offset = self.emit(relax.op.astype(data, "uint8")), offset + plan.act_shift
        if _dt(data) != kernel.act_dtype:
            # Widened once here (fused into the producer's epilogue), a vpmaddwd activation pair is a
            # single 32-bit broadcast load instead of two byte loads, a widen and a broadcast.
            data = self.emit(relax.op.astype(data, kernel.act_dtype))
        wp = int(data.ty.shape[2]) + 2 * pad[1]             # the conv's own padded width
        if plan.window:
            # Few channels (the stem): padded to the window's bytes per pixel, rows flattened below;
            # the kernel reads overlapping 64-byte windows of each row (weights zero beyond the taps).
            extra_c, extra_w = kernel.pixel_bytes - c, plan.input_width(wp, kw, stride[1]) - wp
        else:
            # Pixel groups need W a multiple of the stride; the extra columns are never read.
            extra_c, extra_w = -c % kernel.channels, (-wp % stride[1] if plan.pixel_groups else 0)
        data = self._pad_hw(data, pad, offset, extra_channels=extra_c, extra_width=extra_w)
        b, h, wd, cp = (int(d) for d in data.ty.shape)
        oh, ow = (h - kh) // stride[0] + 1, (wp - kw) // stride[1] + 1
        if plan.window and cp in _WORDS:
            data = self._pack_pixels(data)
        elif plan.window:
            data = self.emit(relax.op.reshape(data, [b, h, wd * cp]))
        elif plan.flat:
            data = self.emit(relax.op.memory.view(data, shape=[1, 1, b * h * wd, cp]))
        elif plan.pixel_groups and stride[1] > 1:
            # A view, not a reshape op: FuseOps would fuse a reshape into the producer, whose
            # legalized index arithmetic (nested div/mod per lane) then keeps it from vectorizing.
            data = self.emit(relax.op.memory.view(data, shape=[b, h, wd // stride[1], stride[1] * cp]))
        func = plan.compute_func(b, (h, wp), cp, o, (kh, kw), tuple(stride))
        grouped = f"_g{plan.groups}" if plan.groups > 1 else ""
        flat = "_flat" if plan.flat else ""
        name = f"conv2d_amx_window_m{kernel.rows}__" if plan.window else f"conv2d_{kernel.name}{grouped}{flat}__"
        gv = self.bb.add_func(func, name)                   # the builder numbers repeats
        acc = self.emit(relax.call_tir(gv, [data, _const(plan.pack(w), kernel.weight_dtype)],
                                       relax.TensorType([b, oh, ow, o], "int32")))
        return acc, offset

    def _pack_pixels(self, data: relax.Expr) -> relax.Expr:
        """NHWC ``[B, H, W, P]`` uint8 -> the same bytes as ``[B, H, W·P]`` uint8, computed as one
        P-byte word per pixel (channel c in bits 8c.., little-endian) and viewed as bytes: the
        producer (the input's quantization and NCHW -> NHWC transpose, fused) then stores whole
        pixels from contiguous input rows instead of scattering single bytes."""
        b, h, w, p = (int(d) for d in data.ty.shape)
        word = _WORDS[p]
        packed = None
        for c in range(p):
            part = self.emit(relax.op.astype(relax.op.strided_slice(data, axes=[3], begin=[c], end=[c + 1]), word))
            if c:
                part = self.emit(relax.op.left_shift(part, relax.const(8 * c, word)))
            packed = part if packed is None else self.emit(relax.op.bitwise_or(packed, part))
        packed = self.emit(relax.op.reshape(packed, [b, h, w]))
        return self.emit(relax.op.memory.view(packed, shape=[b, h, w * p], dtype="uint8"))

    def _binary_planned(self, plan: BinaryConvPlan, data: relax.Expr, w: np.ndarray, pad: tuple[int, int, int, int],
                        stride: list[int]) -> relax.Expr:
        """NHWC ±1 conv through the popcount kernel (:mod:`tvm_benchmark.binary`): pack the sign grid
        of ``data`` (the ±1 tensor, or the signed integers the IR ``sign`` reads: then the ±1 tensor
        is never computed, one kernel and one tensor less per binary conv) into 64-bit words with zero
        words at the padding, call the kernel, which corrects the padded taps (the conv's zero padding
        is not ±1). Returns the int32 acc [B, OH, OW, O]."""
        b, h, wd, c = (int(d) for d in data.ty.shape)
        o, _, kh, kw = w.shape
        bits = self.packed.get((data, pad))         # Group-Net's bases read one input: packed once
        if bits is None:
            packer = self.bb.add_func(pack_activation_func(b, h, wd, c, pad, _dt(data)), "pack_sign_bits__")
            padded = [b, h + pad[0] + pad[2], wd + pad[1] + pad[3], words(c)]
            bits = self.packed[(data, pad)] = self.emit(relax.call_tir(packer, [data], relax.TensorType(padded, "uint64")))
        func = plan.compute_func(b, (h, wd), c, o, (kh, kw), tuple(stride), pad)
        gv = self.bb.add_func(func, "conv2d_popcount__")
        oh, ow = binary_out_hw((h, wd), (kh, kw), tuple(stride), pad)
        return self.emit(relax.call_tir(gv, [bits, _const(plan.pack(w), "uint64")],
                                        relax.TensorType([b, oh, ow, o], "int32")))

    def _gemm_planned(self, plan: GemmPlan, data: relax.Expr, w: np.ndarray, pad: list[int], stride: list[int],
                      offset: int, name: str) -> tuple[relax.Expr, int]:
        """NHWC conv as a tensor-core implicit GEMM (:mod:`tvm_benchmark.tensorcore`): shift the operand
        to signed bytes where the plan asks (the shift joins the offset, folded into the bias by the
        caller), call the GEMM — which pads with the centered zero itself — on weights packed
        ``[Np, Kp]``. Returns (int32 acc [B,OH,OW,O], total offset)."""
        if plan.bits == 4 and not plan.fits(offset + plan.act_shift):
            plan = plan.as_int8(_dt(data))       # the padding value (the stored zero) must fit s4 too
        if plan.act_shift:
            e = self.emit(relax.op.add(self.emit(relax.op.astype(data, "int16")), relax.const(plan.act_shift, "int16")))
            data, offset = self.emit(relax.op.astype(e, "int8")), offset + plan.act_shift
        elif _dt(data) != "int8":
            raise HawqError(f"tensor-core GEMM needs int8 data, got {_dt(data)}")
        b, h, wd, c = (int(d) for d in data.ty.shape)
        o, _, kh, kw = w.shape
        shape = GemmShape(b, (h, wd), c, o, (kh, kw), tuple(stride), tuple(pad), plan.bits)
        gv = self.bb.add_func(plan.prim_func(shape, offset), "conv2d_tensorcore__")
        oh, ow = shape.out_hw
        acc = self.emit(relax.call_tir(gv, [data, self.weight(plan.pack(w, shape), f"{name}:{plan.bits}")],
                                       relax.TensorType([b, oh, ow, o], "int32")))
        return acc, offset

    def weight(self, packed: np.ndarray, name: str) -> relax.Expr:
        """Node ``name``'s packed weight tensor: a constant, or (``weights_as_params``) the next
        ``main`` parameter."""
        if self.weight_params is None:
            return _const(packed, str(packed.dtype))
        var = relax.Var(f"w{len(self.weight_params)}", relax.TensorType(list(packed.shape), str(packed.dtype)))
        self.weight_params.append((var, packed, name))
        return var

    def _depthwise_planned(self, plan: DepthwisePlan, data: relax.Expr, w: np.ndarray, pad: list[int],
                           stride: list[int], offset: int) -> tuple[relax.Expr, int]:
        """NHWC depthwise conv through :mod:`tvm_benchmark.depthwise`: pad spatially with the centered
        zero and channels to the lane multiple (zero weights there), call, drop the padded channels."""
        c, _, kh, kw = w.shape
        if _dt(data) != plan.act_dtype:
            data = self.emit(relax.op.astype(data, plan.act_dtype))
        cp = plan.padded(c)
        data = self._pad_hw(data, pad, offset, extra_channels=cp - c)
        b, h, wd, _ = (int(d) for d in data.ty.shape)
        oh, ow = (h - kh) // stride[0] + 1, (wd - kw) // stride[1] + 1
        fusable = plan.fusable(ow)    # else the scheduled two-segment kernel, opaque to fusion
        func = (plan.compute_func if fusable else plan.prim_func)(b, (h, wd), cp, (kh, kw), tuple(stride))
        gv = self.bb.add_func(func, "conv2d_depthwise__")
        acc = self.emit(relax.call_tir(gv, [data, _const(plan.pack(w), plan.weight_dtype)],
                                       relax.TensorType([b, oh, ow, cp], "int32")))
        if cp != c:
            acc = self.emit(relax.op.strided_slice(acc, axes=[3], begin=[0], end=[c]))
        return acc, offset

    def dense(self, node: ir.Dense, x: Value) -> relax.Expr:
        w, bias = _np(node.weight), _np(node.bias).astype(np.int64)
        x = self.centered(x)
        acc = self._accumulator(x, w, bias, node.name)
        data = self._operand(x, acc)
        plan = None
        if self.planner is not None and acc == "int32" and _dt(data) in ("uint8", "int8"):
            plan = self.planner(_dt(data), x.lo, x.hi, w.reshape(*w.shape, 1, 1), 1, 1)
        if isinstance(plan, GemmPlan) or (isinstance(plan, ConvPlan) and not plan.pixel_groups):
            # The classifier is a 1x1 convolution over a 1x1 image: the same tensor-core GEMM, or on
            # a CPU the planned vector kernel.
            b, c = (int(d) for d in data.ty.shape)
            img = self.emit(relax.op.reshape(data, [b, 1, 1, c]))
            w4 = w.reshape(*w.shape, 1, 1)
            y, offset = (self._gemm_planned(plan, img, w4, [0, 0], [1, 1], 0, node.name) if isinstance(plan, GemmPlan)
                         else self._conv_planned(plan, img, w4, [0, 0], [1, 1], 0))
            y = self.emit(relax.op.reshape(y, [b, w.shape[0]]))
            bias = bias - offset * w.astype(np.int64).sum(1)
            return self.emit(relax.op.add(y, _const(bias.reshape(1, -1), acc)))
        wdt = acc if _dt(data) == acc else "int8"
        y = self.emit(relax.op.matmul(data, _const(w.T, wdt), out_dtype=acc))
        return self.emit(relax.op.add(y, _const(bias.reshape(1, -1), acc)))

    def _rescale(self, v: Value, m: np.ndarray, s: np.ndarray, rounding: str, what: str) -> relax.Expr:
        """round(v·m / 2^s) in int64, per channel (dim 1), ties by ``rounding`` (half_up / half_even);
        the pre-shift sum is bounded below 2^63 channel by channel."""
        v = self.centered(v)
        nd = len(v.expr.ty.shape)
        if max(t for t, _ in _channel_products(v.absmax(), m, s)) > _I64.max:
            raise HawqError(f"{what}: requantization product overflows int64")
        m, s = self.per_channel(m, nd), self.per_channel(s, nd)
        if rounding not in ("half_up", "half_even"):
            raise HawqError(f"{what}: unknown requantization rounding {rounding!r} (half_up or half_even)")
        # v = acc + bias (a conv's or dense's int32 sum and its bias constant): v·m = acc·m + bias·m,
        # the second term one int64 constant per channel, folded into the rounding term. The int32
        # add then never reaches the multiply, which LLVM would otherwise widen first (sext(a + b)
        # -> sext a + sext b), losing the proof that the factor fits 32 bits: vpmullq (three µops)
        # instead of vpmuldq in every epilogue.
        acc, bias = self._biased_sum(v)
        if (acc is not None and bias.ndim == m.ndim
                and (v.absmax() + int(np.abs(bias).max(initial=0))) * int(np.abs(m).max(initial=0)) <= _I64.max):
            v_expr, const = self.emit(relax.op.astype(acc, "int64")), bias * m.astype(np.int64)
        else:
            v_expr, const = self.cast(v, "int64"), np.zeros_like(m, dtype=np.int64)
        if np.abs(m).max(initial=0) < 2 ** 31 and v.absmax() < 2 ** 31:
            # int32 operands widened at the multiply (sext · sext): one vpmuldq per 8 lanes instead
            # of AVX-512DQ's three-µop vpmullq (or its AVX2 emulation) in every epilogue.
            m64 = self.emit(relax.op.astype(_const(m, "int32"), "int64"))
        else:
            m64 = _const(m, "int64")
        t = self.emit(relax.op.multiply(v_expr, m64))
        shift = _const(s, "int64")
        half = np.left_shift(np.int64(1), s - 1)
        if rounding == "half_up":
            return self.emit(relax.op.right_shift(self.emit(relax.op.add(t, _const(const + half, "int64"))), shift))
        if const.any():
            t = self.emit(relax.op.add(t, _const(const, "int64")))
        # half_even: below a tie floor, above it round up, at a tie add the parity of floor(t / 2^s).
        odd = self.emit(relax.op.right_shift(t, shift))
        odd = self.emit(relax.op.bitwise_and(odd, relax.const(1, "int64")))
        e = self.emit(relax.op.add(t, _const(half - 1, "int64")))
        e = self.emit(relax.op.add(e, odd))
        return self.emit(relax.op.right_shift(e, shift))

    def _biased_sum(self, v: Value) -> tuple[relax.Expr | None, np.ndarray]:
        """(acc, bias) where ``v`` (offset 0, int32) was emitted as ``acc + bias`` with ``bias`` an
        int32 constant broadcast over the channel axis, else (None, empty)."""
        if v.offset or v.dtype != "int32" or not isinstance(v.expr, relax.Var):
            return None, np.zeros(0, np.int64)
        bound = self.bb.lookup_binding(v.expr)
        if not (isinstance(bound, relax.Call) and getattr(bound.op, "name", "") == "relax.add"):
            return None, np.zeros(0, np.int64)
        acc, bias = bound.args
        if not isinstance(bias, tvm.ir.expr.Constant) or _dt(acc) != "int32" or _dt(bias) != "int32":
            return None, np.zeros(0, np.int64)
        return acc, bias.value.numpy().astype(np.int64)

    def _saturate(self, e: relax.Expr, lo: int, hi: int) -> relax.Expr:
        e = self.emit(relax.op.clip(e, lo, hi))
        return self.emit(relax.op.astype(e, container(lo, hi)))

    def requant(self, node: ir.Requant, x: Value, out: Interval) -> relax.Expr:
        e = self._rescale(x, _np(node.multiplier), _np(node.shift), node.rounding, node.name)
        return self._saturate(e, *out)

    def requant_add(self, node: ir.RequantAdd, branch: Value, identity: Value, out: Interval) -> relax.Expr:
        """sat(round(x·m / 2^s) + round(y·m' / 2^s')). Each int64 term is first clipped to what can
        still matter, [qmin − B, qmax + B] with B the other term's bound (beyond it the sum
        saturates either way; the second term is clipped against the first one's clipped bound),
        which lets both live in int32: a term that leaves its kernel (the residual add fuses into one
        of the two convolutions' kernels, not both) is stored in half the bytes."""
        m, s = _np(node.multiplier), _np(node.shift)
        mi, si = _np(node.identity_multiplier), _np(node.identity_shift)
        a = self._rescale(branch, m, s, node.rounding, node.name)
        b = self._rescale(identity, mi, si, node.rounding, node.name)
        lo, hi = int(node.qmin), int(node.qmax)
        ba, bb = _rescaled_bound(branch.absmax(), m, s), _rescaled_bound(identity.absmax(), mi, si)
        a_lo, a_hi = max(-ba, lo - bb), min(ba, hi + bb)
        ba_clipped = max(abs(a_lo), abs(a_hi))
        b_lo, b_hi = max(-bb, lo - ba_clipped), min(bb, hi + ba_clipped)
        if ba_clipped + max(abs(b_lo), abs(b_hi)) < 2 ** 31:
            a = self.emit(relax.op.astype(self.emit(relax.op.clip(a, a_lo, a_hi)), "int32"))
            b = self.emit(relax.op.astype(self.emit(relax.op.clip(b, b_lo, b_hi)), "int32"))
        return self._saturate(self.emit(relax.op.add(a, b)), lo, hi)

    def requant_float(self, node: ir.RequantFloat, x: Value, out: Interval) -> relax.Expr:
        """ONNX Runtime's float32 requantization (profile ort, :func:`hawq.numerics.requant_float`) as
        one kernel, :data:`FLOAT_REQUANT_KERNEL`: int → float32 (round to nearest even above 2^24),
        one float32 multiply by the channel's multiplier, round half to even (``nearbyint``), clamp to
        [qmin, qmax], back to the integer container. A multiply alone leaves LLVM nothing to contract
        into an FMA, and TVM compiles without fast-math."""
        x = self.centered(x)
        nd = len(x.expr.ty.shape)
        m = np.asarray(_np(node.multiplier), dtype=np.float32).reshape(-1)
        ax, per_channel = self.caxis(nd), m.size > 1
        lo, hi, dt = float(node.qmin), float(node.qmax), container(*out)

        def kernel(data, mult):
            def value(*i):
                v = data(*i).astype("float32") * mult[i[ax] if per_channel else 0]
                v = tirx.max(tirx.min(tirx.nearbyint(v), tirx.const(hi, "float32")), tirx.const(lo, "float32"))
                return v.astype(dt)
            return te.compute(data.shape, value, name="requant_float")
        return self.bb.emit_te(kernel, x.expr, relax.const(m, "float32"), primfunc_name_hint=FLOAT_REQUANT_KERNEL)

    def qlinear_add(self, node: ir.QLinearAdd, a: Value, b: Value, out: Interval) -> relax.Expr:
        """ONNX Runtime's QLinearAdd (profile ort) as a gather from its stored table at
        (a + a_zero)·256 + (b + b_zero), with a and b the stored (uncentered) uint8 values."""
        table = _np(node.table).astype(np.int64).reshape(-1)
        ia = self.emit(relax.op.add(self.cast(a, "int32"), relax.const(int(node.a_zero) - a.offset, "int32")))
        ib = self.emit(relax.op.add(self.cast(b, "int32"), relax.const(int(node.b_zero) - b.offset, "int32")))
        idx = self.emit(relax.op.add(self.emit(relax.op.multiply(ia, relax.const(256, "int32"))), ib))
        return self.emit(relax.op.take(_const(table, container(*out)), idx, axis=0, mode="clip"))

    def sign(self, node: ir.Sign, x: Value) -> relax.Expr:
        """``(x >> (w − 1)) | 1`` in x's signed container of w bits (−1 where x < 0, else +1), cast
        to int8: the sign grid a binary conv's popcount kernel packs. Branch-free: the generic
        schedule compiled ``where(x >= 0, 1, −1)`` fused after a transpose to a branch per element,
        which on signs of real data mispredicts half the time (measured: 2× the whole layer)."""
        x = self.centered(x)
        dt = x.dtype if x.dtype.startswith("int") else "int16"       # a uint8 container: widen
        e = self.cast(x, dt)
        shift = int(np.iinfo(dt).bits) - 1
        e = self.emit(relax.op.bitwise_or(self.emit(relax.op.right_shift(e, relax.const(shift, dt))), relax.const(1, dt)))
        return e if dt == "int8" else self.emit(relax.op.astype(e, "int8"))

    def relu(self, node: ir.Relu, x: Value) -> relax.Expr:
        """max(x, 0), in the narrowest container of [0, hi]: after a requantization (a ReLU moved past
        it, :func:`relu_after_requant`) an int8 value becomes uint8, which the kernels read unshifted."""
        x = self.centered(x)
        e = self.emit(relax.op.maximum(x.expr, relax.const(0, x.dtype)))
        narrow = container(0, max(x.hi, 0))
        return self.emit(relax.op.astype(e, narrow)) if narrow != x.dtype else e

    def flatten(self, node: ir.Flatten, x: Value) -> relax.Expr:
        """PyTorch's C, H, W order whatever the program's layout (NHWC goes back to NCHW first)."""
        x = self.centered(x)
        e = self.to_graph_layout(x.expr)
        b = int(e.ty.shape[0])
        return self.emit(relax.op.reshape(e, [b, -1]))

    def clamp(self, node: ir.Clamp, x: Value, out: Interval) -> relax.Expr:
        """Per-channel upper bound (ReLU6 on an accumulator), then the narrowest container."""
        x = self.centered(x)
        nd = len(x.expr.ty.shape)
        wide = container(min(x.lo, out[0]), max(x.hi, out[1]))
        e = self.emit(relax.op.maximum(x.expr, relax.const(int(node.qmin), x.dtype)))
        hi = np.minimum(_np(node.qmax).astype(np.int64), np.iinfo(x.dtype).max)
        e = self.emit(relax.op.minimum(e, _const(self.per_channel(hi, nd), x.dtype)))
        return e if container(*out) == wide else self.emit(relax.op.astype(e, container(*out)))

    def concat(self, node: ir.Concat, *xs: Value) -> relax.Expr:
        xs = [self.centered(x) for x in xs]
        dt = container(min(x.lo for x in xs), max(x.hi for x in xs))
        return self.emit(relax.op.concat([self.cast(x, dt) for x in xs], axis=self.caxis(len(xs[0].expr.ty.shape))))

    def channel_affine(self, node: ir.ChannelAffine, x: Value, out: Interval) -> relax.Expr:
        """sign·x + bias per channel, in a container holding both the input and the output."""
        x = self.centered(x)
        nd = len(x.expr.ty.shape)
        wide = container(min(x.lo, out[0]), max(x.hi, out[1]))
        wide = _arith(wide)
        e = self.emit(relax.op.multiply(self.cast(x, wide), _const(self.per_channel(_np(node.sign), nd), wide)))
        e = self.emit(relax.op.add(e, _const(self.per_channel(_np(node.bias), nd), wide)))
        return e if container(*out) == wide else self.emit(relax.op.astype(e, container(*out)))

    def lut(self, node: ir.Lut, x: Value, out: Interval) -> relax.Expr:
        """A gather from the stored table; the index is the stored integer minus (offset + in_lo).

        A table that is a non-decreasing staircase of at most :data:`LUT_SELECTS` steps over the
        input's bounds (LQ-Net's level tables: 1-15 steps) becomes that many compare-and-selects
        instead: elementwise, so FuseOps puts it into the producing conv's epilogue, where a gather
        is a kernel of its own and its index an int32 tensor written to memory and read back."""
        table = _np(node.table).astype(np.int64)
        dt = container(*out)
        start = int(node.in_lo) + x.offset            # stored value v is the centered x + offset
        part = table[x.lo - int(node.in_lo):x.hi - int(node.in_lo) + 1]
        steps = np.flatnonzero(np.diff(part)) + 1
        if part.size and (np.diff(part) >= 0).all() and len(steps) <= LUT_SELECTS:
            e = relax.const(int(part[0]), dt)
            for i in steps:                           # stored >= x.lo + i + offset: level part[i]
                cond = relax.op.greater_equal(x.expr, relax.const(int(x.lo + i + x.offset), x.dtype))
                e = self.emit(relax.op.where(cond, relax.const(int(part[i]), dt), e))
            return e if len(steps) else self.emit(relax.op.full_like(x.expr, e, dtype=dt))
        idx = self.emit(relax.op.subtract(self.cast(x, "int32"), relax.const(start, "int32")))
        return self.emit(relax.op.take(_const(table, dt), idx, axis=0, mode="clip"))

    def mul(self, node: ir.Mul, a: Value, b: Value, out: Interval) -> relax.Expr:
        a, b = self.centered(a), self.centered(b)
        dt = container(*out)
        dt = _arith(dt)
        return self.emit(relax.op.multiply(self.cast(a, dt), self.cast(b, dt)))

    def adaptive_avgpool2d(self, node: ir.AdaptiveAvgPool2d, x: Value, out: Interval) -> relax.Expr:
        """Per window: a slice, its sum (kept dims), times L/N; windows concatenated along W, then H."""
        x = self.centered(x)
        dt = container(*out)
        dt = _arith(dt)
        e = self.cast(x, dt)
        ha, wa = self.hw_axes()
        shape = [int(d) for d in e.ty.shape]
        h, w = shape[ha], shape[wa]
        (oh, ow), f = ir.pair(node.output_size), node.factors(h, w)
        rows = []
        for i, (h0, h1) in enumerate(ir.adaptive_windows(h, oh)):
            cols = []
            for j, (w0, w1) in enumerate(ir.adaptive_windows(w, ow)):
                part = self.emit(relax.op.strided_slice(e, axes=[ha, wa], begin=[h0, w0], end=[h1, w1]))
                total = self.emit(relax.op.sum(part, axis=[ha, wa], keepdims=True))
                cols.append(self.emit(relax.op.multiply(total, relax.const(int(f[i, j]), dt))))
            rows.append(cols[0] if len(cols) == 1 else self.emit(relax.op.concat(cols, axis=wa)))
        return rows[0] if len(rows) == 1 else self.emit(relax.op.concat(rows, axis=ha))

    def channel_shuffle(self, node: ir.ChannelShuffle, x: Value):
        """A gather along the channel axis; the container and its offset move with the values."""
        perm = node.perm(int(x.expr.ty.shape[self.caxis(4)]))
        # "clip": every index is in range anyway, and TOPI warns about its unchecked "fast" mode
        return self.emit(relax.op.take(x.expr, _const(perm, "int64"), axis=self.caxis(4), mode="clip")), x.offset

    def slice_channels(self, node: ir.SliceChannels, x: Value):
        e = relax.op.strided_slice(x.expr, axes=[self.caxis(4)], begin=[int(node.start)], end=[int(node.stop)])
        return self.emit(e), x.offset

    def maxpool2d(self, node: ir.MaxPool2d, x: Value) -> relax.Expr:
        x = self.centered(x)
        p = [int(v) for v in node.padding]
        shape = [int(d) for d in x.expr.ty.shape]
        eh, ew = node.extra_padding(*(shape[a] for a in self.hw_axes()))        # ceil_mode as explicit bottom/right padding: PyTorch's sizes
        return self.emit(relax.op.nn.max_pool2d(x.expr, [int(k) for k in node.kernel],
                                                [int(s) for s in node.stride], [p[0], p[1], p[0] + eh, p[1] + ew],
                                                layout=self.layout))

    def avgpool2d(self, node: ir.AvgPool2d, x: Value, out: Interval) -> relax.Expr:
        """k×k window sum (zero padding counted) as a depthwise all-ones integer conv, in int32 unless
        the bound needs int64 (no float ``avg_pool2d``: its division would round); ``trunc_mean`` then
        divides as HAWQ does."""
        x = self.centered(x)
        (kh, kw), (sh, sw), (ph, pw) = (ir.pair(v) for v in (node.kernel, node.stride, node.padding))
        n = kh * kw
        lo, hi = min(x.lo, 0) * n, max(x.hi, 0) * n
        acc = "int32" if container(lo, hi) != "int64" else "int64"
        c = int(x.expr.ty.shape[self.caxis(4)])
        ones = np.ones((c, 1, kh, kw), np.int64)
        w_laid = ones if self.layout == "NCHW" else ones.transpose(0, 2, 3, 1)
        total = self.emit(relax.op.nn.conv2d(
            self.cast(x, acc), _const(w_laid, acc), strides=[sh, sw], padding=[ph, pw], groups=c, out_dtype=acc,
            data_layout=self.layout, kernel_layout="OIHW" if self.layout == "NCHW" else "OHWI"))
        if node.mode == "sum":
            return total
        return self._trunc_mean(total, lo, hi, n)

    def _trunc_mean(self, total: relax.Expr, lo: int, hi: int, n: int) -> relax.Expr:
        """HAWQ's trunc(sum/N + 0.01) = truncdiv(100·sum + N, 100·N), :func:`hawq.numerics.avgpool_trunc`."""
        lo, hi = 100 * lo + n, 100 * hi + n
        dt = "int32" if container(min(lo, 0), max(hi, 100 * n)) != "int64" else "int64"
        e = self.emit(relax.op.multiply(self.emit(relax.op.astype(total, dt)) if _dt(total) != dt else total,
                                        relax.const(100, dt)))
        e = self.emit(relax.op.add(e, relax.const(n, dt)))
        return self.emit(relax.op.divide(e, relax.const(100 * n, dt)))     # integer divide: truncates toward 0

    def global_avgpool_sum(self, node: ir.GlobalAvgPoolSum, x: Value) -> relax.Expr:
        x = self.centered(x)
        shape = [int(d) for d in x.expr.ty.shape]
        h, w = (shape[a] for a in self.hw_axes())
        acc = "int32" if container(x.lo * h * w, x.hi * h * w) != "int64" else "int64"
        return self.emit(relax.op.sum(self.cast(x, acc), axis=self.hw_axes()))

    def global_avgpool_trunc(self, node: ir.GlobalAvgPoolTrunc, x: Value) -> relax.Expr:
        total = self.global_avgpool_sum(node, x)
        shape = [int(d) for d in x.expr.ty.shape]
        hw = int(np.prod([shape[a] for a in self.hw_axes()]))
        return self._trunc_mean(total, min(x.lo, 0) * hw, max(x.hi, 0) * hw, int(node.divisor))


#: The TVM front end's lowering of each IR op (a :class:`_Builder` method). Methods that take an
#: ``out`` argument also receive the node's output interval (their saturation / container).
LOWER = ir.Registry("TVM backend")
for _cls, _meth in ((ir.Quantize, _Builder.quantize), (ir.Conv2d, _Builder.conv2d), (ir.Dense, _Builder.dense),
                    (ir.Requant, _Builder.requant), (ir.RequantAdd, _Builder.requant_add), (ir.Relu, _Builder.relu),
                    (ir.RequantFloat, _Builder.requant_float), (ir.QLinearAdd, _Builder.qlinear_add),
                    (ir.Clamp, _Builder.clamp), (ir.Concat, _Builder.concat), (ir.MaxPool2d, _Builder.maxpool2d),
                    (ir.AvgPool2d, _Builder.avgpool2d), (ir.GlobalAvgPoolSum, _Builder.global_avgpool_sum),
                    (ir.GlobalAvgPoolTrunc, _Builder.global_avgpool_trunc), (ir.Flatten, _Builder.flatten),
                    (ir.ChannelShuffle, _Builder.channel_shuffle), (ir.SliceChannels, _Builder.slice_channels),
                    (ir.ChannelAffine, _Builder.channel_affine), (ir.Lut, _Builder.lut), (ir.Mul, _Builder.mul),
                    (ir.AdaptiveAvgPool2d, _Builder.adaptive_avgpool2d), (ir.Sign, _Builder.sign)):
    LOWER.register(_cls)(_meth)
_TAKES_OUT = {_Builder.requant, _Builder.requant_add, _Builder.requant_float, _Builder.qlinear_add, _Builder.clamp, _Builder.avgpool2d, _Builder.channel_affine,
              _Builder.lut, _Builder.mul, _Builder.adaptive_avgpool2d}


def _emit_nodes(b: _Builder, graph: ir.Graph, x: relax.Var) -> tuple[dict, list[str]]:
    """Emit every node of ``graph`` (input ``x``); returns (value name -> Value, outputs in order).
    Each value's interval is the IR's (:meth:`hawq.ir.Graph.infer`)."""
    info = graph.infer(tuple(int(d) for d in x.ty.shape))
    env: dict[str, Value | relax.Expr] = {graph.input: x}
    order = []
    for node in graph.nodes:
        fn = LOWER.lookup(node)
        out = info[node.output][1]
        args = [env[n] for n in node.inputs]
        res = fn(b, node, *args, out) if fn in _TAKES_OUT else fn(b, node, *args)
        expr, offset = res if isinstance(res, tuple) else (res, 0)
        sign = isinstance(node, ir.Sign)
        env[node.output] = Value(expr, out[0], out[1], offset, signed_of=args[0] if sign else None)
        order.append(node.output)
    return env, order


def _monotone(node: ir.Op) -> bool:
    """True for a unary per-element map that never decreases (so it commutes with a max): ReLU,
    clamp, and a requantization with no negative multiplier (every rounding rule is monotone)."""
    if isinstance(node, ir.Requant):
        return bool((np.asarray(_np(node.multiplier)) >= 0).all())
    return isinstance(node, (ir.Relu, ir.Clamp))


def _readers(graph: ir.Graph) -> dict[str, int]:
    """How many node inputs read each value (the graph's output counts as one more reader)."""
    readers = collections.Counter(v for n in graph.nodes for v in n.inputs)
    readers[graph.output] += 1
    return readers


def pool_after_epilogue(graph: ir.Graph) -> ir.Graph:
    """The same integers with every max pool moved past the monotone per-element nodes that follow
    it (ResNet's stem: conv → max pool → requant → ReLU → requant becomes conv → requant → ReLU →
    requant → max pool). ``f(max(a, b)) = max(f(a), f(b))`` for a non-decreasing ``f``, and padding
    never wins either way, so every value the program returns is unchanged; the conv's requantization
    then fuses into its kernel and the pool reads 8-bit values instead of int32 accumulators."""
    readers = _readers(graph)
    reader = {n.inputs[0]: n for n in graph.nodes if len(n.inputs) == 1}   # (the one, where readers == 1)
    nodes = list(graph.nodes)
    for pool in [n for n in nodes if isinstance(n, ir.MaxPool2d)]:
        chain, value = [], pool.output
        while readers.get(value) == 1 and value in reader and _monotone(reader[value]):
            chain.append(reader[value])
            value = chain[-1].output
        if not chain:
            continue
        moved = list(chain)
        moved[0] = dataclasses.replace(moved[0], inputs=[pool.inputs[0]])
        moved[-1] = dataclasses.replace(moved[-1], output=value + "#before_pool")
        at = next(i for i, n in enumerate(nodes) if n is pool)        # (identity: nodes hold tensors)
        rest = [n for n in nodes[at + 1:] if all(n is not c for c in chain)]
        nodes = nodes[:at] + moved + [dataclasses.replace(pool, inputs=[moved[-1].output], output=value)] + rest
    return dataclasses.replace(graph, nodes=nodes)


def relu_after_requant(graph: ir.Graph) -> ir.Graph:
    """The same integers with each ReLU that feeds only a requantization (no negative multiplier,
    qmax >= 0) moved after it: ``sat(R(max(x, 0))) = max(sat(R(x)), 0)`` because R never decreases
    and R(0) = 0 under either rounding, and the clip commutes with max(·, 0) when qmax >= 0. The
    conv's bias add then meets the requantization directly, which folds the bias into its rounding
    constant (one multiply of the raw int32 sum, see :meth:`_Builder._rescale`)."""
    readers = _readers(graph)
    nodes = list(graph.nodes)
    for i, relu in enumerate(nodes):
        if not isinstance(relu, ir.Relu) or readers.get(relu.output) != 1 or i + 1 >= len(nodes):
            continue
        nxt = nodes[i + 1]
        if not (isinstance(nxt, ir.Requant) and list(nxt.inputs) == [relu.output] and _monotone(nxt)
                and int(nxt.qmax) >= 0):
            continue
        nodes[i] = dataclasses.replace(nxt, inputs=list(relu.inputs), output=relu.output)
        nodes[i + 1] = dataclasses.replace(relu, inputs=[relu.output], output=nxt.output)
    return dataclasses.replace(graph, nodes=nodes)


def build_module(graph: "ir.Graph | dict", input_shape: tuple[int, ...], all_outputs: bool = False,
                 planner: ConvPlanner | None = None, weights_as_params: bool = False):
    """Relax module ``main(x: float32[input_shape]) -> logits`` for an artifact graph.

    ``input_shape`` is [B, C, H, W] (the graph's NCHW; outputs too). With ``all_outputs`` the function
    returns a tuple holding every node's value (centered, NCHW, in graph order) instead, for
    per-layer comparison. With a ``planner`` the program computes in NHWC and every convolution the
    planner accepts calls its hand-scheduled kernel. Returns an IRModule of high-level Relax ops plus
    those kernels. With ``weights_as_params`` the tensor-core GEMMs' packed weights are parameters of
    ``main`` after ``x`` instead of constants (a small program whose weights ship once for every batch
    size); then returns ``(module, [(node name, packed weight array)] in parameter order)``.
    """
    graph = ir.as_graph(graph)
    if not all_outputs:     # (every node's own value is compared there)
        graph = relu_after_requant(pool_after_epilogue(graph))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([int(d) for d in input_shape], "float32"))
    b = _Builder(bb, layout="NHWC" if planner is not None else "NCHW", planner=planner,
                 weights_as_params=weights_as_params)
    with bb.function("main"):
        with bb.dataflow():
            env, order = _emit_nodes(b, graph, x)
            if all_outputs:
                out = relax.Tuple([b.to_graph_layout(b.centered(env[n]).expr) for n in order])
            else:
                out = b.to_graph_layout(b.centered(env[graph.output]).expr)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv, params=[x] + [p[0] for p in b.weight_params or []])
    if weights_as_params:
        return bb.get(), [(name, a) for _, a, name in b.weight_params]
    return bb.get()


def value_ranges(graph: "ir.Graph | dict", input_shape: tuple[int, ...]) -> dict[str, Interval]:
    """Static integer interval [lo, hi] (centered) of every node output: the IR's bounds, which the
    program built by :func:`build_module` uses (containers and conv kernels are chosen from them)."""
    graph = ir.as_graph(graph)
    info = graph.infer(tuple(input_shape))
    return {n.output: info[n.output][1] for n in graph.nodes}


def node_outputs(graph: "ir.Graph | dict") -> list[tuple[str, str]]:
    """(node name, output value name) in graph order: the tuple layout of ``all_outputs=True``."""
    return [(n.name, n.output) for n in ir.as_graph(graph).nodes]
