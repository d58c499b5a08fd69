"""The exact dot-product step every x86 kernel family implements (:class:`DotKernel`), its TensorIR
description, and the registry of implementations the ISA modules fill (:func:`register_impl`);
:func:`intrinsic` registers a kernel's tensor intrinsic with TVM, once, by name."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["DotKernel", "INT16_MAX", "register_impl", "dot_desc", "intrinsic", "vector"]

INT16_MAX = 32767


@dataclass(frozen=True)
class DotKernel:
    """One exact dot-product step.

    ``name``: the registered intrinsic; ``family``: the :mod:`tvm_benchmark.isa` family that has the
    instruction; ``lanes``: int32 accumulators per step (8 for 256-bit, 16 for 512-bit vectors);
    ``groups`` × ``k``: input channels reduced per step (``k`` per instruction); ``act_dtype`` /
    ``weight_dtype``: operand containers (activations arrive in ``act_dtype``, weights are packed as
    ``[O/lanes, KH, KW, C/(groups·k), groups, lanes, k]``); ``instruction``: the mnemonic the assembly
    must contain; ``int16_terms``: products summed in a saturating int16 before widening (0: none —
    the step is exact for any uint8/int8 operands), so exact iff ``int16_terms·max|a|·max|w| <= 32767``.
    """
    name: str
    family: str
    lanes: int
    groups: int
    k: int
    act_dtype: str
    weight_dtype: str
    instruction: str
    int16_terms: int = 0

    @property
    def channels(self) -> int:
        """Input channels per step (the multiple C is padded to)."""
        return self.groups * self.k

    def exact_for(self, act_absmax: int, w_absmax: int) -> bool:
        """True when no intermediate can saturate for |a| <= act_absmax, |w| <= w_absmax."""
        return not self.int16_terms or self.int16_terms * act_absmax * w_absmax <= INT16_MAX


#: Builders of each kernel kind's implementation PrimFunc, filled by the ISA modules
#: (:mod:`.x86_madd`, :mod:`.x86_vnni`) as the package imports them.
_IMPLS: dict[str, Callable[[DotKernel], object]] = {}


def register_impl(kind: str):
    """Decorator: ``kind`` (the kernel name's prefix before ``_``) -> builder of its impl PrimFunc."""
    def deco(fn):
        _IMPLS[kind] = fn
        return fn
    return deco


def dot_desc(kernel: DotKernel):
    """The semantics every step implements, for tensorize to match (a unit group loop is left out,
    as TensorIR drops the unit reduction axis of the convolution it matches)."""
    lanes, groups, k, act, wdt = kernel.lanes, kernel.groups, kernel.k, kernel.act_dtype, kernel.weight_dtype
    if groups == 1:
        @T.prim_func(s_tir=True)
        def desc1(A: T.Buffer((k,), act, offset_factor=1), B: T.Buffer((1, lanes, k), wdt, offset_factor=1),
                  C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:k], B[0:1, 0:lanes, 0:k])
                T.writes(C[0:lanes])
                for i, r in T.grid(lanes, k):
                    with T.sblock("update"):
                        vi, vr = T.axis.remap("SR", [i, r])
                        C[vi] = C[vi] + T.cast(A[vr], "int32") * T.cast(B[0, vi, vr], "int32")
        return desc1

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((groups * k,), act, offset_factor=1), B: T.Buffer((groups, lanes, k), wdt, offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:groups * k], B[0:groups, 0:lanes, 0:k])
            T.writes(C[0:lanes])
            for i, g, r in T.grid(lanes, groups, k):
                with T.sblock("update"):
                    vi, vg, vr = T.axis.remap("SRR", [i, g, r])
                    C[vi] = C[vi] + T.cast(A[vg * k + vr], "int32") * T.cast(B[vg, vi, vr], "int32")
    return desc


def intrinsic(kernel: DotKernel, emulate: bool = False) -> str:
    """Register ``kernel``'s intrinsic once and return its name. ``emulate`` registers the scalar
    description as the implementation: the same schedule then runs on any CPU (tests use it to prove
    a schedule's loop transformations where the instruction itself cannot run)."""
    name = kernel.name + ("_emulated" if emulate else "")
    if TensorIntrin.get(name, allow_missing=True) is None:
        impl = dot_desc(kernel) if emulate else _IMPLS[kernel.name.split("_")[0]](kernel)
        TensorIntrin.register(name, dot_desc(kernel), impl)
    return name


def vector(dtype: str, lanes: int) -> str:
    return f"{dtype}x{lanes}"
