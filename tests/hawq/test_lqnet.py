"""LQ-Net (issue 32): learned bases on an integer grid, QEM updates, and exact integer export."""
from __future__ import annotations

import functools

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import train_steps, tvm_outputs
from hawq import bit_config as bc
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.export_onnx import to_onnx
from hawq.models.factory import quant_model
from hawq.quant import lqnet as LQ
from hawq.quant.config import QuantConfig
from hawq.quant.graph import Q
from hawq.quant.modules import QuantAct, QuantBnConv2d
from hawq.reference import run_graph

ARCH = "resnet20_cifar10"


# --------------------------------------------------------------------------- the pure functions
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("limit", [LQ.ACT_LIMIT, LQ.WEIGHT_LIMIT])
def test_integer_basis_stays_in_its_container_and_close_to_the_float_basis(k, limit):
    torch.manual_seed(k)
    basis = torch.rand(64, k) * torch.logspace(-3, 1, 64).unsqueeze(1) + 1e-6
    basis[0] = torch.tensor([1e-9] + [1.0] * (k - 1))          # one tiny element: c clamps to 1
    s, c = LQ.integer_basis(basis, limit)
    assert c.dtype == torch.int64 and int(c.min()) >= 1 and int(c.sum(-1).max()) <= limit
    rel = (s.unsqueeze(-1) * c - basis).abs() / basis.sum(-1, keepdim=True)
    assert float(rel[1:].max()) <= 1.0 / (limit - k) + 1e-6   # a grid step (half, or a clamp to 1)


def test_one_weight_basis_is_the_sign_grid():
    s, c = LQ.integer_basis(torch.tensor([[0.25], [3.0]]), LQ.WEIGHT_LIMIT)
    assert c.tolist() == [[1], [1]] and s.tolist() == [0.25, 3.0]
    vals, code = LQ.levels(c, signed=True)
    assert vals.tolist() == [[-1, 1], [-1, 1]] and code[0].tolist() == [[-1.0], [1.0]]


def test_levels_snap_and_the_activation_table():
    c = torch.tensor([3, 5])
    vals, code = LQ.levels(c, signed=False)
    assert vals.tolist() == [0, 3, 5, 8] and (code @ c.float()).tolist() == [0, 3, 5, 8]
    # nearest level, the halfway points (1.5, 4, 6.5) to the upper one
    u = torch.tensor([0.0, 1.49, 1.5, 3.99, 4.0, 6.49, 6.5, 100.0])
    assert vals[LQ.snap(u, vals)].tolist() == [0, 0, 3, 3, 5, 5, 8, 8]
    table, idx = LQ.activation_table(c)
    assert table.shape == (256,) and table[:9].tolist() == [0, 0, 3, 3, 5, 5, 5, 8, 8]
    t = torch.arange(256).unsqueeze(1)
    assert torch.equal((table.unsqueeze(1) - t).abs().squeeze(1), (vals - t).abs().min(1).values)
    assert torch.equal(vals[idx], table)


def test_qem_finds_the_least_squares_basis():
    """One basis: QEM's fixed point is mean|W| (XNOR-Net's α). Two bases on a Gaussian: Lloyd-Max's
    4-level quantizer, levels ±0.4528σ and ±1.510σ."""
    torch.manual_seed(0)
    w = torch.randn(3, 20000) * torch.tensor([[0.5], [1.0], [2.0]])
    v1 = LQ.fit_basis(w, LQ.initial_basis(w, 1, signed=True), True, 3)
    torch.testing.assert_close(v1[:, 0], w.abs().mean(1), rtol=1e-4, atol=0)
    v2 = LQ.fit_basis(w, LQ.initial_basis(w, 2, signed=True), True, 30)
    lv = torch.stack([v2[:, 1] - v2[:, 0], v2[:, 1] + v2[:, 0]], 1) / torch.tensor([[0.5], [1.0], [2.0]])
    torch.testing.assert_close(lv, torch.tensor([[0.4528, 1.510]]).expand(3, 2), rtol=0.03, atol=0)
    # the moving average moves 1 - momentum of the way
    step = LQ.qem_step(w, v2 * 2, signed=True)
    torch.testing.assert_close(step, LQ.QEM_MOMENTUM * v2 * 2 + (1 - LQ.QEM_MOMENTUM) * LQ.fit_basis(w, v2 * 2, True))


# --------------------------------------------------------------------------- the modules
def test_activation_quantizer_trains_on_its_levels_and_evaluates_the_same_integers():
    cfg = QuantConfig(quantizer="lqnet")
    act = QuantAct("relu", cfg)
    act.set_activation_bit(2)
    torch.manual_seed(0)
    x = torch.relu(torch.randn(4, 8, 6, 6)) * 3
    acc_scale = torch.tensor([1e-3], dtype=torch.float64)
    acc = torch.round(x / acc_scale).to(torch.int64)
    act.train()
    y = act(Q(acc.double() * acc_scale, acc_scale))
    basis = act.act_basis.clone()
    assert bool((basis[:2] > 0).all()) and bool((basis[2:] == 0).all())
    act(Q(acc.double() * acc_scale, acc_scale))
    assert not torch.equal(act.act_basis, basis)                # QEM moved it
    act.fix()                                                   # frozen with the ranges
    frozen = act.act_basis.clone()
    y = act(Q(acc.double() * acc_scale, acc_scale))
    assert torch.equal(act.act_basis, frozen)
    s, c = act.lq_grid()
    levels = set(LQ.levels(c, signed=False)[0].tolist())
    ints = torch.round(y.value / s.double())
    assert set(torch.unique(ints).long().tolist()) <= levels and len(levels) == 4
    act.eval()
    q = act(Q(acc, acc_scale)).value
    assert torch.equal(q, ints.long())
    assert act.mode == "unsigned" and act.storage_range() == (0, 255)


def test_activation_gradient_stops_where_the_grid_clips():
    act = QuantAct("relu", QuantConfig(quantizer="lqnet"))
    act.set_activation_bit(2)
    act.train()
    x = torch.linspace(0, 4, 4001)
    act(x)                                               # initializes the basis on this batch
    top = 255 * float(act.lq_grid()[0])
    x = torch.tensor([0.5 * top, 0.99 * top, 1.01 * top, 3 * top], requires_grad=True)
    act.fix()
    act(x).value.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("bits", [1, 2])
def test_bn_conv_weights_have_the_same_codes_folded_and_unfolded(bits):
    torch.manual_seed(1)
    conv, bn = torch.nn.Conv2d(8, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6)
    bn.weight.data = torch.randn(6)                   # some negative γ: the codes flip sign, levels are symmetric
    bn.running_var.uniform_(0.5, 2.0)
    m = QuantBnConv2d(conv, bn, QuantConfig(quantizer="lqnet"), weight_bit=bits)
    m.train()
    m(Q(torch.randn(2, 8, 5, 5), None))               # BN still trains: quantizes the raw weight
    raw = m.quantize_integers(conv.weight, m.weight_scale(conv.weight, folded=False))
    folded_w = m.float_weight()
    folded = m.quantize_integers(folded_w, m.weight_scale(folded_w))
    sign = torch.sign(bn.weight).reshape(-1, 1, 1, 1)
    assert torch.equal(folded, raw * sign)
    assert all(len(torch.unique(raw[o])) <= 2 ** bits for o in range(6))       # per channel: its own levels
    assert bits > 1 or set(torch.unique(raw).tolist()) == {-1, 1}
    assert m.ir_weight_bits == (8 if bits > 1 else 1)


# --------------------------------------------------------------------------- exact export
@functools.lru_cache(maxsize=None)          # the exactness and the lowering tests share a model
def _trained(scheme: str, steps: int = 3):
    torch.manual_seed(0)
    m = quant_model(ARCH, bc.load_scheme(ARCH, scheme), 10, config=QuantConfig(quantizer="lqnet"))
    return train_steps(m, torch.optim.SGD(m.parameters(), 1e-2), steps)


@pytest.mark.parametrize("scheme, act_levels, weight_levels", [
    ("uniform2", 4, 4), pytest.param("w1a2", 4, 2, marks=pytest.mark.slow), ("w1a1", 2, 2)])
def test_lqnet_program_is_exact_in_qat_reference_onnx_and_tvm(scheme, act_levels, weight_levels):
    m = _trained(scheme)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        qat = m.forward_int(x).numpy()
    graph = export_integer(m, (3, 32, 32))["graph"]
    luts = [n for n in graph["nodes"] if n["op"] == "lut"]
    assert len(luts) == 18 and all(n["function"] == "lqnet" for n in luts)
    assert all(len(np.unique(n["table"].numpy())) == act_levels for n in luts)
    convs = [n for n in graph["nodes"] if n["op"] == "conv2d"][1:]       # past the 8-bit stem
    assert all(len(np.unique(n["weight"].numpy()[o])) <= weight_levels for n in convs for o in range(4))
    assert max(len(np.unique(n["weight"].numpy()[o])) for n in convs for o in range(4)) == weight_levels
    ref = run_graph(graph, x.numpy())
    np.testing.assert_array_equal(ref, qat)
    assert np.abs(qat).max() > 0
    sess = ort.InferenceSession(to_onnx(graph, (3, 32, 32)).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], ref)
    pytest.importorskip("tvm")
    np.testing.assert_array_equal(tvm_outputs(graph, x.numpy()), ref)


# --------------------------------------------------------------------------- bad input
def test_lqnet_outside_the_exact_profile_is_one_line():
    with pytest.raises(HawqError, match="lqnet needs --numerics exact"):
        QuantConfig(quantizer="lqnet", numerics="hawq")


def test_one_bit_signed_activation_is_not_lqnet():
    act = QuantAct("signed", QuantConfig(quantizer="lqnet"))
    with pytest.raises(HawqError, match="no 1-bit form"):
        act.set_activation_bit(1)


def test_wide_and_non_relu_quantizers_stay_minmax():
    cfg = QuantConfig(quantizer="lqnet")
    assert not QuantAct("relu", cfg, activation_bit=8).lqnet
    assert not QuantAct("accumulator", cfg, activation_bit=2).lqnet
    assert QuantAct("relu", cfg, activation_bit=4).lqnet


def test_level_tables_lower_to_selects_fused_into_the_convolutions():
    """A staircase table becomes compare-and-selects that FuseOps puts into the producing kernel: no
    gather kernel, no int32 index tensor in memory (tvm_benchmark.frontend.Builder.lut)."""
    pytest.importorskip("tvm")
    from tvm_benchmark.compile import lower
    from tvm_benchmark.frontend import build_module
    graph = export_integer(_trained("uniform2"), (3, 32, 32))["graph"]
    main = lower(build_module(graph, (1, 3, 32, 32)))["main"].script()
    calls = [line for line in main.splitlines() if "call_tir" in line]
    assert not any("take" in c for c in calls)
    assert sum("conv2d" in c and "where" in c for c in calls) >= 9      # the convs feeding an LQ-Net quantizer
