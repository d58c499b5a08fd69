"""The project's numeric spec: every quantization formula, written once.

The QAT modules (``hawq.quant``), the integer exporter (``hawq.export``) and the integer
reference executor (``hawq.reference``) all call these functions, so the three cannot drift
apart. ``docs/numerics.md`` states the same rules in prose.

Conventions
-----------
* Scales are positive floats; the stored dtype is float32 (HAWQ's buffers), every ratio of
  scales is formed in float64 by :func:`requant_ratio` and nowhere else.
* "Integer tensors" are int64 torch tensors or int64 NumPy arrays. The integer functions
  (:func:`requantize`, :func:`saturate`, :func:`residual_add`) accept either, so the torch
  eval path and the NumPy reference run literally the same code.
* Rounding: float->int quantization (inputs, weights, biases) rounds half to even
  (``torch.round``/``np.round``); requantization rounds half up (add 2^(shift-1), arithmetic
  shift right), which is what an integer-only device does in one add and one shift.
"""
from __future__ import annotations

import numpy as np
import torch

#: Width of the dyadic multiplier: m in [2^30, 2^31), so m fits a signed int32, and
#: |acc·m| + 2^(shift-1) < 2^63 for every |acc| <= 3·2^30 (the largest accumulator here is an
#: int32-clamped bias plus a conv sum < 2^28, i.e. < 2^31 + 2^28).
MANTISSA_BITS = 31
#: Largest right shift; with |acc*m| < 2^63 a shift of 62 already rounds everything to 0 or ±1.
MAX_SHIFT = 62
#: Floor for a range or a per-channel |max| so an all-zero tensor still gets a finite scale.
MIN_RANGE = 1e-8

ACT_MODES = ("unsigned", "symmetric", "asymmetric")


# --------------------------------------------------------------------------- ranges / scales
def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-wide value: [-2^(b-1), 2^(b-1)-1] or [0, 2^b-1]."""
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def weight_scale(w: torch.Tensor, bits: int, per_channel: bool = True,
                 percentile: float = 0.0) -> torch.Tensor:
    """Symmetric weight scale S_w = max|W_c| / (2^(b-1)-1).

    Args:
        w: float weight, output channels first ([C_out, ...]).
        bits: weight bit width (4 or 8).
        per_channel: one scale per output channel ([C_out]) or one for the tensor ([1]).
        percentile: if in (0, 100), use that percentile of |W_c| instead of the max
            (``--weight-percentile``); values beyond it saturate.
    Returns: float32 tensor [C_out] or [1].
    """
    flat = w.detach().reshape(w.shape[0], -1).abs() if per_channel else w.detach().reshape(1, -1).abs()
    if 0.0 < percentile < 100.0:
        k = max(1, int(round(flat.shape[1] * percentile / 100.0)))
        absmax = flat.float().kthvalue(k, dim=1).values
    else:
        absmax = flat.amax(dim=1)
    return (absmax.float().clamp(min=MIN_RANGE) / float((1 << (bits - 1)) - 1)).float()


def activation_params(x_min: torch.Tensor, x_max: torch.Tensor, bits: int,
                      mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor activation scale (float32 [1]) and zero point (int64 [1]) from a range.

    * ``unsigned`` (after ReLU): S = x_max / (2^b-1), q in [0, 2^b-1], zero point 0.
    * ``symmetric`` (signed wide accumulators): S = max(|x_min|,|x_max|) / (2^(b-1)-1),
      q in [-2^(b-1), 2^(b-1)-1], zero point 0.
    * ``asymmetric`` (inputs that can be negative): the range is widened to contain 0 so
      that real zero (conv padding) is exactly an integer, S = (x_max-x_min)/(2^b-1),
      z = round(-x_min/S), q in [0, 2^b-1]; the integer value that arithmetic sees is q - z.
    """
    lo = torch.minimum(x_min.detach().float(), torch.zeros_like(x_min, dtype=torch.float32))
    hi = torch.maximum(x_max.detach().float(), torch.zeros_like(x_max, dtype=torch.float32))
    if mode == "unsigned":
        scale = hi.clamp(min=MIN_RANGE) / float((1 << bits) - 1)
        zero = torch.zeros_like(scale, dtype=torch.int64)
    elif mode == "symmetric":
        scale = torch.maximum(-lo, hi).clamp(min=MIN_RANGE) / float((1 << (bits - 1)) - 1)
        zero = torch.zeros_like(scale, dtype=torch.int64)
    elif mode == "asymmetric":
        scale = (hi - lo).clamp(min=MIN_RANGE) / float((1 << bits) - 1)
        zero = torch.round(-lo / scale).clamp(0, (1 << bits) - 1).to(torch.int64)
    else:
        raise ValueError(f"unknown activation mode {mode!r}; expected one of {ACT_MODES}")
    return scale.float(), zero


def act_qrange(bits: int, mode: str, zero_point: int = 0) -> tuple[int, int]:
    """Range of the *centered* integer q - z that arithmetic sees for an activation."""
    lo, hi = qrange(bits, signed=(mode == "symmetric"))
    return lo - zero_point, hi - zero_point


def ema_range(old_min, old_max, new_min, new_max, momentum: float, first: bool):
    """Running activation range: first batch initializes; then EMA with ``momentum``
    (``--act-range-momentum``), or a running min/max when momentum < 0 (HAWQ's -1)."""
    if first:
        return new_min, new_max
    if momentum < 0:
        return torch.minimum(old_min, new_min), torch.maximum(old_max, new_max)
    return old_min * momentum + new_min * (1 - momentum), old_max * momentum + new_max * (1 - momentum)


def batch_range(x: torch.Tensor, percentile: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max of a batch ([1] each), or the (100-p)/p percentiles when 0 < p < 100
    (``--act-percentile``), computed with kthvalue (exact, no sampling)."""
    flat = x.detach().reshape(-1).float()
    if 0.0 < percentile < 100.0:
        n = flat.numel()
        k_hi = min(n, max(1, int(round(n * percentile / 100.0))))
        k_lo = max(1, n + 1 - k_hi)
        return flat.kthvalue(k_lo).values.reshape(1), flat.kthvalue(k_hi).values.reshape(1)
    lo, hi = torch.aminmax(flat)
    return lo.reshape(1), hi.reshape(1)


# --------------------------------------------------------------------------- BN folding
def fold_bn(weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor,
            gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold BatchNorm into the preceding conv: W' = W·γ/σ, b' = (b−μ)·γ/σ + β, σ = sqrt(var+eps).

    Differentiable in W, γ, β (μ, σ are treated as given). Shapes: weight [C_out, ...], the rest [C_out].
    """
    k = gamma / torch.sqrt(var + eps)
    w = weight * k.reshape(-1, *([1] * (weight.dim() - 1)))
    b = (bias if bias is not None else torch.zeros_like(mean)) - mean
    return w, b * k + beta


# --------------------------------------------------------------------------- float -> int
def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """clamp(round_half_even(x / S) + z, qmin, qmax), still in x's float dtype.

    Division (not multiplication by 1/S) is IEEE-exact-rounded, so NumPy and torch agree bit for bit.
    """
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, value):
        return value

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Forward exactly ``value``, backward identity to ``x`` (the straight-through estimator).

    An autograd Function rather than ``x + (value - x).detach()``: no extra full-size passes, and
    the forward value is bit-exact (the add/sub form can be 1 ulp off in float32).
    """
    return _StraightThrough.apply(x, value.detach())


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient: (q - z)·S."""
    return straight_through(x, (quantize(x, scale, zero_point, qmin, qmax) - zero_point) * scale)


def quantize_weight(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric integer weight clamp(round(W/S_w), -2^(b-1), 2^(b-1)-1), float dtype; scale per dim 0."""
    lo, hi = qrange(bits, signed=True)
    return quantize(w, scale.reshape(-1, *([1] * (w.dim() - 1))), 0, lo, hi)


def quantize_bias(b: torch.Tensor, scale_in: torch.Tensor, scale_w: torch.Tensor, bits: int) -> torch.Tensor:
    """Bias integer at scale S_in·S_w: clamp(round(b / (S_in·S_w)), -2^(bits-1), 2^(bits-1)-1).

    Computed in float64 (so an int32 bound of 2^31-1 is exact), returned as int64 [C_out].
    """
    lo, hi = qrange(bits, signed=True)
    s = bias_scale(scale_in, scale_w)
    return torch.clamp(torch.round(b.detach().double() / s), lo, hi).to(torch.int64)


def bias_scale(scale_in: torch.Tensor, scale_w: torch.Tensor) -> torch.Tensor:
    """Accumulator scale S_in·S_w in float64 ([C_out]); the one place this product is formed."""
    return scale_in.detach().double().reshape(-1) * scale_w.detach().double().reshape(-1)


# --------------------------------------------------------------------------- dyadic requant
def requant_ratio(scale_acc, scale_out) -> np.ndarray:
    """The float64 ratio S_acc / S_out that a requantization multiplies by (NumPy, [C] or [1])."""
    acc = np.asarray(_to_numpy(scale_acc), dtype=np.float64).reshape(-1)
    out = np.asarray(_to_numpy(scale_out), dtype=np.float64).reshape(-1)
    return acc / out


def dyadic(ratio) -> tuple[np.ndarray, np.ndarray]:
    """Approximate each positive float64 ``ratio`` by m·2^-shift.

    m has MANTISSA_BITS=31 bits (m in [2^30, 2^31), int32-safe) obtained by rounding the frexp
    mantissa half up; a carry to 2^31 renormalizes to 2^30 with shift-1. shift is clamped to
    [1, MAX_SHIFT]: tiny ratios lose mantissa bits (rounded half up), a ratio >= 2^30 is an error.
    Deterministic: pure float64 -> int64 on the stored scales.
    Returns int64 arrays (m, shift) with the shape of ``ratio``.
    """
    r = np.asarray(ratio, dtype=np.float64)
    if not np.all(np.isfinite(r)) or np.any(r <= 0):
        raise ValueError(f"requantization ratio must be positive and finite, got {r}")
    mant, exp = np.frexp(r)                                   # r = mant * 2^exp, mant in [0.5, 1)
    m = np.floor(np.ldexp(mant, MANTISSA_BITS) + 0.5).astype(np.int64)
    shift = (MANTISSA_BITS - exp).astype(np.int64)
    carry = m == (1 << MANTISSA_BITS)
    m = np.where(carry, m >> 1, m)
    shift = np.where(carry, shift - 1, shift)
    if np.any(shift < 1):
        raise ValueError(f"requantization ratio {r.max()} too large for a dyadic multiplier")
    excess = np.clip(shift - MAX_SHIFT, 0, None)
    if np.any(excess):
        m = np.where(excess > 0, (m + (np.int64(1) << np.maximum(excess - 1, 0))) >> excess, m)
        shift = np.minimum(shift, MAX_SHIFT)
    return m, shift


def requantize(acc, m, shift):
    """Integer-only rescale: round_half_up(acc · m / 2^shift) = (acc·m + 2^(shift-1)) >> shift.

    ``acc``: int64 tensor/array with |acc| <= 3·2^30; ``m``, ``shift``: int64 broadcastable to acc
    (e.g. per-channel, reshaped to [1, C, 1, 1]). No clamp here: see :func:`saturate`.
    """
    out = acc * m                 # fresh int64 buffer; the rest is in place (large eval tensors)
    out += 1 << (shift - 1)
    out >>= shift
    return out


def saturate(x, lo: int, hi: int):
    """Clamp an integer tensor/array to [lo, hi] (works for torch and NumPy)."""
    if isinstance(x, torch.Tensor):
        return torch.clamp(x, lo, hi)
    return np.clip(x, lo, hi)


def saturate_(x, lo: int, hi: int):
    """In-place :func:`saturate` for a freshly computed integer buffer."""
    if isinstance(x, torch.Tensor):
        return x.clamp_(lo, hi)
    return np.clip(x, lo, hi, out=x)


def residual_add(branch, m_branch, s_branch, identity, m_id, s_id, lo: int, hi: int):
    """Residual add in a wide domain: each term is requantized in int64 to the output scale,
    summed in int64 (cannot overflow: each term < 2^62), then saturated to the accumulator's
    declared range [lo, hi]. HAWQ's version skips the saturation and overflows int16."""
    out = requantize(branch, m_branch, s_branch)
    out += requantize(identity, m_id, s_id)
    return saturate_(out, lo, hi)


def channel_view(v, ndim: int, channel_dim: int = 1):
    """Reshape a per-channel vector ([C] or [1]) to broadcast along ``channel_dim`` of an ndim tensor."""
    shape = [1] * ndim
    shape[channel_dim] = -1
    return v.reshape(shape)


def _to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return x
