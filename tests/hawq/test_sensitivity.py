"""hawq.sensitivity: Hutchinson traces against the exact Hessian, quantization perturbations against
the integer model's own weights, the CSV, determinism and one-line errors."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import HAVE_FMNIST, RELEASED_FP, calibrate, cli, csv_rows, needs_fmnist, randomize_bn
from hawq.bit_config import load_scheme
from hawq.models.factory import fp_model, fp_model_pretrained, quant_model
from hawq.quant.config import QuantConfig
from hawq.apps.sensitivity import main
from hawq.sensitivity import (CSV_FIELDS, TraceEstimate, hutchinson, layer_sensitivity, make_hvp, quant_error,
                              weight_layers)

ARCH = "resnet20_cifar10"


# --------------------------------------------------------------------------- Hutchinson vs exact
class TinyNet(nn.Module):
    """conv(2->3, 3x3) -> ReLU -> linear(48 -> 4), float64: small enough for a full Hessian."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3).double()
        self.fc = nn.Linear(3 * 4 * 4, 4).double()

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _tiny_problem(seed: int = 0):
    torch.manual_seed(seed)
    net = TinyNet()
    x = torch.randn(16, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (16,))
    return net, x, y


def _exact_block_traces(net: TinyNet, x, y) -> list[float]:
    """Trace of each weight's diagonal Hessian block from the full Hessian (autograd.functional)."""
    weights = [net.conv.weight, net.fc.weight]
    sizes = [w.numel() for w in weights]

    def loss_of(flat):
        ws = flat.split(sizes)
        params = {"conv.weight": ws[0].view_as(weights[0]), "fc.weight": ws[1].view_as(weights[1])}
        return F.cross_entropy(torch.func.functional_call(net, params, (x,)), y)

    hess = torch.autograd.functional.hessian(loss_of, torch.cat([w.detach().reshape(-1) for w in weights]))
    diag, out, start = hess.diagonal(), [], 0
    for n in sizes:
        out.append(float(diag[start:start + n].sum()))
        start += n
    return out


@pytest.fixture
def one_thread():
    """Thousands of tiny Hessian-vector products: one thread avoids the per-op threading overhead."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_hutchinson_agrees_with_the_exact_trace_within_the_stated_tolerance(one_thread):
    net, x, y = _tiny_problem()
    exact = _exact_block_traces(net, x, y)
    params = [net.conv.weight, net.fc.weight]
    tol = 0.05
    est = hutchinson(make_hvp([F.cross_entropy(net(x), y)], params), params, tol=tol, max_iter=10000, seed=0)
    assert 100 < est.iters < 10000, "did not reach the tolerance"
    for got, want, rel in zip(est.traces, exact, est.rel_err):
        assert rel <= tol
        # the stated tolerance is a relative standard error: 4 sigma bounds the true error
        assert abs(got - want) <= 4 * tol * abs(want), (got, want)
        assert abs(got - want) <= 4 * rel * abs(want), (got, want, rel)


def test_hutchinson_is_seeded_and_stops_at_max_iter(one_thread):
    net, x, y = _tiny_problem(1)
    params = [net.conv.weight, net.fc.weight]

    def run(seed):
        return hutchinson(make_hvp([F.cross_entropy(net(x), y)], params), params, tol=1e-9, max_iter=7, seed=seed)

    a, b, c = run(3), run(3), run(4)
    assert isinstance(a, TraceEstimate) and a.iters == 7
    assert a == b and a.traces != c.traces


def test_hvp_of_several_batches_is_the_mean():
    net, x, y = _tiny_problem(2)
    params = [net.conv.weight, net.fc.weight]
    v = [torch.ones_like(p) for p in params]
    halves = make_hvp([F.cross_entropy(net(x[:8]), y[:8]), F.cross_entropy(net(x[8:]), y[8:])], params)(v)
    whole = make_hvp([F.cross_entropy(net(x), y)], params)(v)
    for a, b in zip(halves, whole):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- perturbation
def test_quant_error_is_the_error_of_the_integer_models_weights():
    """||Q_b(W) - W||^2 equals the error of weight_integer·scale, mapped back through the BN fold."""
    torch.manual_seed(0)
    fp = fp_model(ARCH, 10)
    randomize_bn(fp)
    layers = {layer.name: layer for layer in weight_layers(fp, ARCH)}
    for scheme, bits in (("uniform4", 4), ("uniform8", 8)):
        model = quant_model(ARCH, load_scheme(ARCH, scheme), 10, fp=fp, config=QuantConfig(fix_BN=True))
        probe = calibrate(model, (2, 3, 32, 32))
        model(probe)  # eval forward fills weight_integer and the scales
        modules = dict(model.named_modules())
        for name in ("stage1.unit1.quant_convbn1", "stage3.unit1.quant_identity_convbn", "quant_output"):
            m = modules[name]
            if name == "quant_output":
                w, wq = m.weight.detach().double(), m.weight_integer.double() * m.fc_scaling_factor.double()[:, None]
                err = wq - w
            else:
                w = m.conv.weight.detach().double()
                folded = m.folded_weight_bias()[0].detach().double()
                wq = m.weight_integer.double() * m.convbn_scaling_factor.double()[:, None, None, None]
                err = (wq - folded) * w / folded  # back to conv-weight coordinates
            assert m.weight_bit == (8 if name == "quant_output" else bits)  # the head stays 8-bit
            assert quant_error(layers[name], m.weight_bit) == pytest.approx(float(err.square().sum()), rel=1e-5)
    assert quant_error(layers["quant_output"], 4) > quant_error(layers["quant_output"], 8) > 0


def test_weight_layers_follow_the_bit_config_order():
    from hawq.models.layers import WEIGHT_KINDS, quant_layers
    fp = fp_model(ARCH, 10)
    names = [layer.name for layer in weight_layers(fp, ARCH)]
    assert names == [s.name for s in quant_layers(ARCH) if s.kind in WEIGHT_KINDS]
    assert weight_layers(fp, ARCH)[-1].fold is None and weight_layers(fp, ARCH)[0].fold is not None


# --------------------------------------------------------------------------- rows, CLI
@needs_fmnist
def test_layer_sensitivity_rows_are_deterministic_and_complete():
    from hawq.data import build_loaders
    from hawq.sensitivity import batches_of
    data = build_loaders("fashion-mnist", None, 2, 0, 1.0, 0)
    batches = batches_of(data.train, 1)

    def rows():
        return layer_sensitivity(fp_model_pretrained(ARCH, 10, RELEASED_FP), ARCH, batches, max_iter=1, seed=5)

    a, b = rows(), rows()
    assert a == b
    assert len(a) == 22 and set(a[0]) == set(CSV_FIELDS)
    for r in a:
        assert r["iters"] == 1 and r["pert_4"] > r["pert_8"] > 0
        assert r["omega_4"] == pytest.approx(max(r["trace"], 0) / r["params"] * r["pert_4"])


@needs_fmnist
def test_cli_writes_the_csv(tmp_path):
    out = tmp_path / "sens.csv"
    proc = cli("-m", "hawq.sensitivity", "--pretrained", RELEASED_FP, "-b", "2", "--max-iter", "1", "--out", str(out),
               "--no-progress")
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(out)
    assert list(rows[0]) == list(CSV_FIELDS) and len(rows) == 22
    assert rows[0]["layer"] == "quant_init_block_convbn" and rows[-1]["layer"] == "quant_output"


@pytest.mark.parametrize("argv, message", [
    (["-a", "resnet7", "--out", "x.csv"], "unknown arch"),
    (["--batches", "0", "--out", "x.csv"], "--batches"),
    (["--pretrained", "/nonexistent.pth.tar", "--out", "x.csv"], "does not exist"),
    (["--tol", "0", "--pretrained", RELEASED_FP, "--out", "x.csv"], "tol"),
])
def test_bad_input_is_one_line_error(argv, message, capsys, tmp_path, monkeypatch):
    if not HAVE_FMNIST and "resnet7" not in argv:
        pytest.skip("dataset-fashion-mnist not installed")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--no-progress"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error:") and "\n" not in err and message in err
    assert not (tmp_path / "x.csv").exists()


def test_captured_model_sensitivity_names_folds_and_mpq(tmp_path):
    """A captured model (torchvision resnet18): the layers are the capture's names with their BN
    folds, the errors are those of the weights the quantized model uses, and hawq.mpq turns the CSV
    into a scheme bit_config accepts."""
    from hawq.apps.mpq import main as mpq_main
    from hawq.models.layers import WEIGHT_KINDS, quant_layers
    from hawq.fileio import rows_csv
    arch = "torchvision:resnet18"
    torch.manual_seed(0)
    fp = fp_model(arch, 10)
    randomize_bn(fp)
    layers = weight_layers(fp, arch)
    assert [layer.name for layer in layers] == [s.name for s in quant_layers(arch) if s.kind in WEIGHT_KINDS]
    assert layers[0].fold is not None and layers[-1].fold is None                     # conv1+bn1, fc
    model = quant_model(arch, load_scheme(arch, "uniform4"), 10, fp=copy.deepcopy(fp),
                        config=QuantConfig(fix_BN=True), input_size=32)
    model(calibrate(model, (2, 3, 32, 32)))
    m, layer = model.get_submodule("layer2.0.conv1"), layers[[x.name for x in layers].index("layer2.0.conv1")]
    folded = m.folded_weight_bias()[0].detach().double()
    wq = m.weight_integer.double() * m.convbn_scaling_factor.double()[:, None, None, None]
    err = (wq - folded) * m.conv.weight.detach().double() / folded
    assert quant_error(layer, 4) == pytest.approx(float(err.square().sum()), rel=1e-5)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    rows = layer_sensitivity(fp, arch, [(x, y)], max_iter=2, seed=0)
    (tmp_path / "sens.csv").write_text(rows_csv(rows, CSV_FIELDS))
    out = tmp_path / "s.json"
    mpq_main(["-a", arch, "--sensitivity", str(tmp_path / "sens.csv"), "--constraint", "bops=0.5", "--out", str(out)])
    bits = load_scheme(arch, str(out))
    assert {bits[n] for n in bits if n.startswith("layer")} >= {4, 8, 16} and bits["conv1"] == bits["fc"] == 8
