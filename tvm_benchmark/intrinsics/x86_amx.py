"""AMX-INT8 tiles: ``tdpbusd`` on uint8 activations × int8 weights, int32 accumulation (exact).

A convolution step multiplies an ``M × 64`` activation tile (``M`` output pixels of one row × 64
input channels; the row stride is the layout's pixel stride) by ``NT`` weight tiles of ``16 × 64``
bytes (16 groups of 4 input channels × 16 output channels × 4, pre-packed at export as
``[O/32, KH, KW, C/64, 2, 16, 16, 4]``) into ``NT`` accumulator tiles of ``M × 16`` int32. The
accumulators stay in tile registers across the whole reduction, as wmma fragments do on a GPU:

- ``amx_zero_*`` makes sure the thread's tile configuration is the kernel's (palette 1, rows/column
  bytes per tile; configuration is per thread, so every parallel task checks it with ``sttilecfg``
  and loads it with ``ldtilecfg`` where it differs) and zeroes the accumulators (``tilezero``);
- ``amx_dot_*`` loads A and the B tiles (``tileloadd``, strided) and issues ``tdpbusd`` per B tile;
- ``amx_store_*`` writes the accumulators out (``tilestored``).

Tile registers: accumulators ``tmm0..NT-1``, A ``tmm4``, B ``tmm5..``. Linux hands out the tile state
only on request (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``):
:func:`tvm_benchmark.runtime.request_amx` does it before a program with AMX kernels runs.

For CPUs without AMX, :func:`intrinsics` with ``emulate=True`` registers each description as its
own implementation: the identical schedule then runs anywhere, which is how the test suite proves
the AMX schedule's loop transformations and weight packing exact (the instruction stream itself is
checked in the generated assembly).
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

__all__ = ["K_BYTES", "N_LANES", "AmxKernel", "intrinsics"]

K_BYTES = 64            # input channels per A row / per B tile (16 groups of 4)
N_LANES = 16            # output channels per accumulator tile
A_TILE = 4              # A tiles from here, then the B tiles; accumulators from 0


@dataclass(frozen=True)
class AmxKernel:
    """``rows`` (M ≤ 16) output pixels × ``ntiles`` (2: tmm0, tmm1) × 16 output channels per step.

    ``pixel_bytes`` > 0 selects the *window* form for convolutions with few input channels (a
    network's stem, C = 3): an A row is 64 consecutive bytes of one input row, i.e. ``64 /
    pixel_bytes`` neighbouring pixels × ``pixel_bytes`` channels, which holds every kw tap of one
    kh (weights zero beyond them); consecutive rows start ``step`` = stride·pixel_bytes bytes apart
    (overlapping), so one strided ``tileloadd`` still loads the tile and no im2col is written."""
    rows: int
    ntiles: int = 2
    atiles: int = 1
    pixel_bytes: int = 0
    step: int = 0
    family: str = "amx"
    instruction: str = "tdpbusd"
    act_dtype: str = "uint8"
    weight_dtype: str = "int8"
    channels: int = K_BYTES

    @property
    def name(self) -> str:
        window = f"_w{self.pixel_bytes}s{self.step}" if self.pixel_bytes else ""
        pair = f"_a{self.atiles}" if self.atiles > 1 else ""
        return f"amx_m{self.rows}_n{self.ntiles}{pair}{window}"

    @property
    def pixels(self) -> int:
        """Output pixels per step: ``atiles`` A tiles of ``rows``."""
        return self.rows * self.atiles

    def exact_for(self, act_absmax: int, w_absmax: int) -> bool:
        return True


def _zero_desc(m: int, nt: int):
    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        C = T.match_buffer(c, (m, nt, N_LANES), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:m, 0:nt, 0:N_LANES])
            for i, t, j in T.grid(m, nt, N_LANES):
                with T.sblock("init"):
                    vi, vt, vj = T.axis.remap("SSS", [i, t, j])
                    C[vi, vt, vj] = T.int32(0)
    return desc


def tile_config(m: int, nt: int, at: int) -> list[int]:
    """The 64-byte ``ldtilecfg`` operand as 16 little-endian int32 words: palette 1; accumulators
    ``a·NT + t`` of m rows, A tiles ``4 + a`` of m rows, B tiles ``4 + AT + t`` of 16 rows, every
    row 64 bytes."""
    cfg = bytearray(64)
    cfg[0] = 1
    tiles = [(i, m) for i in range(at * nt)] + [(A_TILE + a, m) for a in range(at)]
    tiles += [(A_TILE + at + t, 16) for t in range(nt)]
    for tile, rows in tiles:
        cfg[16 + 2 * tile] = K_BYTES
        cfg[48 + tile] = rows
    return [int.from_bytes(cfg[i:i + 4], "little", signed=True) for i in range(0, 64, 4)]


def _zero_impl(m: int, nt: int, at: int):
    """Make sure the thread's tile configuration is :func:`tile_config` (``ldtilecfg`` only where
    ``sttilecfg`` shows another one: a task runs after the same kernel's previous task almost
    always, and ``ldtilecfg`` costs about ten times a ``sttilecfg`` and a compare), then tilezero
    on every accumulator. The accumulators' own memory (at least 128 bytes; overwritten by the
    store) is the scratch for both configurations. Tile numbers are immediates: the unrolled loops
    leave constants."""
    p = m * at
    words = tile_config(m, nt, at)

    def differs(buf):      # OR of (word i of the buffer, row-major) ^ (word i of the configuration)
        expr = T.int32(0)
        for i, w in enumerate(words):
            expr = expr | (buf[i // (nt * N_LANES), i // N_LANES % nt, i % N_LANES] ^ T.int32(w))
        return expr

    def pick(i):           # word i of the configuration (i a loop variable)
        expr = T.int32(words[-1])
        for j in range(len(words) - 2, -1, -1):
            expr = T.Select(i == j, T.int32(words[j]), expr)
        return expr

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        C = T.match_buffer(c, (p, nt, N_LANES), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:p, 0:nt, 0:N_LANES])
            T.evaluate(T.call_llvm_intrin("void", "llvm.x86.sttilecfg", C.access_ptr("w")))
            if differs(C) != 0:
                for i in T.unroll(16):      # the configuration, in words 16..31
                    C[(16 + i) // (nt * N_LANES), (16 + i) // N_LANES % nt, (16 + i) % N_LANES] = pick(i)
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.ldtilecfg", C.access_ptr("r", offset=16)))
            for i in T.unroll(at * nt):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilezero", T.Cast("int8", i)))
    return impl


def _dot_desc(m: int, nt: int, step: int = 0):
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sb = T.int32()
        A = T.match_buffer(a, (m, K_BYTES), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (nt, 16, N_LANES, 4), "int8", offset_factor=1, strides=[sb, 64, 4, 1])
        C = T.match_buffer(c, (m, nt, N_LANES), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:m, 0:nt, 0:N_LANES], A[0:m, 0:K_BYTES], B[0:nt, 0:16, 0:N_LANES, 0:4])
            T.writes(C[0:m, 0:nt, 0:N_LANES])
            for i, t, j, g, r in T.grid(m, nt, N_LANES, 16, 4):
                with T.sblock("update"):
                    vi, vt, vj, vg, vr = T.axis.remap("SSSRR", [i, t, j, g, r])
                    C[vi, vt, vj] = C[vi, vt, vj] + T.cast(A[vi, vg * 4 + vr], "int32") * T.cast(B[vt, vg, vj, vr], "int32")

    @T.prim_func(s_tir=True)
    def window_desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        sb = T.int32()
        A = T.match_buffer(a, (step * (m - 1) + K_BYTES,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (nt, 16, N_LANES, 4), "int8", offset_factor=1, strides=[sb, 64, 4, 1])
        C = T.match_buffer(c, (m, nt, N_LANES), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:m, 0:nt, 0:N_LANES], A[0:step * (m - 1) + K_BYTES], B[0:nt, 0:16, 0:N_LANES, 0:4])
            T.writes(C[0:m, 0:nt, 0:N_LANES])
            for i, t, j, g, r in T.grid(m, nt, N_LANES, 16, 4):
                with T.sblock("update"):
                    vi, vt, vj, vg, vr = T.axis.remap("SSSRR", [i, t, j, g, r])
                    C[vi, vt, vj] = C[vi, vt, vj] + T.cast(A[vi * step + vg * 4 + vr], "int32") * T.cast(B[vt, vg, vj, vr], "int32")
    return window_desc if step else desc


def _dot_impl(m: int, nt: int, at: int, step: int = 0):
    """Load the AT A tiles (rows ``a·m``.. of the step's pixels) and the NT B tiles, then one
    ``tdpbusd`` per (A, B) pair into accumulator ``a·NT + t``."""
    p = m * at

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sa = T.int32()
        sb = T.int32()
        A = T.match_buffer(a, (p, K_BYTES), "uint8", offset_factor=1, strides=[sa, 1])
        B = T.match_buffer(b, (nt, 16, N_LANES, 4), "int8", offset_factor=1, strides=[sb, 64, 4, 1])
        C = T.match_buffer(c, (p, nt, N_LANES), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:p, 0:nt, 0:N_LANES], A[0:p, 0:K_BYTES], B[0:nt, 0:16, 0:N_LANES, 0:4])
            T.writes(C[0:p, 0:nt, 0:N_LANES])
            for t in T.unroll(nt):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.Cast("int8", A_TILE + at + t),
                                              T.address_of(B[t, 0, 0, 0]), T.int64(64)))
            for i in T.unroll(at):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.Cast("int8", A_TILE + i),
                                              T.address_of(A[i * m, 0]), T.Cast("int64", sa)))
                for t in T.unroll(nt):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.Cast("int8", i * nt + t),
                                                  T.Cast("int8", A_TILE + i), T.Cast("int8", A_TILE + at + t)))

    @T.prim_func(s_tir=True)
    def window_impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        sb = T.int32()
        A = T.match_buffer(a, (step * (p - 1) + K_BYTES,), "uint8", offset_factor=1)
        B = T.match_buffer(b, (nt, 16, N_LANES, 4), "int8", offset_factor=1, strides=[sb, 64, 4, 1])
        C = T.match_buffer(c, (p, nt, N_LANES), "int32", offset_factor=1, scope="local")
        with T.sblock("root"):
            T.reads(C[0:p, 0:nt, 0:N_LANES], A[0:step * (p - 1) + K_BYTES], B[0:nt, 0:16, 0:N_LANES, 0:4])
            T.writes(C[0:p, 0:nt, 0:N_LANES])
            for t in T.unroll(nt):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.Cast("int8", A_TILE + at + t),
                                              T.address_of(B[t, 0, 0, 0]), T.int64(64)))
            for i in T.unroll(at):
                T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tileloadd64", T.Cast("int8", A_TILE + i),
                                              T.address_of(A[i * m * step]), T.int64(step)))
                for t in T.unroll(nt):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tdpbusd", T.Cast("int8", i * nt + t),
                                                  T.Cast("int8", A_TILE + i), T.Cast("int8", A_TILE + at + t)))
    return window_impl if step else impl


def _store_desc(m: int, nt: int):
    @T.prim_func(s_tir=True)
    def desc(c: T.handle, d: T.handle) -> None:
        sd = T.int32()
        sn = T.int32()
        C = T.match_buffer(c, (m, nt, N_LANES), "int32", offset_factor=1, scope="local")
        D = T.match_buffer(d, (m, nt, N_LANES), "int32", offset_factor=1, strides=[sd, sn, 1])
        with T.sblock("root"):
            T.reads(C[0:m, 0:nt, 0:N_LANES])
            T.writes(D[0:m, 0:nt, 0:N_LANES])
            for i, t, j in T.grid(m, nt, N_LANES):
                with T.sblock("store"):
                    vi, vt, vj = T.axis.remap("SSS", [i, t, j])
                    D[vi, vt, vj] = C[vi, vt, vj]
    return desc


def _store_impl(m: int, nt: int, at: int):
    p = m * at

    @T.prim_func(s_tir=True)
    def impl(c: T.handle, d: T.handle) -> None:
        sd = T.int32()
        sn = T.int32()
        C = T.match_buffer(c, (p, nt, N_LANES), "int32", offset_factor=1, scope="local")
        D = T.match_buffer(d, (p, nt, N_LANES), "int32", offset_factor=1, strides=[sd, sn, 1])
        with T.sblock("root"):
            T.reads(C[0:p, 0:nt, 0:N_LANES])
            T.writes(D[0:p, 0:nt, 0:N_LANES])
            for i in T.unroll(at):
                for t in T.unroll(nt):
                    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.tilestored64", T.Cast("int8", i * nt + t),
                                                  T.address_of(D[i * m, t, 0]), T.Cast("int64", sd * 4)))
    return impl


def intrinsics(kern: AmxKernel, emulate: bool = False) -> tuple[str, str, str]:
    """Register (once) and name the zero / dot / store intrinsics of ``kern``."""
    m, nt, at, p = kern.rows, kern.ntiles, kern.atiles, kern.pixels
    if nt * at + at + nt > 8:
        raise ValueError("an AMX step holds at most 8 tiles (accumulators, A and B)")
    names = []
    for what, desc, impl in (("zero", lambda: _zero_desc(p, nt), lambda: _zero_impl(m, nt, at)),
                             ("dot", lambda: _dot_desc(p, nt, kern.step), lambda: _dot_impl(m, nt, at, kern.step)),
                             ("store", lambda: _store_desc(p, nt), lambda: _store_impl(m, nt, at))):
        name = f"hawq_{kern.name}_{what}" + ("_emulated" if emulate else "")
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, desc(), desc() if emulate else impl())
        names.append(name)
    return tuple(names)
