"""The non-ResNet archs (mobilenetv2_w1, regnetx006, inceptionv3) end to end: HAWQ names, schemes,
size/BOPS rows, QAT eval == integer reference == TVM, checks without a checkpoint, QAT training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import build_calibrated, needs_fmnist, tvm_outputs
from hawq import ir
from hawq.bit_config import load_scheme, table_rows
from hawq.export import export_integer
from hawq.models.layers import arch_info, quant_layers
from hawq.reference import run_graph

NEW_ARCHS = ("mobilenetv2_w1", "regnetx006", "inceptionv3")


def _side(arch: str) -> int:
    return 75 if arch == "inceptionv3" else 32


def _three_way(arch: str, scheme: str, numerics: str = "exact") -> None:
    s = _side(arch)
    model, probe = build_calibrated(arch, scheme, 10, (3, 3, s, s), numerics=numerics)
    art = export_integer(model, (3, s, s))
    graph = art["graph"]
    x = probe.numpy()
    qat = model.forward_int(probe).numpy()
    ref = run_graph(graph, x)
    assert int(np.abs(ref).max()) > 0
    assert (qat != ref).sum() == 0, f"QAT eval vs reference: {(qat != ref).sum()} mismatches"
    tvm_out = tvm_outputs(graph, x)
    assert (tvm_out != ref).sum() == 0, f"TVM vs reference: {(tvm_out != ref).sum()} mismatches"


@pytest.mark.parametrize("arch, scheme", [
    ("mobilenetv2_w1", "uniform4"), ("regnetx006", "uniform8"),
    # mobilenetv2_w1 uniform8 runs through TVM in test_tvm_check_without_checkpoint_cli
    pytest.param("mobilenetv2_w1", "uniform8", marks=pytest.mark.slow),
    pytest.param("regnetx006", "uniform4", marks=pytest.mark.slow)])
def test_qat_reference_tvm_bit_exact(arch, scheme):
    _three_way(arch, scheme)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["uniform8", "uniform4"])
def test_inceptionv3_bit_exact(scheme):
    _three_way("inceptionv3", scheme)


@pytest.mark.slow
@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_profile_hawq_bit_exact(arch):
    _three_way(arch, "uniform4", numerics="hawq")


def test_graphs_use_the_new_ops():
    """Depthwise/grouped convs, ReLU6 clamps, the linear residual add (no ReLU after it)."""
    model, _ = build_calibrated("mobilenetv2_w1", "uniform8", 10, (2, 3, 32, 32))
    g = ir.Graph.from_dict(export_integer(model, (3, 32, 32))["graph"])
    ops = [type(n) for n in g.nodes]
    assert ir.Clamp in ops and ir.RequantAdd in ops and ir.Relu not in ops
    assert any(isinstance(n, ir.Conv2d) and n.groups == n.weight.shape[0] > 1 for n in g.nodes)
    readers = {v: [n for n in g.nodes if v in n.inputs] for v in (n.output for n in g.nodes)}
    adds = [n for n in g.nodes if isinstance(n, ir.RequantAdd)]
    assert all(not isinstance(r, ir.Relu) for a in adds for r in readers[a.output])
    clamps = [n for n in g.nodes if isinstance(n, ir.Clamp)]
    assert all(n.qmin == 0 and int(n.qmax.min()) > 0 for n in clamps)
    model, _ = build_calibrated("regnetx006", "uniform4", 10, (2, 3, 32, 32))
    g = ir.Graph.from_dict(export_integer(model, (3, 32, 32))["graph"])
    assert any(isinstance(n, ir.Conv2d) and 1 < n.groups < n.weight.shape[0] for n in g.nodes)


def test_inception_concat_and_window_pool():
    model, probe = build_calibrated("inceptionv3", "uniform8", 10, (2, 3, 75, 75))
    g = ir.Graph.from_dict(export_integer(model, (3, 75, 75))["graph"])
    concats = [n for n in g.nodes if isinstance(n, ir.Concat)]
    pools = [n for n in g.nodes if isinstance(n, ir.AvgPool2d)]
    assert len(concats) == 11 + 2 * 2 and len(pools) == 9 and all(p.divisor == 9 for p in pools)
    # each concat is requantized per channel: every branch by its own multiplier
    after = {n.inputs[0]: n for n in g.nodes if isinstance(n, ir.Requant)}
    assert all(after[c.output].multiplier.numel() > 1 and len(set(after[c.output].multiplier.tolist())) > 1
               for c in concats)


@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_hawq_names_and_schemes(arch):
    names = [s.name for s in quant_layers(arch)]
    expected = {"mobilenetv2_w1": ["quant_input", "init_block", "features.stage1.unit1.conv1",
                                   "features.stage2.unit2.quant_act_int32", "quant_act_before_final_block",
                                   "features.final_block", "quant_act_int32_final", "output"],
                "regnetx006": ["quant_init_convbn", "stage1.unit1.quant_identity_convbn", "stage4.unit7.quant_convbn3"],
                "inceptionv3": ["features.q_init_block.q_conv5.q_convbn", "features.stage1.unit1.branches.branch4.q_pool_act",
                                "features.stage3.unit2.branches.branch2.q_conv1x3.q_convbn",
                                "features.stage3.unit3.q_rescaling_activ", "features.q_concat_activ", "output.q_fc"]}[arch]
    assert set(expected) <= set(names)
    weights = [s for s in quant_layers(arch) if s.kind in ("conv", "linear")]
    for scheme in ("uniform8", "uniform4"):
        bits = load_scheme(arch, scheme)
        stem, head = weights[0], weights[-1]
        assert [bits[n] for n in (stem.input_act, stem.name, head.input_act, head.name)] == [8, 8, 8, 8]
        free = {bits[s.name] for s in weights[1:-1]}
        assert free == {int(scheme[-1])}
    rows = {r["scheme"]: r for r in table_rows(arch)}
    assert rows["uniform4"]["size_mb"] < rows["uniform8"]["size_mb"] and rows["uniform4"]["gbops"] < rows["uniform8"]["gbops"]


def test_inventory_macs_match_published_counts():
    """Multiply-accumulates per image at the canonical size, as the model cards state them."""
    gmacs = {a: sum(s.macs for s in quant_layers(a)) / 1e9 for a in NEW_ARCHS}
    assert 0.29 < gmacs["mobilenetv2_w1"] < 0.33      # ~300M (MobileNetV2 1.0, 224)
    assert 0.58 < gmacs["regnetx006"] < 0.62          # RegNetX-600MF
    assert 5.6 < gmacs["inceptionv3"] < 5.8           # ~5.7G (299)
    assert arch_info("inceptionv3").min_input == 75


@needs_fmnist
def test_check_without_checkpoint_cli(capsys):
    from hawq.apps import verify
    assert verify.main(["-a", "mobilenetv2_w1", "--quant-scheme", "uniform4", "--limit", "16", "-b", "16",
                        "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mismatches: 0/160"
    assert verify.main(["-a", "regnetx006", "--quant-scheme", "uniform8", "--random", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mismatches: 0/160"


def test_check_without_checkpoint_needs_arch_and_scheme(capsys):
    from hawq.apps import verify
    with pytest.raises(SystemExit) as e:
        verify.main(["-a", "mobilenetv2_w1", "--random"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: without --checkpoint, give -a ARCH and --quant-scheme SCHEME"]


def test_tvm_check_without_checkpoint_cli(capsys):
    from tvm_benchmark.apps import verify
    assert verify.main(["-a", "mobilenetv2_w1", "--quant-scheme", "uniform8", "--random", "-b", "8",
                        "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "mismatches: 0/160"


@needs_fmnist
@pytest.mark.parametrize("arch", ["mobilenetv2_w1", pytest.param("regnetx006", marks=pytest.mark.slow),
                                  pytest.param("inceptionv3", marks=pytest.mark.slow)])
def test_qat_training_runs_on_the_embedded_dataset(arch, tmp_path):
    from hawq.apps.train import run
    res = run(["-a", arch, "--quant-scheme", "uniform8", "--epochs", "1", "--data-percentage", "0.0005",
               "--eval-limit", "16", "-b", "16", "--lr", "0.01", "--fix-BN", "--no-progress", "--save-path", str(tmp_path)])
    ck = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert ck["arch"] == arch and ck["bit_config"] == load_scheme(arch, "uniform8")
    art = torch.load(tmp_path / "quantized_checkpoint.pth.tar", weights_only=True)
    side = 96 if arch == "inceptionv3" else 32
    assert art["input_shape"] == [3, side, side] and 0.0 <= res["top1"] <= 100.0


def test_depthwise_layers_get_the_hand_scheduled_kernel():
    """Every depthwise conv of MobileNetV2 calls tvm_benchmark.depthwise's kernel, not TVM's generic
    conv2d (HAWQ users report untuned depthwise kernels dominating MobileNetV2 on TVM)."""
    import functools
    from tvm_benchmark.compile import plan_kernel
    from tvm_benchmark.frontend import build_module
    from tvm_benchmark.isa import detect
    model, _ = build_calibrated("mobilenetv2_w1", "uniform8", 10, (1, 3, 32, 32))
    graph = export_integer(model, (3, 32, 32))["graph"]
    depthwise = [n for n in graph["nodes"] if n["op"] == "conv2d" and n["groups"] > 1]
    mod = build_module(graph, (1, 3, 32, 32), planner=functools.partial(plan_kernel, detect()))
    calls = mod["main"].script().count("conv2d_depthwise")   # call sites (same-shape layers share a kernel)
    assert len(depthwise) == 17 and calls == len(depthwise)
    # ... with its requantization in the same kernel (output widths 16..1 all have a register tile)
    from tvm_benchmark.compile import lower
    from tvm_benchmark.schedules import schedule_convs
    lowered = lower(mod)
    fused = [gv.name_hint for gv in lowered.functions if gv.name_hint.startswith("fused_conv2d_depthwise")]
    assert fused and all("right_shift" in name for name in fused), fused
    scheduled = schedule_convs(lowered)
    assert all(scheduled[name].attrs["hawq.scheduled"] for name in fused)
