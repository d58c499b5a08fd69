"""``vpmaddwd`` / ``vpmaddubsw`` steps: AVX2 (256-bit, 8 int32 lanes) and AVX-512BW (512-bit, 16 lanes).

- ``pmaddwd``: int16·int16 products summed pairwise into int32 lanes. Activations arrive widened to
  int16 (the producing epilogue does it), weights are stored as int16. A pair sum is at most
  2·255·128 < 2^31: exact for any uint8/int8 operands.
- ``pmaddubsw`` with ``groups`` G: G instructions of uint8·int8 products summed pairwise into int16
  (saturating), added in int16, then one ``vpmaddwd`` by ones widens to int32. G+1 multiplies per
  32·G (64·G) products instead of 2·G, exact iff 2·G·max|a|·max|w| <= 32767 (the schedules pick G
  from the layer's proven bounds: e.g. G = 1 for 7-bit activations × 8-bit weights, 2·127·128 =
  32512; G = 8 for 4-bit activations × 8-bit weights, 16·15·128 = 30720).
"""
from __future__ import annotations

from tvm.script import tirx as T

from tvm_benchmark.intrinsics.dot import DotKernel, register_impl, vector

__all__ = ["pmaddwd", "pmaddubsw"]

_LLVM = {
    ("pmaddwd", 256): "llvm.x86.avx2.pmadd.wd", ("pmaddwd", 512): "llvm.x86.avx512.pmaddw.d.512",
    ("pmaddubsw", 256): "llvm.x86.avx2.pmadd.ub.sw", ("pmaddubsw", 512): "llvm.x86.avx512.pmaddubs.w.512",
}
_FAMILY = {256: "avx2", 512: "avx512"}


def pmaddwd(bits: int) -> DotKernel:
    return DotKernel(f"pmaddwd_{bits}", _FAMILY[bits], bits // 32, 1, 2, "int16", "int16", "vpmaddwd")


def pmaddubsw(bits: int, groups: int = 1) -> DotKernel:
    return DotKernel(f"pmaddubsw_{bits}_g{groups}", _FAMILY[bits], bits // 32, groups, 4, "uint8", "int8",
                     "vpmaddubsw", int16_terms=2 * groups)


@register_impl("pmaddwd")
def _pmaddwd_impl(kern: DotKernel):
    lanes, bits = kern.lanes, kern.lanes * 32
    madd = _LLVM[("pmaddwd", bits)]

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), "int16", offset_factor=1), B: T.Buffer((1, lanes, 2), "int16", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:2], B[0:1, 0:lanes, 0:2])
            T.writes(C[0:lanes])
            # The activation pair viewed as one int32 is broadcast to every lane: one 32-bit load.
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), lanes),
                              dtype=vector("int16", 2 * lanes))
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=vector("int32", lanes)) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(madd), a, B.vload([0, 0, 0], dtype=vector("int16", 2 * lanes)),
                dtype=vector("int32", lanes))
    return impl


def _int16_sum(A, B, kern: DotKernel):
    """Σ_g vpmaddubsw(broadcast(A[4g:4g+4]), B[g]) in int16 (exact by the kernel's bound)."""
    lanes = kern.lanes
    ubsw = T.llvm_lookup_intrinsic_id(_LLVM[("pmaddubsw", lanes * 32)])
    total = None
    for g in range(kern.groups):
        a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([4 * g], "uint8x4"), dtype="int32"), lanes),
                          dtype=vector("uint8", 4 * lanes))
        p = T.call_llvm_pure_intrin(ubsw, a, B.vload([g, 0, 0], dtype=vector("int8", 4 * lanes)),
                                    dtype=vector("int16", 2 * lanes))
        total = p if total is None else total + p
    return total


@register_impl("pmaddubsw")
def _pmaddubsw_impl(kern: DotKernel):
    lanes, groups = kern.lanes, kern.groups
    madd = _LLVM[("pmaddwd", lanes * 32)]
    ones = T.broadcast(T.int16(1), 2 * lanes)

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((groups * 4,), "uint8", offset_factor=1), B: T.Buffer((groups, lanes, 4), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:groups * 4], B[0:groups, 0:lanes, 0:4])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = C.vload([0], dtype=vector("int32", lanes)) + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(madd), _int16_sum(A, B, kern), ones, dtype=vector("int32", lanes))
    return impl
