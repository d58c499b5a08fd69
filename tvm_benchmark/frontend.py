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

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from hawq.errors import HawqError
from hawq.reference import OPS as REFERENCE_OPS
from hawq.reference import rounding_of

#: ``planner(act_dtype, act_lo, act_hi, weight_oihw, groups, out_w) -> ConvPlan | None``: the
#: back end's choice of a hand-scheduled kernel for one convolution (:func:`tvm_benchmark.schedules.plan_conv`
#: bound to an ISA). The front end knows no ISA: it only prepares the operands a plan asks for.
ConvPlanner = Callable[..., object]

_CONTAINERS = ("uint8", "int8", "int16", "int32", "int64")
_I64 = np.iinfo(np.int64)


def container(lo: int, hi: int) -> str:
    """Smallest integer dtype holding every integer in [lo, hi]."""
    for dt in _CONTAINERS:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    raise HawqError(f"integer range [{lo}, {hi}] does not fit in int64")


@dataclass
class Value:
    """A Relax tensor standing for the graph value ``expr - offset`` with bounds [lo, hi]."""
    expr: relax.Expr
    lo: int
    hi: int
    offset: int = 0          # nonzero only for the uncentered input quantizer output (offset = z)

    @property
    def dtype(self) -> str:
        return _dt(self.expr)

    def absmax(self) -> int:
        return max(abs(self.lo), abs(self.hi))


def _dt(e: relax.Expr) -> str:
    """Element dtype of a Relax tensor expression, as a string."""
    return str(e.ty.dtype)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _const(a: np.ndarray, dtype: str) -> relax.Constant:
    return relax.const(np.ascontiguousarray(a).astype(dtype), dtype)


class _Builder:
    """Emits one Relax binding per graph node into an open dataflow block.

    ``layout`` is the layout of 4-D values inside the program (``NCHW`` as in the graph, or ``NHWC``
    for the hand-scheduled CPU convolutions); ``planner`` (:data:`ConvPlanner`) picks those kernels.
    """

    def __init__(self, bb: relax.BlockBuilder, layout: str = "NCHW", planner: ConvPlanner | None = None):
        self.bb, self.layout, self.planner = bb, layout, planner

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
        wide = "int32" if dt in ("uint8", "int8", "int16") else dt
        e = self.emit(relax.op.subtract(self.cast(v, wide), relax.const(v.offset, wide)))
        return Value(self.emit(relax.op.astype(e, dt)) if dt != wide else e, v.lo, v.hi)

    # -- ops ---------------------------------------------------------------------------------
    def quantize(self, node, x: relax.Expr) -> Value:
        scale = np.float32(_np(node["scale"]).reshape(-1)[0])
        z, qmin, qmax = int(node["zero_point"]), int(node["qmin"]), int(node["qmax"])
        if self.layout == "NHWC" and len(x.ty.shape) == 4:
            x = self.emit(relax.op.permute_dims(x, [0, 2, 3, 1]))
        if node.get("reciprocal", False):
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
        q = self.emit(relax.op.astype(q, container(qmin, qmax)))
        return Value(q, qmin - z, qmax - z, offset=z)

    def _accumulator(self, x: Value, w: np.ndarray, bias: np.ndarray, what: str) -> tuple[int, str]:
        """Worst-case |acc| of x·W + b and the accumulator dtype it needs."""
        w_abs = np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(1)
        bound = int((w_abs * x.absmax()).max()) + int(np.abs(bias.astype(np.int64)).max(initial=0))
        bound += int(w_abs.max()) * abs(x.offset)
        if bound >= _I64.max // 2:
            raise HawqError(f"{what}: accumulator bound {bound} overflows int64")
        return bound, ("int32" if bound <= np.iinfo(np.int32).max else "int64")

    def _operand(self, x: Value, acc_dtype: str) -> relax.Expr:
        """Conv/dense input: uint8/int8 stay narrow (int32 acc); anything else is widened."""
        if acc_dtype == "int64" or x.dtype not in ("uint8", "int8"):
            return self.cast(x, acc_dtype)
        return x.expr

    def _pad_hw(self, data: relax.Expr, pad: list[int], value: int, extra_channels: int = 0,
                extra_width: int = 0) -> relax.Expr:
        """Pad H and W by ``pad`` on both sides, and append ``extra_channels`` / ``extra_width``
        (right side of W) — all with ``value`` — in one op."""
        if not any(pad) and not extra_channels and not extra_width:
            return data
        widths = [0, 0] * 4
        for axis, p in zip(self.hw_axes(), pad):
            widths[2 * axis] = widths[2 * axis + 1] = p
        widths[2 * self.caxis(4) + 1] = extra_channels
        widths[2 * self.hw_axes()[1] + 1] += extra_width
        return self.emit(relax.op.nn.pad(data, widths, pad_value=float(value)))

    def conv2d(self, node, x: Value) -> Value:
        w, bias = _np(node["weight"]), _np(node["bias"]).astype(np.int64)
        bound, acc = self._accumulator(x, w, bias, node["name"])
        pad = [int(p) for p in node["padding"]]
        stride = [int(s) for s in node["stride"]]
        data = self._operand(x, acc)
        groups = int(node["groups"])
        plan = None
        if self.planner is not None and acc == "int32" and tuple(int(d) for d in node["dilation"]) == (1, 1):
            out_w = (int(data.ty.shape[2]) + 2 * pad[1] - w.shape[3]) // stride[1] + 1
            plan = self.planner(_dt(data), x.lo + x.offset, x.hi + x.offset, w, groups, out_w)
        if plan is not None:
            y, offset = self._conv_planned(plan, data, w, pad, stride, x.offset)
        else:
            offset = x.offset
            if x.offset:
                data, pad = self._pad_hw(data, pad, x.offset), [0, 0]
            wdt = acc if acc == "int64" or _dt(data) not in ("uint8", "int8") else "int8"
            w_laid = w if self.layout == "NCHW" else w.transpose(0, 2, 3, 1)
            y = self.emit(relax.op.nn.conv2d(
                data, _const(w_laid, wdt), strides=stride, padding=pad,
                dilation=[int(d) for d in node["dilation"]], groups=groups, out_dtype=acc,
                data_layout=self.layout, kernel_layout="OIHW" if self.layout == "NCHW" else "OHWI"))
        if offset:
            # conv(q - z) = conv_pad_z(q) - z·ΣW: the uncentered q was padded with z (the centered zero).
            bias = bias - offset * w.astype(np.int64).reshape(w.shape[0], -1).sum(1)
        y = self.emit(relax.op.add(y, _const(self.per_channel(bias, 4), acc)))
        return Value(y, -bound, bound)

    def _conv_planned(self, plan, data: relax.Expr, w: np.ndarray, pad: list[int], stride: list[int],
                      offset: int) -> tuple[relax.Expr, int]:
        """NHWC conv through a hand-scheduled kernel: shift/widen the operand as the kernel reads it,
        pad (spatial with the centered zero, channels to the kernel's multiple), split column phases
        where the kernel asks, call it, reshape. Returns (int32 acc [B,OH,OW,O], total offset)."""
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
        phases = stride[1] if plan.column_phases else 0
        # Column phases need W a multiple of the stride; the extra columns are never read.
        extra_w = -(int(data.ty.shape[2]) + 2 * pad[1]) % phases if phases else 0
        data = self._pad_hw(data, pad, offset, extra_channels=-c % kernel.channels, extra_width=extra_w)
        b, h, wd, cp = (int(d) for d in data.ty.shape)
        wd -= extra_w                                      # the conv's own padded width
        oh, ow = (h - kh) // stride[0] + 1, (wd - kw) // stride[1] + 1
        if phases:
            data = self.emit(relax.op.reshape(data, [b, h, (wd + extra_w) // phases, phases, cp]))
            data = self.emit(relax.op.permute_dims(data, [0, 1, 3, 2, 4]))
        func = plan.prim_func(b, (h, wd), cp, o, (kh, kw), tuple(stride))
        gv = self.bb.add_func(func, f"conv2d_{kernel.name}__")   # the builder numbers repeats
        lanes = plan.out_lanes
        acc = self.emit(relax.call_tir(gv, [data, _const(plan.pack(w), kernel.weight_dtype)],
                                       relax.TensorType([b, oh, ow, o // lanes, lanes], "int32")))
        return self.emit(relax.op.reshape(acc, [b, oh, ow, o])), offset

    def dense(self, node, x: Value) -> Value:
        w, bias = _np(node["weight"]), _np(node["bias"]).astype(np.int64)
        x = self.centered(x)
        bound, acc = self._accumulator(x, w, bias, node["name"])
        data = self._operand(x, acc)
        wdt = acc if _dt(data) == acc else "int8"
        y = self.emit(relax.op.matmul(data, _const(w.T, wdt), out_dtype=acc))
        y = self.emit(relax.op.add(y, _const(bias.reshape(1, -1), acc)))
        return Value(y, -bound, bound)

    def _rescale(self, v: Value, m: np.ndarray, s: np.ndarray, rounding: str, what: str) -> relax.Expr:
        """round(v·m / 2^s) in int64, per channel (dim 1), ties by ``rounding`` (half_up / half_even);
        the pre-shift sum is bounded below 2^63 channel by channel."""
        v = self.centered(v)
        nd = len(v.expr.ty.shape)
        pairs = zip(*np.broadcast_arrays(np.asarray(m, np.int64).reshape(-1), np.asarray(s, np.int64).reshape(-1)))
        if max(v.absmax() * abs(int(mi)) + (1 << (int(si) - 1)) for mi, si in pairs) > _I64.max:
            raise HawqError(f"{what}: requantization product overflows int64")
        m, s = self.per_channel(m, nd), self.per_channel(s, nd)
        t = self.emit(relax.op.multiply(self.cast(v, "int64"), _const(m, "int64")))
        shift = _const(s, "int64")
        if rounding == "half_up":
            e = self.emit(relax.op.add(t, _const(np.left_shift(1, s - 1), "int64")))
        elif rounding == "half_even":
            # Below a tie floor, above it round up, at a tie add the parity of floor(t / 2^s).
            odd = self.emit(relax.op.right_shift(t, shift))
            odd = self.emit(relax.op.bitwise_and(odd, relax.const(1, "int64")))
            e = self.emit(relax.op.add(t, _const(np.left_shift(1, s - 1) - 1, "int64")))
            e = self.emit(relax.op.add(e, odd))
        else:
            raise HawqError(f"{what}: unknown requantization rounding {rounding!r} (half_up or half_even)")
        return self.emit(relax.op.right_shift(e, shift))

    def _saturate(self, e: relax.Expr, lo: int, hi: int) -> Value:
        e = self.emit(relax.op.clip(e, lo, hi))
        return Value(self.emit(relax.op.astype(e, container(lo, hi))), lo, hi)

    def requant(self, node, x: Value) -> Value:
        m = _np(node["multiplier"])
        e = self._rescale(x, m, _np(node["shift"]), rounding_of(node), node["name"])
        return self._saturate(e, *requant_bounds(int(node["qmin"]), int(node["qmax"]), x.lo, m))

    def requant_add(self, node, branch: Value, identity: Value) -> Value:
        rounding, what = rounding_of(node), node["name"]
        a = self._rescale(branch, _np(node["multiplier"]), _np(node["shift"]), rounding, what)
        b = self._rescale(identity, _np(node["identity_multiplier"]), _np(node["identity_shift"]), rounding, what)
        return self._saturate(self.emit(relax.op.add(a, b)), int(node["qmin"]), int(node["qmax"]))

    def relu(self, node, x: Value) -> Value:
        x = self.centered(x)
        y = self.emit(relax.op.maximum(x.expr, relax.const(0, x.dtype)))
        return Value(y, max(x.lo, 0), max(x.hi, 0))

    def maxpool2d(self, node, x: Value) -> Value:
        x = self.centered(x)
        p = [int(v) for v in node["padding"]]
        y = self.emit(relax.op.nn.max_pool2d(x.expr, [int(k) for k in node["kernel"]],
                                             [int(s) for s in node["stride"]], [p[0], p[1], p[0], p[1]],
                                             layout=self.layout))
        return Value(y, x.lo, x.hi)

    def global_avgpool_sum(self, node, x: Value) -> Value:
        x = self.centered(x)
        shape = [int(d) for d in x.expr.ty.shape]
        h, w = (shape[a] for a in self.hw_axes())
        lo, hi = x.lo * h * w, x.hi * h * w
        acc = "int32" if container(lo, hi) != "int64" else "int64"
        y = self.emit(relax.op.sum(self.cast(x, acc), axis=self.hw_axes()))
        return Value(y, lo, hi)

    def global_avgpool_trunc(self, node, x: Value) -> Value:
        """HAWQ's trunc(sum/N + 0.01) = truncdiv(100·sum + N, 100·N), :func:`hawq.numerics.avgpool_trunc`."""
        n = int(node["divisor"])
        if n <= 0:
            raise HawqError(f"{node['name']}: global_avgpool_trunc divisor must be positive, got {n}")
        total = self.global_avgpool_sum(node, x)
        lo, hi = 100 * total.lo + n, 100 * total.hi + n
        dt = "int32" if container(min(lo, 0), max(hi, 100 * n)) != "int64" else "int64"
        e = self.emit(relax.op.multiply(self.cast(total, dt), relax.const(100, dt)))
        e = self.emit(relax.op.add(e, relax.const(n, dt)))
        e = self.emit(relax.op.divide(e, relax.const(100 * n, dt)))     # integer divide: truncates toward 0
        return Value(e, _truncdiv(lo, 100 * n), _truncdiv(hi, 100 * n))


def _truncdiv(a: int, b: int) -> int:
    """C-style integer division (toward zero) of Python ints, b > 0."""
    q = abs(a) // b
    return q if a >= 0 else -q


def requant_bounds(qmin: int, qmax: int, in_lo: int, multiplier) -> tuple[int, int]:
    """Static range of a requant's output: [qmin, qmax], narrowed to [max(qmin, 0), qmax] when the
    input is non-negative (``in_lo >= 0``) and every multiplier is >= 0: then t = acc·m >= 0, and
    both roundings of t·2^-s are >= 0. This is what lets a signed-declared post-ReLU activation
    (profile ``hawq``: qmin -128, values 0..127) use a ``uint8`` container."""
    if in_lo >= 0 and bool((np.asarray(multiplier) >= 0).all()):
        return min(max(qmin, 0), qmax), qmax
    return qmin, qmax


def _emit_nodes(b: _Builder, graph: dict, x: relax.Var) -> tuple[dict, list[str]]:
    """Emit every node of ``graph`` (input ``x``); returns (value name -> Value, outputs in order)."""
    env: dict[str, Value | relax.Expr] = {graph["input"]: x}
    order = []
    for node in graph["nodes"]:
        if node["op"] not in REFERENCE_OPS:   # the builder has one method per reference op
            raise HawqError(f"integer graph has an op the TVM backend does not support: {node['op']!r}")
        env[node["output"]] = getattr(b, node["op"])(node, *(env[n] for n in node["inputs"]))
        order.append(node["output"])
    return env, order


def build_module(graph: dict, input_shape: tuple[int, ...], all_outputs: bool = False,
                 planner: ConvPlanner | None = None) -> tvm.IRModule:
    """Relax module ``main(x: float32[input_shape]) -> logits`` for an artifact graph.

    ``input_shape`` is [B, C, H, W] (the graph's NCHW; outputs too). With ``all_outputs`` the function
    returns a tuple holding every node's value (centered, NCHW, in graph order) instead, for
    per-layer comparison. With a ``planner`` the program computes in NHWC and every convolution the
    planner accepts calls its hand-scheduled kernel. Returns an IRModule of high-level Relax ops plus
    those kernels.
    """
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([int(d) for d in input_shape], "float32"))
    b = _Builder(bb, layout="NHWC" if planner is not None else "NCHW", planner=planner)
    with bb.function("main", [x]):
        with bb.dataflow():
            env, order = _emit_nodes(b, graph, x)
            if all_outputs:
                out = relax.Tuple([b.to_graph_layout(b.centered(env[n]).expr) for n in order])
            else:
                out = b.to_graph_layout(b.centered(env[graph["output"]]).expr)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


def value_ranges(graph: dict, input_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """Static integer interval [lo, hi] (centered) of every node output, exactly as the program built
    by :func:`build_module` bounds it (and picks containers and conv kernels from it)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([int(d) for d in input_shape], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            env, order = _emit_nodes(_Builder(bb), graph, x)
            gv = bb.emit_output(env[order[-1]].expr)
        bb.emit_func_output(gv)
    return {n: (env[n].lo, env[n].hi) for n in order}


def node_outputs(graph: dict) -> list[tuple[str, str]]:
    """(node name, output value name) in graph order: the tuple layout of ``all_outputs=True``."""
    return [(n["name"], n["output"]) for n in graph["nodes"]]
