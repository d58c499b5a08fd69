"""Weight quantizers: the symmetric per-channel or per-layer weight grid of a post-training model.

Our integer format stores weights as signed b-bit integers with zero point 0 (HAWQ's format, and
what the peers' per-channel symmetric setting means), so every quantizer here chooses a *scale*:

============  ==============================================================================
``absmax``    S = max|W| / (2^(b-1) - 1)
``minmax``    S = max(|min W|, |max W|) / (2^(b-1) - 1): MQBench's symmetric MinMaxObserver, the same
              grid as absmax in a symmetric format (MyAdaRound's asymmetric MinMax has a zero point,
              which integer weights here do not carry)
``mse``       MQBench's MSE search: the absmax shrunk by 1 - 0.01·i (i < 80) with the least L2 error
``lp2.0``,    MyAdaRound's Lp-norm ("Norm") search, p = 2.0 / 2.4, over a finer grid of clip
``lp2.4``     ratios in [0.2, 1] (step 1/320)
============  ==============================================================================

Per channel the search is done for every output channel independently. ``bn_fold`` says where BN
is folded: ``before`` (the grid is chosen on the folded weight W·γ/σ, MyAdaRound's ``_Folded``), or
``after`` (chosen on the conv's own weight W, then carried to the folded weight as S·|γ/σ| per
channel, so the integers are those of W on its own grid).
"""
from __future__ import annotations

import torch

from hawq import numerics as N
from hawq.errors import HawqError

__all__ = ["WEIGHT_QUANTIZERS", "BN_FOLD", "MSE_RATIOS", "LP_RATIOS", "lp_error", "search_scale",
           "choose_scale", "layer_scale"]

WEIGHT_QUANTIZERS = ("minmax", "absmax", "mse", "lp2.0", "lp2.4")
BN_FOLD = ("before", "after")
MSE_RATIOS = 1.0 - 0.01 * torch.arange(80, dtype=torch.float64)
LP_RATIOS = torch.linspace(1.0, 0.2, 257, dtype=torch.float64)


def lp_error(w: torch.Tensor, scale: torch.Tensor, bits: int, p: float) -> torch.Tensor:
    """Mean |Q(W) - W|^p per row of ``w`` [C, n] for per-row scales ``scale`` [C] (symmetric grid)."""
    qmin, qmax = N.qrange(bits, signed=True)
    q = torch.clamp(torch.round(w / scale[:, None]), qmin, qmax)
    return (q * scale[:, None] - w).abs().pow(p).mean(1)


def search_scale(w: torch.Tensor, bits: int, ratios: torch.Tensor, p: float) -> torch.Tensor:
    """Per row of ``w`` [C, n]: the scale absmax·r/(2^(b-1)-1), r in ``ratios``, with the least
    :func:`lp_error`; the first (widest) on ties. Returns float32 [C]."""
    w = w.double()
    base = w.abs().amax(1).clamp(min=N.MIN_RANGE) / float((1 << (bits - 1)) - 1)
    errs = torch.stack([lp_error(w, base * r, bits, p) for r in ratios])     # [R, C]
    best = errs.argmin(0)
    return (base * ratios.to(w)[best]).float()


def choose_scale(w: torch.Tensor, bits: int, method: str, per_channel: bool) -> torch.Tensor:
    """The weight scale of ``method`` (:data:`WEIGHT_QUANTIZERS`) for float weight ``w`` [C_out, ...]:
    float32 [C_out] (per channel) or [1] (per layer)."""
    if method not in WEIGHT_QUANTIZERS:
        raise HawqError(f"unknown weight quantizer {method!r}; expected one of {', '.join(WEIGHT_QUANTIZERS)}")
    flat = w.detach().reshape(w.shape[0], -1) if per_channel else w.detach().reshape(1, -1)
    if method in ("absmax", "minmax"):
        lo, hi = flat.amin(1), flat.amax(1)
        absmax = torch.maximum(lo.abs(), hi.abs()).float()
        return (absmax.clamp(min=N.MIN_RANGE) / float((1 << (bits - 1)) - 1)).float()
    if method == "mse":
        return search_scale(flat, bits, MSE_RATIOS, 2.0)
    return search_scale(flat, bits, LP_RATIOS, float(method[2:]))


def layer_scale(layer, method: str, per_channel: bool, bn_fold: str) -> torch.Tensor:
    """Scale [C_out] of the BN-folded weight of ``layer`` (a QuantBnConv2d / QuantLinear) chosen by
    ``method`` with BN folded ``before`` or ``after`` choosing it."""
    if bn_fold not in BN_FOLD:
        raise HawqError(f"unknown --bn-fold {bn_fold!r}; expected before or after")
    c = layer.weight_integer.shape[0]
    k = layer.fold_factor()
    if bn_fold == "before" or k is None:
        return choose_scale(layer.float_weight(), layer.weight_bit, method, per_channel).expand(c).clone()
    s = choose_scale(layer.raw_weight(), layer.weight_bit, method, per_channel).expand(c)
    return (s * k.abs().float()).clamp(min=N.MIN_RANGE).float()
