"""Post-training quantization (hawq.ptq): observers and weight quantizers against brute force,
integer weights written through BN folding, AdaRound's rounding bounds, a tiny end-to-end run that
verifies bit-exact, and bad input."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import RELEASED_FP, csv_rows
from hawq import numerics as N
from hawq.ptq import observers as O
from hawq.ptq import weights as W
from hawq.ptq.recon import AdaRoundWeight, ReconSettings, reconstruct_unit, units
from hawq.quant.config import QuantConfig
from hawq.quant.modules import QuantBnConv2d


# --------------------------------------------------------------------------- activation observers
def _batches(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 4, 5, 5, generator=g) * (1 + i) + 0.3 * i for i in range(n)]


def test_minmax_and_ema_observers_follow_their_update_rules():
    xs = _batches()
    mm, ema = O.Observer("minmax", 8, "asymmetric"), O.Observer("emaminmax", 8, "asymmetric")
    for x in xs:
        mm(x)
        ema(x)
    allx = torch.cat([x.reshape(-1) for x in xs])
    assert mm.range[0].item() == allx.min().item() and mm.range[1].item() == allx.max().item()
    lo, hi = xs[0].min().item(), xs[0].max().item()
    for x in xs[1:]:
        lo, hi = 0.9 * lo + 0.1 * x.min().item(), 0.9 * hi + 0.1 * x.max().item()
    assert ema.range[0].item() == pytest.approx(lo, rel=1e-6) and ema.range[1].item() == pytest.approx(hi, rel=1e-6)


def test_quantile_observer_ignores_outliers():
    x = torch.linspace(0, 1, 200_001)
    x[7] = -1000.0
    x[99] = 1000.0                             # two outliers in 200k values: beyond the 1e-5 quantiles
    ob = O.Observer("emaquantile", 8, "asymmetric")
    ob(x)
    lo, hi = ob.range
    assert 0.0 <= lo.item() < 1e-4 and 0.9999 < hi.item() <= 1.0


@pytest.mark.parametrize("mode,bits", [("asymmetric", 4), ("unsigned_range", 3), ("symmetric", 2)])
def test_mse_range_is_the_brute_force_minimum(mode, bits):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, generator=g)
    x = x.abs() if mode == "unsigned_range" else x
    x[0] = 12.0                                # a long tail: the best range clips it
    lo, hi = O.mse_range(x, bits, mode)
    errs = []
    for i in range(O.MSE_STEPS):             # MQBench's loop, one candidate at a time
        f = 1.0 - 0.01 * i
        a, b = (x.min() * f).reshape(1), (x.max() * f).reshape(1)
        scale, zero = N.activation_params(a, b, bits, mode)
        qmin, qmax = N.qrange(bits, signed=(mode == "symmetric"))
        errs.append(float((((N.quantize(x, scale, zero, qmin, qmax) - zero) * scale - x) ** 2).mean()))
    best = min(range(len(errs)), key=lambda i: (errs[i], i))
    assert hi.item() == pytest.approx(x.max().item() * (1 - 0.01 * best), rel=1e-6)
    assert hi.item() < x.max().item()          # the outlier is clipped
    mse = O.Observer("mse", bits, mode)
    mse(x)
    assert torch.equal(mse.range[1], hi)


def test_unknown_observer_and_empty_observer():
    from hawq.errors import HawqError
    with pytest.raises(HawqError, match="unknown activation observer 'histogram'"):
        O.Observer("histogram", 8, "asymmetric")
    with pytest.raises(HawqError, match="saw no data"):
        O.Observer("minmax", 8, "asymmetric").range


# --------------------------------------------------------------------------- weight quantizers
@pytest.mark.parametrize("bits,p", [(4, 2.0), (3, 2.4), (2, 2.0)])
def test_weight_scale_search_matches_a_per_row_loop(bits, p):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(5, 60, generator=g) * torch.tensor([[0.1], [1.0], [3.0], [0.01], [0.5]])
    w[2, 3] = 25.0                             # one channel with an outlier
    ratios = W.LP_RATIOS if p != 2.0 or bits == 2 else W.MSE_RATIOS
    got = W.search_scale(w, bits, ratios, p)
    qmax = (1 << (bits - 1)) - 1
    for c in range(w.shape[0]):
        row = w[c].double()
        best_err, best_s = None, None
        for r in ratios.tolist():
            s = row.abs().max().item() * r / qmax
            q = torch.clamp(torch.round(row / s), -qmax - 1, qmax)
            err = float((q * s - row).abs().pow(p).mean())
            if best_err is None or err < best_err:
                best_err, best_s = err, s
        assert got[c].item() == pytest.approx(best_s, rel=1e-6), c
    if bits > 2:                               # (at 2 bits, levels -2..1, keeping the outlier wins)
        assert got[2].item() < 25.0 / qmax     # the outlier channel's grid is clipped


def test_absmax_minmax_and_per_layer_scales():
    w = torch.tensor([[-3.0, 1.0, 0.5], [0.2, 0.7, -0.1]])
    for method in ("absmax", "minmax"):
        assert torch.allclose(W.choose_scale(w, 4, method, True), torch.tensor([3.0 / 7, 0.7 / 7]))
        assert torch.allclose(W.choose_scale(w, 4, method, False), torch.tensor([3.0 / 7]))
    # MSE never does worse than absmax on its own criterion
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 100, generator=g)
    e_mse = W.lp_error(w.double(), W.choose_scale(w, 3, "mse", True).double(), 3, 2.0)
    e_abs = W.lp_error(w.double(), W.choose_scale(w, 3, "absmax", True).double(), 3, 2.0)
    assert (e_mse <= e_abs + 1e-12).all() and (e_mse < e_abs).any()


def _convbn(gamma: torch.Tensor, bits: int = 4, seed: int = 0) -> QuantBnConv2d:
    g = torch.Generator().manual_seed(seed)
    c = gamma.numel()
    conv, bn = nn.Conv2d(3, c, 3, bias=False), nn.BatchNorm2d(c)
    conv.weight.data = torch.randn(conv.weight.shape, generator=g)
    bn.weight.data = gamma.clone()
    bn.bias.data = torch.randn(c, generator=g) * 0.1
    bn.running_mean = torch.randn(c, generator=g) * 0.1
    bn.running_var = torch.rand(c, generator=g) + 0.5
    layer = QuantBnConv2d(conv, bn, QuantConfig(per_channel=True, fix_BN=True), weight_bit=bits)
    layer.layer_name = "test"
    return layer


GAMMA = torch.tensor([0.7, -1.3, 0.0, 2.5, -0.01, 1.0])   # negative, zero and tiny BN scales


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_set_integer_weights_survives_bn_folding(bits):
    layer = _convbn(GAMMA, bits)
    qmin, qmax = N.qrange(bits, signed=True)
    g = torch.Generator().manual_seed(bits)
    q = torch.randint(qmin, qmax + 1, layer.conv.weight.shape, generator=g).float()
    scale = torch.rand(GAMMA.numel(), generator=g) * 0.1 + 0.01
    layer.set_integer_weights(q, scale)
    got = N.quantize_weight(layer.float_weight(), layer.fixed_weight_scale, bits, layer.profile)
    expect = q.clone()
    expect[2] = 0                              # γ = 0: the folded weight is zero whatever q says
    assert torch.equal(got, expect)
    assert torch.equal(layer.fixed_weight_scale, scale)


def test_bn_fold_after_keeps_the_raw_weights_integers():
    layer = _convbn(GAMMA[GAMMA != 0], 4)
    s = W.layer_scale(layer, "mse", True, "after")
    raw_s = W.choose_scale(layer.conv.weight, 4, "mse", True)
    k = layer.fold_factor()
    assert torch.allclose(s, raw_s * k.abs())
    q_folded = N.quantize_weight(layer.float_weight(), s, 4, layer.profile)
    q_raw = N.quantize_weight(layer.conv.weight, raw_s, 4, layer.profile)
    sign = N.channel_view(torch.sign(k), 4, 0)
    assert (q_folded - q_raw * sign).abs().max() <= 1         # equal up to float rounding at .5 ties
    assert (q_folded == q_raw * sign).float().mean() > 0.99


# --------------------------------------------------------------------------- AdaRound
def test_adaround_starts_at_nearest_and_ends_at_floor_or_ceil():
    layer = _convbn(GAMMA[GAMMA != 0], 3)
    w = layer.float_weight().detach()
    s = W.layer_scale(layer, "mse", True, "before")
    r = AdaRoundWeight(w, s, 3)
    x = w / N.channel_view(s, 4, 0)
    nearest = torch.clamp(torch.round(x), -4, 3)
    assert (r.hard() != nearest).float().mean() < 0.01         # h(V0) = frac(W/S): nearest, up to ties
    with torch.no_grad():
        r.V.copy_(torch.randn(r.V.shape) * 5)                  # any learned state
    hard = r.hard()
    lo, hi = torch.clamp(torch.floor(x), -4, 3), torch.clamp(torch.ceil(x), -4, 3)
    assert ((hard == lo) | (hard == hi)).all()
    assert ((r() / N.channel_view(s, 4, 0) - lo) >= -1e-5).all()


def test_reconstruction_lowers_the_unit_error_and_writes_integers():
    torch.manual_seed(0)
    layer = _convbn(torch.tensor([0.7, -1.3, 2.5, 1.0, 0.4, 0.9, 1.1, -0.6]), 2, seed=3)
    s = W.layer_scale(layer, "absmax", True, "before")
    layer.fixed_weight_scale.copy_(s)
    images = torch.randn(64, 3, 6, 6)
    from hawq.quant.graph import Q

    def err():
        layer.train()
        with torch.no_grad():
            x = Q(images, torch.ones(1, dtype=torch.float64))
            out = layer(x).value
            layer.fake_quant = False
            ref = layer(x).value
            layer.fake_quant = True
        return float((out - ref).pow(2).sum(1).mean())

    # a bare Sequential: the unit's input is the model input; wrap so capture hooks see Q values
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(Q(x, torch.ones(1, dtype=torch.float64)))

    wrap = Wrap()
    assert [n for n, _ in units(wrap, blockwise=False)] == ["layer"]
    before = err()
    reconstruct_unit(wrap, layer, images, ReconSettings(method="adaround", iters=200, lr=1e-2, batch=32),
                     torch.Generator().manual_seed(0))
    after = err()
    assert after < before
    q = N.quantize_weight(layer.float_weight(), layer.fixed_weight_scale, 2, layer.profile)
    assert q.min() >= -2 and q.max() <= 1 and torch.equal(layer.fixed_weight_scale, s)


# --------------------------------------------------------------------------- end to end
def _ptq(tmp_path, *extra):
    from hawq.apps import ptq as cli
    return cli.main(["-a", "resnet20_cifar10", "--pretrained", RELEASED_FP, "--calib-size", "64", "--iters", "4",
                     "--recon-batch", "8", "--eval-limit", "64", "-b", "64", "--no-progress",
                     "--save-path", str(tmp_path), *extra])


def test_tiny_ptq_run_verifies_bit_exact(tmp_path, capsys):
    res = _ptq(tmp_path, "--w-bits", "3", "--a-bits", "3", "--first-last-8bit", "--recon", "brecq",
               "--w-observer", "lp2.4", "--a-observer", "emamse")
    out = capsys.readouterr().out
    assert "calibration (emamse / lp2.4, 64 images)" in out and "reconstruction (brecq)" in out
    assert res["n"] == 64 and 0 <= res["top1"] <= 100
    assert [u for u, _ in res["units"]][:2] == ["quant_init_block_convbn", "stage1.unit1"]
    ckpt = res["checkpoint"]
    from hawq import checkpoint as C
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["quant_scheme"] == "w3a3_fl8" and state["ptq"]["recon"] == "brecq"
    assert state["bit_config"]["quant_init_block_convbn"] == 8 and state["bit_config"]["quant_output"] == 8
    assert state["bit_config"]["stage2.unit1.quant_convbn1"] == 3
    assert C.read(ckpt).quantized

    from hawq.apps import verify
    assert verify.main(["--checkpoint", ckpt, "--limit", "32", "-b", "32", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mismatches: 0/320"
    pytest.importorskip("tvm")
    from tvm_benchmark.apps import verify as tvm_verify
    assert tvm_verify.main(["--checkpoint", ckpt, "--limit", "16", "-b", "16", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mismatches: 0/160"


def test_ptq_checkpoint_resumes_in_quant_train(tmp_path, capsys):
    res = _ptq(tmp_path, "--w-bits", "4", "--a-bits", "8", "--recon", "adaround")
    import quant_train
    quant_train.main(["-a", "resnet20_cifar10", "--quant-scheme", "w4a8", "--resume", res["checkpoint"], "-e",
                      "--eval-limit", "64", "-b", "64", "--no-progress"])
    out = capsys.readouterr().out
    assert f"{res['top1']:.2f}" in out


def test_ptq_scheme_by_name_and_qdrop(tmp_path):
    res = _ptq(tmp_path, "--quant-scheme", "uniform4", "--recon", "qdrop", "--no-channel-wise", "--bn-fold", "after")
    state = torch.load(res["checkpoint"], map_location="cpu", weights_only=True)
    assert state["quant_scheme"] == "uniform4" and not state["quant_config"]["per_channel"]
    scales = [v for k, v in state["state_dict"].items() if k.endswith("fixed_weight_scale")]
    assert scales and all((s > 0).all() for s in scales)


# --------------------------------------------------------------------------- bad input
def _err(capsys, argv) -> str:
    from hawq.apps import ptq as cli
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") or "error:" in err[-1]
    return err[-1]


@pytest.mark.parametrize("argv,message", [
    (["--pretrained", "nope.pth.tar"], "does not exist"),
    (["--pretrained", RELEASED_FP, "--w-bits", "9"], "argument --w-bits: invalid choice: 9"),
    (["--pretrained", RELEASED_FP, "--a-bits", "1"], "argument --a-bits: invalid choice: 1"),
    (["--pretrained", RELEASED_FP, "--calib-size", "70000"], "70000"),
    (["--pretrained", "checkpoints/resnet20_cifar10_uniform8.pth.tar"], "is already quantized"),
    (["--pretrained", RELEASED_FP, "--quant-scheme", "uniform4", "--w-bits", "4"], "not both"),
    (["--pretrained", RELEASED_FP, "--drop-prob", "1.5"], "--drop-prob must be in [0, 1)"),
])
def test_bad_input_one_error_line(argv, message, capsys, tmp_path):
    out = tmp_path / "out"
    line = _err(capsys, ["-a", "resnet20_cifar10", "--save-path", str(out), "--no-progress", *argv])
    assert message in line
    assert not out.exists()


# --------------------------------------------------------------------------- benchmark
def test_ptq_bench_rows_verify_and_merge(tmp_path, capsys):
    from hawq.benchmarks import ptq as B
    tags = [r.tag for r in B.default_rows()]
    assert len(tags) == len(set(tags)) and "w4a8_mse_emamse_adaround" in tags and "w3a3_mse_mse_qdrop" in tags
    argv = ["--only", "w2a4_mse_mse_brecq", "w4a32_minmax_-_none_layer_foldafter", "--iters", "2", "--eval-limit",
            "32", "--verify-images", "16", "--calib-size", "32", "--out", str(tmp_path), "--no-progress"]
    assert B.main(argv) == 0
    rows = csv_rows(tmp_path / "ptq.csv")
    assert [(r["W_calibration"], r["wbit"], r["abit"], r["recon"]) for r in rows] == [
        ("FP", "32", "32", ""), ("mse", "2", "4", "brecq"), ("minmax", "4", "32", "none")]
    assert rows[1]["verified"] == "0/160 (16 img)" and rows[2]["verified"].startswith("weight-only")
    assert rows[1]["images"] == "32" and rows[2]["granularity"] == "layer" and rows[2]["bn_fold"] == "after"
    md = (tmp_path / "ptq.md").read_text()
    assert "## resnet20_cifar10 (FP " in md and "Command: `python -m hawq.ptq_bench" in md and "| mse | mse | 2 | 4 | channel | before | brecq | 2 |" in md
    assert B.main(argv[:2] + argv[3:]) == 0                  # re-run one row: replaced, not duplicated
    assert len(csv_rows(tmp_path / "ptq.csv")) == 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        B.main(["--only", "w9a9", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "no benchmark row matches --only w9a9" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
