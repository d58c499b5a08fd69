"""Learned quantizers (--quantizer lsq/pact/dorefa), recipes (warm-up, defaults, zero-init), and
that every quantizer exports the same kind of integer artifact, bit-exact in the reference and TVM."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from hawq import engine
from hawq import numerics as N
from hawq.errors import HawqError
from hawq.models.factory import fp_model, zero_init_residual
from hawq.quant import learned as L
from hawq.quant.config import QuantConfig
from hawq.quant.graph import Q
from hawq.quant.modules import QuantAct, QuantLinear

ROOT = Path(__file__).resolve().parents[1]
FP = str(ROOT / "checkpoints" / "resnet20_cifar10_fp32.pth.tar")
TINY = ["--data-percentage", "0.01", "--eval-limit", "64", "-b", "64", "--no-progress"]


# --------------------------------------------------------------------------- pure functions
def test_lsq_gradient_is_the_papers():
    x = torch.tensor([-3.0, -0.26, 0.0, 0.74, 1.3, 9.0], requires_grad=True)
    s = torch.tensor([0.5], requires_grad=True)
    g = 0.25
    y = L.lsq_surrogate(x, s, -4, 3, g)
    assert torch.equal(y.detach(), torch.tensor([-2.0, -0.5, 0.0, 0.5, 1.5, 1.5]))
    y.sum().backward()
    v = x.detach() / 0.5
    inside = (v > -4) & (v < 3)
    expect = torch.where(v <= -4, torch.tensor(-4.0), torch.where(v >= 3, torch.tensor(3.0), torch.round(v) - v))
    assert torch.allclose(s.grad, (expect.sum() * g).reshape(1))
    assert torch.equal(x.grad, inside.float())


def test_lsq_per_channel_step_and_grad_factor():
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    s = torch.full((4,), 0.1, requires_grad=True)
    L.lsq_surrogate(w, s, -8, 7, 1.0, channel_dim=0).sum().backward()
    assert s.grad.shape == (4,) and torch.isfinite(s.grad).all()
    assert L.lsq_grad_factor(27, 7) == pytest.approx(1 / math.sqrt(27 * 7))


def test_pact_gradient_flows_to_the_clip_above_it():
    x = torch.tensor([-1.0, 0.5, 2.0, 3.0], requires_grad=True)
    a = torch.tensor([1.5], requires_grad=True)
    y = L.pact_surrogate(x, a, 0.0)
    assert torch.equal(y.detach(), torch.tensor([0.0, 0.5, 1.5, 1.5]))
    y.sum().backward()
    assert a.grad.item() == 2.0 and torch.equal(x.grad, torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_dorefa_keeps_the_range_and_order():
    w = torch.randn(64) * 0.3
    t = L.dorefa_weight(w)
    assert torch.isclose(t.abs().max(), w.abs().max())
    assert torch.equal(torch.argsort(t), torch.argsort(w))


def test_unknown_quantizer_is_one_error():
    with pytest.raises(HawqError, match="unknown --quantizer 'lsqq'"):
        QuantConfig(quantizer="lsqq")


# --------------------------------------------------------------------------- modules
@pytest.mark.parametrize("method,mode_role", [("lsq", "relu"), ("lsq", "input"), ("pact", "relu"), ("pact", "accumulator")])
def test_learned_activation_starts_at_minmax_and_evaluates_its_parameter(method, mode_role):
    act = QuantAct(mode_role, QuantConfig(quantizer=method))
    x = torch.randn(8, 4, 5, 5) * 2
    act.train()
    assert not act.calibrated
    act(x)
    minmax = N.activation_params(act.x_min, act.x_max, 8, act.mode)[0]
    p = act.learned
    assert act.calibrated and p.item() > 0
    torch.testing.assert_close(act.quant_params()[0], minmax, rtol=1e-6, atol=0)
    with torch.no_grad():
        p.mul_(0.8)                  # PACT: a gradient only reaches a clip that clips something
    act(x).value.square().sum().backward()
    assert p.grad is not None and p.grad.abs().item() > 0
    with torch.no_grad():
        p.mul_(1.5)
    act.eval()
    scale = act(x).scale
    if method == "lsq":
        assert scale.item() == pytest.approx(1.2 * minmax.item(), rel=1e-5)
    assert scale.item() != pytest.approx(minmax.item(), rel=1e-3)


def test_lsq_weight_step_is_learned_and_used_for_the_integers():
    lin = QuantLinear(torch.nn.Linear(6, 3), QuantConfig(quantizer="lsq"), weight_bit=4)
    x = Q(torch.randn(5, 6), torch.tensor([0.02], dtype=torch.float64))
    lin.train()
    lin(x).value.sum().backward()
    assert lin.weight_step.grad is not None
    torch.testing.assert_close(lin.weight_step.detach(), N.weight_scale(lin.weight, 4, True))
    with torch.no_grad():
        lin.weight_step.mul_(0.5)
    lin.eval()
    xi = Q(torch.randint(-5, 5, (5, 6)), x.scale)
    lin(xi)
    torch.testing.assert_close(lin.fc_scaling_factor, lin.weight_step.detach().abs())
    w = lin.weight_integer
    assert int(w.max()) == 7 and int(w.min()) == -8                  # half the step: the largest saturate


def test_training_forward_value_equals_the_integer_path():
    """What LSQ trains is what exports: the training-mode output of a quantizer is its eval output."""
    act = QuantAct("relu", QuantConfig(quantizer="lsq"))
    act.train()
    x = torch.rand(4, 3, 6, 6) * 5
    act(x)
    act.fix()
    train_out = act(x).value
    act.eval()
    q = act(x)
    assert torch.equal(train_out, q.value.float() * q.scale.float())


# --------------------------------------------------------------------------- recipe
def test_warmup_then_cosine():
    lrs = [engine.lr_at(t, 0.1, 4, "cosine", 1.0) for t in (0.25, 0.5, 1.0, 2.5, 4.0)]
    assert lrs[:3] == pytest.approx([0.025, 0.05, 0.1])
    assert lrs[3] == pytest.approx(0.05) and lrs[4] == pytest.approx(0.0, abs=1e-12)
    assert engine.lr_at(31.5, 0.1, 90, "step", 2.0) == pytest.approx(0.01)


def test_zero_init_residual_makes_units_identities():
    m = fp_model("resnet20_cifar10", 10)
    assert zero_init_residual(m) == 9
    assert zero_init_residual(fp_model("mobilenetv2_w1", 10)) == 10


def test_default_recipe_is_stated(capsys, tmp_path):
    import quant_train
    quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "uniform8", "--epochs", "1", "--save-path",
                      str(tmp_path), *TINY])
    out = capsys.readouterr().out
    assert "note: training --quant-scheme uniform8 from random initialization" in out
    assert "recipe: 1 epochs, lr 0.05 (cosine, warm-up 0.5 epochs), batch 64" in out
    quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "uniform8", "--pretrained", FP, "--epochs", "1",
                      "--save-path", str(tmp_path / "ft"), *TINY])
    out = capsys.readouterr().out
    assert "from random initialization" not in out and "lr 0.001 (cosine, warm-up 0 epochs)" in out


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short QAT run per quantizer from the released FP checkpoint (uniform4: the learned
    parameters matter most there)."""
    import quant_train
    out = {}
    for method in L.METHODS:
        d = tmp_path_factory.mktemp(method)
        res = quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "uniform4", "--pretrained", FP, "--fix-BN",
                                "--quantizer", method, "--epochs", "1", "--lr", "0.01", "--save-path", str(d), *TINY])
        out[method] = (d, res)
    return out


@pytest.mark.parametrize("method", L.METHODS)
def test_every_quantizer_exports_bit_exact(trained, method, capsys):
    d, res = trained[method]
    ckpt = d / "checkpoint.pth.tar"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["quant_config"]["quantizer"] == method
    names = [k for k in state["state_dict"] if k.endswith(("act_step", "act_clip", "weight_step"))]
    assert bool(names) == (method in ("lsq", "pact"))
    assert all(float(state["state_dict"][k].abs().min()) > 0 for k in names)
    from hawq import verify
    assert verify.main(["--checkpoint", str(ckpt), "--limit", "32", "-b", "32", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mismatches: 0/320"
    pytest.importorskip("tvm")
    from tvm_benchmark import verify as tvm_verify
    assert tvm_verify.main(["--checkpoint", str(ckpt), "--limit", "16", "-b", "16",
                            "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mismatches: 0/160"


def test_resume_continues_the_learned_parameters(trained, tmp_path, capsys):
    import quant_train
    d, _ = trained["lsq"]
    saved = torch.load(d / "checkpoint.pth.tar", map_location="cpu", weights_only=True)["state_dict"]
    res = quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "uniform4", "--resume",
                            str(d / "checkpoint.pth.tar"), "-e", "--eval-limit", "64", "-b", "64", "--no-progress",
                            "--save-path", str(tmp_path)])
    assert res["top1"] is not None
    import hawq.checkpoint as C
    from hawq.models.factory import quant_model_from
    model, _ = quant_model_from(C.read(str(d / "checkpoint.pth.tar")))
    assert model.config.quantizer == "lsq"
    for k, v in model.state_dict().items():
        if k.endswith(("act_step", "weight_step")):
            assert torch.equal(v, saved[k]), k
    with pytest.raises(SystemExit):
        quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "uniform4", "--resume", str(d / "checkpoint.pth.tar"),
                          "--quantizer", "pact", "--epochs", "2", "--save-path", str(tmp_path / "x"), *TINY])
    assert "trained with --quantizer lsq" in capsys.readouterr().err
