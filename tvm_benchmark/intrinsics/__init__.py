"""Exact x86 integer dot-product steps as TensorIR tensor intrinsics, one module per ISA family.

- :mod:`.x86_madd`: ``vpmaddwd`` / ``vpmaddubsw`` at 256 bits (AVX2) and 512 bits (AVX-512BW);
- :mod:`.x86_vnni`: ``vpdpbusd`` at 256 bits (AVX-VNNI, VEX) and 512 bits (AVX-512 VNNI);
- :mod:`.x86_amx`: AMX-INT8 ``tdpbusd`` tiles (zero / multiply-accumulate / store).

A :class:`DotKernel` is one vector step ``C[lanes] += Σ_{g,r} A[g·k + r] · B[g, lane, r]`` (int32
accumulators; ``groups`` × ``k`` input channels per step) together with the facts the schedules and
the front end need: its operand containers, its weight layout and the bound under which it is exact.
Each kernel's intrinsic is registered once, by its name, the first time a schedule asks for it
(:func:`intrinsic`): importing this package registers no TVM intrinsic; it loads the ISA modules,
which add their implementation builders to :mod:`.dot`'s registry.
"""
from tvm_benchmark.intrinsics.dot import INT16_MAX, DotKernel, dot_desc, intrinsic, register_impl, vector
from tvm_benchmark.intrinsics import x86_madd, x86_vnni  # noqa: E402,F401  (their impls, into dot's registry)

__all__ = ["DotKernel", "INT16_MAX", "register_impl", "dot_desc", "intrinsic", "vector"]
