"""The NumPy reference's fast path: convolution and dense products summed in float64 (BLAS) only where
every partial sum is provably an exact float64 integer; the integers equal the int64 path's."""
from __future__ import annotations

import numpy as np

from hawq.reference import conv2d, product_dtype


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
