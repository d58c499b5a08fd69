"""Integer graph of profile ``ort`` → standard QDQ ONNX, which ONNX Runtime fuses into its int8 kernels.

A graph of numeric profile ``ort`` (docs/numerics.md §17) computes exactly what ONNX Runtime's
QLinearConv, QLinearAdd, QLinearGlobalAveragePool and uint8 MaxPool compute, so it is written as the
``QuantizeLinear``/``DequantizeLinear`` file every int8 runtime reads (opset 18, per-channel int8
weights with zero point 0, int32 biases at scale f32(S_x·S_w), uint8 activations with zero points):

* ``quantize`` → ``QuantizeLinear``;
* ``conv2d`` (+ a ``relu`` the grid's clamp makes redundant, + max pools, which commute with the
  monotone requantization) + ``requant_float`` → ``DQ → Conv → Q`` (ONNX Runtime: QLinearConv), then
  ``MaxPool`` on uint8;
* ``global_avgpool_sum`` + ``requant_float`` (count N) → ``DQ → GlobalAveragePool → Q``
  (QLinearGlobalAveragePool), then ``Transpose`` to NHWC and ``Flatten`` (the pool runs channels-last);
* ``qlinear_add`` → ``DQ, DQ → Add → Q`` (QLinearAdd);
* ``relu`` of a value already ≥ 0 is the value; ``max_pool2d``/``flatten`` of a uint8 tensor stay uint8;
* ``dense`` (the classifier) → ``MatMulInteger`` on the uint8 tensor and its zero point, int32 logits.

Every other op (any op of the integer format) is lowered by :data:`hawq.onnx_integer.LOWER` on the
centered integers, exactly as in the integer format. Each fused group checks that the scales it
states reproduce the graph's stored multiplier (and QLinearAdd table) bit for bit, so the file
cannot silently disagree with the reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hawq import ir
from hawq.errors import HawqError
from hawq.onnx_integer import LOWER, OnnxBuilder

__all__ = ["lower_qdq"]


@dataclass
class _U8:
    """A uint8 tensor ``name`` on the grid (scale, zero point): IR value = stored − zero."""
    name: str
    scale: np.float32
    zero: int


@dataclass
class _Pending:
    """An accumulator ONNX Runtime never materializes: a conv (or global pool) of a uint8 tensor
    ``x``, then the ReLU and max pools that wait for the requantization that closes the fused group.
    ``chain``: those IR nodes from the conv to this value (replayed in integer ops if another
    consumer needs the accumulator itself)."""
    x: _U8
    chain: list

    @property
    def node(self) -> ir.Op:
        return self.chain[0]

    @property
    def relu(self) -> bool:
        return any(isinstance(n, ir.Relu) for n in self.chain)

    @property
    def pools(self) -> list:
        return [n for n in self.chain if isinstance(n, ir.MaxPool2d)]


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _f32(v) -> np.float32:
    return np.float32(np.asarray(_np(v), dtype=np.float64).reshape(-1)[0])


class _Lowering:
    def __init__(self, b: OnnxBuilder, weights: str):
        if weights not in ("s8", "u8"):
            raise HawqError(f"unknown QDQ weight container {weights!r}; expected s8 or u8")
        self.b, self.weights = b, weights
        self.vals: dict[str, object] = {}
        self.centered: set[str] = set()
        self.closed: dict[tuple, _U8] = {}       # fused groups already written, by accumulator and grid

    # -- helpers ---------------------------------------------------------------------------------
    def grid(self, t: _U8, hint: str) -> tuple[str, str]:
        return self.b.const(t.scale, np.float32, hint + "_scale"), self.b.const(t.zero, np.uint8, hint + "_zp")

    def dq(self, t: _U8) -> str:
        s, z = self.grid(t, t.name)
        return self.b.op("DequantizeLinear", [t.name, s, z], np.float32)

    def q(self, x: str, scale, zero: int, hint: str) -> _U8:
        t = _U8("", np.float32(scale), int(zero))
        s, z = self.grid(t, hint)
        t.name = self.b.op("QuantizeLinear", [x, s, z], np.uint8, out=self.b.fresh(hint + "/q"))
        return t

    def u8(self, value: str, node: ir.Op) -> _U8:
        v = self.vals[value]
        if not isinstance(v, _U8):
            node.fail(f"reads '{value}', which is not a uint8 activation (QDQ export of profile ort)")
        return v

    def materialize(self, value: str) -> str:
        """The IR value as centered integers under its own name (int32/int64), for integer ops and
        outputs; an accumulator of a fused group is recomputed by the integer format's ops."""
        v = self.vals[value]
        if isinstance(v, _Pending):
            for node in v.chain:
                if node.output not in self.centered:
                    LOWER.lookup(node)(self.b, node, *[self.materialize(i) for i in node.inputs])
                    self.centered.add(node.output)
            return value
        if isinstance(v, _U8) and value not in self.centered:
            wide = self.b.cast(v.name, np.int32)
            if v.zero:
                self.b.op("Sub", [wide, self.b.const(v.zero, np.int32, "zp")], np.int32, out=value)
            else:
                self.b.cast(wide, np.int32, out=value)
            self.centered.add(value)
        return value

    def integer(self, node: ir.Op) -> None:
        """Any op by the integer format's lowering, on centered integers."""
        LOWER.lookup(node)(self.b, node, *[self.materialize(v) for v in node.inputs])
        self.vals[node.output] = "int"
        self.centered.add(node.output)

    # -- ops -------------------------------------------------------------------------------------
    def quantize(self, node: ir.Quantize) -> None:
        if node.reciprocal or (int(node.qmin), int(node.qmax)) != (0, 255):
            node.fail("QDQ export needs a uint8 input quantizer that divides by its scale (profile ort)")
        self.vals[node.output] = self.q(node.inputs[0], _f32(node.scale), int(node.zero_point), node.name)

    def accumulate(self, node: "ir.Conv2d | ir.GlobalAvgPoolSum") -> None:
        """A conv or global pool of a uint8 tensor opens a fused group (closed by its requant_float)."""
        x = self.vals[node.inputs[0]]
        if isinstance(x, _U8):
            self.vals[node.output] = _Pending(x, [node])
        else:
            self.integer(node)

    def relu(self, node: ir.Relu) -> None:
        x = self.vals[node.inputs[0]]
        if isinstance(x, _Pending) and not x.pools:
            self.vals[node.output] = _Pending(x.x, [*x.chain, node])
        elif isinstance(x, _U8) and self.b.bounds(node.inputs[0])[0] >= 0:
            self.vals[node.output] = x            # already >= 0: the ReLU is the identity
        elif isinstance(x, _U8):                  # DQ → Relu → Q on the same grid: exact (|error| << 1/2)
            y = self.b.op("Relu", [self.dq(x)], np.float32)
            self.vals[node.output] = self.q(y, x.scale, x.zero, node.name)
        else:
            self.integer(node)

    def maxpool(self, node: ir.MaxPool2d) -> None:
        x = self.vals[node.inputs[0]]
        if isinstance(x, _Pending) and isinstance(x.node, ir.Conv2d):
            self.vals[node.output] = _Pending(x.x, [*x.chain, node])
        elif isinstance(x, _U8):
            self.vals[node.output] = _U8(self._maxpool_u8(node, x.name, node.inputs[0]), x.scale, x.zero)
        else:
            self.integer(node)

    def _maxpool_u8(self, node: ir.MaxPool2d, x: str, value: str) -> str:
        (ph, pw), (eh, ew) = ir.pair(node.padding), node.extra_padding(*self.b.shape(value)[2:])
        return self.b.op("MaxPool", [x], np.uint8, kernel_shape=ir.pair(node.kernel), strides=ir.pair(node.stride),
                         pads=[ph, pw, ph + eh, pw + ew])

    def flatten(self, node: ir.Flatten) -> None:
        x = self.vals[node.inputs[0]]
        if isinstance(x, _U8):
            self.vals[node.output] = _U8(self.b.op("Flatten", [x.name], np.uint8, axis=1), x.scale, x.zero)
        else:
            self.integer(node)

    def requant_float(self, node: ir.RequantFloat) -> None:
        x = self.vals[node.inputs[0]]
        if not isinstance(x, _Pending):
            self.integer(node)            # float32 Mul/Round on a materialized accumulator, then onto its grid
            stored = node.output if not node.zero_point else self.b.op(
                "Add", [node.output, self.b.const(int(node.zero_point), np.int32, "zp")], np.int32)
            self.vals[node.output] = _U8(self.b.cast(stored, np.uint8, out=self.b.fresh(node.name + "/u8")),
                                         _f32(node.scale), int(node.zero_point))
            return
        key = (node.inputs[0], _f32(node.scale), int(node.zero_point), int(node.qmin), int(node.qmax),
               np.asarray(_np(node.multiplier), dtype=np.float32).tobytes())
        if key in self.closed:          # two quantizers with one grid on one accumulator: one kernel
            self.vals[node.output] = self.closed[key]
            return
        if x.relu and int(node.qmin) < 0:
            node.fail("a ReLU before a grid with negative values cannot fold into ONNX Runtime's kernel")
        if isinstance(x.node, ir.Conv2d):
            y = self._conv(x.node, x.x, node)
        else:
            y = self._global_pool(x.node, x.x, node)
        for pool in x.pools:
            y = _U8(self._maxpool_u8(pool, y.name, pool.inputs[0]), y.scale, y.zero)
        self.vals[node.output] = self.closed[key] = y

    def _conv(self, conv: ir.Conv2d, x: _U8, rq: ir.RequantFloat) -> _U8:
        b = self.b
        w = _np(conv.weight).astype(np.int8)
        o = w.shape[0]
        s_w = np.broadcast_to(np.asarray(_np(conv.weight_scale), dtype=np.float32).reshape(-1), (o,)).copy()
        s_acc = (x.scale * s_w).astype(np.float32)                 # ONNX Runtime's f32(S_x · S_w)
        want = np.broadcast_to(np.asarray(_np(rq.in_scale), dtype=np.float32).reshape(-1), (o,))
        if not np.array_equal(s_acc, want):
            rq.fail("the accumulator scale is not f32(S_x·S_w) of the conv's input and weight scales")
        if self.weights == "u8":          # the same integers as uint8 w + 128, zero point 128
            wq, wz = b.const(w.astype(np.int64) + 128, np.uint8, conv.name + ".weight"), np.full(o, 128)
            wz = b.const(wz, np.uint8, conv.name + ".weight_zp")
        else:
            wq, wz = b.const(w, np.int8, conv.name + ".weight"), b.const(np.zeros(o), np.int8, conv.name + ".weight_zp")
        wd = b.op("DequantizeLinear", [wq, b.const(s_w, np.float32, conv.name + ".weight_scale"), wz], np.float32, axis=0)
        bias = np.asarray(_np(conv.bias), dtype=np.int64)
        bd = b.op("DequantizeLinear", [b.const(bias, np.int32, conv.name + ".bias"),
                                       b.const(s_acc, np.float32, conv.name + ".bias_scale"),
                                       b.const(np.zeros(o), np.int32, conv.name + ".bias_zp")], np.float32, axis=0)
        y = b.op("Conv", [self.dq(x), wd, bd], np.float32, group=int(conv.groups), strides=ir.pair(conv.stride),
                 pads=list(conv.pads()), dilations=ir.pair(conv.dilation), kernel_shape=list(w.shape[2:]))
        return self.q(y, _f32(rq.scale), int(rq.zero_point), rq.name)

    def _global_pool(self, pool: ir.GlobalAvgPoolSum, x: _U8, rq: ir.RequantFloat) -> _U8:
        h, w = self.b.shape(pool.inputs[0])[2:]
        if int(rq.count) != h * w or _f32(rq.in_scale) != x.scale:
            rq.fail("the pool's requantization does not state the pooled grid's scale and window size")
        y = self.b.op("GlobalAveragePool", [self.dq(x)], np.float32)
        t = self.q(y, _f32(rq.scale), int(rq.zero_point), rq.name)
        # [B, C, 1, 1] -> [B, 1, 1, C] -> [B, C]: the explicit NHWC transpose cancels the one ORT's
        # layout optimizer puts before the pool, which then runs channels-last (after a plain Flatten
        # ORT pools in NCHW, one call per image and channel: 7x slower on mobilenetv2_w1 at batch 8).
        nhwc = self.b.op("Transpose", [t.name], np.uint8, perm=[0, 2, 3, 1])
        return _U8(self.b.op("Flatten", [nhwc], np.uint8, axis=1), t.scale, t.zero)

    def dense(self, node: ir.Dense) -> None:
        """The classifier on the uint8 tensor itself: ``MatMulInteger`` (weights uint8 w + 128, zero
        point 128: exact on every path, as in the integer format) and the int32 bias, when the proven
        sum fits int32; else the integer format's lowering (which splits it)."""
        x = self.vals[node.inputs[0]]
        w = _np(node.weight).astype(np.int64)
        if not isinstance(x, _U8) or int((np.abs(w).sum(1) * 255).max(initial=0)) + \
                int(np.abs(_np(node.bias).astype(np.int64)).max(initial=0)) > ir.INT32[1]:
            self.integer(node)
            return
        b = self.b
        acc = b.op("MatMulInteger", [x.name, b.const(w.T + 128, np.uint8, node.name + ".weight"),
                                     b.const(x.zero, np.uint8, "x_zp"), b.const(128, np.uint8, node.name + ".weight_zp")],
                   np.int32)
        bias = np.asarray(_np(node.bias), dtype=np.int64).reshape(1, -1)
        b.op("Add", [acc, b.const(bias, np.int32, node.name + ".bias")], np.int32, out=node.output)
        self.vals[node.output] = "int"
        self.centered.add(node.output)

    def qlinear_add(self, node: ir.QLinearAdd) -> None:
        a, c = self.u8(node.inputs[0], node), self.u8(node.inputs[1], node)
        if (a.scale, a.zero, c.scale, c.zero) != (_f32(node.a_scale), int(node.a_zero), _f32(node.b_scale), int(node.b_zero)):
            node.fail("operand grids differ from the ones its table was computed for")
        y = self.b.op("Add", [self.dq(a), self.dq(c)], np.float32)
        self.vals[node.output] = self.q(y, _f32(node.scale), int(node.zero_point), node.name)


_QDQ = {ir.Quantize: _Lowering.quantize, ir.Conv2d: _Lowering.accumulate, ir.GlobalAvgPoolSum: _Lowering.accumulate,
        ir.Relu: _Lowering.relu, ir.MaxPool2d: _Lowering.maxpool, ir.Flatten: _Lowering.flatten,
        ir.RequantFloat: _Lowering.requant_float, ir.QLinearAdd: _Lowering.qlinear_add, ir.Dense: _Lowering.dense}


def lower_qdq(b: OnnxBuilder, g: ir.Graph, expose: bool, weights: str = "s8") -> list[str]:
    """Write graph ``g`` (profile ort) into ``b`` as QDQ groups; the graph output as centered
    integers under its name. Returns the IR values written as outputs: the graph output, and with
    ``expose`` every value that exists as a tensor (accumulators fused into a kernel do not).
    ``weights``: ``s8`` (int8, zero point 0) or ``u8`` (uint8 w + 128, zero point 128)."""
    low = _Lowering(b, weights)
    low.vals[g.input] = "float"
    for node in g.nodes:
        fn = _QDQ.get(type(node))
        if fn is None:
            low.integer(node)
        else:
            fn(low, node)
    low.materialize(g.output)
    if not expose:
        return [g.output]
    shown = [n.output for n in g.nodes if not isinstance(low.vals[n.output], _Pending)]
    for v in shown:
        low.materialize(v)
    return shown
