"""Integer-only reference executor for an exported integer graph (NumPy int64).

The only float operations are the input quantizer (float image -> integers), which is the graph's
boundary, and profile ort's float32 requantization (``requant_float``, part of that profile's spec).
Everything else is integer arithmetic: convolutions as im2col products (summed in float64 BLAS where a
bound proves every partial sum an exact float64 integer, :func:`product_dtype`, else in int64),
requantization through :func:`hawq.numerics.requantize` (the same function the QAT eval path uses),
saturating residual adds, integer max/sum pooling, clamps and concatenation. Shapes are NCHW.
One function per :mod:`hawq.ir` op, registered in :data:`IMPL`.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from hawq import ir
from hawq import numerics as N

__all__ = ["product_dtype", "conv2d", "IMPL", "rounding_of", "run_graph"]

_INT_MIN = np.iinfo(np.int64).min


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _windows(x: np.ndarray, kernel, stride, padding, pad_value) -> np.ndarray:
    """[B, C, H, W] -> [B, C, OH, OW, kh, kw] strided view over a padded copy; ``padding`` is
    (pad H, pad W) on both sides or (top, left, bottom, right)."""
    (kh, kw), (sh, sw) = kernel, stride
    t, l, b, r = tuple(padding) if len(padding) == 4 else (*padding, *padding)
    if t or l or b or r:
        x = np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=pad_value)
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


#: float32 / float64 hold every integer of magnitude up to 2^24 / 2^53 exactly.
_F32_EXACT, _F64_EXACT = 1 << 24, 1 << 53


def product_dtype(x: np.ndarray, w: np.ndarray):
    """The narrowest of float32, float64 in which every partial sum of x·w is provably an exact
    integer, whatever the summation order (BLAS's blocking and FMAs included): ``B = max|x| ·
    max_o Σ|w_o|`` (``w`` [O, ...]) at most 2^24, resp. 2^53; else int64. Float products go through
    BLAS, several times faster than NumPy's int64 loops, and give the same integers; only
    accumulators far wider than any 8/16-bit network's miss the float64 bound (a test compares the
    paths at the bound)."""
    if x.size == 0 or w.size == 0:
        return np.int64
    wsum = int(np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).sum(1).max())
    bound = int(np.abs(x).max()) * wsum
    return np.float32 if bound <= _F32_EXACT else np.float64 if bound <= _F64_EXACT else np.int64


def _to_int64(y: np.ndarray) -> np.ndarray:
    return y if y.dtype == np.int64 else y.astype(np.int64)      # exact integers: the cast is exact


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride, padding, dilation=(1, 1), groups=1,
           dtype=None) -> np.ndarray:
    """Integer conv: int64 [B,C,H,W] ⊛ int [O,C/g,kh,kw] + bias [O] -> int64 [B,O,OH,OW]; ``padding``
    (pad H, pad W) or (top, left, bottom, right). The products are summed in :func:`product_dtype`
    (or ``dtype``), the bias added in int64. Computed on the zero-padded NHWC image as one im2col
    GEMM [B·OH·OW, kh·kw·C/g] x [kh·kw·C/g, O/g] per group (depthwise: one elementwise
    multiply-add per kernel offset)."""
    if tuple(dilation) != (1, 1):
        raise NotImplementedError("dilated convolution is not used by the supported models")
    dt = dtype or product_dtype(x, w)
    (sh, sw) = stride
    t, l, b, r = tuple(padding) if len(padding) == 4 else (*padding, *padding)
    xn = np.ascontiguousarray(np.pad(x.astype(dt), ((0, 0), (0, 0), (t, b), (l, r))).transpose(0, 2, 3, 1))
    n, h, wd, c = xn.shape
    o, cg, kh, kw = w.shape
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    wt = w.astype(dt).transpose(2, 3, 1, 0)                 # [kh, kw, C/g, O]
    patches = [xn[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]
    if groups > 1 and cg == 1 and o == c:                   # depthwise
        y = np.zeros((n, oh, ow, o), dt)
        for k, patch in enumerate(patches):
            y += patch * wt.reshape(kh * kw, o)[k]
    else:                                                   # im2col [B·OH·OW, kh·kw, C] x [kh·kw·C/g, O/g]
        cols = np.empty((n, oh, ow, kh * kw, c), dt)
        for k, patch in enumerate(patches):
            cols[:, :, :, k] = patch
        cols = cols.reshape(n * oh * ow, kh * kw, c)
        og = o // groups
        y = np.concatenate([cols[:, :, g * cg:(g + 1) * cg].reshape(n * oh * ow, -1)
                            @ wt[:, :, :, g * og:(g + 1) * og].reshape(kh * kw * cg, og) for g in range(groups)], axis=1)
    y = y.reshape(n, oh, ow, o).transpose(0, 3, 1, 2)
    return _to_int64(np.ascontiguousarray(y)) + bias.astype(np.int64).reshape(1, -1, 1, 1)


def _per_channel(v, ndim: int) -> np.ndarray:
    return N.channel_view(np.asarray(_np(v), dtype=np.int64), ndim)


#: The reference's implementation of each IR op: ``fn(node, *inputs) -> int64 array``.
IMPL = ir.Registry("integer reference")


@IMPL.register(ir.Quantize)
def _quantize(node: ir.Quantize, x):
    scale = _np(node.scale).astype(np.float32)
    z = node.zero_point
    x = x.astype(np.float32)
    if node.reciprocal:                      # profile hawq: round(f32(1/S) · x + z)
        q = np.round((np.float32(1.0) / scale) * x + np.float32(z))
    else:
        q = np.round(x / scale) + np.float32(z)
    q = np.clip(q, node.qmin, node.qmax)
    return q.astype(np.int64) - z


@IMPL.register(ir.Conv2d)
def _conv2d(node: ir.Conv2d, x):
    return conv2d(x, _np(node.weight), _np(node.bias), node.stride, node.pads(), node.dilation, node.groups)


@IMPL.register(ir.Dense)
def _dense(node: ir.Dense, x):
    w = _np(node.weight)
    dt = product_dtype(x, w)
    return _to_int64(x.astype(dt) @ w.astype(dt).T) + _np(node.bias).astype(np.int64).reshape(1, -1)


def rounding_of(node) -> str:
    """Requantization rounding of a requant/requant_add node (graphs before profiles: half up)."""
    return node.rounding if isinstance(node, ir.Op) else node.get("rounding", "half_up")


@IMPL.register(ir.Requant)
def _requant(node: ir.Requant, x):
    m, s = _per_channel(node.multiplier, x.ndim), _per_channel(node.shift, x.ndim)
    return N.saturate(N.requantize(x, m, s, node.rounding), node.qmin, node.qmax)


@IMPL.register(ir.RequantAdd)
def _requant_add(node: ir.RequantAdd, x, identity):
    nd = x.ndim
    return N.residual_add(x, _per_channel(node.multiplier, nd), _per_channel(node.shift, nd),
                          identity, _per_channel(node.identity_multiplier, nd),
                          _per_channel(node.identity_shift, nd), node.qmin, node.qmax, node.rounding)


@IMPL.register(ir.RequantFloat)
def _requant_float(node: ir.RequantFloat, x):
    m = N.channel_view(np.asarray(_np(node.multiplier), dtype=np.float32), x.ndim)
    return N.requant_float(x, m, int(node.qmin), int(node.qmax))


@IMPL.register(ir.QLinearAdd)
def _qlinear_add(node: ir.QLinearAdd, a, b):
    table = np.asarray(_np(node.table), dtype=np.int64)
    return table[a + int(node.a_zero), b + int(node.b_zero)]


@IMPL.register(ir.Relu)
def _relu(node, x):
    return np.maximum(x, 0)


@IMPL.register(ir.Flatten)
def _flatten(node, x):
    return x.reshape(x.shape[0], -1)


@IMPL.register(ir.Clamp)
def _clamp(node: ir.Clamp, x):
    return np.minimum(np.maximum(x, node.qmin), _per_channel(node.qmax, x.ndim))


@IMPL.register(ir.Concat)
def _concat(node: ir.Concat, *xs):
    return np.concatenate(xs, axis=node.axis)


@IMPL.register(ir.MaxPool2d)
def _maxpool2d(node: ir.MaxPool2d, x):
    eh, ew = node.extra_padding(x.shape[2], x.shape[3])
    if eh or ew:
        x = np.pad(x, ((0, 0), (0, 0), (0, eh), (0, ew)), constant_values=_INT_MIN)
    return _windows(x, node.kernel, node.stride, node.padding, _INT_MIN).max(axis=(4, 5))


@IMPL.register(ir.AvgPool2d)
def _avgpool2d(node: ir.AvgPool2d, x):
    total = _windows(x, ir.pair(node.kernel), ir.pair(node.stride), ir.pair(node.padding), 0).sum(axis=(4, 5))
    return total if node.mode == "sum" else N.avgpool_trunc(total, int(node.divisor))


@IMPL.register(ir.GlobalAvgPoolSum)
def _global_avgpool_sum(node, x):
    return x.sum(axis=(2, 3))


@IMPL.register(ir.GlobalAvgPoolTrunc)
def _global_avgpool_trunc(node, x):
    return N.avgpool_trunc(x.sum(axis=(2, 3)), int(node.divisor))


@IMPL.register(ir.ChannelAffine)
def _channel_affine(node: ir.ChannelAffine, x):
    return x * _per_channel(node.sign, x.ndim) + _per_channel(node.bias, x.ndim)


@IMPL.register(ir.Lut)
def _lut(node: ir.Lut, x):
    return np.asarray(_np(node.table), dtype=np.int64)[x - int(node.in_lo)]


@IMPL.register(ir.Mul)
def _mul(node: ir.Mul, a, b):
    return a * b


@IMPL.register(ir.AdaptiveAvgPool2d)
def _adaptive_avgpool2d(node: ir.AdaptiveAvgPool2d, x):
    h, w = x.shape[2:]
    (oh, ow), f = ir.pair(node.output_size), node.factors(h, w)
    out = np.empty((*x.shape[:2], oh, ow), dtype=np.int64)
    for i, (h0, h1) in enumerate(ir.adaptive_windows(h, oh)):
        for j, (w0, w1) in enumerate(ir.adaptive_windows(w, ow)):
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3)) * f[i, j]
    return out


@IMPL.register(ir.ChannelShuffle)
def _channel_shuffle(node: ir.ChannelShuffle, x):
    return x[:, node.perm(x.shape[1])]


@IMPL.register(ir.SliceChannels)
def _slice_channels(node: ir.SliceChannels, x):
    return x[:, int(node.start):int(node.stop)]


def _last_uses(graph: ir.Graph) -> dict[str, int]:
    """Index of the last node reading each value, so intermediates can be freed early."""
    last = {}
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            last[name] = i
    return last


def run_graph(graph: ir.Graph | dict, x: np.ndarray, keep: bool = False):
    """Execute ``graph`` (an :class:`hawq.ir.Graph` or an artifact's graph dict) on a float32 batch
    ``x`` [B,C,H,W].

    Returns the int64 output (logits [B, classes]); with ``keep=True`` also the dict of every
    intermediate value by name (for per-layer comparisons).
    """
    graph = ir.as_graph(graph)
    env = {graph.input: np.asarray(x, dtype=np.float32)}
    last = _last_uses(graph)
    for i, node in enumerate(graph.nodes):
        env[node.output] = IMPL.lookup(node)(node, *(env[n] for n in node.inputs))
        if not keep:
            for n in node.inputs:
                if last[n] == i and n != graph.output:
                    env.pop(n, None)
    out = env[graph.output]
    return (out, env) if keep else out
