"""Quantized modules and models: integer eval path == exported graph on the NumPy reference,
for every arch x scheme; training/eval consistency; BN folding schedule; HAWQ naming."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_calibrated
from hawq.bit_config import list_schemes, load_scheme
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.models.factory import fp_model, quant_model
from hawq.quant.modules import QuantAct, QuantBnConv2d
from hawq.reference import run_graph
from hawq.quant.config import QuantConfig

IMAGENET_ARCHS = ["resnet18", "resnet50", "resnet50b", "resnet101"]
#: ImageNet archs run at 32x32 here (the global pool makes the graph size-agnostic); 224 is covered
#: by the bit_config accounting and the slow test below.
SMALL_IMAGENET = (2, 3, 32, 32)


def _assert_integer_paths_agree(model, probe):
    art = export_integer(model, tuple(probe.shape[1:]))
    qat = model.forward_int(probe).numpy()
    ref = run_graph(art["graph"], probe.numpy())
    assert qat.dtype == np.int64 and ref.dtype == np.int64
    np.testing.assert_array_equal(qat, ref)
    assert np.abs(qat).max() > 0
    return art


@pytest.mark.parametrize("scheme", ["uniform8", "uniform4", "mixed_stage1_8bit"])
def test_small_arch_int_eval_equals_reference(scheme):
    model, probe = build_calibrated("resnet20_cifar10", scheme, 10, (4, 3, 32, 32))
    _assert_integer_paths_agree(model, probe)


@pytest.mark.parametrize("arch,scheme", [(a, s) for a in IMAGENET_ARCHS for s in list_schemes(a)])
def test_imagenet_arch_scheme_int_eval_equals_reference(arch, scheme):
    model, probe = build_calibrated(arch, scheme, 10, SMALL_IMAGENET)
    art = _assert_integer_paths_agree(model, probe)
    bits = load_scheme(arch, scheme)
    weights = {n["name"]: n for n in art["graph"]["nodes"] if n["op"] in ("conv2d", "dense")}
    for name, node in weights.items():          # 4-bit layers really hold 4-bit integers
        lim = 2 ** (bits[name] - 1)
        assert -lim <= int(node["weight"].min()) and int(node["weight"].max()) <= lim - 1


@pytest.mark.slow
def test_resnet18_at_224_int_eval_equals_reference():
    model, probe = build_calibrated("resnet18", "bops_0.5", 1000, (1, 3, 224, 224))
    _assert_integer_paths_agree(model, probe)


def test_per_tensor_and_percentile_options_stay_exact():
    model, probe = build_calibrated("resnet20_cifar10", "uniform4", 10, (4, 3, 32, 32), per_channel=False,
                                    weight_percentile=99.0, act_percentile=99.9, bias_bit=16)
    art = _assert_integer_paths_agree(model, probe)
    conv = next(n for n in art["graph"]["nodes"] if n["op"] == "conv2d")
    assert conv["weight_scale"].numel() == 1
    assert all(int(n["bias"].abs().max()) <= 2 ** 15 for n in art["graph"]["nodes"] if n["op"] == "conv2d")


def test_hawq_names_match_bit_config(small_model):
    model, _ = small_model
    assert set(model.quant_layer_names()) == set(load_scheme("resnet20_cifar10", "uniform8"))
    big = quant_model("resnet50", load_scheme("resnet50", "bops_0.5"), 10)
    assert "quant_init_convbn" in big.quant_layer_names()
    assert "stage4.unit1.quant_identity_convbn" in big.quant_layer_names()
    assert big.stage1.unit1.quant_convbn3.weight_bit == load_scheme("resnet50", "bops_0.5")["stage1.unit1.quant_convbn3"]


def test_bit_config_missing_layer_is_named():
    bits = load_scheme("resnet20_cifar10", "uniform8")
    del bits["stage2.unit1.quant_convbn2"]
    with pytest.raises(HawqError, match="stage2.unit1.quant_convbn2"):
        quant_model("resnet20_cifar10", bits, 10)


def test_eval_is_deterministic_and_forward_is_scaled_integers(small_model):
    model, probe = small_model
    a, b = model.forward_int(probe), model.forward_int(probe)
    assert torch.equal(a, b)
    with torch.no_grad():
        logits = model(probe)
    q = model.forward_q(probe)
    torch.testing.assert_close(logits, (a.double() * q.scale).float())


def test_training_forward_tracks_integer_eval(small_model):
    """With ranges frozen and BN folded, the fake-quant training forward emulates the integer path:
    same predictions and logits within a few quantization steps."""
    model, probe = small_model
    with torch.no_grad():
        ref = model(probe)
        model.train()
        model.freeze_act_ranges()
        fq = model(probe)
        model.unfreeze_act_ranges()
        model.eval()
    assert torch.equal(fq.argmax(1), ref.argmax(1))
    assert (fq - ref).abs().max() <= 0.02 * ref.abs().max()


def test_activation_ranges_update_only_in_training(small_model):
    model, probe = small_model
    act = model.stage1.unit1.quant_act
    before = act.x_max.clone()
    model.eval()
    model(probe * 10)
    assert torch.equal(act.x_max, before)


def test_bn_fold_threshold_schedule():
    torch.manual_seed(0)
    model = quant_model("resnet20_cifar10", load_scheme("resnet20_cifar10", "uniform8"), 10,
                        config=QuantConfig(fix_BN_threshold=3))
    conv = model.stage1.unit1.quant_convbn1
    x = torch.randn(4, 3, 32, 32)
    model.train()
    seen = []
    for _ in range(5):
        mean = conv.bn.running_mean.clone()
        with torch.no_grad():
            model(x)
        seen.append(not torch.equal(mean, conv.bn.running_mean))
    # three unfolded steps update BN statistics, then BN is folded and frozen
    assert seen == [True, True, True, False, False]
    assert conv.bn_folded and int(conv.fold_step) == 5


def test_fix_bn_folds_from_the_start():
    model = quant_model("resnet20_cifar10", load_scheme("resnet20_cifar10", "uniform8"), 10, config=QuantConfig(fix_BN=True))
    mean = model.quant_init_block_convbn.bn.running_mean.clone()
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert torch.equal(mean, model.quant_init_block_convbn.bn.running_mean)


def test_uncalibrated_eval_is_a_clear_error():
    model = quant_model("resnet20_cifar10", load_scheme("resnet20_cifar10", "uniform8"), 10).eval()
    with pytest.raises(HawqError, match="quant_input"):
        model(torch.randn(1, 3, 32, 32))


def test_module_buffers_follow_hawq_layout(small_model):
    model, probe = small_model
    model.forward_int(probe)
    sd = model.state_dict()
    for key in ("quant_input.x_min", "quant_input.act_scaling_factor", "quant_input.pre_weight_scaling_factor",
                "stage1.unit1.quant_convbn1.convbn_scaling_factor", "stage1.unit1.quant_convbn1.weight_integer",
                "stage1.unit1.quant_convbn1.bias_integer", "stage1.unit1.quant_convbn1.conv.weight",
                "stage1.unit1.quant_convbn1.bn.running_var", "quant_output.fc_scaling_factor",
                "quant_output.weight_integer", "quant_output.weight", "quant_output.bias"):
        assert key in sd, key
    assert int(sd["stage1.unit1.quant_convbn1.weight_integer"].abs().max()) == 127
    assert isinstance(model.quant_input, QuantAct) and model.quant_input.mode == "asymmetric"
    assert isinstance(model.stage3.unit1.quant_identity_convbn, QuantBnConv2d)


def test_fp_model_any_input_size():
    m = fp_model("resnet18", 10).eval()
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# --------------------------------------------------------------------------- HAWQ's layout, captured
@pytest.mark.parametrize("arch,side", [("resnet18", 32), ("resnet20_cifar10", 32), ("mobilenetv2_w1", 32),
                                       ("inceptionv3", 75)])
def test_named_archs_are_captures_in_hawqs_layout(arch, side):
    """One path: a named arch is a captured model whose layout (quantization points, names) is
    HAWQ-V3's; placing the points leaves the float model's function unchanged; the blocks BRECQ and
    QDrop reconstruct are HAWQ's units (residual or not)."""
    import copy
    from hawq.capture import QuantGraphModel, QuantPoint
    from hawq.models.archs import arch_info
    from hawq.models.hawq_layout import LAYOUTS
    from hawq.ptq.recon import units
    torch.manual_seed(0)
    fp = fp_model(arch, 10).eval()
    placed = copy.deepcopy(fp)
    LAYOUTS[arch_info(arch).family].place(placed, arch_info(arch))
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(placed(x), fp(x), rtol=0, atol=1e-5)
    assert any(isinstance(m, QuantPoint) for m in placed.modules())
    q = quant_model(arch, {}, 10, fp=fp)
    assert isinstance(q, QuantGraphModel) and "def forward" in q.program.code
    again = quant_model(arch, {}, 10, fp=fp)          # placed once: a second model shares the parameters
    assert again.quant_layer_names() == q.quant_layer_names() and again.state_dict().keys() == q.state_dict().keys()
    assert next(iter(again.parameters())) is next(iter(q.parameters()))
    blocks = [n for n, _ in units(q, blockwise=True)]
    unit = {"resnet18": "stage2.unit1", "resnet20_cifar10": "stage3.unit3", "mobilenetv2_w1": "features.stage1.unit1",
            "inceptionv3": "features.stage2.unit1"}[arch]
    assert unit in blocks and not any(b.startswith(unit + ".") for b in blocks)


def test_a_layout_that_cannot_name_a_module_is_a_one_line_error(monkeypatch):
    from hawq.models import hawq_layout
    layout = hawq_layout.LAYOUTS["resnet"]
    names = lambda info: [(p, r) for p, r in layout.names(info) if not p.endswith(r"identity_conv\.conv")]  # noqa: E731
    monkeypatch.setitem(hawq_layout.LAYOUTS, "resnet", hawq_layout.Layout(layout.place, names, layout.order))
    with pytest.raises(HawqError, match="resnet18: HAWQ's layout has no name for the captured module "
                                        "'features.stage2.unit1.identity_conv.conv'"):
        quant_model("resnet18", {}, 10)
