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
from tvm_benchmark.binary import plan_binary
from tvm_benchmark.depthwise import plan_depthwise
from tvm_benchmark.schedules import plan_conv, schedule_convs, schedule_generic
from tvm_benchmark.targets import cuda_arch, cuda_available, make_target
from tvm_benchmark.tensorcore import plan_tensorcore, schedule_tensorcore, sm_number


__all__ = ["lower", "build", "schedule_gpu_default", "Built", "plan_kernel", "compile_program"]

def lower(mod: tvm.IRModule) -> tvm.IRModule:
    """High-level Relax ops -> fused TIR kernels (conv + bias + requant + clip + cast in one)."""
    seq = tvm.transform.Sequential([
        # A conv's bias add that a requantization folded into its rounding constant is left unused;
        # gone before fusion, so the conv keeps a single reader and fuses with its epilogue.
        relax.transform.DeadCodeElimination(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        # No FoldConstant: it would fold the requantization's int32 multipliers, widened to int64 at
        # the multiply so LLVM emits one vpmuldq (sext · sext), back into int64 constants.
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        # a sign whose every reader packs its input instead (binary convs) is left unused
        relax.transform.DeadCodeElimination(),
    ])
    return seq(mod)


def build(mod: tvm.IRModule, target: tvm.target.Target, schedule: bool, tensorcore: bool = False,
          emulate: bool = False) -> relax.VMExecutable:
    """Lower and compile. ``tensorcore``: schedule the (fused) implicit GEMMs for the GPU
    (:func:`tvm_benchmark.tensorcore.schedule_tensorcore`; ``emulate``: the same schedule for llvm);
    TVM's default GPU rules schedule the rest of a cuda program. With ``schedule`` every llvm kernel
    not hand-scheduled gets the generic CPU schedule (:func:`tvm_benchmark.schedules.schedule_generic`)."""
    lowered = lower(mod)
    if tensorcore:
        lowered = schedule_tensorcore(lowered, emulate)
    if str(target.kind) == "cuda":
        lowered = schedule_gpu_default(lowered, target)
    if schedule and str(target.kind) == "llvm":
        lowered = schedule_generic(schedule_convs(lowered))
    return tvm.compile(lowered, target)


def schedule_gpu_default(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """TVM's default GPU rules (dlight: Matmul, GEMV, Reduction, GeneralReduction, Fallback, the
    order ``tvm.compile`` uses) on every kernel not scheduled yet, each rule guarded: a rule that
    fails on a kernel (dlight's GEMV asserts on some depthwise/pooling shapes) passes it to the next
    rule instead of aborting the build."""
    from tvm.s_tir import dlight as dl
    rules = (dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback())
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or (func.attrs is not None and "tirx.is_scheduled" in func.attrs):
            continue
        for rule in rules:
            try:
                space = rule.apply(func, target, False)
            except Exception:  # noqa: BLE001  (dlight rule bug on this kernel: try the next rule)
                continue
            if space is not None:
                sch = space[0] if isinstance(space, list) else space
                mod[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
                break
    return mod


@dataclass(frozen=True)
class Built:
    """A compiled integer program: the executable, its TVM target and the ISA family its kernels
    use (None: TVM's unscheduled default program, or a CUDA target); ``weights``: the packed GEMM
    weights ``main`` takes after the input when built with ``weights_as_params`` (else empty);
    ``sm``: the GPU architecture of a tensor-core program."""
    executable: relax.VMExecutable
    target: tvm.target.Target
    isa: I.Isa | None
    weights: tuple = ()
    weight_nodes: tuple = ()
    sm: str | None = None

    @property
    def isa_name(self) -> str:
        if self.sm:
            return f"tensorcore-{self.sm}"
        return self.isa.name if self.isa else "generic"


def plan_kernel(isa, act_dtype: str, act_lo: int, act_hi: int, w, groups: int, out_w: int | None = None,
                emulate: bool = False, binary: bool = False):
    """The hand-scheduled kernel for one convolution: the popcount kernel for ±1 activations
    (``binary``) and ±1 weights, the depthwise kernel where it applies, else
    :func:`tvm_benchmark.schedules.plan_conv`'s choice (None: TVM's generic convolution). The popcount
    schedule is the same on every target (``emulate`` changes nothing there)."""
    if binary:
        return plan_binary(isa, w, True, groups)
    return (plan_depthwise(isa, act_dtype, act_lo, act_hi, w, groups, emulate=emulate)
            or plan_conv(isa, act_dtype, act_lo, act_hi, w, groups, out_w, emulate=emulate))


def compile_program(graph: dict, input_shape: tuple[int, int, int, int], key: str,
                    threads: int | None = None, all_outputs: bool = False, fast: bool | None = None,
                    isa: str | None = None, emulate: bool = False, weights_as_params: bool = False) -> Built:
    """Build an artifact graph for target ``key``.

    ``isa`` (``--isa``; None: detected from /proc/cpuinfo) picks the CPU kernel family. ``fast``
    (default: on for ``llvm`` when the family is at least AVX2) builds the hand-scheduled NHWC
    program; off compiles TVM's unscheduled default. ``emulate`` keeps ``isa``'s kernel choice and
    schedules but swaps every instruction for its scalar description and compiles for this CPU
    (tests: runs another family's schedules here).

    ``cuda``: the tensor-core program for ``HAWQ_CUDA_ARCH`` / the visible GPU (``fast``, the
    default) or TVM's default GPU program (``fast=False``); with ``emulate`` the same tensor-core
    schedule is compiled for this CPU with every PTX instruction replaced by its loops.
    ``weights_as_params``: GEMM weights become ``main`` parameters (``Built.weights``, packed, in
    parameter order; ``Built.weight_nodes``: ``"<graph node>:<operand bits>"`` of each).
    """
    if key == "cuda":
        return _compile_cuda(graph, input_shape, threads, all_outputs, fast, emulate, weights_as_params)
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


def _compile_cuda(graph: dict, input_shape, threads, all_outputs: bool, fast: bool | None, emulate: bool,
                  weights_as_params: bool) -> Built:
    from tvm_benchmark.frontend import build_module
    if not emulate and not cuda_available() and os.environ.get("HAWQ_CUDA_ARCH") is None:
        raise HawqError("target cuda: no CUDA GPU visible to TVM (set HAWQ_CUDA_ARCH=sm_XX to cross-compile)")
    sm = cuda_arch()
    fast = True if fast is None else fast
    planner = functools.partial(plan_tensorcore, sm_number(sm), emulate=emulate) if fast else None
    built = build_module(graph, input_shape, all_outputs=all_outputs, planner=planner,
                         weights_as_params=weights_as_params)
    mod, weights = built if weights_as_params else (built, [])
    target = make_target("llvm", threads, I.detect()) if emulate else make_target("cuda")
    exe = build(mod, target, schedule=emulate, tensorcore=fast, emulate=emulate)
    return Built(exe, target, None, tuple(a for _, a in weights), tuple(n for n, _ in weights), sm if fast else None)
