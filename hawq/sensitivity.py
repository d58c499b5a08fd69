"""Per-layer Hessian sensitivity for mixed-precision search (HAWQ-V3, section 3.3).

    python -m hawq.sensitivity -a resnet20_cifar10 --pretrained checkpoints/resnet20_cifar10_fp32.pth.tar \
        --out sens.csv [--data DIR] [-b 64] [--batches 1] [--tol 0.1] [--max-iter 100] [--seed 0]

For every conv/linear layer ``i`` of the floating-point model (eval mode: BN uses its running
statistics) and the cross-entropy loss ``L`` on ``--batches`` training batches:

* ``Tr(H_i)``, the trace of the Hessian block of ``L`` w.r.t. the layer's weight ``W_i``, by
  Hutchinson's estimator: ``E[v^T H v] = Tr(H)`` for Rademacher ``v`` (entries ±1). One probe
  over all layers at once gives ``H v`` by double backprop, and ``v_i^T (H v)_i`` is an unbiased
  sample of every block trace. Probes are drawn until the relative standard error of the running
  mean (``rel_err`` = std/sqrt(k)/|mean|) is at most ``--tol`` for every layer, or ``--max-iter``
  probes (at least :data:`MIN_ITER`).
* ``||Q_b(W_i) - W_i||^2`` for b in (4, 8): the squared error of the weight the integer model
  actually uses. Convolutions are quantized after BN folding (``W' = W·k``, k = γ/σ per output
  channel, ``hawq.numerics.fold_bn``), so in the coordinates of ``W`` the quantized weight is
  ``Q_b(W')/k``; the linear head is quantized as is. Scales follow ``--channel-wise`` and
  ``--weight-percentile`` as in ``quant_train.py``.
* ``Ω_i(b) = max(Tr(H_i), 0) / n_i · ||Q_b(W_i) - W_i||^2`` (n_i = weight elements). A negative
  trace estimate (a locally concave direction) counts as zero sensitivity.

Output CSV columns: :data:`CSV_FIELDS`, one row per conv/linear layer in graph order. ``hawq.mpq``
reads it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from hawq import capture
from hawq import numerics as N
from hawq.errors import HawqError
from hawq.models.archs import arch_info
from hawq.models.layers import WEIGHT_KINDS, resnet_layer_plan

__all__ = ["BITS", "CSV_FIELDS", "MIN_ITER", "HVP", "TraceEstimate", "rademacher", "make_hvp", "hutchinson",
           "WeightLayer", "weight_layers", "quant_error", "sensitivity_rows", "batches_of",
           "layer_sensitivity"]

#: Bit widths a weight layer can take in a mixed 4/8-bit scheme.
BITS = (4, 8)
#: Columns of the sensitivity CSV.
CSV_FIELDS = ("layer", "params", "trace", "trace_per_param", "iters", "rel_err",
              "pert_4", "pert_8", "omega_4", "omega_8")
#: Fewest Hutchinson probes before the standard-error stopping rule is consulted.
MIN_ITER = 10

HVP = Callable[[list[torch.Tensor]], list[torch.Tensor]]


# --------------------------------------------------------------------------- Hutchinson
@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson estimate of per-block Hessian traces.

    ``traces[i]``: mean of ``v_i^T (H v)_i`` over the probes; ``rel_err[i]``: its standard error
    over |mean| (inf if the mean is 0 or fewer than 2 probes); ``iters``: probes drawn.
    """

    traces: tuple[float, ...]
    rel_err: tuple[float, ...]
    iters: int


def rademacher(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A tensor of ±1 (equal odds) with ``like``'s shape, dtype and device, drawn on the CPU."""
    bits = torch.randint(0, 2, like.shape, generator=generator, dtype=torch.int8)
    return (bits * 2 - 1).to(dtype=like.dtype, device=like.device)


def make_hvp(losses: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> HVP:
    """``v -> H v`` for the Hessian of ``mean(losses)`` w.r.t. ``params`` (double backprop).

    ``losses``: scalar losses with their autograd graphs (one per batch); the gradients are taken
    once with ``create_graph=True`` and every call reuses them. ``v`` and the result are lists of
    tensors shaped like ``params``.
    """
    params = list(params)
    grads = [torch.autograd.grad(loss, params, create_graph=True) for loss in losses]

    def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
        total = [torch.zeros_like(p) for p in params]
        for g in grads:
            for acc, hv in zip(total, torch.autograd.grad(g, params, grad_outputs=v, retain_graph=True)):
                acc += hv
        return [acc / len(grads) for acc in total]

    return hvp


class _RunningMean:
    """Per-column running mean and standard error (Welford), float64 [L]."""

    def __init__(self, columns: int):
        self.k = 0
        self.mean = torch.zeros(columns, dtype=torch.float64)
        self.m2 = torch.zeros(columns, dtype=torch.float64)

    def add(self, row: torch.Tensor) -> None:
        self.k += 1
        delta = row - self.mean
        self.mean += delta / self.k
        self.m2 += delta * (row - self.mean)

    def rel_stderr(self) -> torch.Tensor:
        """Standard error of the mean over |mean| (inf with < 2 samples or a zero mean)."""
        if self.k < 2:
            return torch.full_like(self.mean, math.inf)
        stderr = (self.m2 / (self.k - 1)).sqrt() / math.sqrt(self.k)
        mean = self.mean.abs()
        return torch.where(mean > 0, stderr / mean, torch.full_like(mean, math.inf))


def hutchinson(hvp: HVP, params: Sequence[torch.Tensor], tol: float = 0.1, max_iter: int = 100,
               seed: int = 0, min_iter: int = MIN_ITER, progress: bool = False) -> TraceEstimate:
    """Estimate ``Tr(H_ii)`` of every diagonal block (one per tensor of ``params``).

    Draws Rademacher probes from a CPU generator seeded with ``seed`` (deterministic) until every
    block's relative standard error is <= ``tol`` (checked from ``min_iter`` probes on) or
    ``max_iter`` probes were drawn.
    """
    if not 0 < tol or max_iter < 1 or min_iter < 1:
        raise HawqError(f"need tol > 0, max_iter >= 1, min_iter >= 1 (got {tol}, {max_iter}, {min_iter})")
    gen = torch.Generator().manual_seed(seed)
    stats = _RunningMean(len(params))
    bar = tqdm(range(max_iter), desc="hutchinson", leave=False, disable=not progress, dynamic_ncols=True)
    for _ in bar:
        v = [rademacher(p, gen) for p in params]
        hv = hvp(v)
        stats.add(torch.stack([(vi.double() * hvi.double()).sum() for vi, hvi in zip(v, hv)]))
        rel = stats.rel_stderr()
        bar.set_postfix(max_rel_err=f"{float(rel.max()):.3g}")
        if stats.k >= min_iter and bool((rel <= tol).all()):
            break
    return TraceEstimate(tuple(stats.mean.tolist()), tuple(stats.rel_stderr().tolist()), stats.k)


# --------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class WeightLayer:
    """A conv/linear layer of the FP model: HAWQ name, its weight parameter and the per-element
    BN fold factor ``k`` (``W' = W·k``; shape of the weight; ``None`` for the unfolded head)."""

    name: str
    weight: nn.Parameter
    fold: torch.Tensor | None


def _bn_of_conv(model: nn.Module) -> dict[int, nn.BatchNorm2d]:
    """{id(conv): bn} for every pytorchcv ConvBlock (a ``conv`` followed by its ``bn``)."""
    return {id(m.conv): m.bn for m in model.modules()
            if isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d)}


def weight_layers(model: nn.Module, arch: str) -> list[WeightLayer]:
    """The conv/linear layers of the pytorchcv FP ``model`` of ``arch``, in ``quant_layers`` order."""
    info = arch_info(arch)
    if info.family == "captured":      # any CNN: the layers capture quantizes, under its layer names
        plan = capture.weighted_layers(model, arch)
    elif info.family == "resnet":
        bns = _bn_of_conv(model)
        plan = [(name, module, bns.get(id(module))) for name, kind, module, _feeding in resnet_layer_plan(model, info)
                if kind in WEIGHT_KINDS]
    else:
        raise HawqError(f"Hessian sensitivities are implemented for the ResNet-family archs and captured models "
                        f"(torchvision:, timm:, file.py:), not {arch} ({info.family}): pass a bit_config JSON "
                        "to quant_train.py instead")
    out = []
    for name, module, bn in plan:
        fold = None
        if bn is not None:
            ones = torch.ones_like(module.weight.detach())
            fold = N.fold_bn(ones, None, bn.running_mean, bn.running_var, bn.weight.detach(), bn.bias.detach(),
                             bn.eps)[0]
        out.append(WeightLayer(name, module.weight, fold))
    return out


def quant_error(layer: WeightLayer, bits: int, per_channel: bool = True, percentile: float = 0.0) -> float:
    """||Q_b(W) - W||^2 (float, summed over elements) in ``W``'s coordinates, quantizing the
    BN-folded weight ``W·k`` as the integer model does (``hawq.numerics`` scales and rounding)."""
    w = layer.weight.detach().double()
    k = torch.ones_like(w) if layer.fold is None else layer.fold.double()
    folded = w * k
    scale = N.weight_scale(folded, bits, per_channel, percentile)
    deq = N.quantize_weight(folded, scale, bits) * N.channel_view(scale.double(), folded.dim(), 0)
    err = torch.where(k != 0, (deq - folded) / k, torch.zeros_like(w))
    return float(err.square().sum())


# --------------------------------------------------------------------------- rows / CSV
def sensitivity_rows(layers: Sequence[WeightLayer], est: TraceEstimate, per_channel: bool = True,
                     percentile: float = 0.0) -> list[dict[str, object]]:
    """One CSV row per layer (keys :data:`CSV_FIELDS`): trace, perturbations and Ω per bit width."""
    rows = []
    for layer, trace, rel in zip(layers, est.traces, est.rel_err):
        n = layer.weight.numel()
        row: dict[str, object] = {"layer": layer.name, "params": n, "trace": trace, "trace_per_param": trace / n,
                                  "iters": est.iters, "rel_err": rel}
        for b in BITS:
            pert = quant_error(layer, b, per_channel, percentile)
            row[f"pert_{b}"] = pert
            row[f"omega_{b}"] = max(trace, 0.0) / n * pert
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- model + data
def batches_of(loader, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` batches of epoch 0 of ``loader`` (fewer if it is shorter)."""
    loader.set_epoch(0)
    out = []
    for batch in loader:
        if len(out) == count:
            break
        out.append(batch)
    return out


def layer_sensitivity(model: nn.Module, arch: str, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                      tol: float = 0.1, max_iter: int = 100, seed: int = 0, per_channel: bool = True,
                      percentile: float = 0.0, progress: bool = False) -> list[dict[str, object]]:
    """Sensitivity rows of the FP ``model`` (put in eval mode) on ``batches`` of (x, y)."""
    model.eval()
    layers = weight_layers(model, arch)
    device = next(model.parameters()).device
    losses = [F.cross_entropy(model(x.to(device)), y.to(device)) for x, y in batches]
    est = hutchinson(make_hvp(losses, [layer.weight for layer in layers]), [layer.weight for layer in layers],
                     tol=tol, max_iter=max_iter, seed=seed, progress=progress)
    return sensitivity_rows(layers, est, per_channel, percentile)


# --------------------------------------------------------------------------- CLI


if __name__ == "__main__":          # python -m hawq.sensitivity: the program is hawq.apps.sensitivity
    from hawq.apps.cli import run_main
    from hawq.apps.sensitivity import main
    run_main(main)
