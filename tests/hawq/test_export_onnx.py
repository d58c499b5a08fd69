"""ONNX export (format ``integer``): ONNX Runtime computes the reference's integers, op by op and
for whole models (released checkpoints, profile hawq, a captured torchvision model), and the
program's bad inputs are one-line errors that write nothing."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch

from conftest import ROOT, build_calibrated, cli, corrupt_requant, needs_fmnist
from hawq import ir
from hawq.apps.checks import print_layers
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.export_onnx import OnnxProgram, exact_format, output_scale_of, to_onnx
from hawq.reference import run_graph
from hawq.verify import compare_layers

CKPT = os.path.join(ROOT, "checkpoints", "resnet20_cifar10_{}.pth.tar")
T = torch.tensor


def _ort_matches_reference(graph: ir.Graph, x: np.ndarray, chw=None) -> dict:
    """Every IR value from ONNX Runtime equals the reference's; returns (the ONNX model, ORT's values)."""
    chw = chw or x.shape[1:]
    model = to_onnx(graph, chw, numerics="hawq" if _is_hawq(graph) else "exact", expose=True)
    prog = OnnxProgram(model)
    values = prog.values(x)
    rows = compare_layers(values, graph.to_dict(), x)
    bad = [r for r in rows if r["mismatches"]]
    assert not bad, bad
    assert np.array_equal(prog(x), run_graph(graph, x))
    return model, values


def _is_hawq(graph: ir.Graph) -> bool:
    return any(getattr(n, "rounding", "") == "half_even" or getattr(n, "reciprocal", False) for n in graph.nodes)


def _quantize(reciprocal=False, zp=0, qmin=-128, qmax=127, scale=0.05):
    return ir.Quantize(name="q", inputs=["x"], output="q", scale=T([scale], dtype=torch.float32), zero_point=zp,
                       qmin=qmin, qmax=qmax, bits=8, reciprocal=reciprocal)


def _requant(name, src, c, rng, rounding, qmin=-128, qmax=127, shift_lo=20, shift_hi=30):
    m = rng.integers(1 << 30, 1 << 31, c)
    s = rng.integers(shift_lo, shift_hi, c)
    return ir.Requant(name=name, inputs=[src], output=name, multiplier=T(m), shift=T(s), qmin=qmin, qmax=qmax,
                      zero_point=0, bits=8, rounding=rounding)


def _conv(name, src, w, bias, **kw):
    args = dict(stride=[1, 1], padding=[1, 1], dilation=[1, 1], groups=1) | kw
    return ir.Conv2d(name=name, inputs=[src], output=name, weight=T(w, dtype=torch.int8),
                     bias=T(bias, dtype=torch.int32), weight_bits=8, weight_scale=T(np.ones(w.shape[0])), **args)


@pytest.mark.parametrize("rounding", ["half_up", "half_even"])
def test_every_op_matches_the_reference(rounding):
    """Quantize (both forms), conv with |w| > 64 (u8 weights) and depthwise with small |w| (s8),
    per-channel requant with negative accumulators and ties, clamp, relu, max pool in ceil mode on
    the 8-bit and the float32 path, average pools (sum and HAWQ's trunc), concat, residual add,
    global pools, flatten and dense: every value equals the reference's."""
    rng = np.random.default_rng(1 if rounding == "half_up" else 2)
    hawq = rounding == "half_even"
    c = 6
    w1 = rng.integers(-128, 128, (c, 3, 3, 3))
    dw = rng.integers(-20, 21, (c, 1, 3, 3))
    avg_mode = "trunc_mean" if hawq else "sum"
    nodes = [
        _quantize(reciprocal=hawq, zp=0 if hawq else 3, qmin=-128 if hawq else 0, qmax=127 if hawq else 255),
        _conv("conv", "q", w1, rng.integers(-5000, 5000, c)),
        # the stem's wide max pool (profile hawq pools the accumulator): the float32 path, ceil mode
        ir.MaxPool2d(name="wide_pool", inputs=["conv"], output="wide_pool", kernel=[3, 3], stride=[2, 2],
                     padding=[1, 1], ceil_mode=True),
        _requant("rq", "conv", c, rng, rounding),
        # m·2^-s = 1/2: every odd accumulator is a tie, on both signs
        ir.Requant(name="tie", inputs=["conv"], output="tie", multiplier=T([1 << 30] * c), shift=T([31] * c),
                   qmin=-(1 << 20), qmax=(1 << 20) - 1, zero_point=0, bits=21, rounding=rounding),
        ir.Clamp(name="clamp", inputs=["rq"], output="clamp", qmin=0, qmax=T(rng.integers(40, 127, c))),
        ir.MaxPool2d(name="pool", inputs=["clamp"], output="pool", kernel=[2, 2], stride=[2, 2], padding=[0, 0],
                     ceil_mode=True),
        _conv("dw", "pool", dw, rng.integers(-300, 300, c), groups=c),
        _requant("rq2", "dw", c, rng, rounding, shift_lo=12, shift_hi=16),
        ir.Relu(name="relu", inputs=["rq2"], output="relu"),
        ir.AvgPool2d(name="avg", inputs=["relu"], output="avg", kernel=[3, 3], stride=[1, 1], padding=[1, 1],
                     divisor=9, mode=avg_mode),
        _requant("rq3", "avg", c, rng, rounding, shift_lo=31, shift_hi=33),
        ir.Concat(name="cat", inputs=["rq3", "relu"], output="cat"),
        ir.ChannelShuffle(name="shuffle", inputs=["cat"], output="shuffle", groups=3),
        ir.SliceChannels(name="slice", inputs=["shuffle"], output="slice", start=2, stop=7),
        ir.RequantAdd(name="add", inputs=["rq2", "rq3"], output="add", multiplier=T(rng.integers(1 << 30, 1 << 31, c)),
                      shift=T(rng.integers(30, 32, c)), identity_multiplier=T(rng.integers(1 << 30, 1 << 31, c)),
                      identity_shift=T(rng.integers(30, 32, c)), qmin=-(1 << 15), qmax=(1 << 15) - 1,
                      zero_point=0, bits=16, rounding=rounding),
        (ir.GlobalAvgPoolTrunc if hawq else ir.GlobalAvgPoolSum)(name="gap", inputs=["cat"], output="gap",
                                                                  divisor=4 * 4),
        ir.GlobalAvgPoolSum(name="gap_add", inputs=["add"], output="gap_add", divisor=16),
        ir.Flatten(name="flat", inputs=["pool"], output="flat"),
        _requant("rq4", "gap", 2 * c, rng, rounding, shift_lo=28, shift_hi=31),
        ir.Dense(name="fc", inputs=["rq4"], output="fc", weight=T(rng.integers(-128, 128, (5, 2 * c)), dtype=torch.int8),
                 bias=T(rng.integers(-1000, 1000, 5), dtype=torch.int32), weight_bits=8, weight_scale=T(np.ones(5))),
    ]
    # every value is an output too (the flatten and the wide pool are not on the logits' path)
    g = ir.Graph("x", "fc", nodes, output_scale=T(np.linspace(0.5, 1.5, 5)))
    g.validate()
    x = rng.normal(0, 4, (3, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, :4] = np.float32([0.025, -0.075, 0.125, 6.0e3])      # ties and saturation of the input quantizer
    model, values = _ort_matches_reference(g, x)
    producer = {o: n for n in model.graph.node for o in n.output}
    to = [next(a.i for a in producer[n.input[0]].attribute if a.name == "to") for n in model.graph.node
          if n.op_type == "MaxPool"]
    assert sorted(to) == [onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8]     # both max-pool paths ran
    assert values["conv"].min() < 0 and values["conv"].max() > 255
    assert (values["rq"] == -128).any() and (values["rq"] == 127).any()          # both saturation ends reached
    odd = values["conv"] % 2 == 1
    assert (odd & (values["conv"] < 0)).any() and (odd & (values["conv"] > 0)).any()   # ties of both signs


def test_wide_dense_is_split_and_summed_in_int64():
    """A dense whose proven bound exceeds int32 (70 000 inputs of 255 × 127) runs as int32 partial
    products added in int64, and its actual sum (above 2^31) is exact; requantizing it with a shift
    of 62 takes the Mod/Div floor division (the BitShift offset would leave int64)."""
    k = 70_000
    nodes = [_quantize(zp=0, qmin=0, qmax=255, scale=1.0),
             ir.Flatten(name="flat", inputs=["q"], output="flat"),
             ir.Dense(name="fc", inputs=["flat"], output="fc", weight=T(np.full((2, k), 127), dtype=torch.int8),
                      bias=T([5, -5], dtype=torch.int32), weight_bits=8, weight_scale=T(np.ones(2))),
             ir.Requant(name="rq", inputs=["fc"], output="rq", multiplier=T([(1 << 31) - 1] * 2), shift=T([62, 61]),
                        qmin=-8, qmax=7, zero_point=0, bits=4, rounding="half_up")]
    g = ir.Graph("x", "rq", nodes)
    g.validate()
    model = to_onnx(g, (k, 1, 1), expose=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMulInteger") == 2 and "Mod" in ops
    x = np.full((1, k, 1, 1), 300.0, dtype=np.float32)
    values = OnnxProgram(model).values(x)
    assert values["fc"].tolist() == [[255 * 127 * k + 5, 255 * 127 * k - 5]] and values["fc"].max() > (1 << 31)
    assert np.array_equal(values["rq"], run_graph(g, x))
    x = -x       # the input quantizer saturates at 0: the sums are the biases, small and of both signs
    assert np.array_equal(OnnxProgram(model)(x), run_graph(g, x))


def test_weights_are_uint8_with_zero_point_128():
    """u8·u8 products: exact on every ONNX Runtime kernel (u8·s8 saturates in int16 on AVX2)."""
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (4, 3, 3, 3))
    g = ir.Graph("x", "conv", [_quantize(), _conv("conv", "q", w, np.zeros(4))])
    m = to_onnx(g, (3, 5, 5))
    conv = next(n for n in m.graph.node if n.op_type == "ConvInteger")
    init = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    assert init[conv.input[1]].dtype == np.uint8 and init[conv.input[3]].reshape(-1).tolist() == [128]
    assert np.array_equal(init[conv.input[1]].astype(np.int64) - 128, w)
    _ort_matches_reference(g, rng.normal(0, 3, (2, 3, 5, 5)).astype(np.float32))


def test_calibrated_models_match_in_both_profiles():
    """resnet20 (profile exact) and a HAWQ-profile resnet20: QAT eval == reference == ONNX Runtime."""
    for numerics in ("exact", "hawq"):
        model, probe = build_calibrated("resnet20_cifar10", "uniform4", 10, (4, 3, 32, 32), numerics=numerics)
        graph = export_integer(model, (3, 32, 32))["graph"]
        onnx_model = to_onnx(graph, (3, 32, 32), fmt=exact_format(numerics), numerics=numerics)
        ort = OnnxProgram(onnx_model, threads=2)(probe.numpy())
        assert np.array_equal(ort, run_graph(graph, probe.numpy()))
        assert np.array_equal(ort, model.forward_int(probe).numpy())
        assert np.allclose(output_scale_of(onnx_model), np.asarray(graph["output_scale"]))


def test_captured_torchvision_model_matches():
    from hawq.calibrated import calibrated_model, random_batches
    model, size = calibrated_model("torchvision:resnet18", "uniform8", random=True, batches=1, input_size=32)
    graph = export_integer(model, (3, size, size))["graph"]
    x = next(iter(random_batches(size, 4, 4)))[0].numpy()
    assert np.array_equal(OnnxProgram(to_onnx(graph, (3, size, size)))(x), run_graph(graph, x))


def test_per_layer_names_the_corrupted_node(small_model, capsys):
    model, probe = small_model
    graph = export_integer(model, (3, 32, 32))["graph"]
    bad, victim = corrupt_requant(graph, 4)
    x = probe.numpy()
    rows = compare_layers(OnnxProgram(to_onnx(bad, (3, 32, 32), expose=True)).values(x), graph, x)
    assert print_layers(rows) == victim
    assert "first divergence: " + victim in capsys.readouterr().out


def test_every_ir_op_has_an_onnx_lowering():
    from hawq.onnx_integer import LOWER
    assert LOWER.missing() == []


def test_inexact_format_and_unknown_format_are_refused():
    g = ir.Graph("x", "q", [_quantize()])
    with pytest.raises(HawqError, match="exact only for numeric profile ort.*--format integer"):
        to_onnx(g, (3, 4, 4), fmt="qdq", numerics="exact")
    with pytest.raises(HawqError, match="unknown ONNX format"):
        to_onnx(g, (3, 4, 4), fmt="qlinear")


@needs_fmnist
def test_cli_exports_and_verifies_released_checkpoint(tmp_path):
    out = tmp_path / "r20.onnx"
    r = cli("-m", "hawq.export_onnx", "--checkpoint", CKPT.format("uniform4"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "format integer" in r.stdout
    m = onnx.load(str(out))
    onnx.checker.check_model(m, full_check=True)
    assert {p.key: p.value for p in m.metadata_props}["hawq.numerics"] == "exact"
    r = cli("-m", "hawq.verify", "--checkpoint", CKPT.format("uniform8"), "--runtime", "onnxruntime",
            "--limit", "40", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == "mismatches: 0/400"


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/missing/m.onnx"], "directory '{tmp}/missing' does not exist"),
    (["--out", "{tmp}/m.onnx", "--format", "qdq"], "--format qdq is exact only for numeric profile ort"),
    (["--out", "{tmp}/m.onnx", "--checkpoint", CKPT.format("fp32")], "holds no integer data"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", CKPT.format("uniform4")]
    r = cli("-m", "hawq.export_onnx", *args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message.format(tmp=tmp_path) in r.stderr, r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("run, scheme", [("resnet18_uniform8", "uniform8"), ("resnet50_bops_0.5", "bops_0.5")])
def test_hawq_v3_checkpoints_run_exactly_in_onnxruntime(run, scheme):
    """HAWQ-V3's own checkpoints (tests/fixtures/hawq_ref: written by its original code), profile
    hawq, on their eval batch: ONNX Runtime == the reference, logits and every value."""
    from hawq.program import load_program
    fix = os.path.join(ROOT, "tests", "fixtures", "hawq_ref", run)
    x = torch.load(os.path.join(fix, "io.pt"), weights_only=True)["input"].numpy()
    prog = load_program(os.path.join(fix, "checkpoint.pth.tar"), scheme=scheme, input_size=x.shape[-1])
    assert prog.numerics == "hawq"
    _ort_matches_reference(ir.as_graph(prog.graph), x)
