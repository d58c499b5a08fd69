"""Training engine: one epoch of (QAT or FP) training, evaluation, distillation loss, LR schedule."""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class Meter:
    """Running sample-weighted mean."""
    total: float = 0.0
    count: int = 0

    def update(self, value: float, n: int) -> None:
        self.total += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.total / max(self.count, 1)


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


def lr_at(epoch: int, base_lr: float, epochs: int, schedule: str) -> float:
    """'step': HAWQ's ×0.1 every 30 epochs; 'cosine': half-cosine from base_lr to 0 over ``epochs``;
    'constant'."""
    if schedule == "step":
        return base_lr * (0.1 ** (epoch // 30))
    if schedule == "cosine":
        return 0.5 * base_lr * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
    return base_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def freeze_bn_stats(model: nn.Module) -> None:
    """Floating-point --fix-BN: BatchNorm layers use (and keep) their running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def train_one_epoch(model, loader, optimizer, device, epoch: int, *, teacher=None, distill_alpha=0.95,
                    temperature=6.0, fix_bn_fp=False, step_hook=None, progress=True) -> dict:
    """One pass over ``loader``. Returns {'loss', 'top1', 'top5'} (percent)."""
    model.train()
    if fix_bn_fp:
        freeze_bn_stats(model)
    if teacher is not None:
        teacher.eval()
    loss_m, top1, top5 = Meter(), Meter(), Meter()
    bar = tqdm(loader, desc=f"train {epoch}", leave=False, disable=not progress, dynamic_ncols=True)
    for i, (images, target) in enumerate(bar):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = model(images)
        if teacher is not None:
            with torch.no_grad():
                t_out = teacher(images)
            loss = kd_loss(output, target, t_out, distill_alpha, temperature)
        else:
            loss = F.cross_entropy(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = images.shape[0]
        c1, c5 = correct_topk(output.detach(), target)
        loss_m.update(loss.item(), n)
        top1.update(100.0 * c1 / n, n)
        top5.update(100.0 * c5 / n, n)
        if step_hook is not None:
            step_hook(i, images)
        bar.set_postfix(loss=f"{loss_m.avg:.3f}", top1=f"{top1.avg:.2f}")
    return {"loss": loss_m.avg, "top1": top1.avg, "top5": top5.avg}


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
    """Eval-mode pass (for a QAT model: the exact integer path). Returns {'loss', 'top1', 'top5', 'n'}."""
    model.eval()
    loss_m, c1s, c5s, n = Meter(), 0, 0, 0
    for images, target in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        images, target = images.to(device), target.to(device)
        output = model(images)
        loss_m.update(F.cross_entropy(output, target).item(), images.shape[0])
        c1, c5 = correct_topk(output, target)
        c1s, c5s, n = c1s + c1, c5s + c5, n + images.shape[0]
    return {"loss": loss_m.avg, "top1": 100.0 * c1s / max(n, 1), "top5": 100.0 * c5s / max(n, 1), "n": n}


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
