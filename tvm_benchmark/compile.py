"""Targets, lowering and building of the integer Relax modules.

A target is named by a short key (``llvm``, ``cuda``) on the command line and turned into the dict
form TVM 0.27 requires. ``llvm`` means *this* host: the CPU LLVM reports (``znver3``,
``icelake-server``, …), so LLVM uses every vector extension the host has (AVX2, AVX-512, VNNI).

CPU kernels are hand-scheduled (:mod:`tvm_benchmark.schedules`), so nothing is tuned at build or
benchmark time and no tuning records are needed.
"""
from __future__ import annotations

import os

import tvm
import tvm_ffi
from tvm import relax

from hawq.errors import HawqError
from hawq.tables import cpuinfo_field
from tvm_benchmark.schedules import schedule_generic

TARGETS = ("llvm", "cuda")


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. ``znver3``, ``icelake-server``)."""
    return str(tvm_ffi.get_global_func("target.llvm_get_system_cpu")())


def _cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags") or "").split())


def host_has_avx2() -> bool:
    return "avx2" in _cpu_flags()


def host_has_vnni() -> bool:
    """True when this CPU has AVX-512 VNNI (vpdpbusd)."""
    return "avx512_vnni" in _cpu_flags()


def cuda_available() -> bool:
    return bool(tvm.cuda(0).exist)


def make_target(key: str, threads: int | None = None) -> tvm.target.Target:
    """``llvm`` (this host) or ``cuda`` (with an llvm host) as a TVM Target."""
    if key == "llvm":
        spec = {"kind": "llvm", "mcpu": host_cpu(), "num-cores": int(threads or os.cpu_count() or 1)}
        return tvm.target.Target(spec)
    if key == "cuda":
        arch = _cuda_arch()
        return tvm.target.Target({"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
                                  "max_shared_memory_per_block": 49152, "thread_warp_size": 32},
                                 host={"kind": "llvm"})
    raise HawqError(f"unsupported target '{key}': choose one of {', '.join(TARGETS)}")


def _cuda_arch() -> str:
    dev = tvm.cuda(0)
    if dev.exist:
        return "sm_" + str(dev.compute_version).replace(".", "")
    return os.environ.get("HAWQ_CUDA_ARCH", "sm_90")   # cross-compile default: Hopper (the lent GPUs)


def target_tag(key: str) -> str:
    """Directory name for per-target data: ``llvm-znver3``, ``cuda-sm_90``."""
    return f"llvm-{host_cpu()}" if key == "llvm" else f"cuda-{_cuda_arch()}"


def lower(mod: tvm.IRModule) -> tvm.IRModule:
    """High-level Relax ops -> fused TIR kernels (conv + bias + requant + clip + cast in one)."""
    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])
    return seq(mod)


def build(mod: tvm.IRModule, target: tvm.target.Target, schedule: bool) -> relax.VMExecutable:
    """Lower and compile; with ``schedule`` every kernel not hand-scheduled gets the generic CPU
    schedule (:func:`tvm_benchmark.schedules.schedule_generic`)."""
    lowered = lower(mod)
    if schedule:
        lowered = schedule_generic(lowered)
    return tvm.compile(lowered, target)


def device_of(key: str):
    return tvm.cpu(0) if key == "llvm" else tvm.cuda(0)


def compile_program(graph: dict, input_shape: tuple[int, int, int, int], key: str,
                    threads: int | None = None, all_outputs: bool = False, fast: bool | None = None):
    """Build an artifact graph for target ``key``; returns (executable, target).

    ``fast`` (default: on for ``llvm`` hosts with AVX2) uses the hand-scheduled NHWC program
    (tensorized convolutions, parallel/vectorized epilogues); off compiles TVM's unscheduled default.
    """
    from tvm_benchmark.relax_graph import build_module
    target = make_target(key, threads)
    if key == "cuda" and not cuda_available() and os.environ.get("HAWQ_CUDA_ARCH") is None:
        raise HawqError("target cuda: no CUDA GPU visible to TVM (set HAWQ_CUDA_ARCH=sm_XX to cross-compile)")
    if fast is None:
        fast = key == "llvm" and host_has_avx2()
    mod = build_module(graph, input_shape, all_outputs=all_outputs, fast_conv=fast)
    return build(mod, target, schedule=fast), target
