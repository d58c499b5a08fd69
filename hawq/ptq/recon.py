"""Reconstruction of the weight rounding: AdaRound (layer by layer), BRECQ (a residual block at a
time), QDrop (block-wise, activations randomly left unquantized while reconstructing).

Each weighted layer keeps the grid its weight quantizer chose (``fixed_weight_scale``); what is
learned is, per weight, whether it rounds down or up: W̃ = S·clamp(floor(W/S) + h(V)), with
h(V) = clamp(σ(V)·(ζ-γ) + γ, 0, 1), ζ = 1.1, γ = -0.1 (Nagel et al. 2020). The loss is the squared
error of the unit's output against the float model's, summed over channels and averaged over
batch and positions, plus λ·Σ(1 - |2h-1|^β) with β annealed from 20 to 2 after a warm-up of 20 % of
the iterations without it. At the end h is hardened (V ≥ 0 rounds up) and the integers are written
into the layer (:meth:`~hawq.quant.modules._QuantWeightLayer.set_integer_weights`), so each weight
ends at floor or ceil of W/S.

Inputs of a unit come from the model quantized so far (previous units already hardened), targets
from a frozen copy of the float model taken before the first unit (every quantizer off). The copy
matters: a hardened unit's weights compensate for its quantized input, so the model's own float
path drifts further from the FP model with every unit, and targets taken from it compound that
drift (seen: resnet20 W4A4 fell from 92.3 to 34 % top-1 over 22 units); QDrop also mixes the float input in element-wise and
sets ``drop_prob`` on the unit's activation quantizers (Wei et al. 2022, p = 0.5). Activation
ranges stay as calibrated (BRECQ and QDrop also learn activation step sizes; not done here).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

from hawq import numerics as N
from hawq.capture import GraphUnit, QuantGraphModel
from hawq.quant.graph import Q
from hawq.quant.modules import QuantAct, QuantBnConv2d, QuantLinear

__all__ = ["RECON_METHODS", "WEIGHTED", "ReconSettings", "AdaRoundWeight", "quant_mode", "capture", "units",
           "reconstruct_unit", "reconstruct"]

RECON_METHODS = ("none", "adaround", "brecq", "qdrop")
ZETA, GAMMA = 1.1, -0.1
WEIGHTED = (QuantBnConv2d, QuantLinear)


@dataclass(frozen=True)
class ReconSettings:
    """method: one of :data:`RECON_METHODS`; iters per unit; batch (images per step); lr (Adam, on V);
    reg_weight λ; warmup (fraction of iters without the rounding term); drop_prob (QDrop);
    beta (start, end) of the annealed exponent."""
    method: str = "adaround"
    iters: int = 1000
    batch: int = 32
    lr: float = 1e-2
    reg_weight: float = 0.01
    warmup: float = 0.2
    drop_prob: float = 0.5
    beta: tuple[float, float] = (20.0, 2.0)


class AdaRoundWeight(nn.Module):
    """Learned rounding of one layer: ``V`` [weight shape], the floor of W/S, the scale S [C_out].
    Called as the layer's ``weight_rounding(w, s_w)`` (both ignored: the grid and W are fixed)."""

    def __init__(self, w: torch.Tensor, scale: torch.Tensor, bits: int):
        super().__init__()
        s = N.channel_view(scale.detach().float(), w.dim(), 0)
        x = w.detach().float() / s
        self.register_buffer("floor", torch.floor(x))
        self.register_buffer("scale", s)
        self.qmin, self.qmax = N.qrange(bits, signed=True)
        rest = (x - self.floor).clamp(1e-4, 1 - 1e-4)
        self.V = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.V) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def forward(self, w=None, s_w=None) -> torch.Tensor:
        return torch.clamp(self.floor + self.h(), self.qmin, self.qmax) * self.scale

    def reg(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def hard(self) -> torch.Tensor:
        """Integers floor(W/S) + [V >= 0], clamped to the layer's range (float, weight shape)."""
        return torch.clamp(self.floor + (self.V.detach() >= 0).float(), self.qmin, self.qmax)


# --------------------------------------------------------------------------- model modes
@contextlib.contextmanager
def quant_mode(model: nn.Module, weights: bool = True, acts: bool = True):
    """Within: the model's training path with weight and/or activation quantization switched off
    (both off = the float model with BN folded). Restored on exit."""
    saved = [(m, m.fake_quant) for m in model.modules() if isinstance(m, WEIGHTED + (QuantAct,))]
    for m, _ in saved:
        m.fake_quant = weights if isinstance(m, WEIGHTED) else acts
    try:
        yield model
    finally:
        for m, v in saved:
            m.fake_quant = v


class _Stop(Exception):
    pass


@torch.no_grad()
def capture(model: nn.Module, unit: nn.Module, images: torch.Tensor, batch: int, output: bool):
    """Inputs (or outputs) of ``unit`` for every image, running the model in batches and stopping
    each forward at the unit: (values float32 [N, ...], scale of the first batch or None)."""
    model.train()
    qs = [_value_at(model, unit, xb, output) for xb in images.split(batch)]
    return torch.cat([q.value.detach().float().cpu() for q in qs]), qs[0].scale


def _value_at(model: nn.Module, unit: nn.Module, x: torch.Tensor, output: bool) -> Q:
    """The :class:`Q` entering (or leaving) ``unit`` when ``model`` runs on ``x``, the forward stopped there."""
    if isinstance(unit, GraphUnit):       # a block of a captured program: not a module the program calls
        return unit.value_at(x, output)
    found = []

    def hook(mod, inp, out):
        found.append(out if output else inp[0])
        raise _Stop

    h = unit.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        h.remove()
    return found[0]


def units(model: nn.Module, blockwise: bool) -> list[tuple[str, nn.Module]]:
    """Reconstruction units in forward order: with ``blockwise`` each block of a quantized model
    (found in its graph or declared by its layout, :meth:`hawq.capture.QuantGraphModel.recon_units`)
    is one unit and weighted layers outside blocks are their own; else every weighted layer. Any
    other module: every weighted layer."""
    if isinstance(model, QuantGraphModel):
        return model.recon_units(blockwise)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, WEIGHTED)]


def _rec_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels (dim 1), mean over batch and positions (BRECQ's lp_loss)."""
    return (pred - target).pow(2).sum(1).mean()


def _beta(t: int, total: int, s: ReconSettings) -> float | None:
    start = s.warmup * total
    if t < start:
        return None
    rel = (t - start) / max(total - start, 1)
    return s.beta[1] + (s.beta[0] - s.beta[1]) * max(0.0, 1.0 - rel)


def reconstruct_unit(model: nn.Module, unit: nn.Module, images: torch.Tensor, s: ReconSettings,
                     generator: torch.Generator, reference: tuple[nn.Module, nn.Module] | None = None,
                     capture_batch: int = 64) -> float:
    """Learn the rounding of every weighted layer in ``unit``, harden it; returns the final loss.
    ``reference``: (float model, its module matching ``unit``) the targets come from; default
    ``(model, unit)``, right only while no unit of ``model`` has been hardened yet."""
    layers = [m for m in unit.modules() if isinstance(m, WEIGHTED)]
    x_q, scale = capture(model, unit, images, capture_batch, output=False)
    ref_model, ref_unit = reference or (model, unit)
    with quant_mode(ref_model, weights=False, acts=False):
        y_fp, _ = capture(ref_model, ref_unit, images, capture_batch, output=True)
        x_fp = capture(ref_model, ref_unit, images, capture_batch, output=False)[0] if s.method == "qdrop" else None
    rounders = []
    for m in layers:
        r = AdaRoundWeight(m.float_weight().detach(), m.fixed_weight_scale, m.weight_bit)
        m.weight_rounding = r
        rounders.append(r)
    acts = [m for m in unit.modules() if isinstance(m, QuantAct)] if s.method == "qdrop" else []
    for a in acts:
        a.drop_prob = s.drop_prob
    opt = torch.optim.Adam([r.V for r in rounders], lr=s.lr)
    frozen = [p for p in unit.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    for r in rounders:
        r.V.requires_grad_(True)
    loss = torch.zeros(())
    try:
        unit.train()
        n = x_q.shape[0]
        for t in range(s.iters):
            idx = torch.randint(0, n, (min(s.batch, n),), generator=generator)
            x = x_q[idx]
            if x_fp is not None:
                x = torch.where(torch.rand(x.shape, generator=generator) < s.drop_prob, x_fp[idx], x)
            out = unit(Q(x, scale)).value
            loss = _rec_loss(out, y_fp[idx])
            beta = _beta(t, s.iters, s)
            total = loss if beta is None else loss + s.reg_weight * sum(r.reg(beta) for r in rounders)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for a in acts:
            a.drop_prob = 0.0
        for m, r in zip(layers, rounders):
            m.weight_rounding = None
            m.set_integer_weights(r.hard(), m.fixed_weight_scale)
    return float(loss.detach())


def reconstruct(model: nn.Module, images: torch.Tensor, s: ReconSettings, seed: int = 0,
                progress: bool = True) -> list[tuple[str, float]]:
    """Reconstruct every unit in forward order (:func:`units`); returns (unit name, final loss)."""
    g = torch.Generator().manual_seed(seed)
    blockwise = s.method in ("brecq", "qdrop")
    todo = units(model, blockwise=blockwise)
    ref = copy.deepcopy(model)           # the float model, before any unit is hardened
    ref_units = dict(units(ref, blockwise=blockwise))
    report = []
    bar = tqdm(todo, desc=s.method, disable=not progress, dynamic_ncols=True, leave=False)
    for name, unit in bar:
        bar.set_postfix(unit=name)
        report.append((name, reconstruct_unit(model, unit, images, s, g, reference=(ref, ref_units[name]))))
    model.eval()
    return report

