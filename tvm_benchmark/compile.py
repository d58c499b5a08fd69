"""Lowering and building of the integer Relax modules (targets: :mod:`tvm_benchmark.targets`).

CPU kernels are hand-scheduled (:mod:`tvm_benchmark.schedules`) for the ISA family the program is
built for, so nothing is tuned at build or benchmark time and no tuning records are needed.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import tvm
from tvm import relax

from hawq.errors import HawqError
from tvm_benchmark import isa as I
from tvm_benchmark.depthwise import plan_depthwise
from tvm_benchmark.schedules import plan_conv, schedule_generic
from tvm_benchmark.targets import cuda_available, make_target


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


@dataclass(frozen=True)
class Built:
    """A compiled integer program: the executable, its TVM target and the ISA family its kernels
    use (None: TVM's unscheduled default program, or a CUDA target)."""
    executable: relax.VMExecutable
    target: tvm.target.Target
    isa: I.Isa | None

    @property
    def isa_name(self) -> str:
        return self.isa.name if self.isa else "generic"


def plan_kernel(isa, act_dtype: str, act_lo: int, act_hi: int, w, groups: int, out_w: int | None = None,
                emulate: bool = False):
    """The hand-scheduled kernel for one convolution: the depthwise kernel where it applies, else
    :func:`tvm_benchmark.schedules.plan_conv`'s choice (None: TVM's generic convolution)."""
    return (plan_depthwise(isa, act_dtype, act_lo, act_hi, w, groups, emulate=emulate)
            or plan_conv(isa, act_dtype, act_lo, act_hi, w, groups, out_w, emulate=emulate))


def compile_program(graph: dict, input_shape: tuple[int, int, int, int], key: str,
                    threads: int | None = None, all_outputs: bool = False, fast: bool | None = None,
                    isa: str | None = None, emulate: bool = False) -> Built:
    """Build an artifact graph for target ``key``.

    ``isa`` (``--isa``; None: detected from /proc/cpuinfo) picks the CPU kernel family. ``fast``
    (default: on for ``llvm`` when the family is at least AVX2) builds the hand-scheduled NHWC
    program; off compiles TVM's unscheduled default. ``emulate`` keeps ``isa``'s kernel choice and
    schedules but swaps every instruction for its scalar description and compiles for this CPU
    (tests: runs another family's schedules here).
    """
    from tvm_benchmark.frontend import build_module
    family = I.resolve(isa) if key == "llvm" else None
    if isa is not None and key != "llvm":
        raise HawqError("--isa applies to --target llvm only")
    if emulate:
        planned, family = family, I.detect()
    else:
        planned = family
    target = make_target(key, threads, family)
    if key == "cuda" and not cuda_available() and os.environ.get("HAWQ_CUDA_ARCH") is None:
        raise HawqError("target cuda: no CUDA GPU visible to TVM (set HAWQ_CUDA_ARCH=sm_XX to cross-compile)")
    if fast is None:
        fast = family is not None
    if fast and family is None:
        raise HawqError("the hand-scheduled program needs an x86 CPU with AVX2 (compile with --untuned)")
    planner = functools.partial(plan_kernel, planned, emulate=emulate) if fast else None
    mod = build_module(graph, input_shape, all_outputs=all_outputs, planner=planner)
    return Built(build(mod, target, schedule=fast), target, family if fast else None)
