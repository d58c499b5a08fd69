"""Tensor-core steps for the CUDA integer program: ``ldmatrix`` + ``mma.sync`` (PTX), registered by name.

int8 (:func:`int8_step`, sm_80+), int4 (:func:`int4_step`, sm_80/86/87: ``m16n8k64 s4·s4``
on bytes packing two nibbles along K) and binary (:func:`b1_step`, sm_75+: ``m16n8k256 b1·b1`` with
``.xor.popc`` on bytes packing eight bits along K) — the fragment register layout is the s8 one at
byte granularity, so the same ``ldmatrix``, zero and store steps serve all three). One warp computes a 16×16 int32 accumulator fragment
from a 16×32 int8 activation fragment (row major) and a 16×32 int8 weight fragment (weights stored ``[N, K]``: the ``col`` operand of
``mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32``, issued twice per fragment for its two n8
halves). The products accumulate exactly in int32 (the front end proves the sum fits). Activations
are signed bytes: unsigned 8-bit activations (0..255) arrive shifted by −128 and the front end folds
128·ΣW into the bias, which is exact (:mod:`tvm_benchmark.tensorcore`).

The descriptions and the PTX implementations are TVM's (``tvm.s_tir.tensor_intrin.cuda``'s builders),
registered here under our names with the staging scope our schedule uses. With ``emulate=True`` each
step's implementation is its description written as plain loops over the same warp fragment layouts
(:func:`_fill_loops` ...): the *same* schedule — tiling, shared-memory staging, ``ldmatrix``/``mma``
fragment layouts, the fused epilogue — then compiles for llvm and runs on any CPU, which is how the
test suite proves it bit-exact without a GPU. The instruction stream itself is checked in the PTX.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from tvm_benchmark.intrinsics.tvmscript_stack import cuda_intrinsics

__all__ = ["C", "FRAG", "WARP", "ACC_LAYOUT", "AB_LAYOUT", "MmaStep", "int8_step", "nibble_lo", "nibble_hi",
           "int4_step", "INT4_SMS", "popc_xor", "b1_step"]

C = cuda_intrinsics()       # TVM's builders (imported through a cheap inspect.stack: 46 s -> 3.4 s)

FRAG = 16                  # fragment rows (M) and columns (N) of one step
WARP = 32
FRAGMENT_SCOPE, STAGE_SCOPE = "warp", "shared"
ACC_LAYOUT = C.shared_16x16_to_ldmatrix_32x8_layout        # 16x16 int32 accumulator -> (lane, element)
AB_LAYOUT = C.shared_16x32_to_ldmatrix_32x16_layout      # 16x32 int8 operand -> (lane, element)


@dataclass(frozen=True)
class MmaStep:
    """Registered names of one tensor-core step's intrinsics (load A, load B, multiply-accumulate,
    zero, store to shared) and its facts: ``k`` reduction elements per step, operand ``dtype``,
    ``ptx`` the instruction the compiled program must contain, ``min_sm`` the oldest GPU having it."""
    dtype: str
    k: int
    load_a: str
    load_b: str
    mma: str
    fill: str
    store: str
    ptx: str
    min_sm: int


def _fill_loops():
    @T.prim_func(s_tir=True)
    def impl(a: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        acc = T.match_buffer(a, (WARP, 8), "int32", scope=FRAGMENT_SCOPE, offset_factor=1, strides=[s0, s1])
        with T.sblock("root"):
            T.reads()
            T.writes(acc[0:WARP, 0:8])
            for i0, i1 in T.grid(FRAG, FRAG):
                with T.sblock("fill"):
                    i, j = T.axis.remap("SS", [i0, i1])
                    t, e = T.meta_var(ACC_LAYOUT(i, j))
                    acc[t, e] = T.int32(0)
    return impl


def _store_loops():
    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        s2 = T.int32()
        s3 = T.int32()
        acc = T.match_buffer(a, (WARP, 8), "int32", scope=FRAGMENT_SCOPE, offset_factor=1, strides=[s0, s1])
        out = T.match_buffer(c, (FRAG, FRAG), "int32", scope=STAGE_SCOPE, offset_factor=1, strides=[s2, s3])
        with T.sblock("root"):
            T.reads(acc[0:WARP, 0:8])
            T.writes(out[0:FRAG, 0:FRAG])
            for i0, i1 in T.grid(FRAG, FRAG):
                with T.sblock("store"):
                    i, j = T.axis.remap("SS", [i0, i1])
                    t, e = T.meta_var(ACC_LAYOUT(i, j))
                    out[i, j] = acc[t, e]
    return impl


def _load_loops(k: int, dtype: str):
    per_lane = FRAG * k // WARP

    @T.prim_func(s_tir=True)
    def impl(w: T.handle, s: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        s2 = T.int32()
        s3 = T.int32()
        src = T.match_buffer(s, (FRAG, k), dtype, scope=STAGE_SCOPE, offset_factor=1, strides=[s0, s1])
        frag = T.match_buffer(w, (WARP, per_lane), dtype, scope=FRAGMENT_SCOPE, offset_factor=1, strides=[s2, s3])
        with T.sblock("root"):
            T.reads(src[0:FRAG, 0:k])
            T.writes(frag[0:WARP, 0:per_lane])
            for i0, i1 in T.grid(FRAG, k):
                with T.sblock("load"):
                    i, j = T.axis.remap("SS", [i0, i1])
                    t, e = T.meta_var(AB_LAYOUT(i, j))
                    frag[t, e] = src[i, j]
    return impl


def _s8_product(a, b):
    return T.Cast("int32", a) * T.Cast("int32", b)


def _s4_product(a, b):
    """Two signed-nibble products of packed bytes (elements 2j and 2j + 1)."""
    return nibble_lo(a) * nibble_lo(b) + nibble_hi(a) * nibble_hi(b)


def _mma_loops(k: int, dtype: str, product=_s8_product):
    """One fragment step as loops over the fragment layouts (the emulated implementation);
    ``product(a, b)`` of two operand elements (s8 values or bytes of s4 pairs)."""
    per_lane = FRAG * k // WARP

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        s2 = T.int32()
        s3 = T.int32()
        s4 = T.int32()
        s5 = T.int32()
        A = T.match_buffer(a, (WARP, per_lane), dtype, scope=FRAGMENT_SCOPE, offset_factor=1, strides=[s0, s1])
        B = T.match_buffer(b, (WARP, per_lane), dtype, scope=FRAGMENT_SCOPE, offset_factor=1, strides=[s2, s3])
        acc = T.match_buffer(c, (WARP, 8), "int32", scope=FRAGMENT_SCOPE, offset_factor=1, strides=[s4, s5])
        with T.sblock("root"):
            T.reads(acc[0:WARP, 0:8], A[0:WARP, 0:per_lane], B[0:WARP, 0:per_lane])
            T.writes(acc[0:WARP, 0:8])
            for i, j, r in T.grid(FRAG, FRAG, k):
                with T.sblock("mma"):
                    vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                    tc, ec = T.meta_var(ACC_LAYOUT(vi, vj))
                    ta, ea = T.meta_var(AB_LAYOUT(vi, vr))
                    tb, eb = T.meta_var(AB_LAYOUT(vj, vr))
                    acc[tc, ec] = acc[tc, ec] + product(A[ta, ea], B[tb, eb])
    return impl


#: Operand width -> (PTX operand type, the 8-row shape of sm_75, the 16-row shape of sm_80+): each
#: covers 16 (8-row) or 32 (16-row) bytes of K, so one fragment step is 32 bytes at every width.
_SHAPES = {8: ("int8", "m8n8k16", "m16n8k32"), 4: ("int4", "m8n8k32", "m16n8k64"),
           1: ("int1", "m8n8k128", "m16n8k256")}


def _mma_ptx(bits: int, sm: int):
    """The PTX implementation of one 16×16×(32 bytes) fragment step for ``sm``.

    sm_80+: two ``m16n8k32`` (s8) / ``m16n8k64`` (s4) / ``m16n8k256`` (b1) per fragment, one per
    8-column half. sm_75 has only the 8-row shapes (``m8n8k16`` s8, ``m8n8k32`` s4, ``m8n8k128`` b1):
    eight per fragment, addressed by the physical register layout ``ldmatrix`` leaves (A: register
    r = rows 8·(r%2).., K half r//2; B: register 2·half + k = columns of that half, K half k; C: 4 per
    half, 2 per row half). b1 adds ``.xor.popc``: the accumulator gains popcount(a XOR b)."""
    ab, shape8, shape16 = _SHAPES[bits]
    op = ("xor",) if bits == 1 else ()

    def m8(A, B, acc, tx, a_reg, b_reg, c_off):
        return T.ptx_legacy.mma(shape8, "row", "col", ab, ab, "int32", A.data, A.elem_offset + tx * 16 + 4 * a_reg,
                                B.data, B.elem_offset + tx * 16 + 4 * b_reg, acc.data, acc.elem_offset + tx * 8 + c_off,
                                False, *op, dtype="int32")

    def m16(A, B, acc, tx, half):
        return T.ptx_legacy.mma(shape16, "row", "col", ab, ab, "int32", A.data, A.elem_offset + tx * 16,
                                B.data, B.elem_offset + tx * 16 + 8 * half, acc.data, acc.elem_offset + tx * 8 + 4 * half,
                                False, *op, dtype="int32")

    if sm >= 80:
        @T.prim_func(s_tir=True)
        def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
            A = T.match_buffer(a, (WARP, 16), "int8", align=64, offset_factor=32, scope=FRAGMENT_SCOPE)
            B = T.match_buffer(b, (WARP, 16), "int8", align=64, offset_factor=32, scope=FRAGMENT_SCOPE)
            acc = T.match_buffer(c, (WARP, 8), "int32", align=64, offset_factor=16, scope=FRAGMENT_SCOPE)
            with T.sblock("root"):
                T.reads(acc[0:WARP, 0:8], A[0:WARP, 0:16], B[0:WARP, 0:16])
                T.writes(acc[0:WARP, 0:8])
                for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                    T.evaluate(m16(A, B, acc, tx, 0))
                    T.evaluate(m16(A, B, acc, tx, 1))
        return impl

    @T.prim_func(s_tir=True)
    def impl75(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, 16), "int8", align=64, offset_factor=32, scope=FRAGMENT_SCOPE)
        B = T.match_buffer(b, (WARP, 16), "int8", align=64, offset_factor=32, scope=FRAGMENT_SCOPE)
        acc = T.match_buffer(c, (WARP, 8), "int32", align=64, offset_factor=16, scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads(acc[0:WARP, 0:8], A[0:WARP, 0:16], B[0:WARP, 0:16])
            T.writes(acc[0:WARP, 0:8])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                T.evaluate(m8(A, B, acc, tx, 0, 0, 0))
                T.evaluate(m8(A, B, acc, tx, 2, 1, 0))
                T.evaluate(m8(A, B, acc, tx, 1, 0, 2))
                T.evaluate(m8(A, B, acc, tx, 3, 1, 2))
                T.evaluate(m8(A, B, acc, tx, 0, 2, 4))
                T.evaluate(m8(A, B, acc, tx, 2, 3, 4))
                T.evaluate(m8(A, B, acc, tx, 1, 2, 6))
                T.evaluate(m8(A, B, acc, tx, 3, 3, 6))
    return impl75


def _register(name: str, desc, impl, loops, emulate: bool) -> str:
    if emulate:
        name, impl = name + "_emulated", loops
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, desc, impl)
    return name


@functools.lru_cache(maxsize=None)   # parsing the intrinsics' TVMScript costs ~1 s a call
def int8_step(emulate: bool = False, sm: int = 80) -> MmaStep:
    """s8·s8→s32 (``m16n8k32`` on sm_80 and newer, Hopper included; ``m8n8k16`` ×8 on sm_75):
    ``ldmatrix`` x4 for A ([16, 32] row major) and B (stored [16 N, 32 K]), the MMAs of one 16×16
    fragment, zero fill, and the store of the accumulator fragment to shared memory for the fused
    epilogue."""
    desc, _ = C.get_mma_intrin(32, "int8", "int8", "int32", False, True)
    return MmaStep(
        "int8", 32,
        load_a=_register("hawq_ldmatrix_s8_a", *C.get_ldmatrix_intrin(32, "int8", "A", False, STAGE_SCOPE),
                         _load_loops(32, "int8"), emulate),
        load_b=_register("hawq_ldmatrix_s8_b_trans", *C.get_ldmatrix_intrin(32, "int8", "B", True, STAGE_SCOPE),
                         _load_loops(32, "int8"), emulate),
        mma=_register(f"hawq_mma_s8s8s32_trans_b_sm{75 if sm < 80 else 80}", desc, _mma_ptx(8, sm),
                      _mma_loops(32, "int8"), emulate),
        fill=_register("hawq_mma_fill_s32", *C.get_mma_fill_intrin("int32", 8), _fill_loops(), emulate),
        store=_register("hawq_mma_store_s32_shared", *C.get_mma_store_intrin("int32", 8, STAGE_SCOPE, True),
                        _store_loops(), emulate),
        ptx="mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32" if sm >= 80 else "mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32",
        min_sm=75)


def nibble_lo(x):
    """Signed low nibble of an int8 byte (packed element 2j), as int32."""
    return T.shift_right(T.shift_left(T.Cast("int32", x), 28), 28)


def nibble_hi(x):
    """Signed high nibble of an int8 byte (packed element 2j + 1), as int32."""
    return T.shift_right(T.Cast("int32", x), 4)


def _packed_desc(product):
    """The description of one fragment step on packed bytes (s4 or b1): a 16×32-byte fragment is the
    s8 register layout, only ``product(a, b)`` of two bytes differs (it unpacks the elements)."""
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, 16), "int8", align=64, offset_factor=32, scope=FRAGMENT_SCOPE)
        B = T.match_buffer(b, (WARP, 16), "int8", align=64, offset_factor=32, scope=FRAGMENT_SCOPE)
        acc = T.match_buffer(c, (WARP, 8), "int32", align=64, offset_factor=16, scope=FRAGMENT_SCOPE)
        with T.sblock("root"):
            T.reads(acc[0:WARP, 0:8], A[0:WARP, 0:16], B[0:WARP, 0:16])
            T.writes(acc[0:WARP, 0:8])
            for i, j, r in T.grid(FRAG, FRAG, 32):
                with T.sblock("C"):
                    vi, vj, vr = T.axis.remap("SSR", [i, j, r])
                    tc, ec = T.meta_var(ACC_LAYOUT(vi, vj))
                    ta, ea = T.meta_var(AB_LAYOUT(vi, vr))
                    tb, eb = T.meta_var(AB_LAYOUT(vj, vr))
                    T.reads(acc[tc, ec], A[ta, ea], B[tb, eb])
                    T.writes(acc[tc, ec])
                    acc[tc, ec] = acc[tc, ec] + product(A[ta, ea], B[tb, eb])

    return desc


def _mma_s4():
    """s4·s4→s32 ``m16n8k64`` on packed bytes: a 16×32-byte fragment holds 16×64 nibbles (element
    2j in the low nibble of byte j), the same register layout as the s8 fragment, so the int8
    ``ldmatrix``/fill/store steps serve it unchanged; only the multiply differs."""
    return _packed_desc(_s4_product), _mma_loops(32, "int8", _s4_product)


@functools.lru_cache(maxsize=None)   # parsing the intrinsics' TVMScript costs ~1 s a call
def int4_step(emulate: bool = False, sm: int = 80) -> MmaStep:
    """s4·s4→s32 (``m16n8k64`` on sm_80/86/87, ``m8n8k32`` ×8 on sm_75; Ada and Hopper have no int4
    MMA): operands are bytes holding two signed nibbles along K, so a 32-byte fragment step covers
    64 reduction elements."""
    return _packed_step("int4", 4, "hawq_mma_s4s4s32_trans_b", _mma_s4(), emulate, sm, ".s4.s4.s32")


def _packed_step(dtype: str, bits: int, name: str, desc_loops, emulate: bool, sm: int, suffix: str) -> MmaStep:
    """A packed-operand step (s4, b1): the s8 step's ``ldmatrix``, fill and store with this width's
    multiply; ``suffix`` completes the PTX instruction after its shape."""
    s8 = int8_step(emulate, sm)
    desc, loops = desc_loops
    shape = _SHAPES[bits][2 if sm >= 80 else 1]
    return MmaStep(dtype, 32, load_a=s8.load_a, load_b=s8.load_b,
                   mma=_register(f"{name}_sm{75 if sm < 80 else 80}", desc, _mma_ptx(bits, sm), loops, emulate),
                   fill=s8.fill, store=s8.store, min_sm=75, ptx=f"mma.sync.aligned.{shape}.row.col.s32{suffix}")


#: GPUs with int4 tensor-core MMA
INT4_SMS = (75, 80, 86, 87)


def popc_xor(a, b):
    """popcount(a XOR b) of two operand bytes (eight binary elements each), as int32: the number of
    differing signs, which ``.xor.popc`` accumulates."""
    return T.popcount(T.bitwise_and(T.bitwise_xor(T.Cast("int32", a), T.Cast("int32", b)), 255))


def _mma_b1():
    """b1·b1→s32 ``m16n8k256 .xor.popc`` on packed bytes: a 16×32-byte fragment holds 16×256 bits
    (element 8j + i in bit i of byte j), the s8 register layout at byte granularity, so the int8
    ``ldmatrix``/fill/store steps serve it unchanged; the product of two bytes is their popcount of
    XOR. (The bit order inside a byte does not matter: both operands share it and the sum over a
    byte's eight pairs does not depend on it.)"""
    return _packed_desc(popc_xor), _mma_loops(32, "int8", popc_xor)


@functools.lru_cache(maxsize=None)   # parsing the intrinsics' TVMScript costs ~1 s a call
def b1_step(emulate: bool = False, sm: int = 80) -> MmaStep:
    """b1·b1→s32 with ``.xor.popc`` (``m16n8k256`` on sm_80 and newer, ``m8n8k128`` ×8 on sm_75):
    operands are bytes holding eight binary elements along K, so a 32-byte fragment step covers 256
    reduction elements; the accumulator counts differing signs (the GEMM's epilogue turns the count
    into the ±1 dot product, :mod:`tvm_benchmark.tensorcore`)."""
    return _packed_step("int1", 1, "hawq_mma_b1b1s32_xor_trans_b", _mma_b1(), emulate, sm, ".b1.b1.s32.xor.popc")
