"""Learned quantizers for QAT (``--quantizer``): LSQ, PACT, DoReFa - small pure functions.

Which method quantizes what (:data:`METHODS`):

=========  ==============================================  ==========================================
method     weights                                         activations
=========  ==============================================  ==========================================
minmax     max |W| per channel (or percentile)             EMA of batch min/max (or percentile)
lsq        learned step per output channel (LSQ)           learned step per tensor (LSQ)
pact       max |W| per channel                             learned clip α per tensor (PACT)
dorefa     tanh transform, then max |W| per channel        EMA of batch min/max
xnor       1-bit: α·sign(W), α = mean |W_c| (XNOR-Net)     1-bit: sign(x), clipped STE; wider: min/max
bireal     1-bit: α·sign(W), clipped STE (Bi-Real)         1-bit: sign(x), ApproxSign gradient
lqnet      1-4 bits: learned basis per channel (LQ-Net)    1-4 bits after a ReLU: learned basis (LQ-Net)
=========  ==============================================  ==========================================

LQ-Net's quantizers (codes, QEM basis updates, the integer basis) are :mod:`hawq.quant.lqnet`; their
1-bit forms are LQ-Net's own ({0, v} activations after a ReLU, ±v weights), not the sign grid.

The binary methods (:data:`BINARY_METHODS`) are the ones with a 1-bit form; layers a bit_config
keeps at 2-8 bits quantize as ``minmax`` under them. Their gradients (forward values are the sign
grid of :mod:`hawq.numerics`, exactly what exports):

* XNOR-Net (Rastegari et al., ECCV 2016, Algorithm 1): dC/dW = dC/dW̃ · (1/n + α·1{|W| < 1});
  activations sign(x) with the clipped straight-through estimator 1{|x| < 1}.
* Bi-Real (Liu et al., ECCV 2018; its reference PyTorch code): weights α·sign(W) with α detached
  and the clipped estimator 1{|W| < 1} ("magnitude-aware": the forward value carries |W|'s mean);
  activations with ApproxSign's piecewise-quadratic gradient 2 − 2|x| on |x| < 1.

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

from hawq.numerics import MIN_RANGE

__all__ = ["METHODS", "LSQ_INITS", "lsq_initial_step", "ACT_PARAM", "WEIGHT_PARAM", "MAX_LEARNED_ACT_BITS",
           "check_method", "grad_scale",
           "round_ste", "lsq_grad_factor", "lsq_surrogate", "lsq_ste", "pact_ste", "pact_surrogate",
           "pact_range", "dorefa_weight", "BINARY_METHODS", "check_binary", "sign_ste", "binary_weight_ste"]

METHODS = ("minmax", "lsq", "pact", "dorefa", "xnor", "bireal", "lqnet")
#: Methods with a 1-bit (sign grid) form; a bit_config with 1-bit layers needs one of them.
BINARY_METHODS = ("xnor", "bireal", "dorefa", "lsq")
#: Where LSQ's learned steps start (QuantConfig.lsq_init, --lsq-init).
LSQ_INITS = ("minmax", "mean")
#: Methods whose activation quantizer owns a learned parameter, and its name in the state dict.
ACT_PARAM = {"lsq": "act_step", "pact": "act_clip"}
#: Methods whose weight quantizer owns a learned parameter ([C_out]).
WEIGHT_PARAM = {"lsq": "weight_step"}
#: Learned steps/clips are for low-bit activations (LSQ and PACT quantize to <= 8 bits); wider
#: quantizers (the 16-bit residual accumulators) keep min/max ranges: their steps are ~1e-4, where
#: one SGD step at the weights' learning rate can move the step by its own size.
MAX_LEARNED_ACT_BITS = 8


def check_method(name: str) -> str:
    if name not in METHODS:
        from hawq.errors import HawqError
        raise HawqError(f"unknown --quantizer {name!r}; expected one of {', '.join(METHODS)}")
    return name


def check_binary(method: str, what: str) -> None:
    """A 1-bit ``what`` (e.g. "activation 'stage1.unit1.quant_act'") needs a method with a sign grid:
    otherwise a one-line HawqError."""
    if method not in BINARY_METHODS:
        from hawq.errors import HawqError
        raise HawqError(f"{what} is 1-bit, but --quantizer {method} has no 1-bit form "
                        f"(use --quantizer {' or '.join(BINARY_METHODS)})")


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


def lsq_initial_step(v: torch.Tensor, qmax: int, channel_dim: int | None = None) -> torch.Tensor:
    """LSQ's initial step 2·mean|v|/√Q_P (Esser et al., 2020): float32 [1], or one per index of
    ``channel_dim`` ([C], the mean over everything else); at least :data:`hawq.numerics.MIN_RANGE`."""
    a = v.detach().abs().float()
    if channel_dim is None:
        mean = a.mean().reshape(1)
    else:
        mean = a.transpose(0, channel_dim).reshape(a.shape[channel_dim], -1).mean(1)
    return (2.0 * mean / math.sqrt(max(qmax, 1))).clamp(min=MIN_RANGE)


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


class _LSQ(torch.autograd.Function):
    """Forward: ``value`` as given. Backward: :func:`lsq_surrogate`'s gradients, computed in one pass."""

    @staticmethod
    def forward(ctx, x, step, value, qmin: int, qmax: int, g: float, channel_dim, binary: bool = False):
        ctx.save_for_backward(x, step)
        ctx.args = (qmin, qmax, g, channel_dim, binary)
        return value

    @staticmethod
    def backward(ctx, grad):
        x, step = ctx.saved_tensors
        qmin, qmax, g, channel_dim, binary = ctx.args
        s = step.abs().clamp(min=1e-8).to(x.dtype)
        per_channel = channel_dim is not None and s.numel() > 1
        if per_channel:
            shape = [1] * x.dim()
            shape[channel_dim] = -1
            s = s.reshape(shape)
        # d/dx: 1 inside the clamp range; d/ds: round(clamp(v)) - v inside, qmin / qmax outside
        # = round(clamp(v)) - v·inside. The masks are hardtanh_backward (grad where qmin < v < qmax):
        # bool compares and masked_fill are several times slower on CPU.
        v = x / s
        grad_x = torch.ops.aten.hardtanh_backward(grad, v, float(qmin), float(qmax))
        # (the sign grid, ``binary``: sign(v), +1 at 0, in place of the rounding)
        level = torch.where(v < 0, -1.0, 1.0).to(v.dtype) if binary else v.clamp(qmin, qmax).round_()
        term = level.sub_(torch.ops.aten.hardtanh_backward(v, v, float(qmin), float(qmax)))
        if per_channel:
            dims = [d for d in range(x.dim()) if d != channel_dim]
            grad_s = term.mul_(grad).sum(dim=dims)
        else:
            grad_s = torch.dot(term.reshape(-1), grad.reshape(-1)).reshape(1)
        sign = torch.where(step < 0, -1.0, 1.0).to(grad_s.dtype)   # d|s|/ds; |s| > 0 after the first step
        return grad_x, (grad_s * g * sign).reshape(step.shape).to(step.dtype), None, None, None, None, None, None


def lsq_ste(x: torch.Tensor, step: torch.Tensor, value: torch.Tensor, qmin: int, qmax: int, g: float,
            channel_dim: int | None = None, binary: bool = False) -> torch.Tensor:
    """Forward exactly ``value`` (the module's own fake quantization of ``x``); backward the LSQ
    gradients of :func:`lsq_surrogate` in ``x`` and ``step``, without building its graph (a
    training step costs about what a min/max one does). ``binary``: the sign grid (``qmin``/``qmax``
    −1/1, the level sign(x/s) instead of the rounded one: 1-bit LSQ weights)."""
    return _LSQ.apply(x, step, value.detach(), qmin, qmax, g, channel_dim, binary)


class _PACT(torch.autograd.Function):
    """Forward: ``value`` as given. Backward: :func:`pact_surrogate`'s gradients in one pass."""

    @staticmethod
    def forward(ctx, x, clip, value, lower):
        ctx.save_for_backward(x, clip)
        ctx.lower = lower
        return value

    @staticmethod
    def backward(ctx, grad):
        x, clip = ctx.saved_tensors
        a = float(clip.detach().abs())
        symmetric = ctx.lower is None
        lower = -a if symmetric else float(ctx.lower)
        # grad where x > α (threshold_backward), and where lower < x < α (hardtanh_backward): fused
        # mask kernels, several times faster on CPU than bool compares + masked_fill.
        grad_clip = torch.ops.aten.threshold_backward(grad, x, a).sum()
        if symmetric:                   # y = −α below −α: dy/dα = −1 there
            grad_clip = grad_clip - torch.ops.aten.threshold_backward(grad, -x, a).sum()
        sign = torch.where(clip < 0, -1.0, 1.0).to(grad_clip.dtype)
        grad_x = torch.ops.aten.hardtanh_backward(grad, x, lower, a)
        return grad_x, (grad_clip.reshape(1) * sign).reshape(clip.shape).to(clip.dtype), None, None


def pact_ste(x: torch.Tensor, clip: torch.Tensor, value: torch.Tensor,
             lower: float | torch.Tensor | None) -> torch.Tensor:
    """Forward exactly ``value``; backward PACT's gradients (:func:`pact_surrogate`) in ``x`` and ``clip``.
    ``lower``: the lower clip (a float, or a [1] tensor without gradient), or None for −α on a
    symmetric grid, where the clip also gets dy/dα = −1 from values below −α."""
    if torch.is_tensor(lower):
        lower = float(lower.detach().reshape(-1)[0])
    return _PACT.apply(x, clip, value.detach(), lower)


def pact_surrogate(x: torch.Tensor, clip: torch.Tensor, lower: torch.Tensor | float | None) -> torch.Tensor:
    """PACT's clip(x, lower, α) with its straight-through gradient: dy/dx = 1 inside [lower, α],
    dy/dα = 1 where x > α (and −1 where x < −α when ``lower`` is None: the symmetric [−α, α]);
    quantization itself passes the gradient straight through."""
    a = clip.abs().reshape(1)
    y = torch.minimum(x, a.to(x.dtype))
    if lower is None:
        return torch.maximum(y, -a.to(x.dtype))
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


class _SignSTE(torch.autograd.Function):
    """Forward: ``value`` (the sign grid, times its scale). Backward: the method's sign gradient."""

    @staticmethod
    def forward(ctx, x, value, method: str):
        ctx.save_for_backward(x)
        ctx.method = method
        return value

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if ctx.method == "bireal":            # ApproxSign: d/dx (2x ∓ x²) = 2 − 2|x| on |x| < 1
            return grad * (2.0 - 2.0 * x.abs()).clamp_(min=0.0), None, None
        return torch.ops.aten.hardtanh_backward(grad, x, -1.0, 1.0), None, None


def sign_ste(x: torch.Tensor, value: torch.Tensor, method: str) -> torch.Tensor:
    """Forward exactly ``value`` (the 1-bit activation of ``x``); backward ``method``'s estimator of
    d sign(x)/dx: ``bireal`` ApproxSign (2 − 2|x| inside [−1, 1]), otherwise (``xnor``) the clipped
    straight-through 1{|x| < 1}."""
    return _SignSTE.apply(x, value.detach(), method)


class _BinaryWeightSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, value, alpha, method: str):
        ctx.save_for_backward(w, alpha)
        ctx.method = method
        return value

    @staticmethod
    def backward(ctx, grad):
        w, alpha = ctx.saved_tensors
        if ctx.method == "dorefa":             # DoReFa's k = 1: sign(W)·E|W| with the plain STE
            return grad, None, None, None
        inside = torch.ops.aten.hardtanh_backward(grad, w, -1.0, 1.0)
        if ctx.method == "bireal":
            return inside, None, None, None
        n = w[0].numel()
        shape = [-1] + [1] * (w.dim() - 1)
        a = alpha.to(grad.dtype).reshape(shape) if alpha.numel() > 1 else alpha.to(grad.dtype).reshape(1)
        return inside * a + grad / n, None, None, None


def binary_weight_ste(w: torch.Tensor, value: torch.Tensor, alpha: torch.Tensor, method: str) -> torch.Tensor:
    """Forward exactly ``value`` (α·sign(W), the exported weight); backward ``method``'s weight
    gradient: ``xnor`` dC/dW̃·(1/n + α·1{|W| < 1}) (n = weights per output channel, α [C_out] or
    [1]), ``bireal`` dC/dW̃·1{|W| < 1}, ``dorefa`` dC/dW̃ (straight through). ``lsq`` learns α
    instead: :func:`lsq_ste` with ``binary``."""
    return _BinaryWeightSTE.apply(w, value.detach(), alpha.detach(), method)
