"""Integer-only reference executor for an exported integer graph (NumPy int64).

The only float operations are the input quantizer (float image -> integers), which is the graph's
boundary, and profile ort's float32 requantization (``requant_float``, part of that profile's spec).
Everything else is integer arithmetic: convolutions as im2col products (summed in float32 BLAS over
slices of the reduction where a bound proves every partial sum an exact float32 integer, the slices
added in int64, :func:`k_slices`; else in float64 where its bound allows, :func:`product_dtype`; else
in int64),
requantization through :func:`hawq.numerics.requantize` (the same function the QAT eval path uses),
saturating residual adds, integer max/sum pooling, clamps and concatenation. Shapes are NCHW.
One function per :mod:`hawq.ir` op, registered in :data:`IMPL`.
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from hawq import ir
from hawq import numerics as N

__all__ = ["product_dtype", "k_slices", "matmul", "conv2d", "int64_products", "IMPL", "rounding_of", "run_graph"]

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
    return _exact_dtype(int(np.abs(x).max()), w.reshape(w.shape[0], -1).T)


def _exact_dtype(xmax: int, w: np.ndarray):
    """:func:`product_dtype` for |x| <= ``xmax`` and ``w`` int [K, O]."""
    bound = xmax * int(np.abs(w.astype(np.int64)).sum(0).max()) if w.size else 0
    return np.float32 if bound <= _F32_EXACT else np.float64 if bound <= _F64_EXACT else np.int64


#: At most this many float32 slices per product (more: the float64 / int64 path is as fast).
_MAX_SLICES = 16


def k_slices(xmax: int, w: np.ndarray) -> list[tuple[int, int]] | None:
    """Slices [k0, k1) of the reduction axis of ``w`` (int [K, O]) such that every partial sum of
    x·w over a slice is provably an exact float32 integer for |x| <= ``xmax``: ``xmax · max_o
    Σ_{k0<=k<k1} |w_ko| <= 2^24`` (whatever BLAS's order and FMAs). Greedy, contiguous, longest
    first; None where one product alone could exceed 2^24 or more than 16 slices would be needed.
    Each slice's product is exact in float32 and their sum is exact in int64, at any total."""
    k = w.shape[0]
    if xmax > _F32_EXACT:
        return None
    if k == 0 or xmax == 0:
        return [(0, k)]
    budget = _F32_EXACT // xmax
    wa = np.abs(w.astype(np.int64))
    if int(wa.sum(0).max()) <= budget:
        return [(0, k)]
    # slice ends on multiples of 64 rows (the cumulative sums of 64-row blocks are cheap), or at K
    block = 64
    sums = np.add.reduceat(wa, np.arange(0, k, block), axis=0)              # [ceil(K/64), O]
    cs = np.concatenate([np.zeros((1, w.shape[1]), np.int64), np.cumsum(sums, axis=0)])
    nb = sums.shape[0]
    out, start = [], 0
    while start < nb:
        if len(out) == _MAX_SLICES:
            return None
        # the most blocks from start: max_o (cs[end] - cs[start]) grows with end (|w| >= 0)
        lo, hi = start, nb
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if int((cs[mid] - cs[start]).max()) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo == start:
            return None                             # one 64-row block alone may exceed 2^24
        out.append((start * block, min(lo * block, k)))
        start = lo
    return out


def matmul(a: np.ndarray, w: np.ndarray, xmax: int | None = None, dtype=None,
           slices: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Exact integer product ``a @ w`` (int64 [M, O]) of integers ``a`` [M, K] (any dtype holding them
    exactly; |a| <= ``xmax``) and ``w`` int [K, O]: float32 BLAS over ``slices`` (default
    :func:`k_slices`) where they exist, else one product in :func:`product_dtype` (``dtype`` forces
    one product in that dtype)."""
    if xmax is None:
        xmax = int(np.abs(a).max()) if a.size else 0
    if dtype is None and slices is None:
        slices = k_slices(xmax, w)
    if dtype is not None or slices is None:
        dt = dtype or _exact_dtype(xmax, w)
        return _to_int64(a.astype(dt, copy=False) @ w.astype(dt))
    a32, w32 = a.astype(np.float32, copy=False), w.astype(np.float32)
    y = np.zeros((a.shape[0], w.shape[1]), np.int64)
    for k0, k1 in slices:
        np.add(y, a32[:, k0:k1] @ w32[k0:k1], out=y, casting="unsafe")   # exact integers: the cast is exact
    return y


#: Set by :func:`int64_products`: the dtype every conv/dense product is summed in (None: the fastest exact).
_FORCED = contextvars.ContextVar("hawq_reference_products", default=None)


@contextlib.contextmanager
def int64_products():
    """Within it, every conv/dense product is summed in int64 (the definition, no float BLAS): the
    baseline ``python -m hawq.benchmarks.reference`` times the fast paths against."""
    token = _FORCED.set(np.int64)
    try:
        yield
    finally:
        _FORCED.reset(token)


def _to_int64(y: np.ndarray) -> np.ndarray:
    return y if y.dtype == np.int64 else y.astype(np.int64)      # exact integers: the cast is exact


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride, padding, dilation=(1, 1), groups=1,
           dtype=None) -> np.ndarray:
    """Integer conv: int64 [B,C,H,W] ⊛ int [O,C/g,kh,kw] + bias [O] -> int64 [B,O,OH,OW]; ``padding``
    (pad H, pad W) or (top, left, bottom, right). Computed on the zero-padded NHWC image: stride 1 as
    one GEMM per kernel offset on shifted rows (:func:`_shifted_gemm`, no im2col copy), other strides
    as one im2col GEMM [B·OH·OW, kh·kw·C/g] x [kh·kw·C/g, O/g] per group (:func:`matmul`); sums in
    float32 slices where :func:`k_slices` proves them exact, else in :func:`product_dtype` (``dtype``
    forces one sum in that dtype); depthwise: one elementwise multiply-add per kernel offset in
    :func:`product_dtype`. The bias is added in int64."""
    if tuple(dilation) != (1, 1):
        raise NotImplementedError("dilated convolution is not used by the supported models")
    dtype = dtype or _FORCED.get()
    (sh, sw) = stride
    t, l, b, r = tuple(padding) if len(padding) == 4 else (*padding, *padding)
    o, cg, kh, kw = w.shape
    c = x.shape[1]
    depthwise = groups > 1 and cg == 1 and o == c
    og = o // groups
    wt = w.transpose(2, 3, 1, 0)                            # [kh, kw, C/g, O]
    wgs = [wt[:, :, :, g * og:(g + 1) * og].reshape(kh * kw * cg, og) for g in range(groups)]
    xmax = int(np.abs(x).max()) if x.size else 0
    slices = None if dtype is not None or depthwise else [k_slices(xmax, wg) for wg in wgs]
    fast = slices is not None and all(sl is not None for sl in slices)
    dt = np.float32 if fast else (dtype or _exact_dtype(xmax, w.reshape(o, -1).T))
    # NHWC, zero-padded, in dt: one copy (x is often an NHWC buffer already: the previous conv's output)
    n, _, h0, w0 = x.shape
    xn = np.zeros((n, h0 + t + b, w0 + l + r, c), dt)
    xn[:, t:t + h0, l:l + w0] = x.transpose(0, 2, 3, 1)
    n, h, wd, _ = xn.shape
    oh, ow = (h - kh) // sh + 1, (wd - kw) // sw + 1
    if depthwise:
        y = np.zeros((n, oh, ow, o), dt)
        wk = wt.astype(dt).reshape(kh * kw, o)
        for k, patch in enumerate(_patches(xn, kh, kw, sh, sw, oh, ow)):
            y += patch * wk[k]
        y = _to_int64(y)
    elif (sh, sw) == (1, 1):
        y = np.concatenate([_shifted_gemm(xn, wgs[g], g * cg, cg, kh, kw, oh, ow, slices[g] if fast else None,
                                          dt) for g in range(groups)], axis=3)
    else:                                                   # im2col [B·OH·OW, kh·kw, C] x [kh·kw·C/g, O/g]
        cols = np.empty((n, oh, ow, kh * kw, c), dt)
        for k, patch in enumerate(_patches(xn, kh, kw, sh, sw, oh, ow)):
            cols[:, :, :, k] = patch
        cols = cols.reshape(n * oh * ow, kh * kw, c)
        y = np.concatenate([matmul(cols[:, :, g * cg:(g + 1) * cg].reshape(n * oh * ow, -1), wgs[g], xmax,
                                   None if fast else dt, slices[g] if fast else None) for g in range(groups)], axis=1)
    # NCHW indices over an NHWC buffer: elementwise ops keep that layout, and the next conv reads it as is
    return (y.reshape(n, oh, ow, o) + bias.astype(np.int64)).transpose(0, 3, 1, 2)


def _patches(xn: np.ndarray, kh: int, kw: int, sh: int, sw: int, oh: int, ow: int) -> list[np.ndarray]:
    """The kh·kw strided views [B, OH, OW, C] of the padded NHWC image, one per kernel offset."""
    return [xn[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]


def _shifted_gemm(xn: np.ndarray, w: np.ndarray, c0: int, cg: int, kh: int, kw: int, oh: int, ow: int,
                  slices: list[tuple[int, int]] | None, dt) -> np.ndarray:
    """A stride-1 convolution of channels [c0, c0 + cg) of the padded NHWC image ``xn`` [B, H, W, C]
    with ``w`` int [kh·kw·cg, O] (rows in (i, j, c) order) -> int64 [B, OH, OW, O], without im2col:
    over the image flattened to [B·H·W, C], kernel offset (i, j) reads the rows shifted by i·W + j, a
    contiguous view, so the product is one GEMM per offset on the same rows (output rows whose
    window leaves the image are computed and dropped). ``slices``: the float32 slices of the
    reduction (:func:`k_slices`), each summed in float32 and added in int64; None: one sum in ``dt``."""
    n, h, wd, c = xn.shape
    flat = xn.reshape(n * h * wd, c)
    m = n * h * wd - (kh - 1) * wd - (kw - 1)             # the rows whose every offset stays in the array
    offsets = [i * wd + j for i in range(kh) for j in range(kw)]
    y = np.zeros((n * h * wd, w.shape[1]), np.int64)
    for k0, k1 in slices or [(0, w.shape[0])]:
        acc = None
        for t in range(k0 // cg, (k1 - 1) // cg + 1):       # the offsets this slice of (i, j, c) covers
            ca, cb = max(k0 - t * cg, 0), min(k1 - t * cg, cg)
            part = flat[offsets[t]:offsets[t] + m, c0 + ca:c0 + cb] @ w[t * cg + ca:t * cg + cb].astype(dt)
            acc = part if acc is None else np.add(acc, part, out=acc)
        np.add(y[:m], acc, out=y[:m], casting="unsafe")    # exact integers: the cast is exact
    return y.reshape(n, h, wd, -1)[:, :oh, :ow]


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
    return matmul(x, _np(node.weight).T, dtype=_FORCED.get()) + _np(node.bias).astype(np.int64).reshape(1, -1)


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


@IMPL.register(ir.Sign)
def _sign(node, x):
    return N.sign_int(x)


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
    win = _windows(x, node.kernel, node.stride, node.padding, _INT_MIN)
    # the maximum of the kh·kw strided views, one pass each (a reduction over the window axes is 10x slower)
    y = win[..., 0, 0].copy()
    for i in range(win.shape[4]):
        for j in range(win.shape[5]):
            np.maximum(y, win[..., i, j], out=y)
    return y


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


#: Images per pass of :func:`run_graph` (resnet18 at 224: 88 ms/image in passes of 8, 141 in passes of 32).
_CHUNK = 8


def run_graph(graph: ir.Graph | dict, x: np.ndarray, keep: bool = False):
    """Execute ``graph`` (an :class:`hawq.ir.Graph` or an artifact's graph dict) on a float32 batch
    ``x`` [B,C,H,W].

    Returns the int64 output (logits [B, classes]); with ``keep=True`` also the dict of every
    intermediate value by name (for per-layer comparisons).
    """
    graph = ir.as_graph(graph)
    x = np.asarray(x, dtype=np.float32)
    if len(x) > _CHUNK and not keep:       # intermediates of a few images stay in cache: 1.6x faster per image
        return np.concatenate([run_graph(graph, x[i:i + _CHUNK]) for i in range(0, len(x), _CHUNK)])
    env = {graph.input: x}
    last = _last_uses(graph)
    for i, node in enumerate(graph.nodes):
        env[node.output] = IMPL.lookup(node)(node, *(env[n] for n in node.inputs))
        if not keep:
            for n in node.inputs:
                if last[n] == i and n != graph.output:
                    env.pop(n, None)
    out = env[graph.output]
    return (out, env) if keep else out
