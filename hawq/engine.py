"""Training engine: one epoch of (QAT or FP) training, evaluation, distillation loss, LR schedule."""
from __future__ import annotations

import csv
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from hawq import distributed
from hawq.distributed import SINGLE, World
from hawq.errors import HawqError


__all__ = ["OPTIMIZERS", "make_optimizer", "correct_topk", "kd_loss", "lr_at", "set_lr", "freeze_bn_stats", "reestimate_bn",
           "train_one_epoch", "calibrate", "calibrate_random", "evaluate", "CsvLog"]

#: ``--optimizer`` choices.
OPTIMIZERS = ("sgd", "adam")


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    """``sgd`` (with ``momentum``) or ``adam`` over the model's parameters. The raw weights of 1-bit
    layers (``weight_bit == 1``) get no weight decay: it pulls them toward 0, where their sign flips
    on noise (Bi-Real's and ReActNet's recipes exempt them too); every other parameter gets ``weight_decay``."""
    binary = {id(m.raw_weight()) for m in model.modules() if getattr(m, "weight_bit", None) == 1}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if id(p) not in binary]},
              {"params": [p for p in params if id(p) in binary], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise HawqError(f"unknown --optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")


def correct_topk(output: torch.Tensor, target: torch.Tensor, topk=(1, 5)) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at #classes)."""
    maxk = min(max(topk), output.shape[1])
    pred = output.topk(maxk, dim=1).indices
    hit = pred.eq(target.reshape(-1, 1))
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in topk]


def kd_loss(output, target, teacher_output, alpha: float, temperature: float) -> torch.Tensor:
    """HAWQ's KD_naive: α·T²·KL(softmax(t/T) || softmax(s/T)) + (1-α)·CE(s, y).

    KL is averaged per sample ('batchmean', the mathematically correct reduction); HAWQ's default
    'mean' also divides by the number of classes, silently shrinking the distillation term.
    """
    t = temperature
    kl = F.kl_div(F.log_softmax(output / t, dim=1), F.softmax(teacher_output / t, dim=1), reduction="batchmean")
    return kl * (alpha * t * t) + F.cross_entropy(output, target) * (1.0 - alpha)


def lr_at(epoch: float, base_lr: float, epochs: int, schedule: str, warmup_epochs: float = 0.0) -> float:
    """Learning rate at ``epoch`` (fractional: epoch + i/len(loader), so it changes every step).

    ``warmup_epochs`` > 0: linear ramp from base_lr/(warm-up steps) to base_lr over the first
    ``warmup_epochs`` (``--warmup-epochs``); the schedule then runs over the remaining epochs.
    'step': HAWQ's ×0.1 every 30 epochs (at whole epochs); 'cosine': half-cosine from base_lr to 0
    over ``epochs``; 'constant'.
    """
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    if schedule == "step":
        return base_lr * (0.1 ** (int(epoch) // 30))
    if schedule == "cosine":
        span = max(epochs - warmup_epochs, 1e-9)
        return 0.5 * base_lr * (1 + math.cos(math.pi * min((epoch - warmup_epochs) / span, 1.0)))
    return base_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def freeze_bn_stats(model: nn.Module) -> None:
    """Floating-point --fix-BN: BatchNorm layers use (and keep) their running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def reestimate_bn(model: nn.Module, loader, batches: int, device, progress: bool = True) -> int:
    """Recompute every BatchNorm's running mean and variance for the model's current weights: the
    equal-weight average of the batch statistics of the first ``batches`` batches of ``loader`` (or
    all of it), no gradient, no weight update. Under torchrun the model's BatchNorms should be
    :class:`hawq.distributed.SyncBatchNorm2d` (global batch statistics, the same on every rank);
    every rank must pass the same ``batches``. Returns the images used (all ranks).

    Why: ``--fix-BN`` folds BN with its running statistics from the first QAT step. A floating-point
    model's running statistics lag its batch statistics (an exponential average over weights that
    kept moving), so the folded model starts below the model it was trained as (issue 33)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or batches <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None              # cumulative average: every batch counts the same
    model.train()
    seen = 0
    total = min(batches, len(loader))
    bar = tqdm(total=total, desc="BN statistics", leave=False, disable=not progress, dynamic_ncols=True)
    for i, (x, _) in enumerate(loader):
        if i >= total:
            break
        model(x.to(device, non_blocking=True))
        seen += x.shape[0]
        bar.update(1)
    bar.close()
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
        m.num_batches_tracked.zero_()
    model.train(was_training)
    return int(distributed.all_sum([float(seen)])[0])


def train_one_epoch(model, loader, optimizer, device, epoch: int, *, teacher=None, distill_alpha=0.95,
                    temperature=6.0, fix_bn_fp=False, step_hook=None, progress=True, lr_fn=None,
                    world: World = SINGLE) -> dict:
    """One pass over ``loader``. Returns {'loss', 'top1', 'top5'} (percent, over all ranks).

    ``lr_fn(t)``: the learning rate at fractional epoch ``t = epoch + (i+½)/len(loader)`` (the
    middle of step ``i``), set before step ``i``: per-step warm-up and schedules. The result also
    holds 'lr_first' and 'lr_last', the rates of the first and last steps. ``world``: under torchrun ``model`` is the
    DDP-wrapped model and ``loader`` yields this rank's share of each global batch; each rank's
    loss is weighted by :func:`hawq.distributed.loss_weight`, so the averaged gradient is the
    global batch's.
    """
    model.train()
    if fix_bn_fp:
        freeze_bn_stats(model)
    if teacher is not None:
        teacher.eval()
    sums = [0.0, 0.0, 0.0, 0.0]        # loss·n, top-1 hits, top-5 hits, n  (this rank)
    steps = len(loader)
    lrs = []
    bar = tqdm(loader, desc=f"train {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for i, (images, target) in enumerate(bar):
        if lr_fn is not None:
            set_lr(optimizer, lr_fn(epoch + (i + 0.5) / steps))
        lrs.append(optimizer.param_groups[0]["lr"])
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        n = images.shape[0]
        output = model(images)
        if teacher is not None:
            with torch.no_grad():
                t_out = teacher(images)
            loss = kd_loss(output, target, t_out, distill_alpha, temperature)
        else:
            loss = F.cross_entropy(output, target)
        step_loss = loss
        bad = 0.0 if bool(torch.isfinite(loss.detach())) else 1.0
        if world.distributed:
            # one collective carries the global batch size and whether any rank diverged, so every
            # rank stops at the same step instead of waiting for a peer that raised
            n_global, bad = distributed.all_sum([float(n), bad])
            step_loss = loss * distributed.loss_weight(n, int(n_global), world.size)
        if bad:
            raise HawqError(f"training diverged: the loss is {loss.item():g} at epoch {epoch} step {i + 1}/{steps} "
                            f"(lr {optimizer.param_groups[0]['lr']:g}); nothing of this epoch was saved: "
                            "lower --lr or raise --warmup-epochs")
        optimizer.zero_grad(set_to_none=True)
        step_loss.backward()
        optimizer.step()
        c1, c5 = correct_topk(output.detach(), target)
        for k, v in enumerate((loss.item() * n, c1, c5, n)):
            sums[k] += v
        if step_hook is not None:
            step_hook(i, images)
        bar.set_postfix(loss=f"{sums[0] / sums[3]:.3f}", top1=f"{100.0 * sums[1] / sums[3]:.2f}")
    loss_sum, c1s, c5s, count = distributed.all_sum(sums)
    count = max(count, 1)
    return {"loss": loss_sum / count, "top1": 100.0 * c1s / count, "top5": 100.0 * c5s / count,
            "lr_first": lrs[0] if lrs else None, "lr_last": lrs[-1] if lrs else None}


@torch.no_grad()
def calibrate(model: nn.Module, inputs) -> nn.Module:
    """Activation ranges from training-mode forwards of ``inputs`` (an iterable of image batches;
    no gradient, no weight update; with ``fix_BN`` the BN running statistics are not touched).
    Returns the model in eval mode."""
    model.train()
    for x in inputs:
        model(x)
    return model.eval()


def calibrate_random(model: nn.Module, shape, batches: int = 2, seed: int = 0) -> nn.Module:
    """:func:`calibrate` on ``batches`` standard-normal batches of ``shape`` (seeded): for latency
    work and tests, where only the integer program's structure matters, not its accuracy."""
    g = torch.Generator().manual_seed(seed)
    return calibrate(model, (torch.randn(*shape, generator=g) for _ in range(batches)))


@torch.no_grad()
def evaluate(model, loader, device, progress=True, desc="eval") -> dict:
    """Eval-mode pass (for a QAT model: the exact integer path). Returns {'loss', 'top1', 'top5', 'n'}.
    Under torchrun each rank evaluates its share of the loader and the counts are summed."""
    model.eval()
    sums = [0.0, 0.0, 0.0, 0.0]        # loss·n, top-1 hits, top-5 hits, n
    for images, target in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        images, target = images.to(device), target.to(device)
        output = model(images)
        c1, c5 = correct_topk(output, target)
        n = images.shape[0]
        for k, v in enumerate((F.cross_entropy(output, target).item() * n, c1, c5, n)):
            sums[k] += v
    loss_sum, c1s, c5s, n = distributed.all_sum(sums)
    n = int(n)
    return {"loss": loss_sum / max(n, 1), "top1": 100.0 * c1s / max(n, 1), "top5": 100.0 * c5s / max(n, 1), "n": n}


class CsvLog:
    """Appends one row per epoch to ``path`` (header written once)."""

    FIELDS = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "best_top1", "seconds")

    def __init__(self, path: str):
        self.path = path

    def write(self, row: dict) -> None:
        new = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
