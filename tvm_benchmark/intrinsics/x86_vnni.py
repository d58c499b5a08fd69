"""``vpdpbusd`` steps: AVX-VNNI (256-bit, VEX-encoded, 8 int32 lanes) and AVX-512 VNNI (512-bit, 16).

Four uint8·int8 products summed straight into each int32 lane, with no saturating intermediate, so
the step is exact for any uint8 activation and int8 weight (the int32 accumulator's own bound is
proven by the front end). Signed int8 activations reach it shifted by +128 (the front end folds
−128·ΣW into the bias). LLVM 22's intrinsics take the byte operands as ``<N x i8>``.
"""
from __future__ import annotations

from tvm.script import tirx as T

from tvm_benchmark.intrinsics.dot import DotKernel, register_impl, vector

__all__ = ["vpdpbusd"]

_LLVM = {256: "llvm.x86.avx512.vpdpbusd.256", 512: "llvm.x86.avx512.vpdpbusd.512"}
_FAMILY = {256: "avxvnni", 512: "vnni"}


def vpdpbusd(bits: int) -> DotKernel:
    return DotKernel(f"vpdpbusd_{bits}", _FAMILY[bits], bits // 32, 1, 4, "uint8", "int8", "vpdpbusd")


@register_impl("vpdpbusd")
def _vpdpbusd_impl(kern: DotKernel):
    lanes = kern.lanes
    dp = _LLVM[lanes * 32]

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((1, lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:1, 0:lanes, 0:4])
            T.writes(C[0:lanes])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), lanes),
                              dtype=vector("int8", 4 * lanes))
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(dp), C.vload([0], dtype=vector("int32", lanes)), a,
                B.vload([0, 0, 0], dtype=vector("int8", 4 * lanes)), dtype=vector("int32", lanes))
    return impl
