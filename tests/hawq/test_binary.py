"""Binary networks (docs/numerics.md §18): the sign grid, XNOR-Net's and Bi-Real's gradients, the
``binary`` scheme of the Bi-Real ResNets, and the integer program's exactness (QAT eval, the NumPy
reference and ONNX Runtime; TVM in tests/tvm_benchmark/test_binary_kernels.py)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import UserBinary, train_steps
from hawq import bit_config as bc
from hawq import numerics as N
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.export_onnx import to_onnx
from hawq.models.factory import quant_model
from hawq.quant import learned as L
from hawq.quant.config import QuantConfig
from hawq.reference import run_graph

ARCH = "hawq:bireal_resnet20"


def _trained(method: str, steps: int = 2, scheme: str = "binary"):
    torch.manual_seed(0)
    m = quant_model(ARCH, bc.load_scheme(ARCH, scheme), 10, config=QuantConfig(quantizer=method))
    return train_steps(m, torch.optim.Adam(m.parameters(), 1e-3), steps)


# --------------------------------------------------------------------------- numerics
def test_sign_grid_maps_zero_to_plus_one_in_float_and_integers():
    x = torch.tensor([-2.5, -1e-30, 0.0, -0.0, 1e-30, 3.0])
    assert N.binarize(x).tolist() == [-1, -1, 1, 1, 1, 1]
    q = np.array([-7, -1, 0, 1, 9])
    assert N.sign_int(q).tolist() == [-1, -1, 1, 1, 1]
    assert N.sign_int(torch.from_numpy(q)).tolist() == [-1, -1, 1, 1, 1]


def test_binary_weights_are_sign_times_mean_abs():
    w = torch.tensor([[0.5, -0.25, 0.0, -1.0], [2.0, 2.0, -2.0, 2.0]])
    s = N.weight_scale(w, 1, per_channel=True)
    assert s.dtype == torch.float32 and s.tolist() == [0.4375, 2.0]
    assert N.quantize_weight(w, s, 1).tolist() == [[1, -1, 1, -1], [1, 1, -1, 1]]
    assert N.weight_scale(w, 1, per_channel=False).tolist() == [1.21875]
    assert N.qrange(1, signed=True) == (-1, 1)
    assert N.act_qrange(1, N.SIGN) == (-1, 1)


def test_one_bit_is_the_exact_profile_only():
    assert N.EXACT.act_mode("signed", 1) == N.SIGN
    for prof in (N.HAWQ, N.ORT):
        with pytest.raises(HawqError, match="1-bit|8-bit"):
            prof.check_bits("layer 'x'", 1)


# --------------------------------------------------------------------------- gradients
def test_sign_gradients_of_xnor_and_bireal():
    x = torch.tensor([-1.5, -0.75, -0.25, 0.0, 0.5, 0.99, 1.25], requires_grad=True)
    for method, want in (("xnor", [0.0, 1, 1, 1, 1, 1, 0]), ("bireal", [0, 0.5, 1.5, 2.0, 1.0, 0.02, 0])):
        x.grad = None
        y = L.sign_ste(x, N.binarize(x.detach()), method)
        assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
        y.sum().backward()
        assert torch.allclose(x.grad, torch.tensor(want)), (method, x.grad)


def test_weight_gradients_of_each_binary_method():
    w = torch.tensor([[0.5, -2.0, 0.25, -0.5]], requires_grad=True)
    alpha = N.binary_weight_scale(w)
    value = N.binarize(w.detach()) * alpha.reshape(-1, 1)
    for method, want in (("xnor", [0.8125 + 0.25, 0.25, 0.8125 + 0.25, 0.8125 + 0.25]),
                         ("bireal", [1.0, 0.0, 1.0, 1.0]), ("dorefa", [1.0, 1.0, 1.0, 1.0])):
        w.grad = None
        y = L.binary_weight_ste(w, value, alpha, method)
        assert torch.equal(y, value)
        y.sum().backward()
        assert torch.allclose(w.grad, torch.tensor([want])), (method, w.grad)


def test_one_bit_lsq_learns_its_scale_on_the_sign_grid():
    """LSQ at 1 bit: forward sign(W)·s; d/dW straight through inside |W/s| <= 1; d/ds the level
    sign(W/s) minus W/s inside, the level outside (LSQ's rule with sign in place of rounding)."""
    w = torch.tensor([[0.5, -2.0, 0.25, -0.5]], requires_grad=True)
    s = torch.ones(1, requires_grad=True)
    value = N.binarize(w.detach()) * s.detach()
    y = L.lsq_ste(w, s, value, -1, 1, 1.0, 0, binary=True)
    assert torch.equal(y, value)
    y.sum().backward()
    assert w.grad.tolist() == [[1.0, 0.0, 1.0, 1.0]]
    assert s.grad.item() == pytest.approx((1 - 0.5) + (-1) + (1 - 0.25) + (-1 + 0.5))


# --------------------------------------------------------------------------- the binary scheme
def test_binary_scheme_keeps_stem_head_and_shortcuts_wide():
    bits = bc.load_scheme(ARCH, "binary")
    one = {n for n, b in bits.items() if b == 1}
    convs = {n for n in one if n.endswith(".conv")}
    assert len(convs) == 18 and {n.replace(".conv", ".act") for n in convs} == one - convs
    assert bits["stem.0"] == bits["fc"] == bits["quant_input"] == 8
    assert bits["features.6.shortcut.1"] == bits["features.6.shortcut.1_act"] == 8
    assert {bits[n] for n in bits if n.endswith(".add")} == {16}
    size, gbops = bc.scheme_stats(ARCH, bits)
    size8, gbops8 = bc.scheme_stats(ARCH, bc.load_scheme(ARCH, "uniform8"))
    assert size < size8 / 6 and gbops < gbops8 / 20


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("method", L.BINARY_METHODS)
def test_binary_program_is_exact_in_qat_reference_and_onnx(method):
    m = _trained(method)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        qat = m.forward_int(x).numpy()
    graph = export_integer(m, (3, 32, 32))["graph"]
    ops = [n["op"] for n in graph["nodes"]]
    assert ops.count("sign") == 18
    convs = [n for n in graph["nodes"] if n["op"] == "conv2d" and n["weight_bits"] == 1]
    assert len(convs) == 18 and all(set(np.unique(n["weight"].numpy())) == {-1, 1} for n in convs)
    ref = run_graph(graph, x.numpy())
    np.testing.assert_array_equal(ref, qat)
    sess = ort.InferenceSession(to_onnx(graph, (3, 32, 32)).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0], ref)
    assert np.abs(qat).max() > 0


# --------------------------------------------------------------------------- bad input
def test_one_bit_needs_a_binary_method():
    with pytest.raises(HawqError, match=r"is 1-bit, but --quantizer minmax has no 1-bit form \(use --quantizer xnor or bireal or dorefa or lsq\)"):
        quant_model(ARCH, bc.load_scheme(ARCH, "binary"), 10, config=QuantConfig(quantizer="minmax"))


def test_one_bit_after_a_relu_is_refused():
    bits = bc.load_scheme("resnet20_cifar10", "uniform8")
    act = next(n for n in bits if n.endswith("quant_act") and n.startswith("stage"))
    for method in ("xnor", "minmax"):      # the way out named: LQ-Net's {0, v} grid
        with pytest.raises(HawqError, match=rf"activation '{act}' cannot be 1-bit under --quantizer {method}: "
                                            r"after a ReLU .* --quantizer lqnet\)$"):
            quant_model("resnet20_cifar10", {**bits, act: 1}, 10, config=QuantConfig(quantizer=method))
    quant_model("resnet20_cifar10", {**bits, act: 1}, 10, config=QuantConfig(quantizer="lqnet"))


def test_one_bit_in_profile_hawq_is_refused():
    with pytest.raises(HawqError, match="numeric profile hawq has no 1-bit grid"):
        quant_model(ARCH, bc.load_scheme(ARCH, "binary"), 10, config=QuantConfig(quantizer="xnor", numerics="hawq"))


def test_unknown_own_model_is_one_line():
    with pytest.raises(HawqError, match="unknown model hawq:nope; this project's own: hawq:bireal_resnet20"):
        bc.list_schemes("hawq:nope")


def test_api_binary_scheme_on_a_user_model_is_exact():
    import hawq
    torch.manual_seed(0)
    model = UserBinary()
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(model.a1(x), x.clamp(-1, 1))               # hardtanh in float
    q = hawq.prepare_qat(model, x, scheme="binary", config=QuantConfig(quantizer="xnor"))
    bits = q.bit_config()
    assert {n for n, b in bits.items() if b == 1} == {"a1", "c1", "a2", "c2"}
    assert bits["stem"] == bits["fc"] == bits["quant_input"] == 8 and sorted(set(bits.values())) == [1, 8, 16]
    q(x)
    graph = hawq.export_program(q.eval(), input_shape=(3, 16, 16))
    assert [n.OP for n in graph.nodes].count("sign") == 2
    np.testing.assert_array_equal(hawq.run_reference(graph, x), q.forward_int(x).numpy())
    with pytest.raises(HawqError, match="scheme 'binary': no layer can be 1-bit"):
        hawq.prepare_qat(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 2)),
                         x, scheme="binary", config=QuantConfig(quantizer="xnor"))
