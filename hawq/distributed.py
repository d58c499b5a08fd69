"""Distributed QAT on ``torch.distributed``: the process group, activation-range sync, synced BN.

``torchrun --nproc_per_node N quant_train.py ...`` starts N ranks; :func:`init` joins them (gloo on
CPU, nccl on CUDA). What keeps N ranks equal to one process with the same global batch:

* **Data**: each rank takes its share of every *global* batch (``-b`` is the global batch), see
  :meth:`hawq.data.ArrayLoader.shard`; the loss of a rank is scaled so that DDP's gradient average is
  the mean over the global batch even when its shares are unequal (:func:`loss_weight`).
* **Activation ranges**: every training-mode :class:`~hawq.quant.modules.QuantAct` takes the batch
  range over all ranks (min of mins, max of maxes, :func:`global_range`) *before* its EMA, so every
  rank holds bit-identical ranges, the ranges a single process would compute on the whole batch.
* **BatchNorm**: unfolded BN layers use batch statistics over all ranks (:class:`SyncBatchNorm2d`,
  works on gloo and nccl alike), or are frozen/folded with ``--fix-BN``.
* **Checkpoints** are written by rank 0 only (atomically, :func:`hawq.checkpoint.save_atomic`); they
  hold nothing per-rank, so ``--resume`` works with any world size.

In a single process (no process group) every function here is the identity.
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from hawq.errors import HawqError

__all__ = ["World", "SINGLE", "init", "shutdown", "active", "global_range", "all_sum", "loss_weight",
           "barrier", "SyncBatchNorm2d", "convert_batchnorm"]

#: Set by :func:`init` when world size > 1: QuantAct ranges are all-reduced in training mode.
_SYNC_RANGES = False


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` in ``[0, size)``; ``size`` 1 without torchrun."""
    rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the one that prints, logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def init(device: torch.device) -> World:
    """Join the process group torchrun describes (``WORLD_SIZE``/``RANK``/``MASTER_ADDR`` in the
    environment); without them, or with ``WORLD_SIZE=1``, the single-process :data:`SINGLE`.
    Backend: nccl for CUDA devices, gloo otherwise."""
    global _SYNC_RANGES
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=_dt.timedelta(minutes=30))
        except (RuntimeError, ValueError) as e:
            raise HawqError(f"cannot join the torchrun process group ({backend}): {e}") from None
    _SYNC_RANGES = True
    return World(dist.get_rank(), dist.get_world_size(), backend)


def shutdown() -> None:
    global _SYNC_RANGES
    _SYNC_RANGES = False
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return _SYNC_RANGES and dist.is_initialized()


def global_range(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min over ranks of ``lo``, max over ranks of ``hi``), float32 [1] each; identity in one process.
    min/max are exact, so every rank gets the same bits whatever the reduction order."""
    if not active():
        return lo, hi
    both = torch.cat([-lo.reshape(1).float(), hi.reshape(1).float()])
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    return (-both[0]).reshape(1).to(lo.dtype), both[1].reshape(1).to(hi.dtype)


def all_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks of a few float64 scalars (metrics, sample counts)."""
    if not active():
        return list(values)
    # nccl reduces CUDA tensors only; gloo CPU ones
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def loss_weight(n_local: int, n_global: int, world: int) -> float:
    """Factor for a rank's *mean* loss so that DDP's gradient average (sum over ranks / world)
    equals the gradient of the mean loss over the global batch: world · n_local / n_global."""
    return world * n_local / n_global


def barrier() -> None:
    if active():
        dist.barrier()


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode batch statistics are taken over all ranks (gloo or nccl).

    Same parameters and buffers as ``nn.BatchNorm2d`` (checkpoints are interchangeable); identical
    to it in one process and in eval mode. The all-reduce is differentiable
    (``torch.distributed.nn.functional.all_reduce``), so the backward pass is the full-batch one.
    ``nn.SyncBatchNorm`` is not used because it refuses CPU tensors.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        c = x.shape[1]
        n_local = x.numel() // c
        stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)),
                           x.new_full((1,), float(n_local))])
        stats = all_reduce(stats)
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.detach(), alpha=m)
                self.num_batches_tracked.add_(1)
        y = (x - mean.reshape(1, c, 1, 1)) * torch.rsqrt(var.reshape(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(1, c, 1, 1) + self.bias.reshape(1, c, 1, 1)
        return y


def convert_batchnorm(model: nn.Module) -> nn.Module:
    """Swap every ``nn.BatchNorm2d`` of ``model`` for a :class:`SyncBatchNorm2d` in place (same
    parameters and buffers, so state dicts are unchanged). Returns ``model``."""
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm2d
    return model
