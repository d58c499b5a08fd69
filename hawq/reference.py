"""Integer-only reference executor for an exported integer graph (NumPy int64).

The only float operation is the input quantizer (float image -> integers), which is the graph's
boundary. Everything after it is int64 arithmetic: convolutions as integer im2col products,
requantization through :func:`hawq.numerics.requantize` (the same function the QAT eval path uses),
saturating residual adds, integer max/sum pooling. Shapes are NCHW.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from hawq import numerics as N

_INT_MIN = np.iinfo(np.int64).min


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _windows(x: np.ndarray, kernel, stride, padding, pad_value) -> np.ndarray:
    """[B, C, H, W] -> [B, C, OH, OW, kh, kw] strided view over a padded copy."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    return sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride, padding, dilation=(1, 1), groups=1) -> np.ndarray:
    """Integer conv: int64 [B,C,H,W] ⊛ int [O,C/g,kh,kw] + bias [O] -> int64 [B,O,OH,OW]."""
    if tuple(dilation) != (1, 1):
        raise NotImplementedError("dilated convolution is not used by the supported models")
    w = w.astype(np.int64)
    outs = []
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    for g in range(groups):
        win = _windows(x[:, g * cg:(g + 1) * cg], w.shape[2:], stride, padding, 0)
        outs.append(np.tensordot(win, w[g * og:(g + 1) * og], axes=([1, 4, 5], [1, 2, 3])))
    y = np.concatenate(outs, axis=3).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(y) + bias.astype(np.int64).reshape(1, -1, 1, 1)


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return N.channel_view(np.asarray(v, dtype=np.int64), ndim)


def _op_quantize(node, x):
    scale = _np(node["scale"]).astype(np.float32)
    z = node["zero_point"]
    x = x.astype(np.float32)
    if node.get("reciprocal", False):        # profile hawq: round(f32(1/S) · x + z)
        q = np.round((np.float32(1.0) / scale) * x + np.float32(z))
    else:
        q = np.round(x / scale) + np.float32(z)
    q = np.clip(q, node["qmin"], node["qmax"])
    return q.astype(np.int64) - z


def _op_conv2d(node, x):
    return conv2d(x, _np(node["weight"]), _np(node["bias"]), node["stride"], node["padding"],
                  node["dilation"], node["groups"])


def _op_dense(node, x):
    return x @ _np(node["weight"]).astype(np.int64).T + _np(node["bias"]).astype(np.int64).reshape(1, -1)


def rounding_of(node) -> str:
    """Requantization rounding of a requant/requant_add node (graphs before profiles: half up)."""
    return node.get("rounding", "half_up")


def _op_requant(node, x):
    m, s = _per_channel(_np(node["multiplier"]), x.ndim), _per_channel(_np(node["shift"]), x.ndim)
    return N.saturate(N.requantize(x, m, s, rounding_of(node)), node["qmin"], node["qmax"])


def _op_requant_add(node, x, identity):
    nd = x.ndim
    return N.residual_add(x, _per_channel(_np(node["multiplier"]), nd), _per_channel(_np(node["shift"]), nd),
                          identity, _per_channel(_np(node["identity_multiplier"]), nd),
                          _per_channel(_np(node["identity_shift"]), nd), node["qmin"], node["qmax"],
                          rounding_of(node))


def _op_relu(node, x):
    return np.maximum(x, 0)


def _op_maxpool2d(node, x):
    return _windows(x, node["kernel"], node["stride"], node["padding"], _INT_MIN).max(axis=(4, 5))


def _op_global_avgpool_sum(node, x):
    return x.sum(axis=(2, 3))


def _op_global_avgpool_trunc(node, x):
    return N.avgpool_trunc(x.sum(axis=(2, 3)), int(node["divisor"]))


OPS = {
    "quantize": _op_quantize, "conv2d": _op_conv2d, "dense": _op_dense, "requant": _op_requant,
    "requant_add": _op_requant_add, "relu": _op_relu, "maxpool2d": _op_maxpool2d,
    "global_avgpool_sum": _op_global_avgpool_sum, "global_avgpool_trunc": _op_global_avgpool_trunc,
}


def _last_uses(graph: dict) -> dict[str, int]:
    """Index of the last node reading each value, so intermediates can be freed early."""
    last = {}
    for i, node in enumerate(graph["nodes"]):
        for name in node["inputs"]:
            last[name] = i
    return last


def run_graph(graph: dict, x: np.ndarray, keep: bool = False):
    """Execute ``graph`` on a float32 batch ``x`` [B,C,H,W].

    Returns the int64 output (logits [B, classes]); with ``keep=True`` also the dict of every
    intermediate value by name (for per-layer comparisons).
    """
    env = {graph["input"]: np.asarray(x, dtype=np.float32)}
    last = _last_uses(graph)
    for i, node in enumerate(graph["nodes"]):
        fn = OPS.get(node["op"])
        if fn is None:
            raise ValueError(f"integer graph has an unknown op {node['op']!r} (node {node['name']})")
        env[node["output"]] = fn(node, *(env[n] for n in node["inputs"]))
        if not keep:
            for n in node["inputs"]:
                if last[n] == i and n != graph["output"]:
                    env.pop(n, None)
    out = env[graph["output"]]
    return (out, env) if keep else out
