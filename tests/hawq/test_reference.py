"""The NumPy reference's fast paths: convolution and dense products summed in float32 slices or float64
(BLAS) only where every partial sum is provably an exact integer; the integers equal the definition's."""
from __future__ import annotations

import numpy as np

from hawq.reference import conv2d, product_dtype
from hawq.reference import k_slices as k_slices_of


def _case(xmax: int, seed: int = 0):
    """Ones weights [4, 8, 2, 2] (Σ|w| = 32 per output channel) and inputs up to ±xmax, the first image
    all at the bound, so that max|x|·Σ|w| = 32·xmax is reached."""
    rng = np.random.default_rng(seed)
    w = np.ones((4, 8, 2, 2), np.int64)
    w[1] = -1
    x = rng.integers(-xmax, xmax + 1, (2, 8, 5, 5), dtype=np.int64)
    x[0] = xmax                                      # windows entirely at the bound
    x[1, :, 1::2] = -xmax
    return x, w, np.zeros(4, np.int64)


def test_float64_path_at_the_bound_equals_int64():
    x, w, b = _case(1 << 48)                         # 32 · 2^48 = 2^53: the largest proven-exact bound
    assert product_dtype(x, w) == np.float64
    fast = conv2d(x, w, b, (1, 1), (1, 1))
    assert np.array_equal(fast, conv2d(x, w, b, (1, 1), (1, 1), dtype=np.int64))
    assert np.abs(fast).max() == 1 << 53             # the bound is reached, not just approached
    dw = np.ones((8, 1, 3, 3), np.int64)             # depthwise: the einsum path
    assert np.array_equal(conv2d(x, dw, np.zeros(8, np.int64), (1, 1), (1, 1), groups=8),
                          conv2d(x, dw, np.zeros(8, np.int64), (1, 1), (1, 1), groups=8, dtype=np.int64))


def test_beyond_the_bound_int64_is_used_and_needed():
    x, w, b = _case((1 << 48) + 1)
    assert product_dtype(x, w) == np.int64
    x, w, b = _case(1 << 56, seed=1)                 # float64 would round these sums
    exact = conv2d(x, w, b, (1, 1), (1, 1))
    assert not np.array_equal(conv2d(x, w, b, (1, 1), (1, 1), dtype=np.float64), exact)
    assert int(exact[1, 0, 2, 2]) == sum(int(v) for v in x[1, :, 1:3, 1:3].reshape(-1))


def test_float32_slices_are_exact_where_one_float32_product_is_not():
    """8-bit activations x int8 weights over K = 4608 (resnet's 3x3x512): one float32 product could
    reach 255·127·4608 ≈ 2^27 and round; the slices each stay within 2^24 and their int64 sum is exact."""
    from hawq.reference import matmul
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 4608), dtype=np.int64)
    a[0] = 255
    w = rng.integers(-127, 128, (4608, 16), dtype=np.int64)
    w[:, 0] = 127                                    # row 0 x column 0 reaches the worst case 255·127·4608
    slices = k_slices_of(255, w)
    assert slices[0][0] == 0 and slices[-1][1] == 4608 and all(a1 == b0 for (_, a1), (b0, _) in zip(slices, slices[1:]))
    assert all(255 * int(np.abs(w[k0:k1]).sum(0).max()) <= 1 << 24 for k0, k1 in slices) and 1 < len(slices) <= 16
    exact = a @ w
    assert np.array_equal(matmul(a, w), exact) and exact[0, 0] == 255 * 127 * 4608
    assert not np.array_equal(_to_int(a.astype(np.float32) @ w.astype(np.float32)), exact)   # one float32 product rounds
    assert k_slices_of(1 << 20, w) is None and k_slices_of((1 << 24) + 1, np.zeros((4, 2), np.int64)) is None
    x = rng.integers(0, 256, (2, 512, 4, 4), dtype=np.int64)
    wc = rng.integers(-127, 128, (8, 512, 3, 3), dtype=np.int64)
    b = np.zeros(8, np.int64)
    assert np.array_equal(conv2d(x, wc, b, (1, 1), (1, 1)), conv2d(x, wc, b, (1, 1), (1, 1), dtype=np.int64))


def _to_int(y):
    return y.astype(np.int64)


def _naive_conv(x, w, b, stride, pad, groups):
    """int64 einsum over sliding windows: the plain definition, no BLAS, no slicing."""
    from numpy.lib.stride_tricks import sliding_window_view
    t, l, bo, r = pad
    o, cg, kh, kw = w.shape
    win = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (t, bo), (l, r))), (kh, kw), axis=(2, 3))
    win = win[:, :, ::stride[0], ::stride[1]]
    og = o // groups
    y = np.concatenate([np.einsum("bchwij,ocij->bohw", win[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og])
                        for g in range(groups)], axis=1)
    return y + b.reshape(1, -1, 1, 1)


def test_every_conv_path_equals_the_definition():
    """Stride-1 shifted GEMMs (float32 slices, float64, int64), stride-2 im2col, groups, depthwise,
    asymmetric padding, 1x1: each equal to an int64 einsum of the definition."""
    rng = np.random.default_rng(1)
    cases = [  # (C, O, k, stride, pad (t, l, b, r), groups, |x| max, |w| max)
        (64, 16, 3, (1, 1), (1, 1, 1, 1), 1, 255, 127),      # 2 float32 slices
        (512, 8, 3, (1, 1), (1, 1, 1, 1), 1, 255, 127),      # 5 slices, cut inside a kernel offset
        (16, 8, 1, (1, 1), (0, 0, 0, 0), 1, 255, 127),
        (16, 8, 5, (1, 1), (2, 1, 2, 1), 2, 255, 7),
        (16, 16, 3, (1, 1), (1, 1, 1, 1), 16, 255, 127),     # depthwise
        (16, 8, 3, (2, 2), (0, 0, 1, 1), 1, 255, 127),       # im2col, TF-style asymmetric
        (8, 4, 3, (1, 1), (1, 1, 1, 1), 1, 1 << 36, 127),    # float64
        (8, 4, 3, (1, 1), (1, 1, 1, 1), 1, 1 << 44, 127),    # int64 (no overflow: 2^44·127·72 < 2^63)
    ]
    for c, o, k, stride, pad, groups, xm, wm in cases:
        x = rng.integers(-xm, xm + 1, (2, c, 7, 6), dtype=np.int64)
        x[0, :, 2:5, 2:5] = xm                           # windows at the bound
        w = rng.choice([-wm, wm], (o, c // groups, k, k)).astype(np.int64)     # |w| at the bound
        b = rng.integers(-1000, 1000, o, dtype=np.int64)
        assert np.array_equal(conv2d(x, w, b, stride, pad, groups=groups), _naive_conv(x, w, b, stride, pad, groups)), \
            (c, o, k, stride, pad, groups, xm)
    wk = rng.choice([-127, 127], (64 * 9, 16))
    assert len(k_slices_of(255, wk)) == 2 and len(k_slices_of(255, np.tile(wk, (8, 1)))) == 9
