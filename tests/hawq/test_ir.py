"""The typed integer IR: artifact round trip, old formats, validation errors, per-op back ends,
and the new ops (clamp, concat, k×k average pool) through the reference and TVM."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch

from conftest import ROOT, build_calibrated, tvm_outputs
from hawq import ir
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.models.restore import load_quant_checkpoint
from hawq.reference import IMPL, run_graph

RELEASED = [os.path.join(ROOT, "checkpoints", f"resnet20_cifar10_{s}.pth.tar")
            for s in ("uniform8", "uniform4", "mixed_stage1_8bit")]


def _same(a, b) -> bool:
    """Deep equality of artifact values (tensors by dtype, shape and value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("path", RELEASED, ids=lambda p: os.path.basename(p))
def test_released_artifacts_round_trip_unchanged(path):
    model, _ = load_quant_checkpoint(path)
    graph = export_integer(model, (3, 32, 32))["graph"]
    parsed = ir.Graph.from_dict(graph)
    assert _same(parsed.to_dict(), graph)
    assert all(type(n).OP == d["op"] for n, d in zip(parsed.nodes, graph["nodes"]))


def test_profile_hawq_fields_round_trip():
    model, _ = build_calibrated("resnet20_cifar10", "uniform4", 10, (2, 3, 32, 32), numerics="hawq")
    graph = export_integer(model, (3, 32, 32))["graph"]
    assert graph["nodes"][0]["reciprocal"] is True
    assert all(n["rounding"] == "half_even" for n in graph["nodes"] if n["op"] in ("requant", "requant_add"))
    assert _same(ir.Graph.from_dict(graph).to_dict(), graph)


def test_old_format_still_loads_and_runs(small_model):
    """Artifacts written before output_scale / rounding existed: defaults, same integers."""
    model, probe = small_model
    graph = export_integer(model, (3, 32, 32))["graph"]
    old = copy.deepcopy(graph)
    del old["output_scale"]
    for n in old["nodes"]:
        n.pop("rounding", None)
        n.pop("reciprocal", None)
    g = ir.Graph.from_dict(old)
    assert g.output_scale is None and all(n.rounding == "half_up" for n in g.nodes if isinstance(n, ir.Requant))
    assert np.array_equal(run_graph(old, probe.numpy()), run_graph(graph, probe.numpy()))


@pytest.mark.parametrize("mutate, message", [
    (lambda g: g["nodes"][1].update(op="conv3d"), "unknown op 'conv3d'"),
    (lambda g: g["nodes"][1].pop("stride"), "lacks 'stride'"),
    (lambda g: g["nodes"][1].update(colour="red"), "unknown field 'colour'"),
    (lambda g: g["nodes"][1].update(inputs=["nowhere"]), "reads 'nowhere' before it is defined"),
    (lambda g: g["nodes"][2].update(multiplier=g["nodes"][2]["multiplier"] * 4), "dyadic multiplier must be < 2^31"),
    (lambda g: g["nodes"][1].update(bias=g["nodes"][1]["bias"][:3]), "bias shape"),
    (lambda g: g.update(output="missing:out"), "output 'missing:out' is never computed"),
])
def test_validation_names_the_problem(small_model, mutate, message):
    graph = copy.deepcopy(export_integer(small_model[0], (3, 32, 32))["graph"])
    mutate(graph)
    with pytest.raises(HawqError, match=message.replace("(", r"\(").replace("^", r"\^")):
        ir.Graph.from_dict(graph)


def test_shape_rules_catch_a_wrong_input_size(small_model):
    g = ir.Graph.from_dict(export_integer(small_model[0], (3, 32, 32))["graph"])
    with pytest.raises(HawqError, match="input has 1 channels, weight expects 3"):
        g.infer((1, 1, 32, 32))
    info = g.infer((2, 3, 32, 32))
    assert info[g.output][0] == (2, 10)


def test_every_op_has_both_backends():
    from tvm_benchmark.frontend import LOWER
    assert IMPL.missing() == [] and LOWER.missing() == []


# ---------------------------------------------------------------------- new ops, unit graphs
def _quantize(lo: int, hi: int) -> dict:
    return {"op": "quantize", "name": "q", "inputs": ["input"], "output": "q:out", "scale": torch.ones(1),
            "zero_point": 0, "qmin": lo, "qmax": hi, "bits": 8}


def _check(graph: dict, x: np.ndarray, want: np.ndarray) -> None:
    ref = run_graph(graph, x)
    assert np.array_equal(ref, want)
    for fast in (False, True):
        got = tvm_outputs(graph, x, fast=fast)
        assert np.array_equal(got, want), f"fast={fast}: {(got != want).sum()} mismatches"


def test_clamp_relu6_per_channel():
    rng = np.random.default_rng(0)
    x = rng.integers(-300, 301, size=(2, 3, 4, 4)).astype(np.float32)
    hi = torch.tensor([5, 200, 1 << 40])
    g = {"input": "input", "output": "c:out", "nodes": [_quantize(-300, 300),
         {"op": "clamp", "name": "c", "inputs": ["q:out"], "output": "c:out", "qmin": 0, "qmax": hi}]}
    want = np.minimum(np.maximum(x.astype(np.int64), 0), hi.numpy().reshape(1, -1, 1, 1))
    _check(g, x, want)


def test_window_average_pool_sum_and_trunc():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(2, 3, 7, 7)).astype(np.float32)
    xi = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    total = sum(xi[:, :, i:i + 7, j:j + 7] for i in range(3) for j in range(3))
    for mode, want in (("sum", total), ("trunc_mean", (100 * total + 9) // 900)):
        g = {"input": "input", "output": "p:out", "nodes": [_quantize(0, 255),
             {"op": "avgpool2d", "name": "p", "inputs": ["q:out"], "output": "p:out", "kernel": [3, 3],
              "stride": [1, 1], "padding": [1, 1], "divisor": 9, "mode": mode}]}
        _check(g, x, want)


def test_concat_of_differently_bounded_values():
    x = np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3) - 10
    g = {"input": "input", "output": "cat:out", "nodes": [
        _quantize(-128, 127),
        {"op": "relu", "name": "r", "inputs": ["q:out"], "output": "r:out"},
        {"op": "clamp", "name": "c", "inputs": ["q:out"], "output": "c:out", "qmin": -5, "qmax": torch.tensor([3])},
        {"op": "concat", "name": "cat", "inputs": ["r:out", "c:out", "q:out"], "output": "cat:out", "axis": 1}]}
    xi = x.astype(np.int64)
    want = np.concatenate([np.maximum(xi, 0), np.clip(xi, -5, 3), xi], axis=1)
    _check(g, x, want)


@pytest.mark.parametrize("channels, groups", [(12, 2), (12, 3), (48, 4), (5, 1)])
def test_shuffle_perm_is_torchvisions_channel_shuffle(channels, groups):
    from torchvision.models.shufflenetv2 import channel_shuffle
    x = torch.arange(channels, dtype=torch.float32).reshape(1, channels, 1, 1)
    assert channel_shuffle(x, groups).reshape(-1).long().tolist() == ir.shuffle_perm(channels, groups).tolist()
    node = ir.ChannelShuffle(name="s", inputs=["x"], output="y", groups=groups)
    assert node.shape((2, channels, 3, 3)) == (2, channels, 3, 3)
    with pytest.raises(HawqError, match="cannot shuffle"):
        ir.ChannelShuffle(name="s", inputs=["x"], output="y", groups=7).shape((2, channels, 3, 3))
    with pytest.raises(HawqError, match="empty or negative channel range"):
        ir.SliceChannels(name="c", inputs=["x"], output="y", start=3, stop=3).check()


@pytest.mark.parametrize("fn", ["sigmoid", "hardsigmoid", "silu", "hardswish", "tanh", "gelu"])
def test_function_table_every_input_integer(fn):
    """Every entry of every table against PyTorch's float64 function, rounded half to even onto the
    output grid; the Lut node gathers exactly these integers and refuses inputs wider than the table."""
    from hawq import numerics as N
    s_in, s_out, z, lo, hi = np.float32(0.05), np.float32(0.02), 37, 0, 255
    table = N.function_table(fn, torch.tensor([s_in]), torch.tensor([s_out]), z, lo, hi)
    q = torch.arange(N.TABLE_RANGE[0], N.TABLE_RANGE[1] + 1, dtype=torch.float64)
    torch_fn = {"sigmoid": torch.sigmoid, "hardsigmoid": torch.nn.functional.hardsigmoid, "silu": torch.nn.functional.silu,
                "hardswish": torch.nn.functional.hardswish, "tanh": torch.tanh, "gelu": torch.nn.functional.gelu}[fn]
    want = torch.clamp(torch.round(torch_fn(q * float(s_in)) / float(s_out)) + z, lo, hi) - z
    assert table.tolist() == want.long().tolist()
    node = ir.Lut(name="f", inputs=["x"], output="y", function=fn, table=torch.from_numpy(table), in_lo=-255,
                  qmin=lo - z, qmax=hi - z, zero_point=z, bits=8)
    node.check()
    assert node.bounds([(-10, 20)], [(1, 4)]) == (int(table[245:276].min()), int(table[245:276].max()))
    x = np.arange(-255, 256).reshape(1, -1)
    assert (run_graph(ir.Graph("input", "y", [ir.Quantize(name="q", inputs=["input"], output="x", scale=torch.ones(1),
                                                           zero_point=0, qmin=-255, qmax=255, bits=9), node]),
                      x.astype(np.float32)) == table.reshape(1, -1)).all()
    with pytest.raises(HawqError, match="outside the table"):
        node.bounds([(-300, 20)], [(1, 4)])


def test_mul_bounds_and_broadcast():
    node = ir.Mul(name="m", inputs=["a", "b"], output="y")
    assert node.shape((2, 8, 5, 5), (2, 8, 1, 1)) == (2, 8, 5, 5)
    assert node.bounds([(-3, 7), (0, 255)], [(2, 8, 5, 5), (2, 8, 1, 1)]) == (-765, 1785)
    with pytest.raises(HawqError, match="cannot broadcast"):
        node.shape((2, 8, 5, 5), (2, 4, 1, 1))
