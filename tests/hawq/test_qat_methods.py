"""Learned quantizers (--quantizer lsq/pact/dorefa), recipes (warm-up, defaults, zero-init), and
that every quantizer exports the same kind of integer artifact, bit-exact in the reference and TVM."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import RELEASED_FP
from hawq import engine
from hawq import numerics as N
from hawq.errors import HawqError
from hawq.models.factory import fp_model, zero_init_residual
from hawq.quant import learned as L
from hawq.quant.config import QuantConfig
from hawq.quant.graph import Q
from hawq.quant.modules import QuantAct, QuantBnConv2d, QuantLinear

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
    x = torch.randn(8, 4, 5, 5, generator=torch.Generator().manual_seed(0)) * 2
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


def test_lsq_mean_init_is_the_papers_step():
    """--lsq-init mean: the first training forward starts the steps at 2·mean|v|/√Qp (per output
    channel for weights), not at the min/max scale; an unknown choice is one error."""
    cfg = QuantConfig(quantizer="lsq", lsq_init="mean")
    lin = QuantLinear(torch.nn.Linear(6, 3), cfg, weight_bit=2)
    x = Q(torch.randn(5, 6), torch.tensor([0.02], dtype=torch.float64))
    lin.train()
    lin(x)
    torch.testing.assert_close(lin.weight_step.detach(), 2 * lin.weight.detach().abs().mean(1) / math.sqrt(1))
    act = QuantAct("relu", cfg, activation_bit=2)
    a = torch.randn(8, 4, 5, 5, generator=torch.Generator().manual_seed(0)).relu() * 3   # heavy-tailed, as after ReLU
    act.train()
    act(a)
    torch.testing.assert_close(act.quant_params()[0], (2 * a.mean() / math.sqrt(3)).reshape(1))
    assert act.quant_params()[0].item() < N.activation_params(act.x_min, act.x_max, 2, act.mode)[0].item()
    with pytest.raises(HawqError, match="unknown --lsq-init 'max'"):
        QuantConfig(quantizer="lsq", lsq_init="max")


def _bn_conv(fix_bn: bool) -> QuantBnConv2d:
    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4)
    with torch.no_grad():                # channels with BN factors |γ/σ| from 0.01 to 3
        bn.weight.copy_(torch.tensor([3.0, -0.5, 0.01, 1.0]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 1.0, 0.25]))
    return QuantBnConv2d(conv, bn, QuantConfig(quantizer="lsq", fix_BN=fix_bn), weight_bit=8)


def test_lsq_weight_step_of_a_bn_conv_is_the_unfolded_weights():
    """The learned step lives where the weight does (before BN folding): initialized to the min/max
    step of the conv's own weight, it quantizes the folded weight W·γ/σ with step |s|·|γ/σ|, and its
    gradient is the LSQ gradient of quantizing W with step s - independent of γ/σ, so a channel
    with a tiny BN factor (a tiny folded step) gets no larger relative update than the others."""
    layer = _bn_conv(fix_bn=True)
    x = Q(torch.rand(2, 3, 6, 6), torch.tensor([0.01], dtype=torch.float64))
    layer.train()
    layer(x).value.sum().backward()
    w = layer.conv.weight.detach()
    torch.testing.assert_close(layer.weight_step.detach(), N.weight_scale(w, 8, True))
    k = layer.fold_factor().abs()
    # the same gradient through the surrogate on the folded weight with the folded step
    s = layer.weight_step.detach().clone().requires_grad_(True)
    wf = layer.folded_weight_bias()[0].detach()
    g = L.lsq_grad_factor(w[0].numel(), 127)
    ref = L.lsq_surrogate(wf, s * k, -128, 127, g, channel_dim=0)
    b = layer.folded_weight_bias()[1].detach()
    out = torch.nn.functional.conv2d(x.value, ref, b)
    out.sum().backward()
    torch.testing.assert_close(layer.weight_step.grad, s.grad, rtol=1e-3, atol=1e-4)   # summation order
    layer.eval()
    layer(Q(torch.randint(0, 100, (2, 3, 6, 6)), x.scale))
    torch.testing.assert_close(layer.convbn_scaling_factor, (layer.weight_step.detach().abs() * k).float())


def test_lsq_weight_step_learns_while_bn_trains():
    """Without --fix-BN the unfolded weight is quantized with the learned step itself; after the fold
    the same parameter continues as |s|·|γ/σ|."""
    layer = _bn_conv(fix_bn=False)
    layer.train()
    layer(Q(torch.rand(2, 3, 6, 6), None)).value.sum().backward()
    assert layer.weight_step.grad is not None and bool(layer.weight_step.grad.abs().sum() > 0)
    torch.testing.assert_close(layer.weight_step.detach(), N.weight_scale(layer.conv.weight.detach(), 8, True))


def test_a_negative_lsq_weight_step_is_used_by_its_magnitude():
    """SGD can push a step through zero: the forward scale is |s| (as the gradient assumes), not the
    floor MIN_RANGE, in training and at export."""
    layer = _bn_conv(fix_bn=True)
    x = Q(torch.rand(2, 3, 6, 6), torch.tensor([0.01], dtype=torch.float64))
    layer.train()
    layer(x)
    with torch.no_grad():
        layer.weight_step.neg_()
    k = layer.fold_factor().abs()
    want = (layer.weight_step.detach().abs() * k).float()
    torch.testing.assert_close(layer.weight_scale(layer.float_weight()), want)
    layer.eval()
    layer(Q(torch.randint(0, 100, (2, 3, 6, 6)), x.scale))
    torch.testing.assert_close(layer.convbn_scaling_factor, want)


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


@pytest.mark.parametrize("method", ["lsq", "pact"])
def test_wide_quantizers_keep_minmax_ranges(method):
    """A 16-bit accumulator under lsq/pact: no learned parameter in use, the min/max scale, no gradient."""
    act = QuantAct("relu", QuantConfig(quantizer=method))
    assert act.learned is not None
    act.set_activation_bit(16)
    assert act.learned is None
    act.train()
    x = (torch.rand(2, 3, 4, 4) * 5).requires_grad_()
    act(x).value.sum().backward()
    assert L.ACT_PARAM[method] not in dict(act.named_parameters())      # DDP rejects unused parameters
    scale, _ = act.quant_params()
    expected, _ = N.activation_params(act.x_min, act.x_max, 16, act.mode)
    assert torch.equal(scale, expected)


# --------------------------------------------------------------------------- recipe
def test_warmup_then_cosine():
    lrs = [engine.lr_at(t, 0.1, 4, "cosine", 1.0) for t in (0.25, 0.5, 1.0, 2.5, 4.0)]
    assert lrs[:3] == pytest.approx([0.025, 0.05, 0.1])
    assert lrs[3] == pytest.approx(0.05) and lrs[4] == pytest.approx(0.0, abs=1e-12)
    assert engine.lr_at(31.5, 0.1, 90, "step", 2.0) == pytest.approx(0.01)


def test_zero_init_residual_only_for_bottleneck_units():
    m = fp_model("resnet50", 10)
    assert zero_init_residual(m) == 16
    last = [b for b in m.features.stage1.unit1.body.modules() if isinstance(b, torch.nn.BatchNorm2d)][-1]
    assert not last.weight.any()
    # shallow units keep gamma = 1: zero-init cost the demo's 2-epoch resnet20 20 points (issue 33)
    assert zero_init_residual(fp_model("resnet20_cifar10", 10)) == 0
    assert zero_init_residual(fp_model("mobilenetv2_w1", 10)) == 0


def test_reestimate_bn_is_the_average_of_batch_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    bn = model[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    batches = [(torch.randn(8, 3, 6, 6) * (i + 1) + i, None) for i in range(3)]
    model.eval()
    assert engine.reestimate_bn(model, batches, 2, "cpu", progress=False) == 16
    assert not model.training and bn.momentum == 0.1
    with torch.no_grad():
        outs = [model[0](x) for x, _ in batches[:2]]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    var = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs]).mean(0)
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, rtol=1e-5)


def test_default_recipe_is_stated(capsys, tmp_path):
    import quant_train
    quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "uniform8", "--epochs", "1", "--save-path",
                      str(tmp_path), *TINY])
    out = capsys.readouterr().out
    assert "note: training --quant-scheme uniform8 from random initialization" in out
    assert "recipe: 1 epochs, sgd lr 0.05 (cosine, warm-up 0.05 epochs), batch 64" in out
    quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "uniform8", "--pretrained", RELEASED_FP,
                      "--epochs", "1", "--save-path", str(tmp_path / "ft"), *TINY])
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
        res = quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "uniform4", "--pretrained", RELEASED_FP,
                                "--fix-BN", "--quantizer", method, "--epochs", "1", "--lr", "0.01",
                                "--save-path", str(d), *TINY])
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
    from hawq.apps import verify
    assert verify.main(["--checkpoint", str(ckpt), "--limit", "32", "-b", "32", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mismatches: 0/320"
    pytest.importorskip("tvm")
    from tvm_benchmark.apps import verify as tvm_verify
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
    from hawq.models.restore import quant_model_from
    model, _ = quant_model_from(C.read(str(d / "checkpoint.pth.tar")))
    assert model.config.quantizer == "lsq"
    for k, v in model.state_dict().items():
        if k.endswith(("act_step", "weight_step")):
            assert torch.equal(v, saved[k]), k
    with pytest.raises(SystemExit):
        quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "uniform4", "--resume", str(d / "checkpoint.pth.tar"),
                          "--quantizer", "pact", "--epochs", "2", "--save-path", str(tmp_path / "x"), *TINY])
    assert "trained with --quantizer lsq" in capsys.readouterr().err


def test_qat_methods_table(tmp_path, capsys):
    from hawq.benchmarks import qat_methods
    rows = qat_methods.main(["--pretrained", RELEASED_FP, "--quant-scheme", "uniform4", "--quantizer", "minmax", "lsq",
                             "--data-percentage", "0.005", "--eval-limit", "64", "--runs", str(tmp_path / "runs"),
                             "--out-dir", str(tmp_path), "--no-progress"])
    assert [(r["scheme"], r["quantizer"], r["lr"]) for r in rows] == [("uniform4", "minmax", "0.005"),
                                                                      ("uniform4", "lsq", "0.005")]
    md = (tmp_path / "qat_methods.md").read_text()
    assert "Host: " in md and "| resnet20_cifar10 | uniform4 | 4/4 | lsq | 1 | 0.005 | no |" in md
    assert (tmp_path / "qat_methods.csv").read_text().splitlines()[0].startswith("host,arch,scheme,a_w,quantizer")
    assert (tmp_path / "runs" / "uniform4_lsq" / "quantized_checkpoint.pth.tar").is_file()


def test_minmax_checkpoint_continues_with_lsq(trained, tmp_path, capsys):
    """Switching a minmax QAT checkpoint to LSQ: a new run from its weights, steps from its ranges."""
    import quant_train
    d, _ = trained["minmax"]
    res = quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "uniform4", "--resume", str(d / "checkpoint.pth.tar"),
                            "--quantizer", "lsq", "--fix-BN", "--epochs", "1", "--lr", "0.001",
                            "--save-path", str(tmp_path), *TINY])
    assert "quantizer lsq" in capsys.readouterr().out and res["top1"] > 50
    sd = torch.load(tmp_path / "checkpoint.pth.tar", map_location="cpu", weights_only=True)["state_dict"]
    learned = {k: v for k, v in sd.items() if k.endswith(("act_step", "weight_step"))}
    # every <= 8-bit quantizer has started its step; the 16-bit accumulators keep min/max (no step)
    assert learned and all(float(v.abs().min()) > 0 for v in learned.values())
    assert not any("quant_act_int32" in k for k in learned)


@pytest.mark.parametrize("channel_dim", [None, 0])
def test_fused_lsq_gradient_equals_the_surrogates(channel_dim):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 3, 5, 5, generator=g) * 3).requires_grad_()
    step = (torch.rand(4 if channel_dim == 0 else 1, generator=g) * 0.5 + 0.1)
    step[0] = -step[0]                                 # |step| is the scale: the sign flips its gradient
    step.requires_grad_()
    up = torch.randn(4, 3, 5, 5, generator=g)
    ref = L.lsq_surrogate(x, step, -8, 7, 0.3, channel_dim=channel_dim)
    gx_ref, gs_ref = torch.autograd.grad((ref * up).sum(), [x, step])
    fused = L.lsq_ste(x, step, ref.detach(), -8, 7, 0.3, channel_dim=channel_dim)
    assert torch.equal(fused, ref.detach())
    gx, gs = torch.autograd.grad((fused * up).sum(), [x, step])
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(gs, gs_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lower", [-0.5, None])
def test_fused_pact_gradient_equals_the_surrogates(lower):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 3, 4, 4, generator=g) * 2).requires_grad_()
    a = torch.tensor([1.1], requires_grad=True)
    up = torch.randn(2, 3, 4, 4, generator=g)
    ref = L.pact_surrogate(x, a, lower)
    gx_ref, ga_ref = torch.autograd.grad((ref * up).sum(), [x, a])
    gx, ga = torch.autograd.grad((L.pact_ste(x, a, ref.detach(), lower) * up).sum(), [x, a])
    torch.testing.assert_close(gx, gx_ref)
    torch.testing.assert_close(ga, ga_ref)


def test_symmetric_pact_clip_gets_the_gradient_from_both_sides():
    """On a symmetric grid y = clamp(x, −α, α): values below −α pull α with dy/dα = −1."""
    x = torch.tensor([-3.0, -0.5, 0.5, 2.0])
    a = torch.tensor([1.0], requires_grad=True)
    L.pact_ste(x, a, L.pact_surrogate(x, a, None).detach(), None).sum().backward()
    assert a.grad.item() == 0.0                      # +1 from 2.0, −1 from −3.0
    a.grad = None
    L.pact_ste(x, a, x, None).mul(torch.tensor([2.0, 1, 1, 1])).sum().backward()
    assert a.grad.item() == -1.0


def test_a_diverging_run_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys):
    """A non-finite loss ends the run at that step (exit 2, one line) instead of training on NaN
    weights and failing later in the integer eval path; nothing of the diverged epoch is written."""
    import quant_train
    args = ["-a", "resnet20_cifar10", "--quant-scheme", "uniform8", "--pretrained", RELEASED_FP, "--fix-BN",
            "--save-path", str(tmp_path), *TINY]
    assert quant_train.main([*args, "--epochs", "1", "--lr", "0.001"])["top1"] > 50
    before = (tmp_path / "checkpoint.pth.tar").read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        quant_train.main([*args, "--resume", str(tmp_path / "checkpoint.pth.tar"), "--epochs", "2", "--lr", "1e30",
                          "--momentum", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: training diverged: the loss is")
    assert (tmp_path / "checkpoint.pth.tar").read_bytes() == before
