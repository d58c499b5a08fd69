"""Recording the integer graph while a QAT model runs its eval (integer) path.

The exporter activates a :class:`GraphRecorder`; each quantized module, in eval mode, appends one
node describing exactly the integer operation it just performed and the integer parameters it used.
Values are identified by the tensor object that carries them, so the graph (including residual
fan-out) comes from the real execution order, not from a second hand-written description.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from hawq import ir


__all__ = ["Q", "GraphRecorder", "recording", "active"]

class Q(NamedTuple):
    """A quantized activation flowing between modules.

    In training mode ``value`` is the float dequantized tensor (fake-quantized) and ``scale`` its grid.
    In eval mode ``value`` is an int64 tensor of *centered* integers (q - zero_point) and ``scale``
    the float64 scale of one integer step (per-tensor [1] or per-channel [C]).
    ``scale`` may be None in training when no static grid exists (BN still unfolded).
    ``zero_point``: set (an int) when the value is an activation on an activation quantizer's storage
    grid (what profile ``ort`` keeps as a uint8 tensor), None for an accumulator (conv, linear, pool sum).
    ``count``: in eval mode, a global pool's sum over ``count`` values (``scale`` is then S_in/count);
    profile ``ort`` requantizes such a sum by QLinearGlobalAveragePool's rule.
    """
    value: torch.Tensor
    scale: torch.Tensor | None
    zero_point: int | None = None
    count: int = 1


class GraphRecorder:
    """Collects :mod:`hawq.ir` op objects in execution order."""

    def __init__(self):
        self.nodes: list[ir.Op] = []
        self._names: dict[int, str] = {}
        self._keep: list[torch.Tensor] = []   # keep tensors alive so id()s stay unique
        self._used: set[str] = set()

    def name_of(self, t: torch.Tensor) -> str:
        try:
            return self._names[id(t)]
        except KeyError:
            raise RuntimeError("graph recording saw a tensor produced outside the quantized modules") from None

    def bind(self, t: torch.Tensor, name: str) -> str:
        self._names[id(t)] = name
        self._keep.append(t)
        return name

    def add(self, op: type[ir.Op], name: str, inputs: list[torch.Tensor], output: torch.Tensor, **params) -> None:
        """Append ``op(name, inputs, output, **params)``; inputs/output are the tensors themselves."""
        out = f"{name}:out"
        n = 1
        while out in self._used:          # a module applied twice (a shared ReLU) gets out#2, ...
            n += 1
            out = f"{name}:out#{n}"
        self._used.add(out)
        self.nodes.append(op(name=name, inputs=[self.name_of(t) for t in inputs], output=self.bind(output, out),
                             **params))


_ACTIVE: list[GraphRecorder] = []


@contextlib.contextmanager
def recording():
    """Context in which eval-mode quant modules record their integer ops."""
    rec = GraphRecorder()
    _ACTIVE.append(rec)
    try:
        yield rec
    finally:
        _ACTIVE.pop()


def active() -> GraphRecorder | None:
    return _ACTIVE[-1] if _ACTIVE else None
