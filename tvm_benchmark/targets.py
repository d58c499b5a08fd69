"""TVM targets: ``llvm`` (this host, or the machine an ``--isa`` names) and ``cuda``.

A target is named by a short key on the command line and turned into the dict form TVM 0.27
requires. ``llvm`` compiles for an ISA family (:mod:`tvm_benchmark.isa`): the detected one, or
``--isa``; its ``-mcpu``/``-mattr`` come from the family, so LLVM emits exactly the instructions the
kernels were chosen for. ``target_tag`` names per-host data (layer-latency tables) by LLVM CPU and
family: ``llvm-znver3-avx2``, ``llvm-sapphirerapids-amx``.
"""
from __future__ import annotations

import os

import tvm
import tvm_ffi

from hawq.errors import HawqError
from tvm_benchmark import isa as I

__all__ = ["TARGETS", "host_cpu", "cuda_available", "check_key", "make_target", "cuda_arch", "target_tag",
           "device_of"]

TARGETS = ("llvm", "cuda")


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. ``znver3``, ``icelake-server``)."""
    return str(tvm_ffi.get_global_func("target.llvm_get_system_cpu")())


def cuda_available() -> bool:
    return bool(tvm.cuda(0).exist)


def check_key(key: str) -> None:
    if key not in TARGETS:
        raise HawqError(f"unsupported target '{key}': choose one of {', '.join(TARGETS)}")


def make_target(key: str, threads: int | None = None, isa: I.Isa | None = None) -> tvm.target.Target:
    """``llvm`` for ``isa`` (None: this host as LLVM sees it) or ``cuda`` (with an llvm host)."""
    check_key(key)
    if key == "llvm":
        spec = {"kind": "llvm", "mcpu": host_cpu(), "num-cores": int(threads or os.cpu_count() or 1)}
        if isa is not None:
            spec["mcpu"], spec["mattr"] = I.llvm_attrs(isa, host_cpu())
        return tvm.target.Target(spec)
    arch = cuda_arch()
    return tvm.target.Target({"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
                              "max_shared_memory_per_block": 49152, "thread_warp_size": 32},
                             host={"kind": "llvm"})


def cuda_arch() -> str:
    dev = tvm.cuda(0)
    if dev.exist:
        return "sm_" + str(dev.compute_version).replace(".", "")
    return os.environ.get("HAWQ_CUDA_ARCH", "sm_90")   # cross-compile default: Hopper (the lent GPUs)


def target_tag(key: str, isa: I.Isa | None = None) -> str:
    """Directory name for per-target data: ``llvm-<LLVM cpu>-<family>`` (``isa`` None: this host's
    detected family), ``cuda-sm_90``."""
    check_key(key)
    if key == "cuda":
        return f"cuda-{cuda_arch()}"
    isa = isa or I.detect()
    return f"llvm-{host_cpu()}-{isa.name if isa else 'generic'}"


def device_of(key: str):
    return tvm.cpu(0) if key == "llvm" else tvm.cuda(0)
