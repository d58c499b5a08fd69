"""Running compiled integer programs: the VM runner and the CPU state some kernels need first.

AMX: Linux gives a process the (8 KiB) tile data state only on request. :func:`request_amx` asks
with ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`` through libc's ``syscall`` (TVM's C++
runtime has this in ``amx_config.cc``, which the PyPI build does not include); the permission holds
for the whole process, its TVM worker threads included. :class:`Runner` does it before building a VM
for a program whose kernels use AMX.
"""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import tvm
from tvm import relax

from hawq.errors import HawqError
from tvm_benchmark.isa import ISAS, require_runnable

__all__ = ["SYS_ARCH_PRCTL", "ARCH_REQ_XCOMP_PERM", "XFEATURE_XTILEDATA", "request_amx", "Runner"]

SYS_ARCH_PRCTL = 158            # x86_64
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
_AMX_GRANTED = False


def request_amx() -> None:
    """Ask Linux for the AMX tile state (once per process); one-line error when refused."""
    global _AMX_GRANTED
    if _AMX_GRANTED:
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0:
        err = ctypes.get_errno()
        raise HawqError(f"Linux refused the AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: errno {err}); "
                        "rebuild with --isa vnni")
    _AMX_GRANTED = True


class Runner:
    """A compiled integer module on a device, run on float batches of any size.

    The module has a static batch ``batch``; bigger inputs run in chunks and a short last chunk is
    zero-padded (padded rows are dropped). Returns NumPy int64 arrays. ``isa``: the family the
    program was built for: refused with one line when this CPU lacks it; ``amx`` requests the tile
    state first.
    """

    def __init__(self, executable, device, batch: int, isa: str | None = None):
        if isa in ISAS:
            require_runnable(ISAS[isa])   # a kernel this CPU lacks would die of SIGILL
        if isa == "amx":
            request_amx()
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
