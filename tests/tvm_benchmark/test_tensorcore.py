"""Tensor-core implicit GEMM (``--target cuda``, :mod:`tvm_benchmark.tensorcore`): the kernel bit-exact
at its worst-case bounds (the emulated schedule on llvm: the same tiling, staging and fragment layouts
with each PTX intrinsic as loops), the plan's refusals, whole emulated programs == the integer
reference, the epilogue fused into the ``mma`` kernel, the instructions in the PTX per GPU (and ptxas
accepting it), and an integer-only IR."""
from __future__ import annotations

import functools
import re
import shutil
import zlib

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.support import nvcc

from conftest import UserBinary, build_calibrated, tvm_runner
from hawq.export import export_integer
from hawq.reference import run_graph
from tvm_benchmark.compile import compile_program, lower
from tvm_benchmark.frontend import build_module
from tvm_benchmark.apps.gpu_bundle import cuda_source
from tvm_benchmark.ir_check import float_violations, kernel_float_violations
from tvm_benchmark.targets import cuda_arch
from tvm_benchmark.tensorcore import (GEMM, INT32_MAX, GemmShape, gemm_func, plan_tensorcore,
                                      schedule_tensorcore, sm_number)

MMA = "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32"
MMA_S4 = "mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32"
MMA_SM75 = "mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32"
MMA_S4_SM75 = "mma.sync.aligned.m8n8k32.row.col.s32.s4.s4.s32"
MMA_B1 = "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.xor.popc"
MMA_B1_SM75 = "mma.sync.aligned.m8n8k128.row.col.s32.b1.b1.s32.xor.popc"
ALL_MMA = (MMA, MMA_S4, MMA_SM75, MMA_S4_SM75, MMA_B1, MMA_B1_SM75)
LDMATRIX = "ldmatrix.sync.aligned.m8n8.x4.shared.b16"
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler (nvcc) on this machine")


def _cross_arch(monkeypatch, arch: str) -> None:
    """Cross-compile for ``arch`` (HAWQ_CUDA_ARCH); a visible GPU overrides it, so skip then."""
    if tvm.cuda(0).exist and cuda_arch() != arch:
        pytest.skip(f"a visible GPU ({cuda_arch()}) overrides HAWQ_CUDA_ARCH={arch}")
    monkeypatch.setenv("HAWQ_CUDA_ARCH", arch)


# --------------------------------------------------------------------------- kernel
def _ref_conv(d: np.ndarray, w: np.ndarray, s: GemmShape, pad_value: int) -> np.ndarray:
    """int64 NHWC convolution of ``d`` [B,H,W,C] with OIHW ``w``, spatially padded with ``pad_value``."""
    (ph, pw), (sh, sw), (kh, kw) = s.pad, s.stride, s.ksize
    oh, ow = s.out_hw
    dp = np.pad(d.astype(np.int64), ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=pad_value)
    out = np.zeros((s.batch, oh, ow, s.out_channels), np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = dp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
            out += np.einsum("nyxc,oc->nyxo", patch, w[:, :, i, j].astype(np.int64))
    return out


#: name: (shape, its padded GEMM (Mp, Np, Kp) and row tile): the tile sizes are pinned so that each case
#: really exercises what it is named for (M/N/K padding, the 128-row tile).
KERNEL_CASES = {
    "3x3_s1_p1": (GemmShape(2, (8, 8), 64, 64, (3, 3), (1, 1), (1, 1)), (128, 64, 576), 64),
    "1x1_s2_downsample": (GemmShape(2, (16, 12), 64, 128, (1, 1), (2, 2), (0, 0)), (128, 128, 64), 64),
    "7x7_s2_p3_c3_stem": (GemmShape(1, (32, 32), 3, 64, (7, 7), (2, 2), (3, 3)), (256, 64, 192), 64),
    "1x1_classifier_b3": (GemmShape(3, (1, 1), 64, 10, (1, 1), (1, 1), (0, 0)), (64, 64, 64), 64),
    "3x3_ow7_b1": (GemmShape(1, (7, 7), 64, 64, (3, 3), (1, 1), (1, 1)), (64, 64, 576), 64),
    "3x3_m16384_c16": (GemmShape(1, (128, 128), 16, 16, (3, 3), (1, 1), (1, 1)), (16384, 64, 192), 128),
}


def _kernel_inputs(rng, s: GemmShape) -> tuple[list[np.ndarray], np.ndarray]:
    """Data at the int8 extremes (all −128, all 127, a mix: half the values exactly ±extreme) and
    weights at ±max (output channel 0 all +127, 1 all −127, 2 all −128, the rest random int8)."""
    shape = (s.batch, *s.in_hw, s.channels)
    mix = rng.integers(-128, 128, shape)
    ext = rng.random(shape) < 0.5
    mix[ext] = rng.choice([-128, 127], int(ext.sum()))
    datas = [np.full(shape, -128), np.full(shape, 127), mix]
    w = rng.integers(-128, 128, (s.out_channels, s.channels, *s.ksize))
    w[0], w[1], w[2] = 127, -127, -128
    return [d.astype(np.int8) for d in datas], w.astype(np.int8)


@functools.lru_cache(maxsize=None)
def _emulated_kernel(s: GemmShape, pad_value: int):
    func = gemm_func(s, pad_value).with_attr("global_symbol", "main")
    mod = schedule_tensorcore(tvm.IRModule({"main": func}), emulate=True)
    return tvm.compile(mod, target="llvm")


@pytest.mark.parametrize("pad_value", [-128, 5 - 128])
@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_kernel_bit_exact_at_worst_case_bounds(case, pad_value):
    """The emulated tensor-core schedule (tiling, gather with padding inside the staging, ldmatrix/mma
    fragment layouts, accumulator store, unpadding) == an int64 NumPy convolution, at the extremes."""
    s, padded, bm = KERNEL_CASES[case]
    assert (s.mp, s.np_, s.kp) == padded and s.tile.bm == bm
    rng = np.random.default_rng(zlib.crc32(f"{case}{pad_value}".encode()))
    datas, w = _kernel_inputs(rng, s)
    plan = plan_tensorcore(90, "int8", -128, 127, w, 1, emulate=True)
    assert plan is not None and plan.act_shift == 0
    packed = plan.pack(w, s)
    assert packed.shape == (s.np_, s.kp) and not packed[s.out_channels:].any() and not packed[:, s.k:].any()
    lib = _emulated_kernel(s, pad_value)
    for d in datas:
        out = tvm.runtime.tensor(np.zeros((s.batch, *s.out_hw, s.out_channels), "int32"))
        lib(tvm.runtime.tensor(d), tvm.runtime.tensor(packed), out)
        ref = _ref_conv(d, w, s, pad_value)
        np.testing.assert_array_equal(out.numpy(), ref)
    # The all −128 image (padded with −128 too, or not padded) against the all −128 output channel:
    # every tap is 128·128, the largest product; the mixed data's output must not be constant.
    if not any(s.pad) or pad_value == -128:
        lowest = _ref_conv(datas[0], w, s, pad_value)[..., 2]
        assert lowest.min() == lowest.max() == s.k * 128 * 128
    assert len(np.unique(ref)) > 1


INT4_CASES = ["3x3_s1_p1", "7x7_s2_p3_c3_stem", "1x1_classifier_b3"]


@pytest.mark.parametrize("pad_value", [-8, 5 - 8])
@pytest.mark.parametrize("case", INT4_CASES)
def test_int4_kernel_bit_exact_at_worst_case_bounds(case, pad_value):
    """The s4 GEMM (sm_80/86/87: two nibbles per byte along K, packed while staging) == NumPy at the
    s4 extremes: data all −8 / all 7 / a mix, weights with channels all 7, all −7, all −8."""
    s8 = KERNEL_CASES[case][0]
    s = GemmShape(*(getattr(s8, f) for f in ("batch", "in_hw", "channels", "out_channels", "ksize", "stride", "pad")),
                  bits=4)
    assert s.kp % 128 == 0 and s.kp_bytes * 2 == s.kp and s.kp >= s.k
    rng = np.random.default_rng(zlib.crc32(f"int4{case}{pad_value}".encode()))
    shape = (s.batch, *s.in_hw, s.channels)
    mix = rng.integers(-8, 8, shape)
    ext = rng.random(shape) < 0.5
    mix[ext] = rng.choice([-8, 7], int(ext.sum()))
    w = rng.integers(-8, 8, (s.out_channels, s.channels, *s.ksize))
    w[0], w[1], w[2] = 7, -7, -8
    w = w.astype(np.int8)
    plan = plan_tensorcore(80, "uint8", 0, 15, w, 1, emulate=True)       # 0..15 data: s4 after −8
    assert plan is not None and plan.bits == 4 and plan.act_shift == -8
    packed = plan.pack(w, s)
    assert packed.shape == (s.np_, s.kp_bytes)
    lib = _emulated_kernel(s, pad_value)
    for d in (np.full(shape, -8), np.full(shape, 7), mix):
        d = d.astype(np.int8)
        out = tvm.runtime.tensor(np.zeros((s.batch, *s.out_hw, s.out_channels), "int32"))
        lib(tvm.runtime.tensor(d), tvm.runtime.tensor(packed), out)
        np.testing.assert_array_equal(out.numpy(), _ref_conv(d, w, s, pad_value))
    assert len(np.unique(_ref_conv(mix.astype(np.int8), w, s, pad_value))) > 1


@pytest.mark.parametrize("case", [c for c, (s, _, _) in KERNEL_CASES.items() if any(s.pad)])
def test_kernel_honours_the_padding_value(case):
    """The same data through the −128- and the (5−128)-padded kernels: the references differ at the
    borders and each kernel matches its own (a kernel padding with anything else would fail)."""
    s = KERNEL_CASES[case][0]
    rng = np.random.default_rng(zlib.crc32(f"pad{case}".encode()))
    (_, _, d), w = _kernel_inputs(rng, s)
    packed = plan_tensorcore(90, "int8", -128, 127, w, 1, emulate=True).pack(w, s)
    outs = {}
    for pv in (-128, 5 - 128):
        out = tvm.runtime.tensor(np.zeros((s.batch, *s.out_hw, s.out_channels), "int32"))
        _emulated_kernel(s, pv)(tvm.runtime.tensor(d), tvm.runtime.tensor(packed), out)
        outs[pv] = out.numpy()
        np.testing.assert_array_equal(outs[pv], _ref_conv(d, w, s, pv))
    differ = outs[-128] != outs[5 - 128]
    assert differ.any()
    # Only output pixels whose window touches the padding differ.
    (ph, pw), (sh, sw), (kh, kw) = s.pad, s.stride, s.ksize
    oh, ow = s.out_hw
    y, x = np.arange(oh) * sh - ph, np.arange(ow) * sw - pw
    border = ((y < 0) | (y + kh > s.in_hw[0]))[:, None] | ((x < 0) | (x + kw > s.in_hw[1]))[None, :]
    assert not differ[:, ~border].any()


# --------------------------------------------------------------------------- plan
W_SMALL = np.full((16, 8, 3, 3), -128, np.int8)


def test_plan_accepts_8_bit_groups_1_on_sm75_and_newer():
    for sm in (75, 80, 86, 89, 90, 100):
        plan = plan_tensorcore(sm, "int8", -128, 127, W_SMALL, 1)
        assert plan is not None and plan.sm == sm and not plan.emulate
        assert plan.step.ptx == (MMA_SM75 if sm == 75 else MMA)
    assert plan_tensorcore(90, "int8", -128, 127, W_SMALL, 1, emulate=True).emulate


@pytest.mark.parametrize("sm,act_dtype,groups", [(70, "int8", 1), (61, "uint8", 1), (72, "int8", 1),
                                                 (90, "int8", 2), (90, "uint8", 16), (80, "uint8", 4),
                                                 (90, "int16", 1), (90, "uint16", 1), (90, "int32", 1)])
def test_plan_declines(sm, act_dtype, groups):
    """GPUs without integer mma.sync (Volta, Pascal), grouped/depthwise convolutions and non-8-bit
    containers: the generic GPU convolution."""
    w = W_SMALL[:, : 8 // groups] if groups <= 8 else np.full((16, 1, 3, 3), 3, np.int8)
    assert plan_tensorcore(sm, act_dtype, -8, 7, w, groups) is None


W4 = np.resize(np.arange(-8, 8, dtype=np.int8), (16, 8, 3, 3))          # fits s4


@pytest.mark.parametrize("sm,act_dtype,lo,hi,w,bits,shift", [
    (90, "uint8", 0, 255, W_SMALL, 8, -128), (90, "uint8", 0, 15, W_SMALL, 8, -128),
    (90, "int8", -128, 127, W_SMALL, 8, 0), (90, "int8", -8, 7, W_SMALL, 8, 0),
    (90, "uint8", 0, 15, W4, 8, -128),            # Hopper has no int4 MMA
    (80, "uint8", 0, 15, W4, 4, -8),              # Ampere: 0..15 − 8 and the weights fit s4
    (80, "int8", -8, 7, W4, 4, 0),
    (80, "uint8", 0, 16, W4, 8, -128),            # 16 − 8 does not fit s4
    (80, "uint8", 0, 15, np.where(W4 == -8, 8, W4).astype(np.int8), 8, -128),   # weight 8 does not
    (75, "uint8", 0, 15, W4, 4, -8), (86, "uint8", 0, 15, W4, 4, -8), (89, "uint8", 0, 15, W4, 8, -128),
])
def test_plan_operand_width_and_act_shift(sm, act_dtype, lo, hi, w, bits, shift):
    """Unsigned data becomes signed operands (−128 for s8, −8 for s4); signed data is used as is."""
    plan = plan_tensorcore(sm, act_dtype, lo, hi, w, 1)
    assert (plan.bits, plan.act_shift) == (bits, shift)


def _row_sum_weights(total: int) -> np.ndarray:
    """[2, K, 1, 1] int8 weights whose largest row has Σ|w| = ``total`` (row 0 small, row 1 the big one)."""
    k = -(-total // 127)
    w = np.zeros((2, k, 1, 1), np.int8)
    w[0, :4] = 1
    w[1, :, 0, 0] = 127
    w[1, -1, 0, 0] = -(total - 127 * (k - 1))            # a negative weight counts by its magnitude
    assert int(np.abs(w.astype(np.int64)).reshape(2, -1).sum(1).max()) == total
    return w


def test_plan_declines_when_the_int32_sum_could_overflow():
    """|a| ≤ 128 for 8-bit data (and the shifted padding), so Σ|w|·128 must stay ≤ 2^31 − 1: the last
    row sum that fits is accepted, one more is refused; a narrower signed range allows more."""
    fits = INT32_MAX // 128                                # 16777215
    for dtype, lo, hi in (("int8", -128, 127), ("uint8", 0, 255), ("uint8", 0, 15)):
        assert plan_tensorcore(90, dtype, lo, hi, _row_sum_weights(fits), 1) is not None
        assert plan_tensorcore(90, dtype, lo, hi, _row_sum_weights(fits + 1), 1) is None
    # int8 data in [-8, 7] (no shift): |a| ≤ 8.
    assert plan_tensorcore(90, "int8", -8, 7, _row_sum_weights(fits + 1), 1) is not None
    assert plan_tensorcore(90, "int8", -8, 7, _row_sum_weights(INT32_MAX // 8 + 1), 1) is None


# --------------------------------------------------------------------------- whole programs (emulated)
def _gemm_layers(graph: dict) -> int:
    return sum(n["op"] == "dense" or (n["op"] == "conv2d" and int(n.get("groups", 1)) == 1) for n in graph["nodes"])


def _gemm_calls(exe: relax.VMExecutable) -> list[str]:
    """Kernels holding an implicit GEMM that ``main`` calls, one entry per call."""
    return re.findall(r"call\s+(\S*conv2d_tensorcore\S*) in:", exe.as_text())


PROGRAMS = {
    "resnet20_uniform8": ("resnet20_cifar10", "uniform8", {}),
    "resnet20_uniform4": ("resnet20_cifar10", "uniform4", {}),
    "resnet20_uniform8_hawq_profile": ("resnet20_cifar10", "uniform8", {"numerics": "hawq"}),
    "mobilenetv2_uniform8": ("mobilenetv2_w1", "uniform8", {}),
}
#: (program, GPU, 4-bit GEMMs expected): Hopper runs the 4-bit layers on s8, Ampere on s4 (uniform4 on
#: Hopper is slow-marked: its s8 GEMMs with shifted uint8 data are resnet20_uniform8's path).
PROGRAM_CASES = [("resnet20_uniform8", "sm_90", False),
                 pytest.param("resnet20_uniform4", "sm_90", False, marks=pytest.mark.slow),
                 ("resnet20_uniform4", "sm_80", True),
                 # profile hawq's fields on the same structure as resnet20_uniform8 (suite time: slow)
                 pytest.param("resnet20_uniform8_hawq_profile", "sm_90", False, marks=pytest.mark.slow),
                 # depthwise layers on the generic path inside a tensor-core program; also covered by the
                 # captured mobilenet_v3/efficientnet programs of test_capture (suite time: slow)
                 pytest.param("mobilenetv2_uniform8", "sm_90", False, marks=pytest.mark.slow)]


@functools.lru_cache(maxsize=None)
def _program(name: str) -> tuple[dict, np.ndarray]:
    """(graph, x [4,3,32,32]): the calibration probe and the same images driven into the input clip."""
    arch, scheme, kw = PROGRAMS[name]
    model, probe = build_calibrated(arch, scheme, 10, (2, 3, 32, 32), **kw)
    graph = export_integer(model, (3, 32, 32))["graph"]
    x = probe.numpy()
    return graph, np.concatenate([x, np.sign(x) * 50 + x]).astype(np.float32)


def _record_plans(monkeypatch) -> list:
    """Every plan compile_program's tensor-core planner returns (None included), in call order."""
    import tvm_benchmark.compile as C
    plans = []

    def recording(*args, **kwargs):
        plans.append(plan_tensorcore(*args, **kwargs))
        return plans[-1]
    monkeypatch.setattr(C, "plan_tensorcore", recording)
    return plans


@pytest.fixture
def emulated_sm90(monkeypatch):
    _cross_arch(monkeypatch, "sm_90")


@pytest.mark.parametrize("name,arch,int4", PROGRAM_CASES)
def test_emulated_program_bit_exact(name, arch, int4, monkeypatch):
    """Every GEMM (shift to s8/s4, bias fold, gather, fused epilogue) in one program == run_graph;
    the depthwise layers of mobilenetv2 take the generic path in the same program."""
    _cross_arch(monkeypatch, arch)
    plans = _record_plans(monkeypatch)
    graph, x = _program(name)
    run = tvm_runner(graph, (2, *x.shape[1:]), "cuda", threads=None, emulate=True)     # batch 2: x runs in 2 chunks
    planned = [p for p in plans if p is not None]
    assert len(planned) == _gemm_layers(graph) and all(p.emulate and p.sm == sm_number(arch) for p in planned)
    assert any(p.bits == 4 for p in planned) == int4
    assert len(_gemm_calls(run.built.executable)) == _gemm_layers(graph)
    out = run(x)
    ref = run_graph(graph, x)
    assert np.abs(ref).max() > 0 and len(np.unique(ref)) > 10
    np.testing.assert_array_equal(out, ref)


def test_weights_as_params(emulated_sm90):
    """The packed GEMM weights as ``main`` parameters after x: one per conv/dense layer, in graph
    order, the same logits; zeroed weights change them (they are read, not baked in as well)."""
    graph, x = _program("resnet20_uniform8")
    x = x[:2]
    built = compile_program(graph, x.shape, "cuda", emulate=True, weights_as_params=True)
    layers = [n["name"] for n in graph["nodes"] if n["op"] in ("conv2d", "dense")]
    assert len(built.weights) == _gemm_layers(graph) == len(layers) == 22
    assert [n.rsplit(":", 1)[0] for n in built.weight_nodes] == layers     # "name" or "name:bits"
    assert all(w.dtype == np.int8 and w.shape[0] % 64 == 0 and w.shape[1] % 64 == 0 for w in built.weights)
    vm = relax.VirtualMachine(built.executable, tvm.cpu(0))
    dev = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), tvm.cpu(0))   # noqa: E731
    out = vm["main"](dev(x), *[dev(w) for w in built.weights]).numpy()
    ref = run_graph(graph, x)
    np.testing.assert_array_equal(out.astype(np.int64), ref)
    zeroed = vm["main"](dev(x), *[dev(np.zeros_like(w)) for w in built.weights]).numpy()
    assert (zeroed != ref).any()


# --------------------------------------------------------------------------- CUDA source
_cuda_source = cuda_source        # the CUDA C source TVM embedded in a program


def _kernels(src: str) -> dict[str, str]:
    """``__global__`` kernel definitions: name -> body."""
    out = {}
    for m in re.finditer(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\([^)]*\)\s*\{', src):
        i, depth = m.end(), 1
        while depth:
            depth += {"{": 1, "}": -1}.get(src[i], 0)
            i += 1
        out[m.group(1)] = src[m.end():i - 1]
    return out


@functools.lru_cache(maxsize=None)
def _cross_compiled(name: str, arch: str):
    """Program ``name`` cross-compiled for ``arch``: (graph, executable, CUDA source, plans)."""
    if tvm.cuda(0).exist and cuda_arch() != arch:
        pytest.skip(f"a visible GPU ({cuda_arch()}) overrides HAWQ_CUDA_ARCH={arch}")
    graph, _ = _program(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HAWQ_CUDA_ARCH", arch)
        plans = _record_plans(mp)
        built = compile_program(graph, (2, 3, 32, 32), "cuda")
    return graph, built.executable, _cuda_source(built.executable), [p for p in plans if p is not None]


@pytest.fixture
def resnet20_cuda():
    graph, exe, src, _ = _cross_compiled("resnet20_uniform8", "sm_90")
    return graph, exe, src


#: The requantization reads the int32 accumulator tile from shared memory and shifts it right (by a
#: per-channel shift tensor) in the same statement.
REQUANT = re.compile(r"hawq_gemm_shared_ptr\[[^;]*>>\s*(param_\d+_ptr\[|\(int64_t\))")


def test_epilogue_fused_into_the_mma_kernel(resnet20_cuda):
    """One launch per conv/dense layer of a kernel holding mma.sync; every conv's requantization
    (the right shift) runs in the same kernel, on the accumulator tile in shared memory."""
    graph, exe, src = resnet20_cuda
    kernels = _kernels(src)
    mma = {name.removesuffix("_kernel") for name, body in kernels.items() if "mma.sync" in body}
    assert mma and all("tensorcore" in name for name in mma)
    assert all(LDMATRIX in kernels[n + "_kernel"] for n in mma)
    calls = re.findall(r"call\s+(\S+) in:", exe.as_text())
    mma_calls = [c for c in calls if c in mma]
    assert len(mma_calls) == _gemm_layers(graph) == 22
    fused = [c for c in mma_calls if c.startswith("fused_conv2d_tensorcore")
             and "right_shift" in c and REQUANT.search(kernels[c + "_kernel"])]
    convs = [n for n in graph["nodes"] if n["op"] == "conv2d"]
    assert len(fused) == len(convs) == 21
    # No kernel outside the GEMMs reads an accumulator tile.
    assert not any("hawq_gemm" in body for name, body in kernels.items() if name.removesuffix("_kernel") not in mma)


def _compile_gemm_cuda(arch: str, s: GemmShape, pad_value: int = -128) -> str:
    plan = plan_tensorcore(sm_number(arch), "int8", -128, 127, W_SMALL, 1)
    func = plan.prim_func(s, pad_value).with_attr("global_symbol", "main")
    mod = schedule_tensorcore(tvm.IRModule({"main": func}))
    target = tvm.target.Target({"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
                                "max_shared_memory_per_block": 49152, "thread_warp_size": 32}, host="llvm")
    return _cuda_source(tvm.compile(mod, target=target))


def _nvcc(src: str, fmt: str, arch: str) -> bytes:
    with tvm.target.Target({"kind": "cuda", "arch": arch}):
        return bytes(nvcc.compile_cuda(src, target_format=fmt, arch=arch, compiler="nvcc"))


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "sm_75"])
def test_ptx_per_sm(arch):
    """The GEMM (gathered padding, aligned and unaligned channels, M padding) compiled for ``arch``:
    nvcc's PTX holds the step's mma (s8 m16n8k32 from sm_80 on) and ldmatrix x4, and ptxas builds a
    cubin for that GPU. sm_75 has no m16n8k32: eight m8n8k16 per fragment step there."""
    plan = plan_tensorcore(sm_number(arch), "int8", -128, 127, W_SMALL, 1)
    assert plan is not None and plan.step.ptx == (MMA_SM75 if arch == "sm_75" else MMA)
    for s in (KERNEL_CASES["3x3_ow7_b1"][0], KERNEL_CASES["7x7_s2_p3_c3_stem"][0]):
        src = _compile_gemm_cuda(arch, s)
        assert plan.step.ptx in src
        ptx = _nvcc(src, "ptx", arch).decode()
        assert f".target {arch}" in ptx
        assert plan.step.ptx in ptx and LDMATRIX in ptx
        assert (MMA in ptx) == (arch != "sm_75")
        cubin = _nvcc(src, "cubin", arch)
        assert cubin[:4] == b"\x7fELF"


@needs_nvcc
@pytest.mark.parametrize("name,arch,instructions", [
    ("resnet20_uniform8", "sm_90", {MMA}),
    ("resnet20_uniform4", "sm_80", {MMA, MMA_S4}),          # 8-bit stem and classifier, s4 in between
    ("resnet20_uniform8", "sm_75", {MMA_SM75}),
    # sm_75's s4 MMA: the same program as the sm_80 case with older instructions (suite time: slow)
    pytest.param("resnet20_uniform4", "sm_75", {MMA_SM75, MMA_S4_SM75}, marks=pytest.mark.slow),
])
def test_whole_program_ptx_per_sm(name, arch, instructions):
    """Every kernel of a cross-compiled program (GEMMs with fused epilogues, the quantizer, the
    pooling, the lone requantizations) through nvcc and ptxas for its GPU: the PTX holds exactly the
    MMA shapes that GPU's plans use, and ldmatrix."""
    graph, exe, src, plans = _cross_compiled(name, arch)
    assert len(plans) == _gemm_layers(graph) and {p.step.ptx for p in plans} == instructions
    ptx = _nvcc(src, "ptx", arch).decode()
    assert f".target {arch}" in ptx and LDMATRIX in ptx
    assert {i for i in ALL_MMA if i in ptx} == instructions
    assert _nvcc(src, "cubin", arch)[:4] == b"\x7fELF"


@needs_nvcc
def test_no_tensor_cores_before_turing_is_the_generic_program(monkeypatch):
    """Volta (sm_70: no integer mma.sync): the plan declines and the program is TVM's generic GPU one
    (no mma.sync, no ldmatrix, no GEMM kernel called); it is valid CUDA (ptxas for sm_75: nvcc 13
    builds nothing older)."""
    assert plan_tensorcore(70, "uint8", 0, 255, W_SMALL, 1) is None
    _cross_arch(monkeypatch, "sm_70")
    graph, _ = _program("resnet20_uniform8")
    built = compile_program(graph, (2, 3, 32, 32), "cuda")
    src = _cuda_source(built.executable)
    assert src.count("__global__") > 10 and "mma.sync" not in src and "ldmatrix" not in src
    assert not _gemm_calls(built.executable)
    assert _nvcc(src, "cubin", "sm_75")[:4] == b"\x7fELF"


# --------------------------------------------------------------------------- integer-only IR
def test_ir_is_integer_only():
    """The tensor-core program is integer-only after the input quantizer: its Relax module, its
    lowered kernels, and the scheduled GEMMs (emulated loops and PTX intrinsics alike)."""
    graph, _ = _program("resnet20_uniform8")
    mod = build_module(graph, (1, 3, 32, 32), planner=functools.partial(plan_tensorcore, 90, emulate=True))
    assert sum(str(gv.name_hint).startswith("conv2d_tensorcore") for gv in mod.get_global_vars()) > 0
    assert float_violations(mod) == []
    for emulate in (True, False):
        lowered = lower(mod)
        first = lowered["main"].body.blocks[0].bindings[0]
        assert "float32" in lowered[first.value.args[0]].script()       # the input quantizer only
        scheduled = schedule_tensorcore(lowered, emulate)
        gemms = [gv for gv, f in scheduled.functions.items()
                 if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and "tirx.is_scheduled" in f.attrs]
        assert len(gemms) >= 8 and all(GEMM in scheduled[gv].script() for gv in gemms)
        text = scheduled.script()
        assert ("ptx_legacy.mma" in text and "ptx_legacy.ldmatrix" in text) != emulate
        assert kernel_float_violations(scheduled) == []


# --------------------------------------------------------------------------- binary (b1 .xor.popc)
B1_CASES = {
    "3x3_s1_p1_c64": GemmShape(2, (8, 8), 64, 64, (3, 3), (1, 1), (1, 1), 1),
    # stride 2, 12 channels (K = 108 bits: bytes straddle taps), 96 outputs (two N tiles, N padding)
    "3x3_s2_p1_c12_n96": GemmShape(1, (7, 7), 12, 96, (3, 3), (2, 2), (1, 1), 1),
    "5x5_s1_p2_c16": GemmShape(1, (6, 6), 16, 64, (5, 5), (1, 1), (2, 2), 1),
}


@pytest.mark.parametrize("case", [c if c == "3x3_s2_p1_c12_n96" else pytest.param(c, marks=pytest.mark.slow)
                                  for c in B1_CASES])                                    # suite time
def test_b1_kernel_is_the_zero_padded_signed_convolution(case):
    """The emulated b1 GEMM (sign bits packed while staging, popcount of XOR per fragment, the
    epilogue's K_valid − 2·(count − padded taps' −1 weights)) == the int64 ±1 convolution with zero
    padding: random signs, all −1 against an all −1 channel (every tap +1: the border values are
    exactly the valid tap counts) and all +1 against it."""
    s = B1_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    w = rng.choice(np.array([-1, 1], np.int8), (s.out_channels, s.channels, *s.ksize))
    w[0], w[1] = -1, 1
    plan = plan_tensorcore(90, "int8", -1, 1, w, 1, emulate=True, binary=True)
    assert plan.bits == 1 and plan.step.ptx == MMA_B1
    packed = plan.pack(w, s)
    assert packed.shape == (s.np_, s.weight_bytes) and s.weight_bytes == s.kp_bytes + 64
    lib = tvm.compile(schedule_tensorcore(tvm.IRModule({"main": gemm_func(s, 0).with_attr("global_symbol", "main")}),
                                          emulate=True), target="llvm")
    shape = (s.batch, *s.in_hw, s.channels)
    for d in (rng.choice(np.array([-1, 1], np.int8), shape), np.full(shape, -1, np.int8), np.ones(shape, np.int8)):
        out = tvm.runtime.tensor(np.zeros((s.batch, *s.out_hw, s.out_channels), "int32"))
        lib(tvm.runtime.tensor(d), tvm.runtime.tensor(packed), out)
        np.testing.assert_array_equal(out.numpy(), _ref_conv(d, w, s, 0))
    corner = _ref_conv(np.full(shape, -1, np.int8), w, s, 0)[0, 0, 0, 0]
    assert corner == s.channels * (s.ksize[0] - s.pad[0]) * (s.ksize[1] - s.pad[1])


def test_b1_plan_needs_signs_on_both_sides():
    w = np.resize(np.array([-1, 1], np.int8), (16, 8, 3, 3))
    for sm in (75, 80, 90):
        assert plan_tensorcore(sm, "int8", -1, 1, w, 1, binary=True).bits == 1
    assert plan_tensorcore(90, "int8", -1, 1, w, 1).bits == 8                     # not marked binary
    zero = w.copy()
    zero[3, 2, 1, 1] = 0
    assert plan_tensorcore(90, "int8", -1, 1, zero, 1, binary=True).bits == 8     # a 0 weight is no sign
    assert plan_tensorcore(90, "int8", -2, 1, w, 1, binary=True).bits == 8
    assert plan_tensorcore(70, "int8", -1, 1, w, 1, binary=True) is None


@needs_nvcc
@pytest.mark.parametrize("arch", [pytest.param("sm_80", marks=pytest.mark.slow), "sm_90",
                                  pytest.param("sm_75", marks=pytest.mark.slow)])     # suite time
def test_b1_ptx_per_sm(arch):
    """The b1 GEMM for ``arch`` through nvcc and ptxas: m16n8k256 (m8n8k128 ×8 on sm_75) with
    .xor.popc in the PTX, a cubin for that GPU."""
    s = B1_CASES["3x3_s2_p1_c12_n96"]
    plan = plan_tensorcore(sm_number(arch), "int8", -1, 1, np.ones((96, 12, 3, 3), np.int8), 1, binary=True)
    func = plan.prim_func(s, 0).with_attr("global_symbol", "main")
    target = tvm.target.Target({"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
                                "max_shared_memory_per_block": 49152, "thread_warp_size": 32}, host="llvm")
    src = _cuda_source(tvm.compile(schedule_tensorcore(tvm.IRModule({"main": func})), target=target))
    ptx = _nvcc(src, "ptx", arch).decode()
    assert plan.step.ptx == (MMA_B1_SM75 if arch == "sm_75" else MMA_B1) and plan.step.ptx in ptx
    assert {i for i in ALL_MMA if i in ptx} == {plan.step.ptx} and LDMATRIX in ptx
    assert _nvcc(src, "cubin", arch)[:4] == b"\x7fELF"


def test_binary_program_runs_its_sign_convolutions_on_b1(emulated_sm90, monkeypatch):
    """A user's binary network (tests/hawq/test_binary.py's: stem, two binary convs with shortcuts,
    classifier) as one emulated CUDA program: the two binary convs on b1, the stem and classifier on
    s8, logits == the reference."""
    import hawq
    import torch
    from hawq.quant.config import QuantConfig
    plans = _record_plans(monkeypatch)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 16, 16)
    q = hawq.prepare_qat(UserBinary(), x, scheme="binary", config=QuantConfig(quantizer="xnor"))
    q(x)
    graph = hawq.export_program(q.eval(), input_shape=(3, 16, 16)).to_dict()
    run = tvm_runner(graph, (2, 3, 16, 16), "cuda", threads=None, emulate=True)
    assert sorted(p.bits for p in plans if p is not None) == [1, 1, 8, 8]
    xs = (torch.randn(2, 3, 16, 16) * 2).numpy()
    ref = run_graph(graph, xs)
    np.testing.assert_array_equal(run(xs), ref)
    assert len(np.unique(ref)) > 4
