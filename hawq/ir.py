"""The integer IR: one small dataclass per integer operation, and the graph that orders them.

This module owns the integer program's vocabulary. Each op class states

* its fields (exactly the keys of its node in the artifact, ``hawq-integer-graph/1``);
* :meth:`Op.check`: field rules (types, widths, per-channel lengths);
* :meth:`Op.shape`: the output shape from the input shapes (NCHW for 4-D values, [B, F] for 2-D);
* :meth:`Op.bounds`: the static interval [lo, hi] of the (centered) output integers from the input
  intervals — what the TVM front end sizes containers and accumulators from, and what the reference
  never exceeds.

Back ends register one implementation per op class (:class:`Registry`): the NumPy reference
(:mod:`hawq.reference`) and the Relax front end (:mod:`tvm_benchmark.frontend`). A new op is one
class here plus one function per back end (the reference, TVM, and ONNX in :mod:`hawq.export_onnx`).

On disk a graph stays the artifact's plain dict (tensors, ints, strings, lists: ``weights_only``
loads it): :meth:`Graph.from_dict` reads it — artifacts written before a field existed get that
field's default (``rounding`` half up, ``reciprocal`` False, no ``output_scale``) — and
:meth:`Graph.to_dict` writes it back key for key, so ``from_dict(d).to_dict() == d``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch

from hawq.errors import HawqError

__all__ = ["INT32", "ROUNDINGS", "pair", "Op", "Quantize", "Conv2d", "Dense", "Requant", "RequantAdd",
           "RequantFloat", "QLinearAdd", "Relu", "Flatten", "Clamp", "Concat", "MaxPool2d", "AvgPool2d", "GlobalAvgPoolSum",
           "GlobalAvgPoolTrunc", "ChannelAffine", "Lut", "Mul", "adaptive_windows", "adaptive_window_sizes", "AdaptiveAvgPool2d", "shuffle_perm", "ChannelShuffle", "SliceChannels", "Sign", "OPS", "requant_bounds", "Graph", "node_from_dict", "as_graph", "Registry"]

Interval = tuple[int, int]
Shape = tuple[int, ...]
INT32 = (-(1 << 31), (1 << 31) - 1)
ROUNDINGS = ("half_up", "half_even")


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _absmax(iv: Interval) -> int:
    return max(abs(int(iv[0])), abs(int(iv[1])))


def pair(v) -> list[int]:
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v), int(v)]


def _truncdiv(a: int, b: int) -> int:
    """C-style integer division (toward zero) of Python ints, b > 0."""
    q = abs(a) // b
    return q if a >= 0 else -q


def _window_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


@dataclass(kw_only=True)
class Op:
    """A graph node: ``name`` (the module that recorded it), value names read (``inputs``) and
    written (``output``). Subclasses set ``OP`` (the artifact's ``op`` string) and ``ARITY``."""

    OP: ClassVar[str] = ""
    ARITY: ClassVar[int] = 1
    #: Fields written to the artifact only when they differ from their default (so artifacts of the
    #: exact profile stay byte-identical to those written before the field existed).
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    name: str
    inputs: list[str]
    output: str

    # -- rules -------------------------------------------------------------------------------
    def check(self) -> None:
        """Field rules; raises HawqError naming the node."""

    def shape(self, *ins: Shape) -> Shape:
        return ins[0]

    def bounds(self, ins: list[Interval], shapes: list[Shape]) -> Interval:
        return ins[0]

    def fail(self, msg: str):
        raise HawqError(f"integer graph node '{self.name}' ({self.OP}): {msg}")

    # -- (de)serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"op": self.OP, "name": self.name, "inputs": list(self.inputs), "output": self.output}
        for f in dataclasses.fields(self):
            if f.name in ("name", "inputs", "output"):
                continue
            v = getattr(self, f.name)
            if f.name in self.OPTIONAL and v == f.default:
                continue
            d[f.name] = v
        return d


# ------------------------------------------------------------------------------------- ops
@dataclass(kw_only=True)
class Quantize(Op):
    """Float32 image -> centered integers q - z (the graph's only float op, docs/numerics.md §9):
    ``clip(round(x / S) + z, qmin, qmax) - z``, or with ``reciprocal`` (profile hawq)
    ``clip(round(f32(1/S)·x + z), qmin, qmax) - z``; rounding half to even."""
    OP: ClassVar[str] = "quantize"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("reciprocal",)
    scale: torch.Tensor
    zero_point: int
    qmin: int
    qmax: int
    bits: int
    reciprocal: bool = False

    def check(self):
        if not self.qmin <= self.zero_point <= self.qmax:
            self.fail(f"zero point {self.zero_point} outside [{self.qmin}, {self.qmax}]")
        if not float(_np(self.scale).reshape(-1)[0]) > 0:
            self.fail("scale must be positive")

    def bounds(self, ins, shapes):
        return int(self.qmin) - int(self.zero_point), int(self.qmax) - int(self.zero_point)


@dataclass(kw_only=True)
class _Weighted(Op):
    """Shared by conv2d and dense: int8-container weights, int32 bias, exact int accumulation."""
    weight: torch.Tensor
    bias: torch.Tensor
    weight_bits: int
    weight_scale: torch.Tensor

    def check(self):
        w, b = _np(self.weight), _np(self.bias)
        if b.shape != (w.shape[0],):
            self.fail(f"bias shape {b.shape} does not match {w.shape[0]} output channels")
        if int(self.weight_bits) == 1:           # the sign grid (docs/numerics.md §18)
            if w.size and not np.isin(w, (-1, 1)).all():
                self.fail("1-bit weights must all be -1 or +1")
            return
        lim = 1 << (int(self.weight_bits) - 1)
        if w.size and (int(w.min()) < -lim or int(w.max()) > lim - 1):
            self.fail(f"weights exceed {self.weight_bits} bits")

    def bounds(self, ins, shapes):
        w = _np(self.weight).astype(np.int64).reshape(_np(self.weight).shape[0], -1)
        bound = int((np.abs(w).sum(1) * _absmax(ins[0])).max(initial=0))
        bound += int(np.abs(_np(self.bias).astype(np.int64)).max(initial=0))
        return -bound, bound


@dataclass(kw_only=True)
class Conv2d(_Weighted):
    """Integer convolution (NCHW, weight OIHW, groups incl. depthwise), zero padding (centered 0),
    accumulated exactly, bias added: int [B,C,H,W] -> int [B,O,OH,OW]. ``padding``: [pad H, pad W]
    on both sides, or [top, left, bottom, right] (ONNX's order) for asymmetric "same" padding."""
    OP: ClassVar[str] = "conv2d"
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    groups: int

    def pads(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) zero padding."""
        p = [int(v) for v in (self.padding if isinstance(self.padding, (list, tuple)) else [self.padding])]
        return tuple(p) if len(p) == 4 else (*pair(p if len(p) == 2 else p[0]),) * 2

    def check(self):
        super().check()
        o, cg = _np(self.weight).shape[:2]
        if self.groups < 1 or o % self.groups:
            self.fail(f"{o} output channels do not split into {self.groups} groups")
        if pair(self.dilation) != [1, 1]:
            self.fail("dilated convolution is not supported")
        n = len(self.padding) if isinstance(self.padding, (list, tuple)) else 1
        if n not in (1, 2, 4) or min(self.pads()) < 0:
            self.fail(f"padding {self.padding} is not [pad H, pad W] or [top, left, bottom, right] >= 0")

    def shape(self, x):
        w = _np(self.weight).shape
        if x[1] != w[1] * self.groups:
            self.fail(f"input has {x[1]} channels, weight expects {w[1] * self.groups}")
        (sh, sw), (t, l, b, r) = pair(self.stride), self.pads()
        return (x[0], w[0], (x[2] + t + b - w[2]) // sh + 1, (x[3] + l + r - w[3]) // sw + 1)


@dataclass(kw_only=True)
class Dense(_Weighted):
    """Integer matrix product [B, F] · W[O, F]^T + bias -> [B, O]."""
    OP: ClassVar[str] = "dense"

    def shape(self, x):
        w = _np(self.weight).shape
        if len(x) != 2 or x[1] != w[1]:
            self.fail(f"input shape {x} does not match weight {w}")
        return (x[0], w[0])


@dataclass(kw_only=True)
class Requant(Op):
    """Dyadic rescale per channel, ``saturate(round(x·m / 2^shift), qmin, qmax)``; rounding half up
    (default) or half to even (profile hawq), docs/numerics.md §6."""
    OP: ClassVar[str] = "requant"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("rounding",)
    multiplier: torch.Tensor
    shift: torch.Tensor
    qmin: int
    qmax: int
    zero_point: int
    bits: int
    rounding: str = "half_up"

    def check(self):
        _check_dyadic(self, self.multiplier, self.shift)
        if self.rounding not in ROUNDINGS:
            self.fail(f"unknown rounding {self.rounding!r}")
        _check_qrange(self)

    def shape(self, x):
        _check_channels(self, self.multiplier, x)
        return x

    def bounds(self, ins, shapes):
        return requant_bounds(int(self.qmin), int(self.qmax), ins[0][0], _np(self.multiplier))


@dataclass(kw_only=True)
class RequantAdd(Op):
    """Residual add: both terms requantized in int64 to the output scale, summed, saturated
    (docs/numerics.md §7). No ReLU: a ReLU, where the network has one, is its own node."""
    OP: ClassVar[str] = "requant_add"
    ARITY: ClassVar[int] = 2
    OPTIONAL: ClassVar[tuple[str, ...]] = ("rounding",)
    multiplier: torch.Tensor
    shift: torch.Tensor
    identity_multiplier: torch.Tensor
    identity_shift: torch.Tensor
    qmin: int
    qmax: int
    zero_point: int
    bits: int
    rounding: str = "half_up"

    def check(self):
        _check_dyadic(self, self.multiplier, self.shift)
        _check_dyadic(self, self.identity_multiplier, self.identity_shift)
        if self.rounding not in ROUNDINGS:
            self.fail(f"unknown rounding {self.rounding!r}")

    def shape(self, x, identity):
        if tuple(x) != tuple(identity):
            self.fail(f"branch shape {x} differs from identity shape {identity}")
        _check_channels(self, self.multiplier, x)
        return x

    def bounds(self, ins, shapes):
        return int(self.qmin), int(self.qmax)


@dataclass(kw_only=True)
class RequantFloat(Op):
    """ONNX Runtime's requantization (profile ``ort``, docs/numerics.md §17), on centered integers:
    ``clip(round_half_even(f32(x) · multiplier), qmin, qmax)``, one float32 multiply per channel.
    ``multiplier`` (float32 [C] or [1]) is :func:`hawq.numerics.ort_multiplier` of ``in_scale``
    (float32: the accumulator's S_x·S_w, or a pool's input scale), ``scale`` (the output grid's,
    float32 [1]) and ``count`` (1, or the N of a global average pool); the three are kept so an
    exporter can state the same scales to the runtime, and :meth:`check` recomputes the multiplier.
    The input is an int32 accumulator or pool sum (ONNX Runtime's)."""
    OP: ClassVar[str] = "requant_float"
    multiplier: torch.Tensor
    in_scale: torch.Tensor
    scale: torch.Tensor
    count: int
    qmin: int
    qmax: int
    zero_point: int
    bits: int

    def check(self):
        from hawq.numerics import ort_multiplier
        m = _np(self.multiplier).astype(np.float32).reshape(-1)
        want = ort_multiplier(_np(self.in_scale), _np(self.scale), int(self.count))
        if m.shape != want.shape or not np.array_equal(m, want):
            self.fail("multiplier is not ONNX Runtime's f32(in_scale / (scale·count)) of the stored scales")
        _check_qrange(self)

    shape = Requant.shape

    def bounds(self, ins, shapes):
        lo, hi = ins[0]
        if lo < INT32[0] or hi > INT32[1]:
            self.fail(f"input range [{lo}, {hi}] exceeds ONNX Runtime's int32 accumulator")
        qmin, qmax = int(self.qmin), int(self.qmax)
        return (max(qmin, 0), qmax) if lo >= 0 and qmin <= 0 else (qmin, qmax)


@dataclass(kw_only=True)
class QLinearAdd(Op):
    """ONNX Runtime's QLinearAdd of two 8-bit activations (profile ``ort``, docs/numerics.md §17):
    ``table[a + a_zero, b + b_zero]`` with ``table`` (int16 [256, 256], centered outputs) computed by
    :func:`hawq.numerics.qlinear_add_table` from the stored scales and zero points, which are kept
    for exporters; :meth:`check` recomputes the table."""
    OP: ClassVar[str] = "qlinear_add"
    ARITY: ClassVar[int] = 2
    table: torch.Tensor
    a_scale: torch.Tensor
    a_zero: int
    b_scale: torch.Tensor
    b_zero: int
    scale: torch.Tensor
    qmin: int
    qmax: int
    zero_point: int
    bits: int

    def expected_table(self) -> np.ndarray:
        from hawq.numerics import qlinear_add_table
        return qlinear_add_table(_np(self.a_scale), int(self.a_zero), _np(self.b_scale), int(self.b_zero),
                                 _np(self.scale), int(self.zero_point), int(self.qmin) + int(self.zero_point),
                                 int(self.qmax) + int(self.zero_point))

    def check(self):
        t = _np(self.table)
        if t.shape != (256, 256) or not np.array_equal(t.astype(np.int64), self.expected_table().astype(np.int64)):
            self.fail("table is not ONNX Runtime's QLinearAdd of the stored scales and zero points")

    def shape(self, a, b):
        if tuple(a) != tuple(b):
            self.fail(f"input shapes {a} and {b} differ")
        return a

    def bounds(self, ins, shapes):
        for (lo, hi), z in zip(ins, (int(self.a_zero), int(self.b_zero))):
            if lo + z < 0 or hi + z > 255:
                self.fail(f"input range [{lo}, {hi}] with zero point {z} is not a uint8 tensor")
        (a0, a1), (b0, b1) = ins
        part = _np(self.table)[a0 + int(self.a_zero):a1 + int(self.a_zero) + 1, b0 + int(self.b_zero):b1 + int(self.b_zero) + 1]
        return int(part.min()), int(part.max())


@dataclass(kw_only=True)
class Sign(Op):
    """1-bit activation (docs/numerics.md §18): ``+1`` where ``x >= 0``, else ``-1``. Its output is
    on the sign grid {-1, +1} (never 0), which a binary convolution's popcount kernel relies on."""
    OP: ClassVar[str] = "sign"

    def bounds(self, ins, shapes):
        return -1, 1


@dataclass(kw_only=True)
class Relu(Op):
    """max(q, 0)."""
    OP: ClassVar[str] = "relu"

    def bounds(self, ins, shapes):
        return max(ins[0][0], 0), max(ins[0][1], 0)


@dataclass(kw_only=True)
class Flatten(Op):
    """[B, C, H, W] -> [B, C·H·W] in C, H, W order (PyTorch's ``flatten(1)`` before a classifier
    that reads a whole feature map: VGG, AlexNet); the integers are unchanged."""
    OP: ClassVar[str] = "flatten"

    def shape(self, x):
        if len(x) != 4:
            self.fail(f"expects a [B, C, H, W] input, got {x}")
        return (x[0], x[1] * x[2] * x[3])


@dataclass(kw_only=True)
class Clamp(Op):
    """Per-channel clamp ``min(max(q, qmin), qmax[c])``: ReLU6 on an accumulator of scale S_c is
    ``clamp(acc, 0, floor(6 / S_c))`` (docs/numerics.md §8a). ``qmax``: int64 [C] (or [1])."""
    OP: ClassVar[str] = "clamp"
    qmin: int
    qmax: torch.Tensor

    def check(self):
        hi = _np(self.qmax)
        if hi.size == 0 or int(hi.min()) < int(self.qmin):
            self.fail(f"upper bound below qmin {self.qmin}")

    def shape(self, x):
        _check_channels(self, self.qmax, x)
        return x

    def bounds(self, ins, shapes):
        hi = int(_np(self.qmax).max())
        lo = min(max(ins[0][0], int(self.qmin)), hi)
        return lo, max(min(ins[0][1], hi), lo)


@dataclass(kw_only=True)
class Concat(Op):
    """Channel concatenation (axis 1) of values already on one grid or about to be requantized per
    channel by the next node (inception: each branch requantized to the common output scale)."""
    OP: ClassVar[str] = "concat"
    ARITY: ClassVar[int] = -1          # any number >= 2
    axis: int = 1

    def check(self):
        if self.axis != 1:
            self.fail("only channel concatenation (axis 1) is supported")
        if len(self.inputs) < 2:
            self.fail("needs at least two inputs")

    def shape(self, *ins):
        first = ins[0]
        for s in ins[1:]:
            if len(s) != len(first) or s[0] != first[0] or tuple(s[2:]) != tuple(first[2:]):
                self.fail(f"cannot concatenate shapes {first} and {s}")
        return (first[0], sum(s[1] for s in ins), *first[2:])

    def bounds(self, ins, shapes):
        return min(lo for lo, _ in ins), max(hi for _, hi in ins)


@dataclass(kw_only=True)
class MaxPool2d(Op):
    """Max over k×k windows; padding never wins (it is −∞). ``ceil_mode``: PyTorch's: the output
    size rounds up, the extra windows reading −∞ past the bottom/right edge (:meth:`extra_padding`)."""
    OP: ClassVar[str] = "maxpool2d"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("ceil_mode",)
    kernel: list[int]
    stride: list[int]
    padding: list[int]
    ceil_mode: bool = False

    def out_size(self, size: int, axis: int) -> int:
        k, s, p = pair(self.kernel)[axis], pair(self.stride)[axis], pair(self.padding)[axis]
        if not self.ceil_mode:
            return _window_out(size, k, s, p)
        out = -(-(size + 2 * p - k) // s) + 1
        return out - 1 if (out - 1) * s >= size + p else out       # the last window starts inside

    def extra_padding(self, h: int, w: int) -> list[int]:
        """[bottom, right] −∞ padding beyond ``padding`` that ceil_mode's last windows read."""
        return [max(0, (self.out_size(n, a) - 1) * pair(self.stride)[a] + pair(self.kernel)[a]
                    - (n + 2 * pair(self.padding)[a])) for a, n in enumerate((h, w))]

    def shape(self, x):
        return (x[0], x[1], self.out_size(x[2], 0), self.out_size(x[3], 1))


@dataclass(kw_only=True)
class AvgPool2d(Op):
    """k×k average pool, zero padding counted (PyTorch's ``count_include_pad=True``), ``divisor`` = k·k.

    ``mode`` ``sum`` (profile exact): the integer window sum, scale S/divisor, the division folded into
    the next requantization (one rounding, half up). ``trunc_mean`` (profile hawq): HAWQ's
    ``trunc(sum/divisor + 0.01)`` at scale S (:func:`hawq.numerics.avgpool_trunc`)."""
    OP: ClassVar[str] = "avgpool2d"
    kernel: list[int]
    stride: list[int]
    padding: list[int]
    divisor: int
    mode: str = "sum"

    def check(self):
        kh, kw = pair(self.kernel)
        if int(self.divisor) != kh * kw:
            self.fail(f"divisor {self.divisor} is not the window size {kh * kw}")
        if self.mode not in ("sum", "trunc_mean"):
            self.fail(f"unknown mode {self.mode!r}")

    def shape(self, x):
        (kh, kw), (sh, sw), (ph, pw) = pair(self.kernel), pair(self.stride), pair(self.padding)
        return (x[0], x[1], _window_out(x[2], kh, sh, ph), _window_out(x[3], kw, sw, pw))

    def bounds(self, ins, shapes):
        n = int(self.divisor)
        lo, hi = min(ins[0][0], 0) * n, max(ins[0][1], 0) * n
        if self.mode == "sum":
            return lo, hi
        return _truncdiv(100 * lo + n, 100 * n), _truncdiv(100 * hi + n, 100 * n)


@dataclass(kw_only=True)
class GlobalAvgPoolSum(Op):
    """Sum over H×W -> [B, C]; scale S/(H·W), folded into the next requantization."""
    OP: ClassVar[str] = "global_avgpool_sum"
    divisor: int

    def shape(self, x):
        return (x[0], x[1])

    def bounds(self, ins, shapes):
        n = int(np.prod(shapes[0][2:]))
        return ins[0][0] * n, ins[0][1] * n


@dataclass(kw_only=True)
class GlobalAvgPoolTrunc(GlobalAvgPoolSum):
    """HAWQ's trunc(sum/N + 0.01) over H×W (N = ``divisor``) -> [B, C] at scale S."""
    OP: ClassVar[str] = "global_avgpool_trunc"

    def check(self):
        if int(self.divisor) <= 0:
            self.fail(f"divisor must be positive, got {self.divisor}")

    def bounds(self, ins, shapes):
        lo, hi = super().bounds(ins, shapes)
        n = int(self.divisor)
        return _truncdiv(100 * lo + n, 100 * n), _truncdiv(100 * hi + n, 100 * n)


@dataclass(kw_only=True)
class ChannelAffine(Op):
    """A standalone BatchNorm on an integer tensor (DenseNet's BN after a concat):
    ``sign[c]·x + bias[c]``, the sign of γ/σ and the integer bias at the input's grid times |γ/σ|;
    the next requantization multiplies by |γ/σ|·S / S_out (§8b). ``sign``, ``bias``: int64 [C]."""
    OP: ClassVar[str] = "channel_affine"
    sign: torch.Tensor
    bias: torch.Tensor

    def check(self):
        sign, bias = _np(self.sign), _np(self.bias)
        if sign.shape != bias.shape or sign.ndim != 1:
            self.fail(f"sign {sign.shape} and bias {bias.shape} must be one vector [C]")
        if not np.isin(sign, (-1, 1)).all():
            self.fail("sign must be -1 or +1")

    def shape(self, x):
        _check_channels(self, self.bias, x)
        return x

    def bounds(self, ins, shapes):
        lo, hi = ins[0]
        sign, bias = _np(self.sign).astype(np.int64), _np(self.bias).astype(np.int64)
        los = np.where(sign > 0, lo, -hi) + bias
        his = np.where(sign > 0, hi, -lo) + bias
        return int(los.min()), int(his.max())


@dataclass(kw_only=True)
class Lut(Op):
    """A pointwise function (sigmoid, SiLU, hardswish, ...) of a <= 8-bit activation as a table:
    output = ``table[x − in_lo]`` (int64 [n], the output grid's centered integers, computed at
    export by :func:`hawq.numerics.function_table`); ``function`` and the output grid are info."""
    OP: ClassVar[str] = "lut"
    function: str
    table: torch.Tensor
    in_lo: int
    qmin: int
    qmax: int
    zero_point: int
    bits: int

    def check(self):
        t = _np(self.table)
        if t.ndim != 1 or t.size == 0:
            self.fail("table must be a non-empty vector")
        if int(t.min()) < int(self.qmin) or int(t.max()) > int(self.qmax):
            self.fail(f"table leaves [{self.qmin}, {self.qmax}]")

    def bounds(self, ins, shapes):
        lo, hi = ins[0]
        start = int(self.in_lo)
        if lo < start or hi > start + _np(self.table).size - 1:
            self.fail(f"input range [{lo}, {hi}] is outside the table's [{start}, {start + _np(self.table).size - 1}] "
                      "(a table needs a <= 8-bit input)")
        part = _np(self.table)[lo - start:hi - start + 1]
        return int(part.min()), int(part.max())


@dataclass(kw_only=True)
class Mul(Op):
    """Elementwise product of two integer values (squeeze-excitation's ``x · s``, ``s`` [B, C, 1, 1]
    broadcast over H, W): exact, at the product of the two scales (the next requantization rescales)."""
    OP: ClassVar[str] = "mul"
    ARITY: ClassVar[int] = 2

    def shape(self, a, b):
        if len(a) != len(b) or any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
            self.fail(f"cannot broadcast {a} and {b}")
        return tuple(max(x, y) for x, y in zip(a, b))

    def bounds(self, ins, shapes):
        (a0, a1), (b0, b1) = ins
        corners = [a0 * b0, a0 * b1, a1 * b0, a1 * b1]
        return min(corners), max(corners)


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows of one axis: [floor(i·I/O), ceil((i+1)·I/O)) for each output i."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def adaptive_window_sizes(h: int, w: int, output_size) -> np.ndarray:
    """N_ij, the number of values in each adaptive pooling window of an h×w map (int64 [OH, OW])."""
    (oh, ow) = pair(output_size)
    nh = [e - s for s, e in adaptive_windows(h, oh)]
    nw = [e - s for s, e in adaptive_windows(w, ow)]
    return np.outer(nh, nw).astype(np.int64)


@dataclass(kw_only=True)
class AdaptiveAvgPool2d(Op):
    """Adaptive average pool to ``output_size`` [OH, OW] (AlexNet/VGG off 224): windows of
    :func:`adaptive_windows`, of N_ij = height·width values each; output = window sum · (L / N_ij)
    with L = ``scale_up`` (the lcm of every N_ij, so each factor is an integer): exact, at scale S/L,
    the 1/L folded into the next requantization (§8)."""
    OP: ClassVar[str] = "adaptive_avgpool2d"
    output_size: list[int]
    scale_up: int

    def factors(self, h: int, w: int) -> np.ndarray:
        """int64 [OH, OW]: L / N_ij."""
        n, L = adaptive_window_sizes(h, w, self.output_size), int(self.scale_up)
        if (L % n).any():
            self.fail(f"scale_up {L} is not a multiple of every window size")
        return L // n

    def shape(self, x):
        if len(x) != 4:
            self.fail(f"expects a [B, C, H, W] input, got {x}")
        self.factors(x[2], x[3])
        return (x[0], x[1], *pair(self.output_size))

    def bounds(self, ins, shapes):
        lo, hi = ins[0]
        return min(lo, 0) * int(self.scale_up), max(hi, 0) * int(self.scale_up)


def shuffle_perm(channels: int, groups: int) -> np.ndarray:
    """Channel shuffle of ``channels`` in ``groups``: the input channel each output channel reads
    (int64 [C]), ``(j mod g)·C/g + j div g``."""
    return np.arange(channels, dtype=np.int64).reshape(groups, channels // groups).T.reshape(-1)


@dataclass(kw_only=True)
class ChannelShuffle(Op):
    """ShuffleNet's channel shuffle of a [B, C, H, W] value: view [B, g, C/g, H, W], swap axes 1 and
    2, view back; output channel j reads input channel ``(j mod g)·C/g + j div g`` (:meth:`perm`).
    An index move: the integers and their per-channel grids move with their channels."""
    OP: ClassVar[str] = "channel_shuffle"
    groups: int

    def perm(self, channels: int) -> np.ndarray:
        """Input channel of each output channel (int64 [C])."""
        return shuffle_perm(channels, int(self.groups))

    def check(self):
        if int(self.groups) < 1:
            self.fail(f"groups must be >= 1, got {self.groups}")

    def shape(self, x):
        if len(x) != 4 or x[1] % int(self.groups):
            self.fail(f"cannot shuffle {x} in {self.groups} groups")
        return x


@dataclass(kw_only=True)
class SliceChannels(Op):
    """Channels ``start`` … ``stop − 1`` of a [B, C, H, W] value (``chunk``/``split`` along channels)."""
    OP: ClassVar[str] = "slice_channels"
    start: int
    stop: int

    def check(self):
        if not 0 <= int(self.start) < int(self.stop):
            self.fail(f"empty or negative channel range [{self.start}, {self.stop})")

    def shape(self, x):
        if len(x) != 4 or int(self.stop) > x[1]:
            self.fail(f"channels [{self.start}, {self.stop}) of {x}")
        return (x[0], int(self.stop) - int(self.start), x[2], x[3])


OPS: dict[str, type[Op]] = {c.OP: c for c in (Quantize, Conv2d, Dense, Requant, RequantAdd, RequantFloat, QLinearAdd, Relu, Clamp, Concat,
                                              MaxPool2d, AvgPool2d, GlobalAvgPoolSum, GlobalAvgPoolTrunc, Flatten,
                                              ChannelShuffle, SliceChannels, ChannelAffine, Lut, Mul,
                                              AdaptiveAvgPool2d, Sign)}


def requant_bounds(qmin: int, qmax: int, in_lo: int, multiplier) -> Interval:
    """Static range of a requant's output: [qmin, qmax], narrowed to [max(qmin, 0), qmax] when the
    input is non-negative (``in_lo >= 0``) and every multiplier is >= 0: then t = acc·m >= 0, and
    both roundings of t·2^-s are >= 0. This is what lets a signed-declared post-ReLU activation
    (profile ``hawq``: qmin -128, values 0..127) use a ``uint8`` container."""
    if in_lo >= 0 and bool((np.asarray(multiplier) >= 0).all()):
        return min(max(qmin, 0), qmax), qmax
    return qmin, qmax


def _check_dyadic(op: Op, m, s) -> None:
    m, s = _np(m), _np(s)
    if m.shape != s.shape:
        op.fail(f"multiplier shape {m.shape} differs from shift shape {s.shape}")
    if m.size and (int(s.min()) < 1 or int(s.max()) > 62 or int(np.abs(m).max()) >= 1 << 31):
        op.fail("dyadic multiplier must be < 2^31 with a shift in [1, 62]")


def _check_qrange(op: Op) -> None:
    if op.qmin > op.qmax:
        op.fail(f"empty range [{op.qmin}, {op.qmax}]")


def _check_channels(op: Op, per_channel, x: Shape) -> None:
    n = _np(per_channel).size
    if n not in (1, x[1]):
        op.fail(f"{n} per-channel parameters for {x[1]} channels")


# ------------------------------------------------------------------------------------- graph
@dataclass
class Graph:
    """An integer program: ``nodes`` in execution order reading ``input`` (the float image) and
    producing ``output`` (int logits); ``output_scale`` (float64 [classes]) ranks the classes."""

    input: str
    output: str
    nodes: list[Op]
    output_scale: torch.Tensor | None = None

    @classmethod
    def from_dict(cls, d: dict, where: str = "integer graph") -> "Graph":
        """Parse and validate an artifact's ``graph`` dict (any version of ``hawq-integer-graph/1``)."""
        if not isinstance(d, dict) or not {"input", "output", "nodes"} <= set(d):
            raise HawqError(f"{where}: not an integer graph (needs input, output, nodes)")
        nodes = [node_from_dict(n, where) for n in d["nodes"]]
        g = cls(d["input"], d["output"], nodes, d.get("output_scale"))
        g.validate()
        return g

    def to_dict(self) -> dict:
        d = {"input": self.input, "output": self.output, "nodes": [n.to_dict() for n in self.nodes]}
        if self.output_scale is not None:
            d["output_scale"] = self.output_scale
        return d

    def validate(self) -> None:
        """Every node's fields, arity, single assignment, and every read defined before use."""
        defined = {self.input}
        for n in self.nodes:
            n.check()
            if n.ARITY >= 0 and len(n.inputs) != n.ARITY:
                n.fail(f"takes {n.ARITY} input(s), got {len(n.inputs)}")
            for v in n.inputs:
                if v not in defined:
                    n.fail(f"reads '{v}' before it is defined")
            if n.output in defined:
                n.fail(f"redefines '{n.output}'")
            defined.add(n.output)
        if self.output not in defined:
            raise HawqError(f"integer graph output '{self.output}' is never computed")

    def infer(self, input_shape: Shape) -> dict[str, tuple[Shape, Interval]]:
        """(shape, [lo, hi]) of every value for a float input of ``input_shape`` [B, C, H, W]."""
        info: dict[str, tuple[Shape, Interval]] = {self.input: (tuple(int(d) for d in input_shape), (0, 0))}
        for n in self.nodes:
            shapes = [info[v][0] for v in n.inputs]
            ivs = [info[v][1] for v in n.inputs]
            out = tuple(int(d) for d in n.shape(*shapes))
            info[n.output] = (out, tuple(int(b) for b in n.bounds(ivs, shapes)))
        return info

    def node(self, name: str) -> Op:
        return next(n for n in self.nodes if n.name == name)


def node_from_dict(d: dict, where: str = "integer graph") -> Op:
    """One artifact node dict -> its op object; unknown ops and missing fields are HawqErrors."""
    op = d.get("op") if isinstance(d, dict) else None
    cls = OPS.get(op)
    if cls is None:
        raise HawqError(f"{where}: unknown op {op!r}" + (f" (node {d.get('name')})" if isinstance(d, dict) else ""))
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names - {"op"})
    if unknown:
        raise HawqError(f"{where}: node '{d.get('name')}' ({op}) has unknown field '{unknown[0]}'")
    try:
        return cls(**{k: v for k, v in d.items() if k != "op"})
    except TypeError as e:
        missing = str(e).split("argument")[-1].strip(": ")
        raise HawqError(f"{where}: node '{d.get('name')}' ({op}) lacks {missing}") from None


def as_graph(g: "Graph | dict") -> Graph:
    """A :class:`Graph`, parsing (and validating) an artifact dict when given one."""
    return g if isinstance(g, Graph) else Graph.from_dict(g)


class Registry:
    """One implementation per op class for a back end: ``@REG.register(Conv2d)`` above a function
    ``fn(backend_state_or_node, ...)``; :meth:`lookup` names the back end when an op has none."""

    def __init__(self, backend: str):
        self.backend = backend
        self._impl: dict[type[Op], Callable] = {}

    def register(self, cls: type[Op]):
        def deco(fn):
            if cls in self._impl:
                raise RuntimeError(f"{self.backend}: {cls.__name__} registered twice")
            self._impl[cls] = fn
            return fn
        return deco

    def lookup(self, node: Op) -> Callable:
        try:
            return self._impl[type(node)]
        except KeyError:
            raise HawqError(f"the {self.backend} does not support op {node.OP!r} (node {node.name})") from None

    def missing(self) -> list[str]:
        return [c.OP for c in OPS.values() if c not in self._impl]
