"""Profile ``ort`` and its QDQ export (docs/numerics.md §17): the float32 rules are ONNX Runtime's
(checked against ORT's own kernels, including the cases a simpler rule gets wrong), whole models are
exact from QAT eval through the reference to ORT, ORT fuses every group into its int8 kernels, and
the profile's bad inputs are one-line errors."""
from __future__ import annotations

import copy
import os
from collections import Counter
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import ROOT, build_calibrated, cli, needs_fmnist
from hawq import ir
from hawq import numerics as N
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.export_onnx import OnnxProgram, exact_format, to_onnx
from hawq.reference import run_graph
from hawq.verify import compare_layers

F32 = np.float32


def _session(model: onnx.ModelProto, path=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    if path:
        so.optimized_model_filepath = str(path)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _exact_rn32(x, y, z) -> np.float32:
    """RN32(x·y + z) by exact rational arithmetic (ties to even)."""
    v = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
    r = np.float32(float(v))
    cands = [np.nextafter(r, F32(-np.inf)), r, np.nextafter(r, F32(np.inf))]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - v), int(np.float32(c).view(np.uint32)) & 1))


def test_fma32_rounds_once_including_the_double_rounding_tie():
    """x·y = 1 + 2^-11 + 2^-24 is exactly halfway between two float32 values; a tiny z decides the
    direction, which rounding through float64 loses (it ties to even, downwards)."""
    x = y = F32(1 + 2 ** -12)
    for z, up in ((F32(2 ** -60), True), (F32(-2 ** -60), False)):
        naive = F32(float(x) * float(y) + float(z))
        got = N.fma32(x, y, z)
        assert got == _exact_rn32(x, y, z)
        assert (got > naive) == up and (got != naive) == up
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 256, 500).astype(F32), rng.random(500).astype(F32)
    zs = (rng.standard_normal(500) * 300).astype(F32)
    got = N.fma32(xs, ys, zs)
    assert all(got[i] == _exact_rn32(xs[i], ys[i], zs[i]) for i in range(500))


def _qdq_add_model(sa, za, sb, zb, sc, zc) -> onnx.ModelProto:
    c = lambda n, v, dt: numpy_helper.from_array(np.array(v, dtype=dt), n)
    inits = [c("sa", sa, F32), c("za", za, np.uint8), c("sb", sb, F32), c("zb", zb, np.uint8),
             c("sc", sc, F32), c("zc", zc, np.uint8)]
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["ad"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["bd"]),
             helper.make_node("Add", ["ad", "bd"], ["s"]), helper.make_node("QuantizeLinear", ["s", "sc", "zc"], ["y"])]
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.UINT8, [256, 256])
    g = helper.make_graph(nodes, "add", [vi("a"), vi("b")], [vi("y")], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    return m


def test_qlinear_add_table_is_onnxruntimes_and_needs_the_fma(tmp_path):
    """Every one of the 65536 input pairs, for random grids: the table equals ORT's fused QLinearAdd;
    the same formula without FMAs differs from ORT somewhere (so the rule is really the FMA one)."""
    rng = np.random.default_rng(3)
    a, b = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8), indexing="ij")
    unfused_differs = 0
    for trial in range(12):
        sa, sb, sc = (F32(v) for v in rng.uniform(0.002, 0.2, 3))
        za, zb, zc = (int(v) for v in rng.integers(0, 256, 3))
        sess = _session(_qdq_add_model(sa, za, sb, zb, sc, zc), tmp_path / "opt.onnx")
        if trial == 0:
            assert [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node] == ["QLinearAdd"]
        y = sess.run(None, {"a": a, "b": b})[0].astype(np.int64)
        table = N.qlinear_add_table(sa, za, sb, zb, sc, zc, 0, 255).astype(np.int64) + zc
        assert np.array_equal(table, y), trial
        ra, rb = F32(sa / sc), F32(sb / sc)
        f = F32(F32(zc) - F32(ra * F32(za) + F32(rb * F32(zb))))
        plain = np.clip(np.round((a.astype(F32) * ra) + ((b.astype(F32) * rb) + f)), 0, 255)
        unfused_differs += int((plain != y).sum())
    assert unfused_differs > 0


def _conv_requant_graph(rng, c_in=32, c_out=6):
    """quantize -> conv -> requant_float with accumulators around 1.05·2^24 (biases put them there:
    f32(acc) rounds) and a grid whose middle they land in, with the profile's scale products."""
    s_x, z_x = F32(0.02), 77
    s_w = rng.uniform(0.004, 0.008, c_out).astype(F32)
    s_acc = (s_x * s_w).astype(F32)
    s_y = F32(float(s_acc.max()) * 1.05 * 2 ** 24 / 128)
    w = rng.integers(0, 128, (c_out, c_in, 3, 3))         # one sign: the sums follow the image
    bias = np.round(1.05 * 2 ** 24 * float(s_acc.max()) / s_acc.astype(np.float64)).astype(np.int64)
    T = torch.tensor
    nodes = [ir.Quantize(name="q", inputs=["x"], output="q", scale=T([s_x]), zero_point=z_x, qmin=0, qmax=255, bits=8),
             ir.Conv2d(name="conv", inputs=["q"], output="conv", weight=T(w, dtype=torch.int8),
                       bias=T(bias, dtype=torch.int32), weight_bits=8, weight_scale=T(s_w), stride=[1, 1],
                       padding=[1, 1], dilation=[1, 1], groups=1),
             ir.RequantFloat(name="rq", inputs=["conv"], output="rq", multiplier=T(N.ort_multiplier(s_acc, s_y)),
                             in_scale=T(s_acc), scale=T([s_y]), count=1, qmin=-9, qmax=246, zero_point=9, bits=8)]
    return ir.Graph("x", "rq", nodes)


def test_requant_float_is_qlinearconvs_beyond_2_24(tmp_path):
    g = _conv_requant_graph(np.random.default_rng(5))
    x = np.random.default_rng(6).uniform(-1.5, 3.5, (4, 1, 9, 9)).repeat(32, axis=1).astype(F32)
    ref = run_graph(g, x)
    assert np.abs(run_graph(g, x, keep=True)[1]["conv"]).min() > 1 << 24
    assert len(np.unique(ref)) > 10                        # the grid is used, not saturated
    model = to_onnx(g, (32, 9, 9), fmt="qdq", numerics="ort")
    sess = _session(model, tmp_path / "opt.onnx")
    assert Counter(n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node)["QLinearConv"] == 1
    assert np.array_equal(sess.run(None, {"x": x})[0], ref)
    assert np.array_equal(OnnxProgram(to_onnx(g, (32, 9, 9), fmt="integer", numerics="ort"))(x), ref)


@pytest.fixture(scope="module")
def ort_models():
    """resnet20 (residual adds with a downsampling identity, ReLU folded) and mobilenetv2_w1
    (asymmetric linear bottlenecks, ReLU6, depthwise) in profile ort, calibrated."""
    out = {}
    for arch in ("resnet20_cifar10", "mobilenetv2_w1"):
        model, probe = build_calibrated(arch, "uniform8", 10, (4, 3, 32, 32), numerics="ort")
        out[arch] = (model, probe, export_integer(model, (3, 32, 32))["graph"])
    return out


@pytest.mark.parametrize("arch", ["resnet20_cifar10", "mobilenetv2_w1"])
def test_ort_models_are_exact_and_fully_fused(ort_models, arch, tmp_path):
    """QAT eval == reference == the QDQ file in ORT == the integer file in ORT, and ORT runs the QDQ
    file as its int8 kernels only: no DequantizeLinear and no float Conv/Add is left."""
    model, probe, graph = ort_models[arch]
    x = probe.numpy()
    ref = run_graph(graph, x)
    assert np.array_equal(model.forward_int(probe).numpy(), ref)
    ops = Counter(n["op"] for n in graph["nodes"])
    assert ops["requant_float"] > 20 and ops["qlinear_add"] >= 9 and not ops["requant"] and not ops["requant_add"]
    qdq = to_onnx(graph, (3, 32, 32), fmt=exact_format("ort"), numerics="ort")
    onnx.checker.check_model(qdq, full_check=True)
    sess = _session(qdq, tmp_path / "opt.onnx")
    assert np.array_equal(sess.run(None, {sess.get_inputs()[0].name: x})[0], ref)
    fused = Counter(n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node)
    assert fused["QLinearConv"] == sum(1 for n in graph["nodes"] if n["op"] == "conv2d")
    assert fused["QLinearAdd"] == ops["qlinear_add"] and fused["QLinearGlobalAveragePool"] == 1
    assert not {"DequantizeLinear", "Conv", "GlobalAveragePool"} & set(fused)
    assert np.array_equal(OnnxProgram(to_onnx(graph, (3, 32, 32), fmt="integer", numerics="ort"))(x), ref)
    u8 = OnnxProgram(to_onnx(graph, (3, 32, 32), fmt="qdq", numerics="ort", qdq_weights="u8"))
    assert np.array_equal(u8(x), ref)


def test_per_layer_compares_every_materialized_value(ort_models):
    model, probe, graph = ort_models["resnet20_cifar10"]
    x = probe.numpy()[:2]
    prog = OnnxProgram(to_onnx(graph, (3, 32, 32), fmt="qdq", numerics="ort", expose=True))
    rows = compare_layers(prog.values(x), graph, x, fused_ok=True)
    fused = [r for r in rows if r["fused"]]
    assert {r["op"] for r in fused} == {"conv2d", "relu", "global_avgpool_sum"}   # a conv's accumulator
    assert all(r["mismatches"] == 0 for r in rows)
    assert sum(r["values"] for r in rows if not r["fused"]) > 10 ** 5


def test_ort_training_step_and_grids(ort_models):
    """Training mode runs (QLinearAdd's operands on their own grids) and backpropagates; the grids
    are ORT's: uint8 everywhere, ResNet's residual outputs unsigned, 8-bit accumulators."""
    model = ort_models["resnet20_cifar10"][0]
    unit = model.stage2.unit1
    assert unit.quant_act_int32.mode == "unsigned" and unit.quant_act_int32.activation_bit == 8
    assert unit.quant_act_int32.quant_branch.mode == "asymmetric"
    assert "stage2.unit1.quant_act_int32.quant_branch" not in model.bit_config()
    model = copy.deepcopy(model).train()          # the fixture's ranges stay as exported
    out = model(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert model.quant_output.weight.grad is not None
    assert model.stage2.unit1.quant_act_int32.quant_identity_branch.calibrated


def test_corrupted_ort_nodes_are_refused(ort_models):
    graph = ort_models["resnet20_cifar10"][2]
    for op, field, change in (("requant_float", "multiplier", lambda t: t * 1.0001),
                              ("qlinear_add", "table", lambda t: t + 1)):
        g = {**graph, "nodes": [dict(n) for n in graph["nodes"]]}
        node = next(n for n in g["nodes"] if n["op"] == op)
        node[field] = change(node[field].clone())
        with pytest.raises(HawqError, match=f"{node['name']}' \\({op}\\)"):
            ir.as_graph(g)


def test_non_8_bit_layers_are_one_line_errors():
    with pytest.raises(HawqError, match="profile ort runs ONNX Runtime's 8-bit kernels: .* is 4-bit"):
        build_calibrated("resnet20_cifar10", "uniform4", 10, (2, 3, 32, 32), numerics="ort")


@needs_fmnist
@pytest.mark.parametrize("args, message", [
    (["--format", "integer", "--weights", "u8"], "--weights applies to --format qdq"),
])
def test_cli_bad_input(tmp_path, args, message):
    """(A QDQ export of an exact-profile checkpoint: tests/hawq/test_export_onnx.py.)"""
    r = cli("-m", "hawq.export_onnx", "--checkpoint", os.path.join(ROOT, "checkpoints", "resnet20_cifar10_uniform8.pth.tar"),
            "--out", str(tmp_path / "m.onnx"), *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "torchvision:mobilenet_v2"])
def test_captured_models_in_profile_ort(arch, tmp_path):
    """A user's model (captured) in profile ort: QAT eval == reference == QDQ in ORT. torchvision's
    MobileNetV2 reads a ReLU6 accumulator outside its fused group: recomputed in integer ops."""
    from hawq.calibrated import calibrated_model, random_batches
    model, size = calibrated_model(arch, "uniform8", random=True, batches=1, input_size=32, numerics="ort")
    graph = export_integer(model, (3, size, size))["graph"]
    x = next(iter(random_batches(size, 2, 2)))[0]
    ref = run_graph(graph, x.numpy())
    assert np.array_equal(model.forward_int(x).numpy(), ref)
    qdq = to_onnx(graph, (3, size, size), fmt="qdq", numerics="ort")
    assert np.array_equal(OnnxProgram(qdq)(x.numpy()), ref)
    recomputed = sum(n.op_type == "ConvInteger" for n in qdq.graph.node)
    assert recomputed == (1 if arch.endswith("mobilenet_v2") else 0)
    if arch.endswith("resnet18"):     # add -> ReLU fused, the pooled stem read twice written once
        fused = Counter(n.op_type for n in onnx.load(_optimized(qdq, tmp_path)).graph.node)
        assert fused["QLinearConv"] == sum(n["op"] == "conv2d" for n in graph["nodes"]) and fused["QLinearAdd"] == 8
        assert not {"DequantizeLinear", "Relu", "Conv"} & set(fused)


def _optimized(model: onnx.ModelProto, tmp_path) -> str:
    path = str(tmp_path / "optimized.onnx")
    _session(model, path)
    return path
