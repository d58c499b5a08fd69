"""TVM backend on the node fields of numeric profile ``hawq`` (docs/numerics.md §15): reciprocal input
quantizer, half-to-even requantization, int32 residual, truncating average pool, signed 8-bit
activations. TVM (scheduled and untuned) must equal :func:`hawq.reference.run_graph` integer for integer."""
from __future__ import annotations

import copy
import math
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch
import tvm

from conftest import build_calibrated, tvm_outputs, tvm_runner
from hawq.export import export_integer
from hawq.reference import run_graph
from tvm_benchmark import schedules as S
from tvm_benchmark.compile import compile_program
from tvm_benchmark.ir_check import float_violations
from tvm_benchmark.frontend import build_module, value_ranges
from tvm_benchmark.isa import ISAS

INT32 = (-(1 << 31), (1 << 31) - 1)
INT16 = (-(1 << 15), (1 << 15) - 1)
# fast=None: the hand-scheduled NHWC program (tensorized convs) on AVX2 hosts; False: --untuned.
SCHEDULED, UNTUNED = None, False


def _conv_kernels(graph, shape, isa: str = "avx2") -> dict[str, str]:
    """conv node name -> the kernel ``isa``'s program calls for it (``pmaddwd_256``, ...)."""
    mod = build_module(graph, shape, planner=lambda *a: S.plan_conv(ISAS[isa], *a))
    called = [str(b.value.args[0].name_hint).split("__")[0]
              for block in mod["main"].body.blocks for b in block.bindings
              if isinstance(b.value, tvm.relax.Call) and getattr(b.value.op, "name", "") == "relax.call_tir"]
    convs = [n["name"] for n in graph["nodes"] if n["op"] == "conv2d"]
    assert len(called) <= len(convs)
    return dict(zip(convs, [c.replace("conv2d_", "") for c in called])) if len(called) == len(convs) else {}


def _assert_all_equal(out: list, graph: dict, env: dict) -> None:
    for (node, got) in zip(graph["nodes"], out):
        want = env[node["output"]]
        assert got.shape == want.shape, node["name"]
        bad = int((got != want).sum())
        assert bad == 0, f"{node['name']}: {bad}/{want.size} mismatches"


# --------------------------------------------------------------------------- hawq-style graphs
def hawq_style(graph: dict) -> dict:
    """An exact-profile graph rewritten with profile hawq's node fields: reciprocal symmetric int8
    input quantizer, half-even requantization, int32 residual bounds, truncating average pool (the
    following requant's 2^-log2(N) folded back out of its shift, so its scale stays sensible)."""
    g = copy.deepcopy(graph)
    pooled = {}
    for n in g["nodes"]:
        if n["op"] == "quantize":
            n.update(reciprocal=True, zero_point=0, qmin=-128, qmax=127)
        elif n["op"] in ("requant", "requant_add"):
            n["rounding"] = "half_even"
            if n["op"] == "requant_add":
                n["qmin"], n["qmax"] = INT32
            k = pooled.get(n["inputs"][0])
            if k and int(n["shift"].min()) - k >= 1:
                n["shift"] = n["shift"] - k
        elif n["op"] == "global_avgpool_sum":
            n["op"] = "global_avgpool_trunc"
            divisor = int(n["divisor"])
            if divisor & (divisor - 1) == 0:
                pooled[n["output"]] = divisor.bit_length() - 1
    assert any(n["op"] == "global_avgpool_trunc" for n in g["nodes"])
    return g


@pytest.fixture(scope="module")
def hawq_models():
    """Profile hawq resnet20 models, exported natively: {scheme: (graph, probe [3,3,32,32])}."""
    out = {}
    for scheme in ("uniform8", "uniform4"):
        model, probe = build_calibrated("resnet20_cifar10", scheme, 10, (3, 3, 32, 32), numerics="hawq")
        graph = export_integer(model, (3, 32, 32))["graph"]
        np.testing.assert_array_equal(run_graph(graph, probe.numpy()), model.forward_int(probe).numpy())
        out[scheme] = graph, probe.numpy()
    return out


@pytest.mark.parametrize("scheme,fast", [("uniform8", SCHEDULED), ("uniform4", SCHEDULED), ("uniform8", UNTUNED)])
def test_hawq_profile_export_bit_exact(hawq_models, scheme, fast):
    graph, x = hawq_models[scheme]
    nodes = graph["nodes"]
    assert nodes[0]["op"] == "quantize" and nodes[0]["reciprocal"] and int(nodes[0]["qmin"]) == -128
    assert all(n["rounding"] == "half_even" for n in nodes if n["op"] in ("requant", "requant_add"))
    assert all((n["qmin"], n["qmax"]) == INT32 for n in nodes if n["op"] == "requant_add")
    assert [n["op"] for n in nodes].count("global_avgpool_trunc") == 1
    ref = run_graph(graph, x)
    np.testing.assert_array_equal(tvm_outputs(graph, x, fast=fast), ref)
    assert np.abs(ref).max() > 0


def test_hawq_profile_ranges_and_kernel_choice(hawq_models):
    """Signed-declared post-ReLU activations are proven [0, 127] (uint8, vpmaddubsw exact for any int8
    weight); the signed input quantizer's int8 stays on vpmaddwd; residuals are int32."""
    for scheme, (graph, x) in hawq_models.items():
        ranges = value_ranges(graph, x.shape)
        convs = [n for n in graph["nodes"] if n["op"] == "conv2d"]
        stem, rest = convs[0], convs[1:]
        assert ranges[stem["inputs"][0]] == (-128, 127)
        assert all(0 <= ranges[n["inputs"][0]][0] and ranges[n["inputs"][0]][1] <= 127 for n in rest)
        assert all(ranges[n["output"]] == INT32 for n in graph["nodes"] if n["op"] == "requant_add")
        kernels = _conv_kernels(graph, x.shape)
        assert kernels[stem["name"]] == "pmaddwd_256"
        assert all(kernels[n["name"]].startswith("pmaddubsw_256") for n in rest), (scheme, kernels)
        vnni = _conv_kernels(graph, x.shape, "vnni")      # the signed stem: vpdpbusd on q + 128
        assert set(vnni.values()) == {"vpdpbusd_512"}
    avx2 = ISAS["avx2"]
    plan = S.plan_conv(avx2, "int8", -128, 127, np.full((8, 4, 1, 1), -128, np.int8), 1)
    assert plan.kernel.name == "pmaddwd_256" and plan.act_shift == 0
    plan = S.plan_conv(avx2, "uint8", 0, 127, np.full((8, 4, 1, 1), -128, np.int8), 1)   # 2·127·128
    assert plan.kernel.name == "pmaddubsw_256_g1"
    plan = S.plan_conv(ISAS["vnni"], "int8", -128, 127, np.full((16, 4, 1, 1), -128, np.int8), 1)
    assert plan.kernel.name == "vpdpbusd_512" and plan.act_shift == 128


def test_hawq_style_exact_graph_bit_exact(small_model):
    """An exact-profile export rewritten with the hawq fields (the batch-4 probe of test_tvm.py)."""
    model, probe = small_model
    graph = hawq_style(export_integer(model, (3, 32, 32))["graph"])
    x = probe.numpy()
    out = tvm_outputs(graph, x, fast=SCHEDULED, all_outputs=True)
    _, env = run_graph(graph, x, keep=True)
    _assert_all_equal(out, graph, env)
    assert np.abs(env[graph["output"]]).max() > 0


def test_ir_is_integer_only_with_profile_fields(hawq_models):
    graph, x = hawq_models["uniform8"]
    assert float_violations(build_module(graph, (1, *x.shape[1:]))) == []


# --------------------------------------------------------------------------- input quantizer
def _quantize_graph(scale: np.float32, z: int, qmin: int, qmax: int, reciprocal: bool | None) -> dict:
    node = {"op": "quantize", "name": "quant_input", "inputs": ["input"], "output": "quant_input:out",
            "scale": torch.tensor([scale], dtype=torch.float32), "zero_point": z, "qmin": qmin, "qmax": qmax,
            "bits": 8}
    if reciprocal is not None:
        node["reciprocal"] = reciprocal
    return {"input": "input", "output": node["output"], "nodes": [node]}


def _hard_inputs(scale: np.float32, z: int) -> np.ndarray:
    """Float inputs around every half step of the grid (± 4 ulps) plus random ones: where 1/S·x and x/S
    round differently, and where an FMA-contracted 1/S·x + z would differ from two roundings."""
    r = np.float32(1.0) / scale
    k = np.arange(-200, 200, dtype=np.float64) + 0.5 - z
    base = (k / np.float64(r)).astype(np.float32)
    xs = [base]
    up, down = base.copy(), base.copy()
    for _ in range(4):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        xs += [up, down]
    xs.append(np.random.RandomState(0).randn(4000).astype(np.float32) * np.float32(100) * scale)
    return np.concatenate(xs).astype(np.float32)


@pytest.mark.parametrize("z,qmin,qmax", [(0, -128, 127), (37, 0, 255)])
def test_reciprocal_quantizer_matches_reference(z, qmin, qmax):
    scale = np.float32(0.0371)
    flat = _hard_inputs(scale, z)
    n = -(-flat.size // (3 * 8 * 8)) * 3 * 8 * 8
    x = np.resize(flat, n).reshape(-1, 3, 8, 8).astype(np.float32)
    g = _quantize_graph(scale, z, qmin, qmax, True)
    ref = run_graph(g, x)
    # The inputs do tell the rules apart: divide, and (z != 0) a fused multiply-add, give other integers.
    r64, x64 = np.float64(np.float32(1.0) / scale), x.astype(np.float64)
    divide = np.clip(np.round(x / scale) + np.float32(z), qmin, qmax) - z
    fused = np.clip(np.round((r64 * x64 + z).astype(np.float32)), qmin, qmax) - z
    assert (divide != ref).sum() > 0
    assert z == 0 or (fused != ref).sum() > 0
    np.testing.assert_array_equal(run_graph(_quantize_graph(scale, z, qmin, qmax, None), x), divide)
    for fast in (SCHEDULED, UNTUNED):
        np.testing.assert_array_equal(tvm_outputs(g, x, fast=fast), ref)
    mod = build_module(g, (1, 3, 8, 8))
    assert float_violations(mod) == []
    ops = {str(b.value.op.name) for block in mod["main"].body.blocks for b in block.bindings
           if isinstance(b.value, tvm.relax.Call)}
    assert "relax.multiply" in ops and "relax.divide" not in ops
    plain = build_module(_quantize_graph(scale, z, qmin, qmax, False), (1, 3, 8, 8))
    assert "relax.divide" in {str(b.value.op.name) for block in plain["main"].body.blocks for b in block.bindings
                              if isinstance(b.value, tvm.relax.Call)}


# --------------------------------------------------------------------------- ties
C, HW = 8, 4
M30 = 1 << 30
TIE_M = np.array([M30, M30, M30, 3 << 28, M30, 3 << 28, M30, M30], np.int64)
TIE_S = np.array([31, 32, 33, 32, 31, 32, 33, 32], np.int64)     # ratios 1/2, 1/4, 1/8, 3/16


def _conv(name, src, w, bias) -> dict:
    return {"op": "conv2d", "name": name, "inputs": [src], "output": f"{name}:out", "weight": torch.from_numpy(w),
            "bias": torch.from_numpy(bias), "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1,
            "weight_bits": 8, "weight_scale": torch.ones(w.shape[0])}


def _requant(name, src, m, s, qmin, qmax, rounding, op="requant", identity=None) -> dict:
    n = {"op": op, "name": name, "inputs": [src] if identity is None else [src, identity[0]],
         "output": f"{name}:out", "multiplier": torch.from_numpy(np.asarray(m, np.int64)),
         "shift": torch.from_numpy(np.asarray(s, np.int64)), "qmin": qmin, "qmax": qmax, "zero_point": 0, "bits": 8}
    if identity is not None:
        n["identity_multiplier"] = torch.from_numpy(np.asarray(identity[1], np.int64))
        n["identity_shift"] = torch.from_numpy(np.asarray(identity[2], np.int64))
    if rounding is not None:
        n["rounding"] = rounding
    return n


def tie_graph(rounding: str | None) -> dict:
    """quantize (scale 1) -> requant with dyadic ratios 1/2, 1/4, 1/8, 3/16 (ties everywhere, both
    signs); relu -> requant (int8-declared, proven [0,127]) -> conv (vpmaddubsw, weights at ±128) and
    the signed q -> conv (vpmaddwd); requant_add of the two at ratios 1/4 and 1/2 into int32; relu;
    requant_add with that int32 value as identity; truncating pools of signed and relu'd int32 sums."""
    rng = np.random.RandomState(1)
    w_u = rng.randint(-128, 128, size=(C, C, 3, 3)).astype(np.int8)
    w_u[0], w_u[1] = -128, 127                       # pair sums 2·127·(±128): vpmaddubsw's edge
    w_s = rng.randint(-128, 128, size=(C, C, 3, 3)).astype(np.int8)
    b_u, b_s = rng.randint(-5000, 5000, C).astype(np.int32), rng.randint(-5000, 5000, C).astype(np.int32)
    quant = _quantize_graph(np.float32(1.0), 0, -128, 127, True)["nodes"][0]
    nodes = [
        quant,
        _requant("r_tie", "quant_input:out", TIE_M, TIE_S, -128, 127, rounding),
        {"op": "relu", "name": "relu0", "inputs": ["quant_input:out"], "output": "relu0:out"},
        _requant("r_pos", "relu0:out", [M30], [30], -128, 127, rounding),
        _conv("conv_u", "r_pos:out", w_u, b_u),
        _conv("conv_s", "quant_input:out", w_s, b_s),
        _requant("add", "conv_u:out", [M30], [32], *INT32, rounding, op="requant_add",
                 identity=("conv_s:out", [M30], [31])),
        {"op": "relu", "name": "relu1", "inputs": ["add:out"], "output": "relu1:out"},
        _requant("add2", "conv_u:out", TIE_M, TIE_S, *INT32, rounding, op="requant_add",
                 identity=("relu1:out", [3 << 28], [31])),
        {"op": "global_avgpool_trunc", "name": "pool_signed", "inputs": ["add2:out"], "output": "pool_signed:out",
         "divisor": HW * HW},
        {"op": "global_avgpool_trunc", "name": "pool", "inputs": ["relu1:out"], "output": "pool:out",
         "divisor": HW * HW},
    ]
    return {"input": "input", "output": "pool:out", "nodes": nodes}


def _tie_input(batch: int) -> np.ndarray:
    x = np.random.RandomState(batch).randint(-140, 141, size=(batch, C, HW, HW)).astype(np.float32)
    x[0, :, 0, :] = 127                              # a saturated patch for the ±128 weight rows
    x[0, :, 1, :] = -128
    for c in range(C):                               # rows of exact ties for each channel's ratio
        ties = [v for v in range(-127, 128) if (v * int(TIE_M[c])) % (1 << int(TIE_S[c])) == 1 << int(TIE_S[c] - 1)]
        neg, pos = [v for v in ties if v < 0], [v for v in ties if v > 0]
        x[:, c, 2, :], x[:, c, 3, :] = pos[:HW], neg[-HW:]     # the negative ties nearest 0 (-0.5, -1.5, ...)
    return x


def _py_round(a: int, m: int, s: int, rounding: str) -> int:
    f = Fraction(a * m, 1 << s)
    return round(f) if rounding == "half_even" else math.floor(f + Fraction(1, 2))


def _py_requant(acc: np.ndarray, m, s, rounding: str) -> np.ndarray:
    """Independent Python-int requantization of an NCHW int array, per channel."""
    m, s = np.broadcast_to(m, (acc.shape[1],)), np.broadcast_to(s, (acc.shape[1],))
    out = np.empty(acc.shape, dtype=object)
    for idx in np.ndindex(acc.shape):
        out[idx] = _py_round(int(acc[idx]), int(m[idx[1]]), int(s[idx[1]]), rounding)
    return out


def _py_clip(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.vectorize(lambda v: min(max(v, lo), hi), otypes=[object])(a)


def _py_pool(a: np.ndarray, n: int) -> np.ndarray:
    sums = a.astype(object).sum(axis=(2, 3))
    return np.vectorize(lambda t: int(Fraction(100 * t + n, 100 * n)), otypes=[object])(sums)   # int(): toward 0


def _py_expected(env: dict, rounding: str) -> dict:
    """r_tie, add, add2 and both pools from Python ints (conv outputs taken from the reference)."""
    q = np.clip(env["input"].astype(np.int64), -128, 127)
    exp = {"r_tie:out": _py_clip(_py_requant(q, TIE_M, TIE_S, rounding), -128, 127)}
    exp["add:out"] = _py_clip(_py_requant(env["conv_u:out"], [M30], [32], rounding)
                              + _py_requant(env["conv_s:out"], [M30], [31], rounding), *INT32)
    relu1 = np.vectorize(lambda v: max(v, 0), otypes=[object])(exp["add:out"])
    exp["add2:out"] = _py_clip(_py_requant(env["conv_u:out"], TIE_M, TIE_S, rounding)
                               + _py_requant(relu1.astype(np.int64), [3 << 28], [31], rounding), *INT32)
    exp["pool_signed:out"] = _py_pool(exp["add2:out"], HW * HW)
    exp["pool:out"] = _py_pool(relu1, HW * HW)
    return exp


@pytest.fixture(scope="module")
def tie_programs():
    """Compiled tie graphs, cached by (rounding, fast, batch)."""
    cache = {}

    def get(rounding, fast, batch):
        key = (rounding, fast, batch)
        if key not in cache:
            cache[key] = tvm_runner(tie_graph(rounding), (batch, C, HW, HW), fast=fast, all_outputs=True)
        return cache[key]
    return get


@pytest.mark.parametrize("fast,batch", [(SCHEDULED, 1), (SCHEDULED, 3), (UNTUNED, 4)])
def test_half_even_ties_tvm_equals_reference_equals_python(tie_programs, fast, batch):
    graph, x = tie_graph("half_even"), _tie_input(batch)
    _, env = run_graph(graph, x, keep=True)
    _assert_all_equal(tie_programs("half_even", fast, batch)(x), graph, env)
    for name, want in _py_expected(env, "half_even").items():
        np.testing.assert_array_equal(env[name], want.astype(np.int64), err_msg=name)
    # The graph is a real test: ties of both signs, half-even and half-up disagree, int32 residuals.
    q = np.clip(x.astype(np.int64), -128, 127)
    frac = (q * TIE_M.reshape(1, -1, 1, 1)) % (1 << TIE_S.reshape(1, -1, 1, 1))
    tie = frac == (1 << (TIE_S.reshape(1, -1, 1, 1) - 1))
    assert (tie & (q > 0)).sum() > 10 and (tie & (q < 0)).sum() > 10
    up = _py_expected(env, "half_up")
    for name in ("r_tie:out", "add:out", "add2:out"):
        assert (up[name].astype(np.int64) != env[name]).sum() > 0, name
    assert env["add:out"].max() > INT16[1] and env["add:out"].min() < INT16[0]
    assert env["add2:out"].max() > INT16[1] and env["pool_signed:out"].min() < 0


def test_ignoring_the_rounding_field_would_fail(tie_programs):
    """half_even and the field-less (half_up) programs disagree on the tie graph, in TVM as in the
    reference, and the field-less one is half up exactly."""
    x = _tie_input(3)
    even = tie_programs("half_even", SCHEDULED, 3)(x)
    up = tie_programs(None, SCHEDULED, 3)(x)
    graph_up = tie_graph(None)
    _, env_up = run_graph(graph_up, x, keep=True)
    _assert_all_equal(up, graph_up, env_up)
    for name, want in _py_expected(env_up, "half_up").items():
        np.testing.assert_array_equal(env_up[name], want.astype(np.int64), err_msg=name)
    names = [n["output"] for n in graph_up["nodes"]]
    for name in ("r_tie:out", "add:out", "add2:out"):
        i = names.index(name)
        assert (even[i] != up[i]).sum() > 0, name


def test_tie_graph_kernels_and_bounds():
    """r_pos (qmin -128 on a relu'd input) is proven [0, 127]: uint8, so conv_u takes vpmaddubsw (its
    ±128 weight rows are exact there); conv_s reads signed int8 and takes vpmaddwd."""
    graph = tie_graph("half_even")
    ranges = value_ranges(graph, (1, C, HW, HW))
    assert ranges["r_pos:out"] == (0, 127) and ranges["r_tie:out"] == (-128, 127)
    assert ranges["add:out"] == INT32 and ranges["relu1:out"] == (0, INT32[1])
    assert _conv_kernels(graph, (1, C, HW, HW)) == {"conv_u": "pmaddubsw_256_g1", "conv_s": "pmaddwd_256"}


# --------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler (nvcc) on this machine")
def test_profile_graphs_cross_compile_for_cuda(monkeypatch):
    monkeypatch.setenv("HAWQ_CUDA_ARCH", "sm_90")
    for graph, shape in [(tie_graph("half_even"), (2, C, HW, HW)),
                         (_quantize_graph(np.float32(0.0371), 37, 0, 255, True), (2, 3, 8, 8))]:
        built = compile_program(graph, shape, "cuda")
        exe, target = built.executable, built.target
        assert "sm_90" in str(target) and exe is not None


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU visible to TVM")
def test_profile_graphs_cuda_bit_exact(hawq_models):
    """On CUDA too (where nvcc would contract a bare multiply-add into an FMA)."""
    scale = np.float32(0.0371)
    x = np.resize(_hard_inputs(scale, 37), 3 * 3 * 8 * 8 * 8).reshape(-1, 3, 8, 8).astype(np.float32)
    cases = [(_quantize_graph(scale, 37, 0, 255, True), x), (tie_graph("half_even"), _tie_input(3)),
             hawq_models["uniform8"]]
    for graph, inp in cases:
        np.testing.assert_array_equal(tvm_outputs(graph, inp, "cuda"), run_graph(graph, inp))


# --------------------------------------------------------------------------- profile ort
def test_ort_profile_bit_exact_and_only_its_float_step():
    """Profile ort (docs/numerics.md §17): the float32 requantization kernels and the QLinearAdd
    tables give the reference's integers in the scheduled and the untuned program, every node; the
    IR check accepts exactly that float step and refuses the same kernel with a division in it."""
    model, probe = build_calibrated("resnet20_cifar10", "uniform8", 10, (4, 3, 32, 32), numerics="ort")
    graph = export_integer(model, (3, 32, 32))["graph"]
    x = probe.numpy()
    _, env = run_graph(graph, x, keep=True)
    for fast in (SCHEDULED, UNTUNED):
        _assert_all_equal(tvm_outputs(graph, x, fast=fast, all_outputs=True), graph, env)
    mod = build_module(graph, (1, 3, 32, 32))
    assert float_violations(mod) == []

    from tvm import te, tirx
    from tvm_benchmark.frontend import FLOAT_REQUANT_KERNEL
    bb = tvm.relax.BlockBuilder()
    v = tvm.relax.Var("x", tvm.relax.TensorType((1, 4), "int32"))
    with bb.function("main", [v]):
        with bb.dataflow():
            div = lambda a, m: te.compute(a.shape, lambda i, j: tirx.nearbyint(a[i, j].astype("float32") / m[0]).astype("int32"))
            y = bb.emit_te(div, v, tvm.relax.const(np.ones(1, np.float32)), primfunc_name_hint=FLOAT_REQUANT_KERNEL)
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    bad = float_violations(bb.get())
    assert len(bad) == 1 and FLOAT_REQUANT_KERNEL in bad[0]
