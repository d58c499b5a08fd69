"""Unit tests of every formula in hawq.numerics, against exact rational arithmetic where it applies."""
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from hawq import numerics as N
from hawq.quant.modules import exact_conv2d, exact_linear
from hawq.reference import conv2d as ref_conv2d


def round_half_up(fr: Fraction) -> int:
    """floor(fr + 1/2) in exact arithmetic."""
    return (fr + Fraction(1, 2)).__floor__()


# ---------------------------------------------------------------- dyadic multiplier
@pytest.mark.parametrize("seed", range(3))
def test_dyadic_mantissa_width_and_error(seed):
    rng = np.random.default_rng(seed)
    ratios = np.exp(rng.uniform(np.log(1e-9), np.log(1e4), 2000))
    m, s = N.dyadic(ratios)
    assert m.dtype == np.int64 and s.dtype == np.int64
    assert np.all(m >= 1 << 30) and np.all(m < 1 << 31)
    for r, mi, si in zip(ratios[:300], m[:300], s[:300]):
        exact = Fraction(float(r))
        approx = Fraction(int(mi), 1 << int(si))
        # half a unit in the 31st bit: relative error <= 2^-31
        assert abs(approx - exact) <= exact * Fraction(1, 1 << 31)


def test_dyadic_carry_and_powers_of_two():
    # a mantissa that rounds up to 2^31 renormalizes instead of overflowing int32
    r = np.nextafter(1.0, 0.0)          # 0.999...: frexp mantissa rounds to 2^31
    m, s = N.dyadic(np.array([r, 1.0, 0.5, 2.0 ** -20]))
    assert m.tolist() == [1 << 30] * 4
    assert s.tolist() == [30, 30, 31, 50]


def test_dyadic_tiny_ratio_clamps_shift_and_rejects_bad():
    m, s = N.dyadic(np.array([2.0 ** -40]))
    assert s[0] == N.MAX_SHIFT and Fraction(int(m[0]), 1 << int(s[0])) == Fraction(2) ** -40
    with pytest.raises(ValueError):
        N.dyadic(np.array([0.0]))
    with pytest.raises(ValueError):
        N.dyadic(np.array([float("nan")]))
    with pytest.raises(ValueError):
        N.dyadic(np.array([2.0 ** 31]))


# ---------------------------------------------------------------- requantization
@pytest.mark.parametrize("ratio", [0.3, 0.0123456, 1.75, 3e-5, 0.5, 0.999999])
def test_requantize_exhaustive_small_range(ratio):
    """Every accumulator in [-2^13, 2^13] against exact rational round-half-up."""
    (m,), (s,) = N.dyadic(np.array([ratio]))
    acc = np.arange(-(1 << 13), (1 << 13) + 1, dtype=np.int64)
    got = N.requantize(acc, np.int64(m), np.int64(s))
    want = np.array([round_half_up(Fraction(int(a) * int(m), 1 << int(s))) for a in acc], dtype=np.int64)
    np.testing.assert_array_equal(got, want)
    # torch runs the same function on int64 tensors with the same result
    got_t = N.requantize(torch.from_numpy(acc), torch.tensor(int(m)), torch.tensor(int(s)))
    np.testing.assert_array_equal(got_t.numpy(), want)


def test_requantize_extremes_do_not_overflow():
    acc = np.array([-(1 << 31), (1 << 31) - 1, -(1 << 31) + 1, 0, 1, -1], dtype=np.int64)
    for shift in (1, 17, 31, 45, 62):
        m = np.int64((1 << 31) - 1)
        got = N.requantize(acc, m, np.int64(shift))
        want = [round_half_up(Fraction(int(a) * int(m), 1 << shift)) for a in acc]
        assert got.tolist() == want


def test_requantize_per_channel_broadcast():
    acc = torch.arange(-50, 50, dtype=torch.int64).reshape(1, 4, 5, 5)
    m, s = N.dyadic(np.array([0.1, 0.2, 0.3, 0.4]))
    got = N.requantize(acc, N.channel_view(torch.from_numpy(m), 4), N.channel_view(torch.from_numpy(s), 4))
    for c in range(4):
        want = [round_half_up(Fraction(int(a) * int(m[c]), 1 << int(s[c]))) for a in acc[0, c].flatten()]
        assert got[0, c].flatten().tolist() == want


def test_residual_add_saturates_in_wide_domain():
    m, s = N.dyadic(np.array([1.0]))
    big = np.array([30000, -30000, 20000], dtype=np.int64)
    out = N.residual_add(big, m, s, big, m, s, -32768, 32767)
    assert out.tolist() == [32767, -32768, 32767]      # int16 wrap-around would give negative/positive garbage


# ---------------------------------------------------------------- scales and quantizers
def test_qrange():
    assert N.qrange(8, True) == (-128, 127) and N.qrange(4, False) == (0, 15) and N.qrange(16, True) == (-32768, 32767)


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_scale_per_channel_and_tensor(bits):
    w = torch.randn(6, 3, 3, 3)
    s = N.weight_scale(w, bits, per_channel=True)
    want = w.abs().reshape(6, -1).amax(1) / (2 ** (bits - 1) - 1)
    torch.testing.assert_close(s, want)
    q = N.quantize_weight(w, s, bits)
    assert q.abs().reshape(6, -1).amax(1).tolist() == [2 ** (bits - 1) - 1] * 6   # max|W_c| hits the top code
    st = N.weight_scale(w, bits, per_channel=False)
    assert st.shape == (1,) and torch.isclose(st[0], w.abs().max() / (2 ** (bits - 1) - 1))


def test_weight_percentile_clips_outliers():
    w = torch.ones(2, 100)
    w[:, 0] = 50.0
    s = N.weight_scale(w, 8, True, percentile=99.0)
    torch.testing.assert_close(s, torch.full((2,), 1.0 / 127))


def test_activation_params_modes():
    lo, hi = torch.tensor([-1.0]), torch.tensor([3.0])
    s, z = N.activation_params(torch.tensor([0.0]), hi, 8, "unsigned")
    assert torch.isclose(s, torch.tensor([3.0 / 255])) and z.item() == 0
    s, z = N.activation_params(lo, hi, 16, "symmetric")
    assert torch.isclose(s, torch.tensor([3.0 / 32767])) and z.item() == 0
    s, z = N.activation_params(lo, hi, 8, "asymmetric")
    assert torch.isclose(s, torch.tensor([4.0 / 255])) and z.item() == round(1.0 / (4.0 / 255))
    # real zero is exactly representable: quantize(0) - z == 0
    assert (N.quantize(torch.zeros(1), s, z, 0, 255) - z).item() == 0
    # a range that excludes zero is widened to include it
    s, z = N.activation_params(torch.tensor([0.5]), torch.tensor([2.0]), 8, "asymmetric")
    assert z.item() == 0 and torch.isclose(s, torch.tensor([2.0 / 255]))


def test_quantize_rounds_half_to_even_and_clamps():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0])
    q = N.quantize(x, torch.tensor([1.0]), 0, -128, 127)
    assert q.tolist() == [0.0, 2.0, 2.0, -0.0, 127.0, -128.0]


def test_fake_quantize_straight_through_gradient():
    x = torch.linspace(-1, 1, 11, requires_grad=True)
    y = N.fake_quantize(x, torch.tensor([0.3]), 0, -3, 3)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(11))
    assert torch.allclose(y, torch.round(x.detach() / 0.3).clamp(-3, 3) * 0.3)


def test_quantize_bias_int32_bounds_exact():
    b = torch.tensor([1e9, -1e9, 0.25])
    q = N.quantize_bias(b, torch.tensor([1e-3]), torch.tensor([1e-3, 1e-3, 1.0]), 32)
    assert q.dtype == torch.int64
    assert q.tolist() == [2 ** 31 - 1, -(2 ** 31), 250]


def test_fold_bn_matches_conv_then_bn():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1, bias=True), nn.BatchNorm2d(5)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    bn.eval()
    x = torch.randn(2, 3, 8, 8)
    w, b = N.fold_bn(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    torch.testing.assert_close(F.conv2d(x, w, b, padding=1), bn(conv(x)), atol=1e-5, rtol=1e-5)


def test_ema_range_and_running_minmax():
    a, b = N.ema_range(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([-2.0]), torch.tensor([4.0]), 0.9, True)
    assert (a.item(), b.item()) == (-2.0, 4.0)
    a, b = N.ema_range(a, b, torch.tensor([0.0]), torch.tensor([2.0]), 0.9, False)
    assert a.item() == pytest.approx(-1.8) and b.item() == pytest.approx(3.8)
    a, b = N.ema_range(a, b, torch.tensor([-5.0]), torch.tensor([1.0]), -1, False)
    assert (a.item(), b.item()) == (-5.0, pytest.approx(3.8))


def test_batch_range_percentile():
    x = torch.arange(1000, dtype=torch.float32)
    lo, hi = N.batch_range(x, 99.0)
    assert lo.item() == 10.0 and hi.item() == 989.0   # 10 values clipped at each end
    lo, hi = N.batch_range(x)
    assert (lo.item(), hi.item()) == (0.0, 999.0)


# ---------------------------------------------------------------- exact integer conv / linear
@pytest.mark.parametrize("big", [False, True])
def test_exact_conv_matches_int64_reference(big):
    g = torch.Generator().manual_seed(1)
    hi = 32767 if big else 255          # big forces the float64 path (bound >= 2^24)
    q = torch.randint(0, hi + 1, (2, 16, 9, 9), generator=g)
    w = torch.randint(-128, 128, (8, 16, 3, 3), generator=g)
    got = exact_conv2d(q, w, (2, 2), (1, 1), (1, 1), 1)
    want = ref_conv2d(q.numpy(), w.numpy(), np.zeros(8, dtype=np.int64), (2, 2), (1, 1))
    np.testing.assert_array_equal(got.numpy(), want)


def test_exact_linear_matches_int64():
    g = torch.Generator().manual_seed(2)
    q = torch.randint(0, 256, (4, 2048), generator=g)
    w = torch.randint(-128, 128, (10, 2048), generator=g)
    np.testing.assert_array_equal(exact_linear(q, w).numpy(), q.numpy() @ w.numpy().T)


# ----------------------------------------------------------------------------- profile hawq
def test_requantize_half_even_is_exact_round_half_to_even():
    """Every acc·m/2^shift with small shifts (ties included) against Python's exact rounding."""
    from fractions import Fraction
    acc = np.arange(-300, 301, dtype=np.int64)
    for m in (1, 3, 5, 1 << 30, (1 << 31) - 1):
        for shift in (1, 2, 3, 7, 33):
            got = N.requantize(acc.copy(), np.int64(m), np.int64(shift), "half_even")
            want = [round(Fraction(int(a) * m, 1 << shift)) for a in acc]     # Python rounds half to even
            assert got.tolist() == want, (m, shift)
    t = torch.tensor([2, 6, -2, -6, 10, 3, -3], dtype=torch.int64)       # ratio 0.25: ties at .5
    assert N.requantize(t, 1 << 30, 32, "half_even").tolist() == [0, 2, 0, -2, 2, 1, -1]
    assert N.requantize(t, 1 << 30, 32, "half_up").tolist() == [1, 2, 0, -1, 3, 1, -1]
    with pytest.raises(ValueError, match="rounding"):
        N.requantize(t, 1, 1, "nearest")


def test_requantize_half_even_agrees_with_hawq_float64_where_that_is_exact():
    """HAWQ computes round(f64(acc)·f64(m) / 2^e): the same integers while |acc·m| < 2^53."""
    rng = np.random.default_rng(0)
    acc = rng.integers(-(1 << 21), 1 << 21, 20000)
    for r in (0.00123, 0.5, 0.999, 3.7e-5):
        m, e = N.dyadic(np.array([r]))
        hawq = np.round(acc.astype(np.float64) * float(m[0]) / 2.0 ** float(e[0])).astype(np.int64)
        assert np.array_equal(N.requantize(acc.copy(), m, e, "half_even"), hawq)


def test_avgpool_trunc_is_hawqs_float_formula():
    for n in (1, 4, 49, 64):
        total = np.arange(0, 40 * n, dtype=np.int64)
        hawq = np.trunc((total.astype(np.float32) / np.float32(n)) + np.float32(0.01)).astype(np.int64)
        assert np.array_equal(N.avgpool_trunc(total, n), hawq), n
        assert torch.equal(N.avgpool_trunc(torch.from_numpy(total), n), torch.from_numpy(hawq))
    assert N.avgpool_trunc(np.array([-5]), 4).tolist() == [-1]        # truncation toward zero


def test_hawq_residual_is_unclamped_up_to_int32():
    """Decision (docs/numerics.md §15): HAWQ does not clamp the 16-bit residual; profile hawq keeps
    the value in an int32 container, saturating only at the int32 bounds."""
    branch = np.array([40000, -36802, 3 << 30], dtype=np.int64)
    zero = np.zeros(3, dtype=np.int64)
    one, s = np.int64(1 << 30), np.int64(30)
    out = N.residual_add(branch, one, s, zero, one, s, *N.INT32, rounding="half_even")
    assert out.tolist() == [40000, -36802, 2 ** 31 - 1]
    assert N.residual_add(branch, one, s, zero, one, s, -32768, 32767).tolist() == [32767, -32768, 32767]


def test_hawq_grids():
    hawq = N.profile("hawq")
    assert [hawq.act_mode(r, 8) for r in N.ACT_ROLES] == ["symmetric"] * 4
    assert [hawq.act_mode(r, 4) for r in N.ACT_ROLES] == ["unsigned_range"] * 4
    exact = N.profile("exact")
    assert [exact.act_mode(r, 8) for r in N.ACT_ROLES] == ["asymmetric", "unsigned", "symmetric", "symmetric"]
    s, z = N.activation_params(torch.tensor([0.25]), torch.tensor([3.25]), 4, "unsigned_range")
    assert s.item() == np.float32(3.0) / np.float32(15) and z.item() == 0     # no widening to 0
    s, _ = N.activation_params(torch.tensor([-1.0]), torch.tensor([2.54]), 8, "symmetric")
    assert s.item() == np.float32(2.54) / np.float32(127)
    with pytest.raises(ValueError, match="profile"):
        N.profile("fp16")


def test_hawq_weight_and_bias_follow_hawqs_float32_order():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 3, 3, generator=g)
    s_w = N.weight_scale(w, 8)
    hawq_w = torch.clamp(torch.round((1.0 / s_w.view(-1, 1, 1, 1)) * w), -128, 127)   # HAWQ's linear_quantize
    assert torch.equal(N.quantize_weight(w, s_w, 8, N.HAWQ), hawq_w)
    b = torch.randn(16, generator=g)
    s_in = torch.tensor([0.0173])
    bsf = s_w.view(1, -1) * s_in.view(1, -1)
    hawq_b = torch.clamp(torch.round((1.0 / bsf.view(-1)) * b), -2 ** 31, 2 ** 31 - 1)
    assert torch.equal(N.quantize_bias(b, s_in, s_w, 32, N.HAWQ), hawq_b.to(torch.int64))
    assert torch.equal(N.bias_scale(s_in, s_w, N.HAWQ), bsf.view(-1).double())
