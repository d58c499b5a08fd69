"""The integer program to compile: from a QAT checkpoint or an integer artifact, plus its runner.

``load_program(path)`` accepts what users have on disk:

- a QAT checkpoint written by ``quant_train.py`` (``checkpoint.pth.tar`` / ``model_best.pth.tar``):
  the integer graph is exported in memory from the model's eval path;
- an integer artifact (``quantized_checkpoint.pth.tar``, format ``hawq-integer-graph/1``).

Anything else (an FP checkpoint, HAWQ-V3's graph-less quantized_checkpoint, a foreign file) is a
:class:`HawqError` naming what the file is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from hawq import checkpoint as C
from hawq.data import input_size_of
from hawq.errors import HawqError
from hawq.export import FORMAT, check_artifact, export_integer
from hawq.models.factory import quant_model_of


@dataclass
class Program:
    """An integer graph and what it was trained as."""
    graph: dict
    input_chw: tuple[int, int, int]
    arch: str
    scheme: str
    dataset: str
    bit_config: dict
    source: str

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, *self.input_chw)


def load_program(path: str) -> Program:
    ckpt = C.load_file(path)
    if ckpt.get("format") == FORMAT or "weight_integer" in ckpt:
        art = check_artifact(ckpt, path)
        dataset = art.get("dataset") or "fashion-mnist"
        return Program(art["graph"], tuple(int(d) for d in art["input_shape"]), str(art.get("arch")),
                       str(art.get("quant_scheme")), dataset, dict(art.get("bit_config") or {}), path)
    sd = C.state_dict_of(ckpt, path)
    if not C.is_quantized_state(sd):
        raise HawqError(f"'{path}' holds no integer data (a floating-point checkpoint?); "
                        "give a QAT checkpoint from quant_train.py or its quantized_checkpoint.pth.tar")
    model, ckpt = quant_model_of(ckpt, path)
    dataset = ckpt.get("dataset") or "fashion-mnist"
    s = input_size_of(dataset)
    art = export_integer(model, (3, s, s))
    return Program(art["graph"], (3, s, s), ckpt["arch"], str(ckpt.get("quant_scheme")), dataset,
                   dict(ckpt["bit_config"]), path)


class Runner:
    """A compiled integer module on a device, run on float batches of any size.

    The module has a static batch ``batch``; bigger inputs run in chunks and a short last chunk is
    zero-padded (padded rows are dropped). Returns NumPy int64 arrays.
    """

    def __init__(self, executable, device, batch: int):
        self.vm = relax.VirtualMachine(executable, device)
        self.device, self.batch = device, batch

    def _one(self, x: np.ndarray):
        out = self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.device))
        if isinstance(out, tvm.runtime.Tensor):
            return out.numpy().astype(np.int64)
        return [o.numpy().astype(np.int64) for o in out]

    def __call__(self, x: np.ndarray):
        n = len(x)
        outs = []
        for i in range(0, n, self.batch):
            chunk = x[i:i + self.batch]
            k = len(chunk)
            if k < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - k, *chunk.shape[1:]), chunk.dtype)])
            r = self._one(chunk)
            outs.append([v[:k] for v in r] if isinstance(r, list) else r[:k])
        if isinstance(outs[0], list):
            return [np.concatenate(vs) for vs in zip(*outs)]
        return np.concatenate(outs)

    def time(self, x: np.ndarray, number: int = 10, repeat: int = 10) -> np.ndarray:
        """Per-call latencies in ms of ``main`` on one batch ``x`` ([batch, C, H, W])."""
        f = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        res = f(tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.device))
        return np.asarray(res.results) * 1e3
