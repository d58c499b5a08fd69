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

import math
from dataclasses import dataclass

import numpy as np
import torch

from hawq.errors import HawqError

__all__ = ["MANTISSA_BITS", "MAX_SHIFT", "MIN_RANGE", "ACT_MODES", "ROUNDINGS", "ACT_ROLES", "INT32",
           "Profile", "EXACT", "HAWQ", "PROFILES", "profile", "qrange", "weight_scale", "activation_params",
           "act_qrange", "ema_range", "batch_range", "fold_bn", "quantize", "straight_through",
           "fake_quantize", "quantize_weight", "quantize_bias", "bias_scale", "requant_ratio", "dyadic",
           "requantize", "saturate", "saturate_", "residual_add", "avgpool_trunc", "TABLE_FUNCTIONS", "TABLE_RANGE",
           "function_table", "relu6_bound", "ORT", "fma32", "ort_multiplier", "requant_float", "qlinear_add_table",
           "channel_view",
           "BINARY", "SIGN", "binary_weight_scale", "binarize", "sign_int"]

#: Width of the dyadic multiplier: m in [2^30, 2^31), so m fits a signed int32, and
#: |acc·m| + 2^(shift-1) < 2^63 for every |acc| <= 3·2^30 (the largest accumulator here is an
#: int32-clamped bias plus a conv sum < 2^28, i.e. < 2^31 + 2^28).
MANTISSA_BITS = 31
#: Largest right shift; with |acc*m| < 2^63 a shift of 62 already rounds everything to 0 or ±1.
MAX_SHIFT = 62
#: Floor for a range or a per-channel |max| so an all-zero tensor still gets a finite scale.
MIN_RANGE = 1e-8

#: Activation grids. ``unsigned_range`` is HAWQ-V3's "asymmetric": S = (x_max - x_min)/(2^b-1),
#: q in [0, 2^b-1], and the zero point it computes is never applied (z = 0).
ACT_MODES = ("unsigned", "symmetric", "asymmetric", "unsigned_range", "sign")
#: The 1-bit width: weights and activations on the sign grid {-1, +1} (docs/numerics.md §18).
BINARY = 1
#: The activation grid of a 1-bit quantizer: q = +1 if x >= 0 else -1, scale 1 (the BN after every
#: binary conv absorbs a per-tensor scale; XNOR-Net's per-position K is not a requantization).
SIGN = "sign"
#: Requantization rounding rules (integer-exact either way).
ROUNDINGS = ("half_up", "half_even")
#: Roles of an activation quantizer in the graph: the float->int boundary, a post-ReLU activation
#: (``quant_act*``, ``quant_act_output``), a wide signed accumulator (``quant_act_int32``), a narrow
#: signed activation (MobileNetV2's unit inputs: the linear bottleneck has no ReLU).
ACT_ROLES = ("input", "relu", "accumulator", "signed")
INT32 = (-(1 << 31), (1 << 31) - 1)


# --------------------------------------------------------------------------- numeric profiles
@dataclass(frozen=True)
class Profile:
    """A numeric profile: which grids, scale formulas and rounding rules the integers follow.

    ``exact`` is this project's spec (docs/numerics.md §1-13). ``hawq`` is what HAWQ-V3's code
    computes (§15): its grids and scale formulas, its float32/float64 cast order for scale products,
    its reciprocal-multiply quantization and half-to-even requantization, its truncating average
    pool, an unclamped (int32-container) residual add - all evaluated in exact integer arithmetic.

    Fields:
        name: ``exact`` or ``hawq`` (recorded in checkpoints and artifacts).
        reciprocal_quantize: float->int as ``round(x · f32(1/S))`` (HAWQ) instead of ``round(x / S)``.
        rounding: requantization rounding, one of :data:`ROUNDINGS`.
        float32_scale_product: the accumulator scale S_in·S_w is rounded to float32 (HAWQ's bias
            scale and "follow TVM" ratio) instead of being kept exact in float64.
        residual_int32: the residual add saturates only to int32 (HAWQ does not clamp it) instead of
            to its declared width.
        avgpool: ``sum`` (integer sum, 1/N folded into the next requantization) or ``trunc_mean``
            (HAWQ: trunc(sum/N + 0.01), scale unchanged).
        float_requant: requantization is ONNX Runtime's float32 step (profile ``ort``, §17):
            ``clip(round_half_even(f32(acc) · M))`` with ``M = f32(f32(S_acc) / S_out)`` instead of the
            dyadic integer multiply; every activation is an 8-bit grid, residual adds are QLinearAdd.
    """

    name: str
    reciprocal_quantize: bool
    rounding: str
    float32_scale_product: bool
    residual_int32: bool
    avgpool: str
    float_requant: bool = False

    def check_bits(self, what: str, bits: int) -> None:
        """Profile ort runs ONNX Runtime's 8-bit kernels: any other width of ``what`` (e.g.
        "activation 'stage1.unit1.quant_act'") is a one-line HawqError."""
        if self.float_requant and int(bits) != 8:
            raise HawqError(f"numeric profile ort runs ONNX Runtime's 8-bit kernels: {what} is {bits}-bit "
                            "(use an 8-bit scheme such as uniform8)")
        if int(bits) == BINARY and self.name != "exact":
            raise HawqError(f"numeric profile {self.name} has no 1-bit grid: {what} is 1-bit (binary layers "
                            "need --numerics exact)")

    def act_mode(self, role: str, bits: int, relu_after: bool = False) -> str:
        """The activation grid of a quantizer in ``role`` (:data:`ACT_ROLES`) at ``bits`` bits.

        exact: input asymmetric (applied zero point), post-ReLU unsigned, accumulators symmetric.
        hawq: every 4-bit quantizer ``unsigned_range`` (quant_train.py switches exactly the 4-bit
        ones to 'asymmetric'), 8 bits and wider symmetric signed - the input and post-ReLU too. HAWQ
        has no 2/3/5-7-bit activations; those follow its low-bit rule (``unsigned_range``).
        ort: ONNX Runtime's uint8 tensors, post-ReLU ones (and an accumulator a ReLU follows,
        ``relu_after``: the ReLU is then the grid's clamp at zero point 0) unsigned, the rest
        asymmetric with a zero point.
        """
        if role not in ACT_ROLES:
            raise ValueError(f"unknown activation role {role!r}; expected one of {ACT_ROLES}")
        if int(bits) == BINARY:
            return SIGN
        if self.name == "ort":
            return "unsigned" if role == "relu" or relu_after else "asymmetric"
        if self.name == "hawq":
            return "unsigned_range" if bits < 8 else "symmetric"
        return {"input": "asymmetric", "relu": "unsigned", "accumulator": "symmetric", "signed": "symmetric"}[role]


EXACT = Profile("exact", reciprocal_quantize=False, rounding="half_up", float32_scale_product=False,
                residual_int32=False, avgpool="sum")
HAWQ = Profile("hawq", reciprocal_quantize=True, rounding="half_even", float32_scale_product=True,
               residual_int32=True, avgpool="trunc_mean")
#: ONNX Runtime's int8 numerics (docs/numerics.md §17): its QLinearConv/QGemm/QLinearAdd/
#: QLinearGlobalAveragePool arithmetic, which a QDQ file runs in at full speed.
ORT = Profile("ort", reciprocal_quantize=False, rounding="half_even", float32_scale_product=True,
              residual_int32=False, avgpool="sum", float_requant=True)
PROFILES: dict[str, Profile] = {"exact": EXACT, "hawq": HAWQ, "ort": ORT}


def profile(name: str) -> Profile:
    """The :class:`Profile` called ``name`` (``exact``, ``hawq`` or ``ort``)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown numeric profile {name!r}; expected one of {tuple(PROFILES)}") from None


# --------------------------------------------------------------------------- ranges / scales
def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-wide value: [-2^(b-1), 2^(b-1)-1] or [0, 2^b-1]; a signed 1-bit
    value is on the sign grid {-1, +1}, which [-1, 1] bounds (0 is never produced)."""
    if signed and bits == BINARY:
        return -1, 1
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def weight_scale(w: torch.Tensor, bits: int, per_channel: bool = True,
                 percentile: float = 0.0, prof: "Profile" = None) -> torch.Tensor:
    """Symmetric weight scale S_w = max|W_c| / (2^(b-1)-1).

    Args:
        w: float weight, output channels first ([C_out, ...]).
        bits: weight bit width (4 or 8).
        per_channel: one scale per output channel ([C_out]) or one for the tensor ([1]).
        percentile: if in (0, 100), use that percentile of |W_c| instead of the max
            (``--weight-percentile``); values beyond it saturate. Profile hawq takes HAWQ's signed
            percentiles instead (see :func:`_hawq_percentile_absmax`).
    Returns: float32 tensor [C_out] or [1]. At 1 bit: :func:`binary_weight_scale` (``percentile``
    does not apply: the sign grid has no clip).
    """
    if int(bits) == BINARY:
        return binary_weight_scale(w, per_channel)
    if prof is not None and prof.name == "hawq" and 0.0 < percentile < 100.0:
        absmax = _hawq_percentile_absmax(w.detach().float(), percentile, per_channel)
        return (absmax.clamp(min=MIN_RANGE) / float((1 << (bits - 1)) - 1)).float()
    flat = w.detach().reshape(w.shape[0], -1).abs() if per_channel else w.detach().reshape(1, -1).abs()
    if 0.0 < percentile < 100.0:
        k = max(1, int(round(flat.shape[1] * percentile / 100.0)))
        absmax = flat.float().kthvalue(k, dim=1).values
    else:
        absmax = flat.amax(dim=1)
    return (absmax.float().clamp(min=MIN_RANGE) / float((1 << (bits - 1)) - 1)).float()


def binary_weight_scale(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """XNOR-Net's α = mean |W_c| (the L2-optimal scale of sign(W_c)), float32 [C_out] or [1], at least
    ``MIN_RANGE``. Computed from the float32 weight in float64 and rounded once, so every caller gets
    the same float32 (the training forward, the integer export, a re-export on another CPU)."""
    flat = w.detach().reshape(w.shape[0], -1) if per_channel else w.detach().reshape(1, -1)
    return flat.double().abs().mean(dim=1).float().clamp(min=MIN_RANGE)


def binarize(x: torch.Tensor) -> torch.Tensor:
    """The sign grid {-1, +1} in ``x``'s float dtype: +1 where x >= 0 (sign(0) = +1, as LCE and
    Larq), -1 elsewhere. The same rule as :func:`sign_int` on the integers x is exactly a multiple of."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def sign_int(q):
    """The 1-bit activation of centered integers ``q`` (torch or NumPy, any int dtype): int64
    +1 where q >= 0, else -1. The scale of ``q`` is positive, so this is :func:`binarize` of the
    value it stands for."""
    if isinstance(q, torch.Tensor):
        return torch.where(q >= 0, 1, -1).to(torch.int64)
    return np.where(np.asarray(q) >= 0, 1, -1).astype(np.int64)


def _hawq_percentile_absmax(w: torch.Tensor, p: float, per_channel: bool) -> torch.Tensor:
    """HAWQ-V3's weight percentile range: per channel the ceil(n·(100-p)/100)-th and ceil(n·p/100)-th
    smallest signed values (``QuantBnConv2d.forward``); per tensor ``get_percentile_min_max``
    (round(n·p/100)-th largest and smallest). Returns max(|lo|, |hi|), [C_out] or [1]."""
    if per_channel:
        flat = w.reshape(w.shape[0], -1)
        n = flat.shape[1]
        lo = flat.kthvalue(max(1, math.ceil(n * (100 - p) * 0.01)), dim=1).values
        hi = flat.kthvalue(min(n, max(1, math.ceil(n * p * 0.01))), dim=1).values
    else:
        flat = w.reshape(-1)
        n = flat.numel()
        hi = flat.kthvalue(min(n, max(1, round(n * p * 0.01)))).values.reshape(1)
        lo = -(-flat).kthvalue(min(n, max(1, round(n * (1 - (100 - p) * 0.01))))).values.reshape(1)
    return torch.maximum(lo.abs(), hi.abs())


def activation_params(x_min: torch.Tensor, x_max: torch.Tensor, bits: int,
                      mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor activation scale (float32 [1]) and zero point (int64 [1]) from a range.

    * ``unsigned`` (after ReLU): S = x_max / (2^b-1), q in [0, 2^b-1], zero point 0.
    * ``symmetric`` (signed wide accumulators): S = max(|x_min|,|x_max|) / (2^(b-1)-1),
      q in [-2^(b-1), 2^(b-1)-1], zero point 0.
    * ``asymmetric`` (inputs that can be negative): the range is widened to contain 0 so
      that real zero (conv padding) is exactly an integer, S = (x_max-x_min)/(2^b-1),
      z = round(-x_min/S), q in [0, 2^b-1]; the integer value that arithmetic sees is q - z.
    * ``unsigned_range`` (HAWQ-V3's 4-bit 'asymmetric'): S = (x_max - x_min)/(2^b-1) on the stored
      range as is, q in [0, 2^b-1], zero point 0.
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
    elif mode == SIGN:                      # ±1, whatever the range: only the sign of x is kept
        scale = torch.ones_like(hi)
        zero = torch.zeros_like(scale, dtype=torch.int64)
    elif mode == "unsigned_range":          # HAWQ's 'asymmetric': no widening to 0, z never applied
        scale = (x_max.detach().float() - x_min.detach().float()).clamp(min=MIN_RANGE) / float((1 << bits) - 1)
        zero = torch.zeros_like(scale, dtype=torch.int64)
    else:
        raise ValueError(f"unknown activation mode {mode!r}; expected one of {ACT_MODES}")
    return scale.float(), zero


def act_qrange(bits: int, mode: str, zero_point: int = 0) -> tuple[int, int]:
    """Range of the *centered* integer q - z that arithmetic sees for an activation."""
    lo, hi = qrange(bits, signed=mode in ("symmetric", SIGN))
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
    σ is the correctly rounded square root of the float32 ``var + eps`` (taken in float64, rounded
    once): PyTorch's vectorized float32 sqrt is not correctly rounded on every CPU (on AVX2 hosts
    about 17 % of results are one ulp off, on AVX-512 hosts none), and a one-ulp σ moves integer
    weights and biases, so the integer program would depend on the machine that exported it.
    """
    var_eps = var + eps
    k = gamma / torch.sqrt(var_eps.double()).to(var_eps.dtype)
    w = weight * k.reshape(-1, *([1] * (weight.dim() - 1)))
    b = (bias if bias is not None else torch.zeros_like(mean)) - mean
    return w, b * k + beta


# --------------------------------------------------------------------------- float -> int
def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point, qmin: int, qmax: int,
             reciprocal: bool = False) -> torch.Tensor:
    """clamp(round_half_even(x / S) + z, qmin, qmax), still in x's float dtype.

    Division (not multiplication by 1/S) is IEEE-exact-rounded, so NumPy and torch agree bit for bit.
    ``reciprocal`` (profile ``hawq``): ``round((1/S) · x + z)`` as HAWQ's ``linear_quantize`` does,
    the reciprocal rounded to x's dtype first - also correctly rounded at each step, so as portable.
    """
    if reciprocal:
        return torch.clamp(torch.round((1.0 / scale) * x + zero_point), qmin, qmax)
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


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point, qmin: int, qmax: int,
                  reciprocal: bool = False) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient: (q - z)·S."""
    return straight_through(x, (quantize(x, scale, zero_point, qmin, qmax, reciprocal) - zero_point) * scale)


def quantize_weight(w: torch.Tensor, scale: torch.Tensor, bits: int, prof: Profile = EXACT) -> torch.Tensor:
    """Symmetric integer weight clamp(round(W/S_w), -2^(b-1), 2^(b-1)-1), float dtype; scale per dim 0.

    Profile ``hawq`` multiplies by the float32 reciprocal instead of dividing (HAWQ's linear_quantize).
    At 1 bit: :func:`binarize` (the sign grid; the scale only sets the value ±S_w).
    """
    if int(bits) == BINARY:
        return binarize(w)
    lo, hi = qrange(bits, signed=True)
    return quantize(w, scale.reshape(-1, *([1] * (w.dim() - 1))), 0, lo, hi, prof.reciprocal_quantize)


def quantize_bias(b: torch.Tensor, scale_in: torch.Tensor, scale_w: torch.Tensor, bits: int,
                  prof: Profile = EXACT) -> torch.Tensor:
    """Bias integer at scale S_in·S_w: clamp(round(b / (S_in·S_w)), -2^(bits-1), 2^(bits-1)-1).

    exact: computed in float64 (so an int32 bound of 2^31-1 is exact). hawq: HAWQ's float32
    ``round(f32(1/f32(S_in·S_w)) · b)``, then clamped exactly in integers (HAWQ's float32 clamp turns
    2^31-1 into 2^31, which no int32 holds). Returned as int64 [C_out].
    """
    lo, hi = qrange(bits, signed=True)
    if prof.float32_scale_product:
        s32 = (scale_w.detach().float().reshape(-1) * scale_in.detach().float().reshape(-1))
        q = torch.round((1.0 / s32) * b.detach().float())
        return torch.clamp(q.double(), lo, hi).to(torch.int64)
    s = bias_scale(scale_in, scale_w)
    return torch.clamp(torch.round(b.detach().double() / s), lo, hi).to(torch.int64)


def bias_scale(scale_in: torch.Tensor, scale_w: torch.Tensor, prof: Profile = EXACT) -> torch.Tensor:
    """Accumulator scale S_in·S_w as float64 ([C_out]); the one place this product is formed.

    exact: the float64 product of the float32 scales (exact: 48 significant bits). hawq: that product
    rounded to float32, as HAWQ's bias scale and its requantization ratio ("follow TVM") use it.
    """
    prod = scale_in.detach().double().reshape(-1) * scale_w.detach().double().reshape(-1)
    return prod.float().double() if prof.float32_scale_product else prod


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


def requantize(acc, m, shift, rounding: str = "half_up"):
    """Integer-only rescale of ``acc`` by m·2^-shift.

    * ``half_up``: round_half_up(acc·m / 2^shift) = (acc·m + 2^(shift-1)) >> shift.
    * ``half_even`` (profile hawq, HAWQ's torch.round): (t + 2^(shift-1) - 1 + ((t >> shift) & 1)) >> shift
      with t = acc·m: below a tie it floors, above it rounds up, at a tie it adds the parity of
      floor(t/2^shift), i.e. rounds to even. Exact where HAWQ's float64 product t is (|t| < 2^53).

    ``acc``: int64 tensor/array with |acc| <= 3·2^30; ``m``, ``shift``: int64 broadcastable to acc
    (e.g. per-channel, reshaped to [1, C, 1, 1]). No clamp here: see :func:`saturate`.
    """
    out = acc * m                 # fresh int64 buffer; the rest is in place (large eval tensors)
    if rounding == "half_even":
        odd = (out >> shift) & 1
        out += (1 << (shift - 1)) - 1
        out += odd
    elif rounding == "half_up":
        out += 1 << (shift - 1)
    else:
        raise ValueError(f"unknown rounding {rounding!r}; expected one of {ROUNDINGS}")
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


def residual_add(branch, m_branch, s_branch, identity, m_id, s_id, lo: int, hi: int,
                 rounding: str = "half_up"):
    """Residual add in a wide domain: each term is requantized in int64 to the output scale,
    summed in int64 (cannot overflow: each term < 2^62), then saturated to [lo, hi]: the
    accumulator's declared range (exact) or int32 (hawq, whose original skips the clamp)."""
    out = requantize(branch, m_branch, s_branch, rounding)
    out += requantize(identity, m_id, s_id, rounding)
    return saturate_(out, lo, hi)


def avgpool_trunc(total, n: int):
    """HAWQ-V3's integer average: trunc(total/n + 0.01) = truncdiv(100·total + n, 100·n), exact.

    ``total``: int64 sums over n values (tensor or array). HAWQ computes it in float32
    (AvgPool2d, then ``trunc(x + 0.01)``); the two agree except at float32 ties of the fraction
    0.99, which need n >= 100.
    """
    num = total * 100 + n
    d = 100 * n
    if isinstance(num, torch.Tensor):
        return torch.div(num, d, rounding_mode="trunc")
    return np.sign(num) * (np.abs(num) // d)


# --------------------------------------------------------------------------- profile ort: float32 steps
def fma32(x, y, z) -> np.ndarray:
    """float32 fused multiply-add ``RN32(x·y + z)`` of float32 arrays, with one rounding, as x86's
    ``vfmadd`` computes it (NumPy has no fma). x·y is exact in float64 (24+24 bits); the float64 sum
    s and its error e (TwoSum) hold x·y + z exactly, and RN32(s + e) = RN32(s) except where s sits
    exactly halfway between two float32 values and e != 0: then e decides the direction."""
    x, y, z = (np.asarray(v, dtype=np.float32) for v in (x, y, z))
    p = x.astype(np.float64) * y.astype(np.float64)
    z64 = z.astype(np.float64)
    s = p + z64
    bb = s - p
    e = (p - (s - bb)) + (z64 - bb)
    r = s.astype(np.float32)
    rd = r.astype(np.float64)
    toward = np.where(s > rd, np.float32(np.inf), np.float32(-np.inf))
    n = np.nextafter(r, toward)
    mid = (rd + n.astype(np.float64)) * 0.5
    fix = (s == mid) & (e != 0) & (np.sign(e) == np.sign(n.astype(np.float64) - rd))
    return np.where(fix, n, r).astype(np.float32)


def ort_multiplier(acc_scale, out_scale, count: int = 1) -> np.ndarray:
    """ONNX Runtime's float32 requantization scale (float32 [C] or [1]).

    ``count == 1`` (QLinearConv, QGemm: ``acc_scale`` is the float32 product S_x·S_w):
    ``M = f32(S_acc / S_out)``. ``count = N`` (QLinearGlobalAveragePool over N values of scale S_in =
    ``acc_scale``): ``M = f32(S_in / f32(S_out · f32(N)))``. Every step float32, as ORT computes it."""
    acc = np.asarray(_to_numpy(acc_scale), dtype=np.float64).reshape(-1).astype(np.float32)
    out = np.float32(np.asarray(_to_numpy(out_scale), dtype=np.float64).reshape(-1)[0])
    if count == 1:
        return (acc / out).astype(np.float32)
    return (acc / np.float32(out * np.float32(count))).astype(np.float32)


def requant_float(acc, multiplier, lo: int, hi: int):
    """ONNX Runtime's requantization (``MlasRequantizeOutput``), on centered integers:
    ``clip(round_half_even(f32(acc) · M), lo, hi)`` with one float32 multiply (no FMA); the clamp
    bounds are integers, so clamping before or after rounding is the same. ``acc``: int64 tensor or
    array (an int32 accumulator, or a pool's sum); ``multiplier`` float32, broadcastable (per channel
    along dim 1). Returns int64 of acc's kind."""
    if isinstance(acc, torch.Tensor):
        m = torch.as_tensor(multiplier, dtype=torch.float32, device=acc.device)
        return torch.round(acc.to(torch.float32) * m).clamp_(lo, hi).to(torch.int64)
    y = np.round(np.asarray(acc).astype(np.float32) * np.asarray(multiplier, dtype=np.float32))
    return np.clip(y, lo, hi).astype(np.int64)


def qlinear_add_table(a_scale, a_zero: int, b_scale, b_zero: int, out_scale, out_zero: int,
                      qmin: int, qmax: int) -> np.ndarray:
    """ONNX Runtime's QLinearAdd of two uint8 tensors (x86), every output for every input pair:
    ``rA = f32(sA/sC)``, ``rB = f32(sB/sC)``, ``F = f32(zC) − fma(rA, zA, f32(rB·zB))``,
    ``y = clip(round_half_even(fma(a, rA, fma(b, rB, F))), qmin, qmax)``. Returns the centered
    ``y − zC`` as int16 [256, 256], indexed by the stored (uncentered) a and b."""
    f32 = np.float32
    sa, sb, sc = (f32(np.asarray(_to_numpy(v), dtype=np.float64).reshape(-1)[0]) for v in (a_scale, b_scale, out_scale))
    ra, rb = f32(sa / sc), f32(sb / sc)
    fb = f32(rb * f32(b_zero))
    fz = f32(f32(out_zero) - fma32(ra, f32(a_zero), fb))
    a = np.arange(256, dtype=np.float32).reshape(-1, 1)
    b = np.arange(256, dtype=np.float32).reshape(1, -1)
    y = np.round(fma32(a, ra, fma32(b, rb, fz)))
    return (np.clip(y, qmin, qmax) - out_zero).astype(np.int16)


# --------------------------------------------------------------------------- activation tables
def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.frompyfunc(math.erf, 1, 1)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)).astype(np.float64))


#: Pointwise functions an activation table holds (float64 NumPy, the spec of docs/numerics.md §8c).
TABLE_FUNCTIONS = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "hardsigmoid": lambda x: np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "tanh": np.tanh,
    "gelu": _gelu,
}
#: Centered inputs a table covers: every integer of any <= 8-bit grid with its zero point (q - z).
TABLE_RANGE = (-255, 255)


def function_table(fn: str, in_scale, out_scale, out_zero: int, qmin: int, qmax: int) -> np.ndarray:
    """The output integers of pointwise ``fn`` (:data:`TABLE_FUNCTIONS`) for every centered input
    q in :data:`TABLE_RANGE`: ``clip(round_half_even(f(q·S_in) / S_out) + z, qmin, qmax) − z``, in
    float64 from the stored float32 scales. Returns int64 [511] (entry i is input ``TABLE_RANGE[0] + i``).
    Computed once at export and stored in the graph, so every backend gathers the same integers."""
    q = np.arange(TABLE_RANGE[0], TABLE_RANGE[1] + 1, dtype=np.float64)
    s_in = float(np.asarray(_to_numpy(in_scale), dtype=np.float64).reshape(-1)[0])
    s_out = float(np.asarray(_to_numpy(out_scale), dtype=np.float64).reshape(-1)[0])
    with np.errstate(over="ignore"):            # exp(-x) overflows to inf for very negative x: f -> 0
        y = TABLE_FUNCTIONS[fn](q * s_in)
    return (np.clip(np.round(y / s_out) + out_zero, qmin, qmax) - out_zero).astype(np.int64)


def relu6_bound(acc_scale) -> np.ndarray:
    """ReLU6 on an accumulator of per-channel scale S_c, in integers: clamp(acc, 0, floor(6 / S_c)).

    ``acc`` · S_c <= 6 exactly when acc <= 6 / S_c, i.e. acc <= floor(6 / S_c) for an integer acc, so the
    integer clamp keeps exactly the accumulators whose real value is within ReLU6's range (the largest
    kept value may sit up to one accumulator step below 6). float64 division of the stored float64
    scale; capped at 2^40 (above any accumulator). Returns int64 [C].
    """
    s = np.asarray(_to_numpy(acc_scale), dtype=np.float64).reshape(-1)
    return np.minimum(np.floor(6.0 / s), float(1 << 40)).astype(np.int64)


def channel_view(v, ndim: int, channel_dim: int = 1):
    """Reshape a per-channel vector ([C] or [1]) to broadcast along ``channel_dim`` of an ndim tensor."""
    shape = [1] * ndim
    shape[channel_dim] = -1
    return v.reshape(shape)


def _to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return x
