"""Format ``integer`` of the ONNX export (every numeric profile): the integer graph as ONNX integer operators.

Each :mod:`hawq.ir` op becomes a small subgraph of ONNX integer operators computing the reference's
integers (:mod:`hawq.reference`), one handler per op in :data:`LOWER`, like the reference's ``IMPL``
and TVM's front end, writing through an :class:`OnnxBuilder`; :func:`hawq.export_onnx.to_onnx`
assembles the model (:mod:`hawq.export_qdq` reuses both for what its groups do not cover). The rules
(docs/numerics.md §16):

* **Values** are the IR's centered integers in an ``int32`` tensor (``int64`` where the static
  bound of :meth:`hawq.ir.Graph.infer` needs it); every IR value keeps its name, so any of them can
  be made a graph output (:func:`hawq.export_onnx.to_onnx` ``expose``) and compared with the reference.
* **Quantize** (the only float step): ``Div`` (or ``Mul`` by the stored float32 reciprocal, profile
  hawq), ``Round`` (half to even), ``Add`` z, ``Clip``, all float32 in the reference's order, then ``Cast``.
* **conv2d / dense**: ``ConvInteger`` / ``MatMulInteger`` on 8-bit containers, int32 sums (split over
  input channels and added in int64 where the proven bound exceeds int32), then
  ``Add`` of the int32 bias. The activation is moved to ``uint8`` with a zero point (``x − lo``; the
  runtime pads with the zero point, i.e. with a centered 0); weights are ``uint8`` ``w + 128`` with
  zero point 128. Unsigned·unsigned products are widened exactly on every ONNX Runtime path, while
  its u8·s8 and s8·u8 kernels on AVX2 (and AVX-512 without VNNI) add pairs of products in
  saturating int16 (``vpmaddubsw``); u8·u8 is also the fastest ``ConvInteger`` there.
* **Requantization** in ``int64``: ``t = x·m``; rounding half up is ``floor((t + 2^(s−1)) / 2^s)``,
  half to even adds the parity of ``floor(t / 2^s)`` the same way as :func:`hawq.numerics.requantize`.
  ``floor(a / 2^s)`` is an unsigned ``BitShift`` of ``a + K·2^s`` (K makes it non-negative over a's
  proven bound) minus K, or where that could leave int64 ``Div(a − Mod(a, d), d)`` (ONNX's integer
  ``Div`` truncates toward zero, ``Mod`` with ``fmod=0`` takes the divisor's sign); then ``Clip``.
* **Pools**: max pool on the 8-bit container (``MaxPool`` never picks padding; ceil_mode's extra
  windows become explicit end padding), average pool windows as a depthwise ``ConvInteger`` with a
  ones kernel, global pools as ``ReduceSum``; HAWQ's ``trunc(sum/N + 0.01)`` is ``Div`` of
  ``100·sum + N`` by ``100·N`` (truncation is what it asks for).

* **Profile ort's ops**: ``requant_float`` as ``Cast`` to float32, ``Mul``, ``Round``, ``Clip`` (the
  float32 step of its spec); ``qlinear_add`` as a ``Gather`` from its table.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hawq import ir
from hawq.errors import HawqError

__all__ = ["ONNX_DTYPE", "LOWER", "OnnxBuilder"]

#: The ONNX element type of each NumPy dtype the exports use.
ONNX_DTYPE = {np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int64): TensorProto.INT64,
          np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8,
          np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint64): TensorProto.UINT64}
#: Integers up to 2^24 are exact in float32 (max pool of a wide accumulator).
_F32_EXACT = 1 << 24

#: The ONNX lowering of each IR op: ``fn(builder, node, *input_names) -> None``; the handler writes
#: ``node.output`` (and its container dtype) through the builder.
LOWER = ir.Registry("ONNX integer export")


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


class OnnxBuilder:
    """Collects nodes and initializers; knows every value's dtype and static [lo, hi]."""

    def __init__(self, info: dict):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.dtype: dict[str, np.dtype] = {}
        self.info = info
        self._n = 0

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}/{self._n}"

    def const(self, value, dtype, hint: str = "c") -> str:
        name = self.fresh(hint)
        # np.array keeps a 0-d value 0-d (ascontiguousarray would make it [1]): ONNX Runtime fuses a
        # QDQ Add only when its scales and zero points are scalars
        self.inits.append(numpy_helper.from_array(np.array(value, dtype=dtype, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], dtype, out: str | None = None, **attrs) -> str:
        """Append one node; ``dtype`` is its output's NumPy dtype. Returns the output name."""
        out = out or self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        self.dtype[out] = np.dtype(dtype)
        return out

    def cast(self, x: str, dtype, out: str | None = None) -> str:
        if self.dtype[x] == np.dtype(dtype) and out is None:
            return x
        return self.op("Cast", [x], dtype, out, to=ONNX_DTYPE[np.dtype(dtype)])

    def bounds(self, value: str) -> tuple[int, int]:
        return self.info[value][1]

    def shape(self, value: str) -> tuple[int, ...]:
        return self.info[value][0]


def _container(lo: int, hi: int):
    """Smallest of int32/int64 holding [lo, hi]."""
    return np.int32 if ir.INT32[0] <= lo and hi <= ir.INT32[1] else np.int64


def _finish(b: OnnxBuilder, node: ir.Op, x: str) -> None:
    """Write ``x`` as ``node.output`` in the container its bounds need."""
    lo, hi = b.bounds(node.output)
    b.cast(x, _container(lo, hi), out=node.output)


def _as_u8(b: OnnxBuilder, x: str, what: ir.Op) -> tuple[str, int]:
    """A value whose static range spans at most 256 integers, as uint8 ``x − lo`` with zero point ``−lo``."""
    lo, hi = b.bounds(x)
    if hi - lo > 255 or lo < -255:
        what.fail(f"input range [{lo}, {hi}] does not fit an 8-bit container (ONNX integer export)")
    shifted = x if lo == 0 else b.op("Add", [x, b.const(-lo, b.dtype[x], "zp")], b.dtype[x])
    return b.cast(shifted, np.uint8), -lo


def _weights(b: OnnxBuilder, w: np.ndarray, hint: str) -> tuple[str, str]:
    """(weight, zero point) initializers: uint8 w + 128 with zero point 128 (see the module doc)."""
    return b.const(w.astype(np.int64) + 128, np.uint8, hint), b.const(128, np.uint8, hint + "_zp")


def _channel(v, ndim: int, dtype=np.int64) -> np.ndarray:
    shape = [1] * ndim
    shape[1] = -1
    return np.asarray(_np(v), dtype=dtype).reshape(-1).reshape(shape) if ndim > 1 else np.asarray(_np(v), dtype)


def _floor_div(b: OnnxBuilder, a: str, d: str) -> str:
    """floor(a / d) for int64 a and d > 0: (a − mod(a, d)) / d, an exact division."""
    r = b.op("Mod", [a, d], np.int64, fmod=0)
    return b.op("Div", [b.op("Sub", [a, r], np.int64), d], np.int64)


def _floor_shift(b: OnnxBuilder, a: str, s: np.ndarray, bound: np.ndarray) -> str:
    """floor(a / 2^s) of int64 ``a`` with |a| <= ``bound`` (per channel, like ``s``). ONNX shifts
    only unsigned integers, so a is first made non-negative: floor(a/2^s) = ((a + K·2^s) >> s) − K
    with K = ceil(bound / 2^s); where a + K·2^s could leave int64, an exact Mod/Div floor division."""
    d = np.left_shift(np.int64(1), s)
    k = -(-bound // d)
    if (bound.astype(object) + k.astype(object) * d.astype(object) >= (1 << 63)).any():
        return _floor_div(b, a, b.const(d, np.int64, "pow2"))
    u = b.cast(b.op("Add", [a, b.const(k * d, np.int64, "offset")], np.int64), np.uint64)
    u = b.op("BitShift", [u, b.const(s, np.uint64, "shift")], np.uint64, direction="RIGHT")
    return b.op("Sub", [b.cast(u, np.int64), b.const(k, np.int64, "offset")], np.int64)


def _requantize(b: OnnxBuilder, x: str, m, s, rounding: str, ndim: int) -> str:
    """Unclamped int64 round(x·m / 2^s) (:func:`hawq.numerics.requantize`), per channel: half up is
    floor((t + 2^(s−1)) / 2^s) with t = x·m; half to even adds 2^(s−1) − 1 + (floor(t / 2^s) & 1)."""
    m, s = _channel(m, ndim), _channel(s, ndim)
    t = b.op("Mul", [b.cast(x, np.int64), b.const(m, np.int64, "m")], np.int64)
    half = np.left_shift(np.int64(1), s - 1)
    bound = np.abs(m) * max(abs(v) for v in b.bounds(x)) + 2 * half
    if rounding == "half_up":
        return _floor_shift(b, b.op("Add", [t, b.const(half, np.int64, "half")], np.int64), s, bound)
    if rounding == "half_even":
        odd = b.op("BitwiseAnd", [_floor_shift(b, t, s, bound), b.const(1, np.int64, "one")], np.int64)
        t = b.op("Add", [t, b.const(half - 1, np.int64, "half")], np.int64)
        return _floor_shift(b, b.op("Add", [t, odd], np.int64), s, bound)
    raise HawqError(f"unknown rounding {rounding!r}")


def _clip(b: OnnxBuilder, x: str, lo: int, hi: int) -> str:
    dt = b.dtype[x]
    return b.op("Clip", [x, b.const(lo, dt, "lo"), b.const(hi, dt, "hi")], dt)


@LOWER.register(ir.Quantize)
def _quantize(b: OnnxBuilder, node: ir.Quantize, x: str):
    scale = np.float32(_np(node.scale).reshape(-1)[0])
    z = np.float32(node.zero_point)
    if node.reciprocal:             # profile hawq: round(f32(1/S)·x + z), two float32 roundings as the reference
        y = b.op("Mul", [x, b.const(np.float32(1.0) / scale, np.float32, "inv_scale")], np.float32)
        y = b.op("Round", [b.op("Add", [y, b.const(z, np.float32, "z")], np.float32)], np.float32)
    else:                           # round(x / S) + z
        y = b.op("Div", [x, b.const(scale, np.float32, "scale")], np.float32)
        y = b.op("Add", [b.op("Round", [y], np.float32), b.const(z, np.float32, "z")], np.float32)
    y = b.cast(_clip(b, y, node.qmin, node.qmax), np.int32)
    _finish(b, node, b.op("Sub", [y, b.const(node.zero_point, np.int32, "z")], np.int32))


def _chunks(b: OnnxBuilder, node: "ir.Conv2d | ir.Dense", w: np.ndarray, x: str) -> list[tuple[int, int]]:
    """Input-channel ranges whose partial products are proven to fit int32 (ONNX's integer products
    are int32): one range when the whole sum does, else equal splits (dense, ungrouped conv) added
    in int64, as in the reference's int64 accumulator."""
    xmax = max(abs(v) for v in b.bounds(x))
    per_in = np.abs(w.astype(np.int64)).reshape(w.shape[0], w.shape[1], -1).sum(2) * xmax     # [O, I]
    fits = lambda lo, hi: int(per_in[:, lo:hi].sum(1).max(initial=0)) <= ir.INT32[1]
    n_in = w.shape[1]
    for n in range(1, n_in + 1):
        edges = [round(i * n_in / n) for i in range(n + 1)]
        ranges = list(zip(edges[:-1], edges[1:]))
        if all(fits(lo, hi) for lo, hi in ranges):
            if n > 1 and getattr(node, "groups", 1) != 1:
                node.fail("accumulator may exceed int32 in a grouped convolution (ONNX integer export)")
            return ranges
    node.fail("a single input channel's products may exceed int32 (ONNX integer export)")


def _sum_chunks(b: OnnxBuilder, node: ir.Op, parts: list[str], bias: np.ndarray) -> None:
    """Add the int32 partial products and the bias, in int64 when there are several parts or the
    output's bound exceeds int32 (a 32-bit bias near its limit, profile hawq)."""
    dt = np.int32 if len(parts) == 1 and _container(*b.bounds(node.output)) is np.int32 else np.int64
    acc = b.cast(parts[0], dt)
    for p in parts[1:]:
        acc = b.op("Add", [acc, b.cast(p, dt)], dt)
    _finish(b, node, b.op("Add", [acc, b.const(bias, dt, node.name + ".bias")], dt))


def _slice(b: OnnxBuilder, x: str, lo: int, hi: int, n: int, axis: int = 1) -> str:
    if (lo, hi) == (0, n):
        return x
    return b.op("Slice", [x, b.const([lo], np.int64, "start"), b.const([hi], np.int64, "end"),
                          b.const([axis], np.int64, "axis")], b.dtype[x])


@LOWER.register(ir.Conv2d)
def _conv2d(b: OnnxBuilder, node: ir.Conv2d, x: str):
    w_all = _np(node.weight)
    ranges = _chunks(b, node, w_all, x)
    xq, zp = _as_u8(b, x, node)
    pads = list(node.pads())                    # ONNX's order: top, left, bottom, right
    parts = []
    for lo, hi in ranges:
        w, wz = _weights(b, w_all[:, lo:hi], node.name + ".weight")
        parts.append(b.op("ConvInteger", [_slice(b, xq, lo, hi, w_all.shape[1]), w, b.const(zp, np.uint8, "x_zp"), wz],
                          np.int32, group=int(node.groups), strides=ir.pair(node.stride), pads=pads,
                          dilations=ir.pair(node.dilation), kernel_shape=list(w_all.shape[2:])))
    _sum_chunks(b, node, parts, _channel(node.bias, 4))


@LOWER.register(ir.Dense)
def _dense(b: OnnxBuilder, node: ir.Dense, x: str):
    w_all = _np(node.weight)
    ranges = _chunks(b, node, w_all, x)
    xq, zp = _as_u8(b, x, node)
    parts = []
    for lo, hi in ranges:
        w, wz = _weights(b, w_all[:, lo:hi].T, node.name + ".weight")
        parts.append(b.op("MatMulInteger", [_slice(b, xq, lo, hi, w_all.shape[1]), w, b.const(zp, np.uint8, "x_zp"),
                                            wz], np.int32))
    _sum_chunks(b, node, parts, np.asarray(_np(node.bias)).reshape(1, -1))


@LOWER.register(ir.Requant)
def _requant(b: OnnxBuilder, node: ir.Requant, x: str):
    y = _requantize(b, x, node.multiplier, node.shift, node.rounding, len(b.shape(x)))
    _finish(b, node, _clip(b, y, int(node.qmin), int(node.qmax)))


@LOWER.register(ir.RequantAdd)
def _requant_add(b: OnnxBuilder, node: ir.RequantAdd, x: str, identity: str):
    nd = len(b.shape(x))
    y = b.op("Add", [_requantize(b, x, node.multiplier, node.shift, node.rounding, nd),
                     _requantize(b, identity, node.identity_multiplier, node.identity_shift, node.rounding, nd)],
             np.int64)
    _finish(b, node, _clip(b, y, int(node.qmin), int(node.qmax)))


@LOWER.register(ir.RequantFloat)
def _requant_float(b: OnnxBuilder, node: ir.RequantFloat, x: str):
    """ONNX Runtime's float32 step as plain float ops: ``Cast`` to float32 (exact below 2^24, rounds
    to nearest even above, like ``cvtdq2ps``), one ``Mul``, ``Round`` (half to even), ``Clip``."""
    nd = len(b.shape(x))
    y = b.op("Mul", [b.cast(x, np.float32), b.const(_channel(node.multiplier, nd, np.float32), np.float32, "m")],
             np.float32)
    y = _clip(b, b.op("Round", [y], np.float32), int(node.qmin), int(node.qmax))
    _finish(b, node, b.cast(y, np.int32))


@LOWER.register(ir.QLinearAdd)
def _qlinear_add(b: OnnxBuilder, node: ir.QLinearAdd, a: str, c: str):
    """A ``Gather`` from the stored QLinearAdd table at (a + a_zero)·256 + (b + b_zero)."""
    ia = b.op("Add", [b.cast(a, np.int32), b.const(int(node.a_zero), np.int32, "za")], np.int32)
    ib = b.op("Add", [b.cast(c, np.int32), b.const(int(node.b_zero), np.int32, "zb")], np.int32)
    idx = b.op("Add", [b.op("Mul", [ia, b.const(256, np.int32, "row")], np.int32), ib], np.int32)
    table = np.asarray(_np(node.table), dtype=np.int32).reshape(-1)
    _finish(b, node, b.op("Gather", [b.const(table, np.int32, node.name + ".table"), idx], np.int32, axis=0))


@LOWER.register(ir.Sign)
def _sign(b: OnnxBuilder, node: ir.Sign, x: str):
    """``Where(x >= 0, 1, -1)`` in int8 (ONNX's ``Sign`` maps 0 to 0; the sign grid maps it to +1)."""
    nonneg = b.op("GreaterOrEqual", [x, b.const(0, b.dtype[x], "zero")], np.bool_)
    _finish(b, node, b.op("Where", [nonneg, b.const(1, np.int32, "plus"), b.const(-1, np.int32, "minus")], np.int32))


@LOWER.register(ir.Relu)
def _relu(b: OnnxBuilder, node: ir.Relu, x: str):
    _finish(b, node, b.op("Max", [x, b.const(0, b.dtype[x], "zero")], b.dtype[x]))


@LOWER.register(ir.Flatten)
def _flatten(b: OnnxBuilder, node: ir.Flatten, x: str):
    _finish(b, node, b.op("Flatten", [x], b.dtype[x], axis=1))


@LOWER.register(ir.Clamp)
def _clamp(b: OnnxBuilder, node: ir.Clamp, x: str):
    dt = np.int64 if b.dtype[x] == np.dtype(np.int64) else np.int32
    hi = np.minimum(_channel(node.qmax, len(b.shape(x))), np.iinfo(dt).max)
    y = b.op("Max", [x, b.const(node.qmin, dt, "lo")], dt)
    _finish(b, node, b.op("Min", [y, b.const(hi, dt, "hi")], dt))


@LOWER.register(ir.Concat)
def _concat(b: OnnxBuilder, node: ir.Concat, *xs: str):
    dt = np.int64 if any(b.dtype[x] == np.dtype(np.int64) for x in xs) else np.int32
    _finish(b, node, b.op("Concat", [b.cast(x, dt) for x in xs], dt, axis=int(node.axis)))


@LOWER.register(ir.ChannelAffine)
def _channel_affine(b: OnnxBuilder, node: ir.ChannelAffine, x: str):
    lo, hi = b.bounds(node.output)
    dt = np.int64 if np.int64 in (_container(lo, hi), b.dtype[x].type) else np.int32
    nd = len(b.shape(x))
    y = b.op("Mul", [b.cast(x, dt), b.const(_channel(node.sign, nd), dt, "sign")], dt)
    _finish(b, node, b.op("Add", [y, b.const(_channel(node.bias, nd), dt, node.name + ".bias")], dt))


@LOWER.register(ir.Lut)
def _lut(b: OnnxBuilder, node: ir.Lut, x: str):
    table = np.asarray(_np(node.table), dtype=np.int64)
    lo, hi = b.bounds(node.output)
    dt = _container(lo, hi)
    idx = b.op("Sub", [x, b.const(int(node.in_lo), b.dtype[x], "in_lo")], b.dtype[x])
    _finish(b, node, b.op("Gather", [b.const(table, dt, node.name + ".table"), idx], dt, axis=0))


@LOWER.register(ir.Mul)
def _mul(b: OnnxBuilder, node: ir.Mul, x: str, y: str):
    dt = _container(*b.bounds(node.output))
    _finish(b, node, b.op("Mul", [b.cast(x, dt), b.cast(y, dt)], dt))


@LOWER.register(ir.AdaptiveAvgPool2d)
def _adaptive_avgpool2d(b: OnnxBuilder, node: ir.AdaptiveAvgPool2d, x: str):
    """Each window: a ``Slice``, ``ReduceSum`` (kept dims), ``Mul`` by
    L/N; rows and columns ``Concat``ed."""
    dt = _container(*b.bounds(node.output))
    xw = b.cast(x, dt)
    h, w = b.shape(x)[2:]
    (oh, ow), f = ir.pair(node.output_size), node.factors(h, w)
    rows = []
    for i, (h0, h1) in enumerate(ir.adaptive_windows(h, oh)):
        cols = []
        for j, (w0, w1) in enumerate(ir.adaptive_windows(w, ow)):
            part = b.op("Slice", [xw, b.const([h0, w0], np.int64, "start"), b.const([h1, w1], np.int64, "end"),
                                  b.const([2, 3], np.int64, "axes")], dt)
            total = b.op("ReduceSum", [part, b.const([2, 3], np.int64, "axes")], dt, keepdims=1)
            cols.append(b.op("Mul", [total, b.const(int(f[i, j]), dt, "factor")], dt))
        rows.append(cols[0] if len(cols) == 1 else b.op("Concat", cols, dt, axis=3))
    _finish(b, node, rows[0] if len(rows) == 1 else b.op("Concat", rows, dt, axis=2))


@LOWER.register(ir.ChannelShuffle)
def _channel_shuffle(b: OnnxBuilder, node: ir.ChannelShuffle, x: str):
    perm = node.perm(b.shape(x)[1])
    _finish(b, node, b.op("Gather", [x, b.const(perm, np.int64, "perm")], b.dtype[x], axis=1))


@LOWER.register(ir.SliceChannels)
def _slice_channels(b: OnnxBuilder, node: ir.SliceChannels, x: str):
    _finish(b, node, _slice(b, x, int(node.start), int(node.stop), -1))


@LOWER.register(ir.MaxPool2d)
def _maxpool2d(b: OnnxBuilder, node: ir.MaxPool2d, x: str):
    """On the 8-bit container when the value has 8 bits; else in float32, exact below 2^24 (profile
    hawq pools the conv accumulator)."""
    (ph, pw), (eh, ew) = ir.pair(node.padding), node.extra_padding(*b.shape(x)[2:])
    attrs = dict(kernel_shape=ir.pair(node.kernel), strides=ir.pair(node.stride), pads=[ph, pw, ph + eh, pw + ew])
    lo, hi = b.bounds(x)
    if hi - lo <= 255 and lo >= -255:
        xq, zp = _as_u8(b, x, node)
        y = b.cast(b.op("MaxPool", [xq], np.uint8, **attrs), np.int32)
        _finish(b, node, y if zp == 0 else b.op("Sub", [y, b.const(zp, np.int32, "zp")], np.int32))
    elif max(-lo, hi) <= _F32_EXACT:
        _finish(b, node, b.op("MaxPool", [b.cast(x, np.float32)], np.float32, **attrs))
    else:
        node.fail(f"input range [{lo}, {hi}] exceeds both 8 bits and float32's exact integers (ONNX integer export)")


def _trunc_mean(b: OnnxBuilder, total: str, n: int) -> str:
    """HAWQ's trunc(total/n + 0.01) = truncdiv(100·total + n, 100·n) (:func:`hawq.numerics.avgpool_trunc`)."""
    num = b.op("Add", [b.op("Mul", [b.cast(total, np.int64), b.const(100, np.int64, "hundred")], np.int64),
                       b.const(n, np.int64, "n")], np.int64)
    return b.op("Div", [num, b.const(100 * n, np.int64, "d")], np.int64)


@LOWER.register(ir.AvgPool2d)
def _avgpool2d(b: OnnxBuilder, node: ir.AvgPool2d, x: str):
    """k×k window sums: a depthwise ``ConvInteger`` with a ones kernel on an 8-bit value; a wider
    value (a conv accumulator: DenseNet's transitions) as k² strided ``Slice``s of the zero-padded
    value added in int32/int64 (one ``ReduceSum`` when the window is the whole map)."""
    xlo, xhi = b.bounds(x)
    n = int(node.divisor)
    lo, hi = min(xlo, 0) * n, max(xhi, 0) * n
    c, (kh, kw), (sh, sw), (ph, pw) = b.shape(x)[1], ir.pair(node.kernel), ir.pair(node.stride), ir.pair(node.padding)
    if xhi - xlo <= 255 and xlo >= -255:
        xq, zp = _as_u8(b, x, node)
        ones = b.const(np.ones((c, 1, kh, kw)), np.uint8, node.name + ".window")
        y = b.op("ConvInteger", [xq, ones, b.const(zp, np.uint8, "x_zp"), b.const(0, np.uint8, "w_zp")], np.int32,
                 group=int(c), strides=[sh, sw], pads=[ph, pw, ph, pw], kernel_shape=[kh, kw])
    else:
        dt = _container(lo, hi)
        h, w = b.shape(x)[2:]
        xw = b.cast(x, dt)
        if (ph, pw) == (0, 0) and (kh, kw) == (h, w):
            y = b.op("ReduceSum", [xw, b.const([2, 3], np.int64, "axes")], dt, keepdims=1)
        else:
            if ph or pw:
                xw = b.op("Pad", [xw, b.const([0, 0, ph, pw, 0, 0, ph, pw], np.int64, "pads")], dt)
            oh, ow = node.shape((1, c, h, w))[2:]
            y = None
            for i in range(kh):
                for j in range(kw):
                    part = b.op("Slice", [xw, b.const([i, j], np.int64, "start"),
                                          b.const([i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1], np.int64, "end"),
                                          b.const([2, 3], np.int64, "axes"), b.const([sh, sw], np.int64, "steps")], dt)
                    y = part if y is None else b.op("Add", [y, part], dt)
    _finish(b, node, y if node.mode == "sum" else _trunc_mean(b, y, n))


@LOWER.register(ir.GlobalAvgPoolSum)
def _global_avgpool_sum(b: OnnxBuilder, node: ir.GlobalAvgPoolSum, x: str):
    lo, hi = b.bounds(node.output)
    dt = _container(lo, hi)
    _finish(b, node, b.op("ReduceSum", [b.cast(x, dt), b.const([2, 3], np.int64, "axes")], dt, keepdims=0))


@LOWER.register(ir.GlobalAvgPoolTrunc)
def _global_avgpool_trunc(b: OnnxBuilder, node: ir.GlobalAvgPoolTrunc, x: str):
    total = b.op("ReduceSum", [b.cast(x, np.int64), b.const([2, 3], np.int64, "axes")], np.int64, keepdims=0)
    _finish(b, node, _trunc_mean(b, total, int(node.divisor)))
