"""Activation observers for post-training calibration (MQBench's names and update rules).

Each observer is fed the float values one :class:`~hawq.quant.modules.QuantAct` would quantize,
batch by batch, and ends with a static per-tensor range ``(lo, hi)`` that becomes the quantizer's
``x_min``/``x_max``; the grid (scale, zero point) then follows from the quantizer's role, width and
numeric profile exactly as for QAT (:func:`hawq.numerics.activation_params`), so every observer
works under both profiles.

==============  =============================================================================
``minmax``      running min of minima / max of maxima
``emaminmax``   EMA (ratio 0.9) of each batch's min / max
``emaquantile`` EMA of each batch's 1e-5 / (1 - 1e-5) quantiles (clipped to the batch range)
``mse``         per batch, the range shrink (1 - 0.01·i, i < 80) with the least L2 error of the
                quantizer's own fake quantization; running min / max of those
``emamse``      the same per-batch search, EMA (ratio 0.9)
==============  =============================================================================
"""
from __future__ import annotations

import torch

from hawq import numerics as N
from hawq.errors import HawqError

__all__ = ["EMA_RATIO", "QUANTILE", "MSE_STEPS", "MAX_SAMPLE", "ACT_OBSERVERS", "grid_error", "mse_range",
           "Observer"]

EMA_RATIO = 0.9
QUANTILE = 0.99999
#: MQBench's MSE search: ranges shrunk by (1 - 0.01·i) for i < MSE_STEPS.
MSE_STEPS = 80
#: Elements used per batch for quantile and MSE searches (a fixed-stride sample beyond this).
MAX_SAMPLE = 1 << 18

ACT_OBSERVERS = ("minmax", "emaminmax", "emaquantile", "mse", "emamse")


def grid_error(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, mode: str,
               p: float = 2.0) -> torch.Tensor:
    """Mean |Q(x) - x|^p of the activation grid ``mode`` at ``bits`` bits over the range [lo, hi]
    (tensors [K] of K candidate ranges; ``x`` flat [n]). Returns [K]."""
    out = []
    for a, b in zip(lo.reshape(-1), hi.reshape(-1)):
        scale, zero = N.activation_params(a.reshape(1), b.reshape(1), bits, mode)
        qmin, qmax = N.qrange(bits, signed=(mode == "symmetric"))
        q = N.quantize(x, scale, zero, qmin, qmax)
        out.append(((q - zero) * scale - x).abs().pow(p).mean())
    return torch.stack(out)


def mse_range(x: torch.Tensor, bits: int, mode: str, steps: int = MSE_STEPS, p: float = 2.0):
    """The range (lo [1], hi [1]) among min/max shrunk by 1 - 0.01·i (i < ``steps``) whose grid has the
    least mean |Q(x) - x|^p (MQBench's ``MSEObserver.mse``); ties keep the widest."""
    lo, hi = torch.aminmax(x)
    f = 1.0 - 0.01 * torch.arange(steps, dtype=torch.float32)
    err = grid_error(x, lo * f, hi * f, bits, mode, p)
    i = int(torch.argmin(err))
    return (lo * f[i]).reshape(1), (hi * f[i]).reshape(1)


def _sample(x: torch.Tensor) -> torch.Tensor:
    flat = x.detach().reshape(-1).float()
    if flat.numel() > MAX_SAMPLE:
        flat = flat[:: -(-flat.numel() // MAX_SAMPLE)]
    return flat


class Observer:
    """One activation observer: :meth:`update` per batch, then :attr:`range`. ``bits`` and ``mode``
    are the quantizer's width and grid (:data:`hawq.numerics.ACT_MODES`); ``name`` one of
    :data:`ACT_OBSERVERS`."""

    def __init__(self, name: str, bits: int, mode: str):
        if name not in ACT_OBSERVERS:
            raise HawqError(f"unknown activation observer {name!r}; expected one of {', '.join(ACT_OBSERVERS)}")
        self.name, self.bits, self.mode = name, bits, mode
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def _batch_range(self, x: torch.Tensor):
        flat = _sample(x) if self.name in ("emaquantile", "mse", "emamse") else x.detach().reshape(-1).float()
        if self.name in ("minmax", "emaminmax"):
            lo, hi = torch.aminmax(flat)
            return lo.reshape(1), hi.reshape(1)
        if self.name == "emaquantile":
            n = flat.numel()
            k_hi = min(n, max(1, int(round(n * QUANTILE))))
            k_lo = max(1, n + 1 - k_hi)
            return flat.kthvalue(k_lo).values.reshape(1), flat.kthvalue(k_hi).values.reshape(1)
        return mse_range(flat, self.bits, self.mode)

    def update(self, x: torch.Tensor) -> None:
        lo, hi = self._batch_range(x)
        if self.lo is None:
            self.lo, self.hi = lo, hi
        elif self.name in ("minmax", "mse"):
            self.lo, self.hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        else:
            self.lo = self.lo * EMA_RATIO + lo * (1 - EMA_RATIO)
            self.hi = self.hi * EMA_RATIO + hi * (1 - EMA_RATIO)

    __call__ = update

    @property
    def seen(self) -> bool:
        """Whether any data reached this observer."""
        return self.lo is not None

    @property
    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None:
            raise HawqError("observer saw no data")
        return self.lo.clone(), self.hi.clone()
