"""Learned quantizers for QAT (``--quantizer``): LSQ, PACT, DoReFa - small pure functions.

Which method quantizes what (:data:`METHODS`):

=========  ==============================================  ==========================================
method     weights                                         activations
=========  ==============================================  ==========================================
minmax     max |W| per channel (or percentile)             EMA of batch min/max (or percentile)
lsq        learned step per output channel (LSQ)           learned step per tensor (LSQ)
pact       max |W| per channel                             learned clip α per tensor (PACT)
dorefa     tanh transform, then max |W| per channel        EMA of batch min/max
=========  ==============================================  ==========================================

How they stay integer-exact: the *forward value* of a training step is always the module's own
fake quantization with the current scale (the emulated integer path of :mod:`hawq.quant.modules`),
so what is trained is what exports. The method only changes (a) where the scale comes from and (b)
the *gradient*, through a differentiable surrogate (:func:`lsq_surrogate`, :func:`pact_surrogate`)
joined to the forward value by :func:`hawq.numerics.straight_through`. At export the learned
parameters are read once (float32), like any other scale: the integer artifact, the reference and
TVM never see the method.

References: LSQ - Esser et al., "Learned Step Size Quantization", ICLR 2020 (gradient scale
g = 1/sqrt(N·Q_P)); PACT - Choi et al., 2018 (dy/dα = 1 above the clip, 0 below; L2 decay on α
comes from the optimizer's weight decay); DoReFa - Zhou et al., 2016 (W' = tanh W / max|tanh W|).
"""
from __future__ import annotations

import math

import torch

METHODS = ("minmax", "lsq", "pact", "dorefa")
#: Methods whose activation quantizer owns a learned parameter, and its name in the state dict.
ACT_PARAM = {"lsq": "act_step", "pact": "act_clip"}
#: Methods whose weight quantizer owns a learned parameter ([C_out]).
WEIGHT_PARAM = {"lsq": "weight_step"}


def check_method(name: str) -> str:
    if name not in METHODS:
        from hawq.errors import HawqError
        raise HawqError(f"unknown --quantizer {name!r}; expected one of {', '.join(METHODS)}")
    return name


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, g: float):
        ctx.g = g
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.g, None


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Forward ``x``, backward the gradient times ``g`` (LSQ's step-size gradient scale)."""
    return _GradScale.apply(x, g)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() with an identity gradient."""
    return _RoundSTE.apply(x)


def lsq_grad_factor(numel: int, qmax: int) -> float:
    """LSQ's g = 1/sqrt(N·Q_P): N values share the step, Q_P is the largest positive level."""
    return 1.0 / math.sqrt(max(numel, 1) * max(qmax, 1))


def lsq_surrogate(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, g: float,
                  channel_dim: int | None = None) -> torch.Tensor:
    """LSQ's fake quantization round(clamp(x/s, qmin, qmax))·s, differentiable in ``x`` (straight
    through inside the clamp range, 0 outside) and in ``step`` (LSQ's gradient, scaled by ``g``).

    ``step``: [1] (per tensor) or [C] along ``channel_dim`` (per channel); |step| is used, so a
    step pushed through zero by a gradient step stays a valid scale. ``qmin``/``qmax``: the
    centered integer range (zero point already subtracted).
    """
    s = grad_scale(step.abs().clamp(min=1e-8), g)
    if channel_dim is not None and s.numel() > 1:
        shape = [1] * x.dim()
        shape[channel_dim] = -1
        s = s.reshape(shape)
    return round_ste(torch.clamp(x / s, qmin, qmax)) * s


def pact_surrogate(x: torch.Tensor, clip: torch.Tensor, lower: torch.Tensor | float) -> torch.Tensor:
    """PACT's clip(x, lower, α) with its straight-through gradient: dy/dx = 1 inside [lower, α],
    dy/dα = 1 where x > α (quantization itself passes the gradient straight through)."""
    a = clip.abs().reshape(1)
    y = torch.minimum(x, a.to(x.dtype))
    return torch.maximum(y, torch.as_tensor(lower, dtype=x.dtype, device=x.device))


def pact_range(clip: torch.Tensor, x_min: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (x_min, x_max) range a PACT clip α stands for, float32 [1] each: [−α, α] on symmetric
    grids, [x_min (observed), α] otherwise (unsigned grids ignore x_min)."""
    a = clip.detach().abs().float().reshape(1)
    lo = -a if mode == "symmetric" else x_min.detach().float().reshape(1)
    return lo, a


def dorefa_weight(w: torch.Tensor) -> torch.Tensor:
    """DoReFa's weight transform tanh(W) / max|tanh(W)|, rescaled by max|W| so a pretrained layer
    keeps its magnitude (the original maps into [-1, 1] and relies on BN after the conv, which
    folding fixes here). Differentiable; the result's max |.| equals W's."""
    t = torch.tanh(w)
    return t / t.abs().max().clamp(min=1e-12) * w.detach().abs().max()
