"""TVM backend: integer Relax program == integer reference, integer-only IR, per-layer divergence,
export/run round trip, bad input."""
from __future__ import annotations

import shutil
import json

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from conftest import build_calibrated, corrupt_requant, csv_rows, tvm_outputs
from hawq import ir
from hawq.bit_config import list_schemes
from hawq.errors import HawqError
from hawq.export import export_integer, save_artifact
from hawq.reference import run_graph
from tvm_benchmark.apps import export as tvm_export
from tvm_benchmark import schedules as S
from tvm_benchmark.apps import run as tvm_run
from tvm_benchmark.apps import verify as tvm_verify
from tvm_benchmark.compile import compile_program, lower
from tvm_benchmark.ir_check import float_violations
from tvm_benchmark.frontend import build_module, node_outputs
from hawq.verify import compare_layers
from hawq.apps.checks import print_layers
from tvm_benchmark.isa import ISAS, detect
from hawq.program import load_program

CKPT = "checkpoints/resnet20_cifar10_{}.pth.tar"
RELEASED = ["uniform8", "uniform4", "mixed_stage1_8bit"]


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.parametrize("scheme", RELEASED)
def test_verify_released_checkpoint_llvm(scheme, capsys):
    rc = tvm_verify.main(["--checkpoint", CKPT.format(scheme), "--limit", "100", "--no-progress", "-b", "50"])
    assert _last_line(capsys) == "mismatches: 0/1000"
    assert rc == 0


# (w1a2/w1a1 are LQ-Net's schemes, whose 1-bit layers need --quantizer lqnet: tests/hawq/test_lqnet.py)
@pytest.mark.parametrize("arch,scheme,fast", [("resnet20_cifar10", s, None) for s in list_schemes("resnet20_cifar10")
                                              if not s.startswith("w1")]
                         + [("resnet20_cifar10", "uniform8", False), ("resnet18", "bops_0.5", None),
                            ("resnet50", "uniform4", None)])
def test_random_inputs_bit_exact(arch, scheme, fast):
    """fast=None: the hand-scheduled NHWC program (tensorized convs); False: TVM's unscheduled default."""
    model, probe = build_calibrated(arch, scheme, 10, (3, 3, 32, 32))
    graph = export_integer(model, (3, 32, 32))["graph"]
    x = probe.numpy()
    out = tvm_outputs(graph, x, fast=fast)
    ref = run_graph(graph, x)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out, model.forward_int(probe).numpy())
    assert np.abs(ref).max() > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch,scheme", [(a, s) for a in ("resnet18", "resnet50", "resnet50b", "resnet101")
                                         for s in list_schemes(a)])
def test_every_arch_scheme_bit_exact(arch, scheme):
    model, probe = build_calibrated(arch, scheme, 10, (2, 3, 32, 32))
    graph = export_integer(model, (3, 32, 32))["graph"]
    x = probe.numpy()
    np.testing.assert_array_equal(tvm_outputs(graph, x), run_graph(graph, x))


def _kernels(graph, isa: str) -> set[str]:
    mod = build_module(graph, (1, 3, 32, 32), planner=lambda *a: S.plan_conv(ISAS[isa], *a))
    return {str(gv.name_hint).removeprefix("conv2d_").split("__")[0] for gv in mod.get_global_vars()} - {"main"}


@pytest.mark.parametrize("scheme,isa,kernels", [
    ("uniform8", "avx2", {"pmaddwd_256"}),
    ("uniform4", "avx2", {"pmaddwd_256", "pmaddubsw_256_g4"}),
    ("uniform8", "avx512", {"pmaddwd_512"}),
    ("uniform4", "avx512", {"pmaddwd_512", "pmaddubsw_512_g4"}),
    ("uniform8", "avxvnni", {"vpdpbusd_256"}),
    ("uniform8", "vnni", {"vpdpbusd_512"}),
    ("uniform4", "vnni", {"vpdpbusd_512"}),
    ("uniform8", "amx", {"vpdpbusd_512", "amx_m8_n2", "amx_window_m8"}),
])
def test_kernel_choice_per_isa_follows_the_bounds(scheme, isa, kernels):
    """Released resnet20 checkpoints: 8x8-bit layers (uint8 activations up to 255) never get a
    saturating vpmaddubsw on AVX2/AVX-512BW; 4-bit layers get the grouped one (16·15·128 <= 32767;
    4 groups, the most the schedules use); VNNI takes every layer; AMX the 64-channel stage (8x8
    pixels: 8-row tiles) and the 16-channel inputs of 32-channel convs (window form, 16 bytes a
    pixel); the stem (16 outputs) and the 16-output stage stay on vpdpbusd."""
    assert _kernels(load_program(CKPT.format(scheme)).graph, isa) == kernels


def test_conv_epilogue_fused_into_its_kernel():
    """Every planned convolution of the released resnet20 ends in its requantization inside the
    same kernel (FuseOps appends the bias, rescale, clip, ReLU, residual add and cast; the schedule
    runs them per task), so no int32 accumulator tensor is a value between two kernels."""
    graph = load_program(CKPT.format("uniform8")).graph
    mod = lower(build_module(graph, (2, 3, 32, 32), planner=lambda *a: S.plan_conv(ISAS["vnni"], *a)))
    convs = [gv.name_hint for gv, f in mod.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and S.CONV in f.script()]
    assert len(convs) >= 10 and all("right_shift" in name for name in convs), convs   # (identical ones shared)
    scheduled = S.schedule_convs(mod)
    assert all(scheduled[name].attrs[S.SCHEDULED] for name in convs)
    # ... and run inside its tasks: one parallel loop, no second pass over an int32 intermediate
    # (a per-channel multiplier's cast, a block of another shape, once split the chain there)
    split = [name for name in convs if scheduled[name].script().count("T.parallel(") != 1]
    assert not split, split


def test_relu_moves_after_its_requantization():
    """A ReLU that feeds only a requantization moves after it (sat(R(max(x, 0))) = max(sat(R(x)), 0)
    for a non-decreasing R with R(0) = 0): the same integers; the conv's bias add then meets the
    requantization, which folds the bias into its rounding constant, so every requantizing
    epilogue multiplies the raw int32 sum with vpmuldq, never AVX-512DQ's three-µop vpmullq."""
    from tvm_benchmark.frontend import relu_after_requant
    graph = ir.as_graph(load_program(CKPT.format("uniform8")).graph)
    moved = relu_after_requant(graph)
    moved.validate()
    def relu_requant(g):    # ReLUs read by a requantization: (ReLU output, how many read it)
        reads = [v for n in g.nodes for v in n.inputs]
        return [(a.output, reads.count(a.output)) for a, b in zip(g.nodes, g.nodes[1:])
                if isinstance(a, ir.Relu) and isinstance(b, ir.Requant) and b.inputs == [a.output]]
    assert len(relu_requant(graph)) > 8
    assert all(readers > 1 for _, readers in relu_requant(moved))    # only those the residual also reads
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(moved, x), run_graph(graph, x))
    mod = S.schedule_generic(S.schedule_convs(lower(build_module(
        graph, (2, 3, 32, 32), planner=lambda *a: S.plan_conv(ISAS["vnni"], *a)))))
    asm = tvm.compile(mod, tvm.target.Target({"kind": "llvm", "mcpu": "icelake-server",
                                              "mattr": ["+avx512f", "+avx512bw", "+avx512dq", "+avx512vnni"]}))
    asm = asm.mod.imports[0].inspect_source("asm") if asm.mod.imports else asm.mod.inspect_source("asm")
    assert "\tvpmuldq\t" in asm and "\tvpmullq\t" not in asm


def test_max_pool_moves_after_the_monotone_epilogue():
    """ResNet's stem pool moves past the requantization and ReLU that follow it (max commutes with a
    non-decreasing map, padding never wins): the same integers, and the pool reads the narrow value.
    The chain stops at a value with two readers (the residual branch reads the ReLU)."""
    from tvm_benchmark.apps.layer_latency import calibrated_graph
    from tvm_benchmark.frontend import pool_after_epilogue
    graph, _ = calibrated_graph("resnet18", "uniform8", 1, input_size=32)
    moved = pool_after_epilogue(graph)
    moved.validate()
    kinds = [type(n).__name__ for n in moved.nodes[:6]]
    assert kinds == ["Quantize", "Conv2d", "Requant", "Relu", "MaxPool2d", "Requant"], kinds
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(moved, x), run_graph(graph, x))
    assert [type(n).__name__ for n in graph.nodes[:3]] == ["Quantize", "Conv2d", "MaxPool2d"]   # untouched


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler (nvcc) on this machine")
def test_cuda_cross_compiles(monkeypatch, small_model):
    """The CUDA program cross-compiles here (TVM calls the machine's CUDA compiler) even without a GPU."""
    monkeypatch.setenv("HAWQ_CUDA_ARCH", "sm_90")
    model, _ = small_model
    graph = export_integer(model, (3, 32, 32))["graph"]
    built = compile_program(graph, (2, 3, 32, 32), "cuda")
    exe, target = built.executable, built.target
    assert "sm_90" in str(target) and exe is not None


def test_input_quantizer_rounds_half_to_even_like_reference(small_model):
    """Inputs landing exactly on .5 steps of the input scale: TVM must divide and round half-even."""
    model, _ = small_model
    graph = export_integer(model, (3, 32, 32))["graph"]
    q = graph["nodes"][0]
    scale = np.float32(q["scale"].reshape(-1)[0])
    k = np.arange(-40, 40, dtype=np.float32) + np.float32(0.5)
    x = np.resize((k * scale).astype(np.float32), (2, 3, 32, 32)).astype(np.float32)
    out = tvm_outputs(graph, x, all_outputs=True)
    _, env = run_graph(graph, x, keep=True)
    np.testing.assert_array_equal(out[0], env[q["output"]])


def test_ir_is_integer_only_after_input_quantizer(small_model):
    model, _ = small_model
    mod = build_module(export_integer(model, (3, 32, 32))["graph"], (1, 3, 32, 32))
    assert float_violations(mod) == []
    # The quantizer kernel itself is float (the graph's boundary) and produces integers.
    lowered = lower(mod)
    first = lowered["main"].body.blocks[0].bindings[0]
    assert "float32" in lowered[first.value.args[0]].script()
    assert first.var.ty.dtype in ("uint8", "int8", "int16", "int32")


def test_ir_check_detects_a_float_op():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            q = bb.emit(relax.op.astype(relax.op.round(x), "int32"))
            f = bb.emit(relax.op.astype(relax.op.multiply(q, relax.const(3, "int32")), "float32"))
            y = bb.emit(relax.op.astype(relax.op.sqrt(f), "int32"))
            gv = bb.emit_output(relax.op.add(y, q))
        bb.emit_func_output(gv)
    bad = float_violations(bb.get())
    assert len(bad) == 2 and all("float32" in b for b in bad)   # the float cast and the sqrt


def _by_value(graph, outputs) -> dict:
    return {value: out for (_, value), out in zip(node_outputs(graph), outputs)}


def test_per_layer_names_the_corrupted_layer(small_model, capsys):
    model, probe = small_model
    graph = export_integer(model, (3, 32, 32))["graph"]
    bad, victim = corrupt_requant(graph, 5)
    x = probe.numpy()
    rows = compare_layers(_by_value(bad, tvm_outputs(bad, x, all_outputs=True)), graph, x)
    assert print_layers(rows) == victim
    assert "first divergence: " + victim in capsys.readouterr().out
    clean = compare_layers(_by_value(graph, tvm_outputs(graph, x, all_outputs=True)), graph, x)
    assert all(r["mismatches"] == 0 for r in clean) and len(clean) == len(graph["nodes"])


def test_per_layer_cli_on_released_checkpoint(capsys):
    rc = tvm_verify.main(["--checkpoint", CKPT.format("uniform4"), "--limit", "8", "--per-layer", "-b", "8"])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert rc == 0 and "first divergence: none" in out
    assert last.startswith("mismatches: 0/") and int(last.split("/")[1]) > 8 * 10   # every node's values


def test_export_then_run_round_trip(tmp_path, capsys):
    out = tmp_path / "r20"
    tvm_export.main(["--checkpoint", CKPT.format("uniform8"), "--target", "llvm", "--out", str(out),
                     "-b", "4"])
    params = json.loads((out / "params.json").read_text())
    assert params["input_shape"] == [4, 3, 32, 32] and len(params["logit_scale"]) == 10
    x = np.random.RandomState(0).randn(6, 3, 32, 32).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert tvm_run.main(["--lib", str(out), "--input", str(tmp_path / "x.npy"),
                         "--output", str(tmp_path / "y.npy")]) == 0
    graph = load_program(CKPT.format("uniform8")).graph
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), run_graph(graph, x))
    capsys.readouterr()
    tvm_run.main(["--lib", str(out), "--images", "40"])
    assert "top-1:" in capsys.readouterr().out


def test_artifact_input_is_accepted(tmp_path, small_model):
    model, probe = small_model
    art = export_integer(model, (3, 32, 32), meta={"arch": "resnet20_cifar10", "quant_scheme": "uniform8"})
    save_artifact(art, str(tmp_path / "quantized_checkpoint.pth.tar"))
    prog = load_program(str(tmp_path / "quantized_checkpoint.pth.tar"))
    assert prog.arch == "resnet20_cifar10" and prog.input_chw == (3, 32, 32)


def _cli_error(capsys, module, argv) -> str:
    with pytest.raises(SystemExit) as e:
        from hawq.apps.cli import one_line_errors
        raise SystemExit(one_line_errors(module.main)(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_bad_input(tmp_path, capsys):
    assert "does not exist" in _cli_error(capsys, tvm_verify, ["--checkpoint", str(tmp_path / "nope.pth.tar")])
    assert "unsupported target 'tpu'" in _cli_error(
        capsys, tvm_export, ["--checkpoint", CKPT.format("uniform8"), "--target", "tpu", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    assert "no integer data" in _cli_error(
        capsys, tvm_verify, ["--checkpoint", "checkpoints/resnet20_cifar10_fp32.pth.tar", "--limit", "4"])
    (tmp_path / "junk.pth.tar").write_bytes(b"\x80\x02garbage" * 10)
    assert "corrupt" in _cli_error(capsys, tvm_export, ["--checkpoint", str(tmp_path / "junk.pth.tar"),
                                                         "--out", str(tmp_path / "o")])
    assert "not an exported program" in _cli_error(capsys, tvm_run, ["--lib", str(tmp_path)])
    if not tvm.cuda(0).exist:
        assert "no CUDA GPU" in _cli_error(
            capsys, tvm_verify, ["--checkpoint", CKPT.format("uniform8"), "--target", "cuda", "--limit", "4"])


@pytest.mark.skipif(not tvm.cuda(0).exist, reason="no CUDA GPU visible to TVM")
def test_cuda_bit_exact(small_model):
    model, probe = small_model
    graph = export_integer(model, (3, 32, 32))["graph"]
    x = probe.numpy()
    np.testing.assert_array_equal(tvm_outputs(graph, x, "cuda"), run_graph(graph, x))


@pytest.mark.slow
def test_layer_latency_table(tmp_path):
    from tvm_benchmark.apps import layer_latency
    assert layer_latency.main(["-a", "resnet20_cifar10", "--out", str(tmp_path / "t.csv"), "--no-progress"]) == 0
    import pandas as pd
    df = pd.read_csv(tmp_path / "t.csv")
    assert list(df.columns) == ["layer", "bits", "median_ms", "p90_ms", "macs", "gmac_s", "pct_of_limit",
                                "epilogue_ms"]
    from tvm_benchmark.isa import detect, mac_limit_gmac_s
    limit = mac_limit_gmac_s(detect(), 2)
    if limit:                                          # the achieved rate against the host's int8 limit
        timed = df[df.median_ms > 0]
        np.testing.assert_allclose(timed.pct_of_limit, 100 * timed.gmac_s / limit, atol=0.06)
    # resnet20: the stem reads 3x32x32 at 16 filters of 3x3x3; a unit's first conv has a requant epilogue
    stem = df[(df.layer == "quant_init_block_convbn") & (df.bits == 8)].iloc[0]
    assert stem.macs == 16 * 32 * 32 * 27 and stem.epilogue_ms >= 0
    assert df[df.layer == "stage1.unit1.quant_convbn2"].epilogue_ms.isna().all()    # read by a residual add
    from hawq.bit_config import load_scheme
    four = {k for k, v in load_scheme("resnet20_cifar10", "uniform4").items() if v == 4}
    assert set(df[df.bits == 4].layer) == {n for n in df.layer if n in four}
    assert (df.median_ms >= 0).all() and len(df[df.bits == 8]) == df.layer.nunique()


@pytest.mark.slow
def test_layer_latency_has_binary_rows(tmp_path):
    """An arch with a binary scheme gets 1-bit rows for exactly its binary layers (popcount kernels)."""
    from tvm_benchmark.apps import layer_latency
    assert layer_latency.main(["-a", "hawq:bireal_resnet20", "--out", str(tmp_path / "t.csv"), "--no-progress"]) == 0
    import pandas as pd
    df = pd.read_csv(tmp_path / "t.csv")
    from hawq.bit_config import load_scheme
    one = {k for k, v in load_scheme("hawq:bireal_resnet20", "binary").items() if v == 1 and k.endswith(".conv")}
    assert set(df[df.bits == 1].layer) == one and len(one) == 18 and (df.median_ms >= 0).all()


def test_mac_limit_per_family():
    """The int8 MAC limit layer_latency measures against: the family's MACs per cycle and core x
    threads x clock; nothing without a family or a clock."""
    from tvm_benchmark.isa import ISAS, mac_limit_gmac_s
    assert mac_limit_gmac_s(ISAS["vnni"], 2, 2500.0) == 640.0          # vpdpbusd zmm: 64 MACs, 2 per cycle
    assert mac_limit_gmac_s(ISAS["amx"], 2, 2500.0) == 5120.0          # 16x16x64 tdpbusd per 16 cycles
    assert mac_limit_gmac_s(ISAS["avx2"], 1, 3000.0) == 96.0
    assert mac_limit_gmac_s(None, 2, 2500.0) is None and mac_limit_gmac_s(ISAS["vnni"], 2, 0.0) is None


def test_layer_latency_knows_each_layers_macs_and_epilogue():
    """What a row reports beside the time: MACs per batch and the fused chain timed as the epilogue."""
    from tvm_benchmark.apps import layer_latency
    graph, shapes = layer_latency.calibrated_graph("resnet20_cifar10", "uniform8", 2)
    nodes = {n.name: n for n in graph.nodes if isinstance(n, (ir.Conv2d, ir.Dense))}
    chain = lambda name: [type(n).__name__ for n in layer_latency.epilogue_of(graph, nodes[name])]  # noqa: E731
    assert chain("quant_init_block_convbn") == ["Requant"]                  # the stem's quant_act_int32
    assert chain("stage1.unit1.quant_convbn1") == ["Relu", "Requant"]       # ReLU, then quant_act1
    assert chain("stage1.unit1.quant_convbn2") == [] and chain("quant_output") == []   # residual add; logits
    stem = nodes["quant_init_block_convbn"]
    assert layer_latency.layer_macs(stem, shapes[stem.output], 2) == 2 * 16 * 32 * 32 * 27
    head = nodes["quant_output"]
    assert layer_latency.layer_macs(head, shapes[head.output], 2) == 2 * 10 * 64


def test_layer_latency_measures_the_program_of_the_input_size():
    from tvm_benchmark.apps import layer_latency
    graph, shapes = layer_latency.calibrated_graph("resnet20_cifar10", "uniform8", 1, input_size=40)
    assert shapes[graph.input] == (3, 40, 40) and min(s[-1] for s in shapes.values() if len(s) == 3) == 10
    with pytest.raises(HawqError, match="--input-size 40: inceptionv3 takes inputs of at least 75 pixels"):
        layer_latency.calibrated_graph("inceptionv3", "uniform8", 1, input_size=40)


@pytest.mark.slow
def test_resnet18_224_compiles_and_matches():
    torch.manual_seed(0)
    model, probe = build_calibrated("resnet18", "bops_0.5", 1000, (1, 3, 224, 224))
    graph = export_integer(model, (3, 224, 224))["graph"]
    x = probe.numpy()
    np.testing.assert_array_equal(tvm_outputs(graph, x), run_graph(graph, x))


def test_latency_benchmark_writes_csv_table_and_plot(tmp_path, capsys):
    from tvm_benchmark.apps import bench
    argv = ["-a", "resnet20_cifar10", "--quant-scheme", "uniform4", "-b", "2", "--rounds", "1", "--iters", "2",
            "--warmup", "1", "--out-dir", str(tmp_path), "--no-progress"]
    assert bench.main(argv) == 0
    assert "note: ort-qdq skipped for resnet20_cifar10 uniform4: numeric profile ort runs ONNX Runtime's 8-bit" \
        in capsys.readouterr().out                   # profile ort is 8-bit: said, and the rest is timed
    rows = csv_rows(tmp_path / "latency.csv")
    assert list(rows[0]) == ["host", "isa", "arch", "scheme", "batch", "threads", "engine", "median_ms", "p90_ms"]
    assert {r["engine"] for r in rows} == set(bench.ENGINES) - {"ort-qdq"}
    assert {r["host"] for r in rows} == {bench.host_key()} and "(" in bench.host_key()
    tvm_isa = {r["isa"] for r in rows if r["engine"] == "tvm-int"}
    assert tvm_isa == {detect().name}
    md = (tmp_path / "latency.md").read_text()
    assert "ratio_to_best_int8" in md and f"| tvm-int | {detect().name} | uniform4 |" in md
    assert bench.host_key() in md
    assert (tmp_path / "latency_accuracy.png").stat().st_size > 1000
    onednn = csv_rows(tmp_path / bench.ONEDNN_CSV)      # what torch-int8 ran, recorded beside its time
    assert onednn and {(r["arch"], r["batch"]) for r in onednn} == {("resnet20_cifar10", "2")}
    assert "## What torch-int8 ran (ONEDNN_VERBOSE)" in md
    assert bench.main(argv) == 0                       # rows are appended, the table keeps the latest
    assert len(csv_rows(tmp_path / "latency.csv")) == 2 * len(rows)


def test_latency_benchmark_at_another_input_size(tmp_path):
    """--input-size times the program at that size; its rows are ARCH@SIZE, apart from the canonical ones."""
    from tvm_benchmark.apps import bench
    argv = ["-a", "resnet20_cifar10", "--quant-scheme", "uniform8", "-b", "1", "--rounds", "1", "--iters", "1",
            "--warmup", "1", "--engines", "tvm-int", "ort-int", "--input-size", "40", "--out-dir", str(tmp_path),
            "--no-progress"]
    assert bench.main(argv) == 0
    rows = csv_rows(tmp_path / "latency.csv")
    assert {(r["arch"], r["engine"]) for r in rows} == {("resnet20_cifar10@40", "tvm-int"),
                                                       ("resnet20_cifar10@40", "ort-int")}
    assert "### resnet20_cifar10@40, batch 1" in (tmp_path / "latency.md").read_text()


def test_latency_table_never_mixes_hosts(tmp_path):
    """Rows of another host stay in the CSV but never reach this host's table; a CSV of the old
    layout (no host column) is set aside, not mixed in."""
    from tvm_benchmark.apps import bench
    path = tmp_path / "latency.csv"
    path.write_text("arch,scheme,batch,threads,engine,median_ms,p90_ms\nresnet18,uniform8,1,2,ort-int8,9.9,9.9\n")
    row = {"isa": "avx2", "arch": "resnet18", "scheme": "uniform8", "batch": 1, "threads": 2, "p90_ms": 2.0}
    bench.append_rows([{**row, "host": "Other CPU (x; avx2)", "engine": "ort-int8", "median_ms": 1.0},
                       {**row, "host": bench.host_key(), "engine": "ort-int8", "median_ms": 2.0},
                       {**row, "host": bench.host_key(), "engine": "tvm-int", "median_ms": 1.5}], path)
    assert (tmp_path / "latency.old.csv").read_text().startswith("arch,scheme")
    df = bench.latest(path, bench.host_key())
    assert set(df.host) == {bench.host_key()} and len(df) == 2
    md = bench.markdown(df, "# t")
    assert "| ort-int8 | avx2 | uniform8 | 2.0 | 2.0 | nan | 1.0 |" in md and "| uniform8 | 1.0 |" not in md
    assert "| tvm-int | avx2 | uniform8 | 1.5 | 2.0 | nan | 0.75 |" in md
    with pytest.raises(ValueError, match="one host"):
        bench.markdown(bench.latest(path), "# t")


def test_torch_int8_baseline_really_runs_quantized_convolutions(monkeypatch):
    """The torch-int8 row times int8 kernels: every conv of the FP model is a quantized conv after FX
    conversion; a conversion that leaves a conv float is refused, not timed under the int8 name."""
    from torch.ao.quantization import quantize_fx
    from tvm_benchmark.apps.baselines import quantized_convs, torch_int8
    from hawq.models.factory import fp_model
    m = fp_model("resnet20_cifar10", 10).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    assert torch_int8(m, x, [x])().shape == (2, 10) and quantized_convs(m) == 0
    monkeypatch.setattr(quantize_fx, "convert_fx", lambda prepared: m)      # a conversion that did nothing
    with pytest.raises(HawqError, match="torch-int8: FX quantization turned 0 of the model's 21 convolutions"):
        torch_int8(m, x, [x])


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_onednn_primitives_names_the_kernels_a_call_ran():
    """ONEDNN_VERBOSE captured at the file-descriptor level for one call: a float conv at batch 8
    runs a oneDNN convolution primitive (its implementation named), and nothing leaks to stdout."""
    from tvm_benchmark.apps.baselines import onednn_primitives
    conv, x = torch.nn.Conv2d(64, 64, 3).eval(), torch.randn(8, 64, 14, 14)
    with torch.inference_mode():
        ran = onednn_primitives(lambda: conv(x))
    assert any(kind == "convolution" and impl for (kind, impl) in ran), ran
    with torch.inference_mode():
        assert onednn_primitives(lambda: x + 1) == {}


@pytest.mark.slow
def test_latency_benchmark_isolates_each_engine_in_its_own_process(tmp_path):
    from tvm_benchmark.apps import bench
    argv = ["-a", "resnet20_cifar10", "--quant-scheme", "uniform8", "-b", "1", "--rounds", "1", "--iters", "2",
            "--warmup", "1", "--engines", "torch-fp32", "tvm-int", "--isolate", "--out-dir", str(tmp_path), "--no-progress"]
    assert bench.main(argv) == 0
    rows = csv_rows(tmp_path / "latency.csv")
    assert [r["engine"] for r in rows] == ["torch-fp32", "tvm-int"] and all(float(r["median_ms"]) > 0 for r in rows)
    assert "| tvm-int |" in (tmp_path / "latency.md").read_text()
