"""Binary (±1 × ±1) XOR/popcount convolutions (tvm_benchmark.binary): bit-exact against an int64
zero-padded convolution on this host (512-bit and 256-bit lane layouts), the packing against NumPy's
own bit packing, the popcount instruction in each family's assembly, and when a plan is offered."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import tvm

from tvm_benchmark import binary as B
from tvm_benchmark import isa as I
from tvm_benchmark.targets import make_target
from tvm_benchmark.schedules import SCHEDULED

HOST = I.cpu_flags()
#: Each family's reference CPU for cross-compiling (as in test_cpu_kernels).
REF_CPU = {"avx2": "znver3", "vnni": "icelake-server", "amx": "sapphirerapids"}
needs_avx2 = pytest.mark.skipif(not I.ISAS["avx2"].runs_on(HOST), reason="this CPU lacks AVX2 (no x86 family runs)")


def _pm1(rng, shape) -> np.ndarray:
    return rng.choice(np.array([-1, 1], np.int8), shape)


def _ref_conv(x: np.ndarray, w: np.ndarray, stride: tuple[int, int], pad: B.Pad) -> np.ndarray:
    """int64 NHWC convolution of NHWC ``x`` with OIHW ``w``, zero padding (top, left, bottom, right)."""
    xp = np.pad(x.astype(np.int64), ((0, 0), (pad[0], pad[2]), (pad[1], pad[3]), (0, 0)))
    _, kh, kw = w.shape[1:]
    oh, ow = (xp.shape[1] - kh) // stride[0] + 1, (xp.shape[2] - kw) // stride[1] + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[0]), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + stride[0] * (oh - 1) + 1:stride[0], j:j + stride[1] * (ow - 1) + 1:stride[1]]
            out += np.einsum("nyxc,oc->nyxo", patch, w[:, :, i, j].astype(np.int64))
    return out


def _build(func: tvm.tirx.PrimFunc, target: tvm.target.Target):
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)


def _family(lanes: int) -> I.Isa:
    """The family whose target runs the ``lanes`` layout here: the host's own 512-bit family for 8
    lanes where it has one (else avx2: LLVM splits the 512-bit vectors, still exact), avx2 for 4."""
    host = I.detect(HOST)
    return host if lanes == 8 and host is not None and host.vector_bits == 512 else I.ISAS["avx2"]


SHAPES = [  # batch, (H, W), C, O multiple of 8, kernel, stride, pad (top, left, bottom, right)
    (2, (7, 9), 3, 16, (3, 3), (1, 1), (1, 1, 1, 1)),      # C < one word
    (2, (7, 9), 70, 16, (3, 3), (2, 2), (1, 1, 1, 1)),     # C = 64 + 6, stride 2
    (2, (7, 9), 64, 8, (3, 3), (1, 1), (0, 1, 2, 1)),      # one full word, asymmetric padding
    (2, (7, 9), 128, 16, (1, 1), (1, 1), (0, 0, 0, 0)),    # 1x1, two words
    (2, (7, 9), 128, 8, (1, 1), (2, 2), (1, 0, 0, 1)),     # 1x1 stride 2 with padding
    (2, (7, 9), 65, 16, (3, 3), (2, 1), (2, 0, 1, 3)),     # one-bit tail word, mixed stride, windows
]                                                          # wholly in the padding (nvalid 0)


@needs_avx2
@pytest.mark.parametrize("lanes", [8, 4])
@pytest.mark.parametrize("shape", SHAPES,
                         ids=lambda s: f"c{s[2]}k{s[4][0]}s{s[5][0]}{s[5][1]}p{''.join(map(str, s[6]))}")
def test_binary_conv_bit_exact(shape, lanes):
    """Packing (compiled) -> binary conv == int64 zero-padded conv of the ±1 tensors."""
    b, (h, w_), c, o, ksize, stride, pad = shape
    rng = np.random.default_rng(zlib.crc32(repr(shape).encode()))
    x, w = _pm1(rng, (b, h, w_, c)), _pm1(rng, (o, c, *ksize))
    family = _family(lanes)
    plan = B.BinaryConvPlan(lanes)
    assert B.plan_binary(I.ISAS["vnni" if lanes == 8 else "avx2"], w, True, 1) == plan
    target = make_target("llvm", 2, family)
    packer = _build(B.pack_activation_func(b, h, w_, c, pad), target)
    packed = tvm.runtime.tensor(np.zeros((b, h + pad[0] + pad[2], w_ + pad[1] + pad[3], B.words(c)), np.uint64))
    packer(tvm.runtime.tensor(x), packed)
    conv = _build(plan.prim_func(b, (h, w_), c, o, ksize, stride, pad), target)
    oh, ow = B.out_hw((h, w_), ksize, stride, pad)
    out = tvm.runtime.tensor(np.zeros((b, oh, ow, o), np.int32))
    conv(packed, tvm.runtime.tensor(plan.pack(w)), out)
    expected = _ref_conv(x, w, stride, pad)
    assert np.abs(expected).max() > 0
    np.testing.assert_array_equal(out.numpy(), expected)


@needs_avx2
@pytest.mark.parametrize("c,pad,dtype", [(3, (0, 0, 0, 0), "int8"), (64, (1, 1, 1, 1), "int8"), (70, (0, 2, 1, 0), "int8"),
                                         (128, (1, 0, 0, 0), "int8"), (200, (0, 0, 0, 0), "int8"),
                                         (70, (1, 1, 1, 1), "int16"), (64, (0, 1, 0, 1), "int32")])
def test_activation_packing_matches_numpy(c, pad, dtype):
    """The compiled packing == NumPy's little-endian ``packbits`` of (x < 0), 0 words at the padding;
    of the ±1 tensor (int8), or of the wider integers a sign reads (its sign never materialized)."""
    rng = np.random.default_rng(c)
    x = _pm1(rng, (2, 5, 6, c)) if dtype == "int8" else rng.integers(-300, 300, (2, 5, 6, c)).astype(dtype)
    bits = np.zeros((*x.shape[:-1], B.words(c) * 64), bool)
    bits[..., :c] = x < 0
    expected = np.packbits(bits, axis=-1, bitorder="little").view("<u8")
    expected = np.pad(expected, ((0, 0), (pad[0], pad[2]), (pad[1], pad[3]), (0, 0)))
    np.testing.assert_array_equal(B.pack_bits(x), expected[:, pad[0]:pad[0] + 5, pad[1]:pad[1] + 6])
    func = B.pack_activation_func(2, 5, 6, c, pad, dtype)
    assert func.attrs[SCHEDULED]
    out = tvm.runtime.tensor(np.full(expected.shape, 0xFFFF, np.uint64))           # padding must be written
    _build(func, make_target("llvm", 2, I.ISAS["avx2"]))(tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("family", ["vnni", "amx", "avx2"])
def test_popcount_in_assembly(family):
    """Compiled for the family's reference CPU (on any machine): vpopcntq on zmm for the AVX-512
    families, the vpshufb nibble lookup (and no zmm, no vpopcntq) for avx2."""
    isa = I.ISAS[family]
    mcpu, mattr = I.llvm_attrs(isa, REF_CPU[family], flags=set(isa.flags))
    func = B.BinaryConvPlan(isa.vector_bits // 64).prim_func(1, (8, 8), 128, 32, (3, 3), (1, 1), (1, 1, 1, 1))
    assert func.attrs[SCHEDULED]
    asm = _build(func, tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mattr": mattr})).mod.inspect_source("asm")
    if isa.vector_bits == 512:
        assert "\tvpopcntq\t%zmm" in asm
    else:
        assert "\tvpshufb\t" in asm and "vpopcntq" not in asm and "zmm" not in asm


def test_plan_binary_only_for_pm1_convolutions():
    rng = np.random.default_rng(0)
    w = _pm1(rng, (16, 8, 3, 3))
    isa = I.ISAS["vnni"]
    assert B.plan_binary(isa, w, True, 1) == B.BinaryConvPlan(8)
    assert B.plan_binary(I.ISAS["avx2"], w, True, 1) == B.BinaryConvPlan(4)
    assert B.plan_binary(None, w, True, 1) is None
    assert B.plan_binary(isa, w, False, 1) is None                  # activations not ±1
    assert B.plan_binary(isa, w, True, 2) is None                   # grouped
    for bad in (0, 2, -2):
        v = w.copy()
        v[3, 2, 1, 0] = bad
        assert B.plan_binary(isa, v, True, 1) is None
    assert B.plan_binary(isa, w[:12], True, 1) is None              # 12 outputs: no whole 8-lane vector
    assert B.plan_binary(I.ISAS["avx2"], w[:12], True, 1) == B.BinaryConvPlan(4)


def test_vector_popcount_and_gfni_features():
    """+avx512vpopcntdq for a 512-bit family built on a host with the flag (not for avx512: Skylake-X
    lacks it); GFNI off below amx (an AVX2 machine may lack it, and LLVM uses it in the lookup
    popcount when -mcpu has it)."""
    vnni = I.ISAS["vnni"]
    attrs = lambda isa, flags: I.llvm_attrs(isa, "icelake-server", flags)[1]  # noqa: E731
    assert I.VPOPCNT_ATTR in attrs(vnni, set(vnni.flags) | {I.VPOPCNT_FLAG})
    assert I.VPOPCNT_ATTR not in attrs(vnni, set(vnni.flags))                     # Cascade Lake
    assert I.VPOPCNT_ATTR not in attrs(I.ISAS["avx2"], set(vnni.flags) | {I.VPOPCNT_FLAG})
    assert I.VPOPCNT_ATTR not in attrs(I.ISAS["avx512"], set(vnni.flags) | {I.VPOPCNT_FLAG})
    assert all("-gfni" in attrs(I.ISAS[f], HOST) for f in ("avx2", "avx512", "avxvnni", "vnni"))


@pytest.fixture(scope="module")
def bireal_binary():
    """A Bi-Real ResNet-20 at W1/A1 after two Bi-Real training steps, exported: (graph, images)."""
    import torch
    from hawq.bit_config import load_scheme
    from hawq.export import export_integer
    from hawq.models.factory import quant_model
    from hawq.quant.config import QuantConfig
    torch.manual_seed(0)
    arch = "hawq:bireal_resnet20"
    model = quant_model(arch, load_scheme(arch, "binary"), 10, config=QuantConfig(quantizer="bireal"))
    model.train()
    x = torch.randn(4, 3, 32, 32)
    model(x)
    model.eval()
    return export_integer(model, (3, 32, 32))["graph"], x[:2].numpy()


@needs_avx2
@pytest.mark.parametrize("family", ["host", "avx2"])
def test_binary_network_bit_exact_through_popcount_kernels(family, bireal_binary):
    """The whole W1/A1 program: its 18 binary convs on the popcount kernel, the rest on the 8-bit
    ones, == the integer reference (this CPU's family, and avx2's lookup popcount)."""
    import functools
    from conftest import tvm_outputs
    from hawq.reference import run_graph
    from tvm_benchmark.compile import plan_kernel
    from tvm_benchmark.frontend import build_module
    graph, x = bireal_binary
    isa = I.detect(HOST) if family == "host" else I.ISAS[family]
    mod = build_module(graph, x.shape, planner=functools.partial(plan_kernel, isa))
    names = {str(gv.name_hint) for gv in mod.get_global_vars()}
    assert "pack_sign_bits__" in names and "conv2d_popcount__" in names
    np.testing.assert_array_equal(tvm_outputs(graph, x, isa=isa.name), run_graph(graph, x))


def test_group_net_bases_share_one_packing():
    """Group-Net's three binary bases read one 1-bit input: the program packs it once, not three times."""
    import functools
    import torch
    from hawq.bit_config import load_scheme
    from hawq.export import export_integer
    from hawq.models.factory import quant_model
    from hawq.quant.config import QuantConfig
    from tvm_benchmark.compile import plan_kernel
    from tvm_benchmark.frontend import build_module
    torch.manual_seed(0)
    arch = "hawq:groupnet_resnet20"
    model = quant_model(arch, load_scheme(arch, "binary"), 10, config=QuantConfig(quantizer="xnor"))
    model.train()
    model(torch.randn(2, 3, 32, 32))
    graph = export_integer(model.eval(), (3, 32, 32))["graph"]
    binary = [n for n in graph["nodes"] if n["op"] == "conv2d" and n["weight_bits"] == 1]
    signs = [n for n in graph["nodes"] if n["op"] == "sign"]
    mod = build_module(graph, (1, 3, 32, 32), planner=functools.partial(plan_kernel, I.ISAS["avx2"]))
    script = mod["main"].script()
    assert len(binary) == 3 * len(signs) == 54
    assert script.count("pack_sign_bits") == len(signs) and script.count("conv2d_popcount") == len(binary)
