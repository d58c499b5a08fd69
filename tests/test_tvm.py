"""TVM backend: integer Relax program == integer reference, integer-only IR, per-layer divergence,
export/run round trip, bad input."""
from __future__ import annotations

import copy
import shutil
import json

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from conftest import build_calibrated
from hawq.bit_config import list_schemes
from hawq.export import export_integer, save_artifact
from hawq.reference import run_graph
from tvm_benchmark import export as tvm_export
from tvm_benchmark import schedules as S
from tvm_benchmark import run as tvm_run
from tvm_benchmark import verify as tvm_verify
from tvm_benchmark.compile import compile_program, lower
from tvm_benchmark.ir_check import float_violations
from tvm_benchmark.program import Runner, load_program
from tvm_benchmark.relax_graph import build_module

CKPT = "checkpoints/resnet20_cifar10_{}.pth.tar"
RELEASED = ["uniform8", "uniform4", "mixed_stage1_8bit"]


def _runner(graph, shape, all_outputs=False, fast=None):
    exe, _ = compile_program(graph, shape, "llvm", threads=2, all_outputs=all_outputs, fast=fast)
    return Runner(exe, tvm.cpu(), shape[0])


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


@pytest.mark.parametrize("scheme", RELEASED)
def test_verify_released_checkpoint_llvm(scheme, capsys):
    rc = tvm_verify.main(["--checkpoint", CKPT.format(scheme), "--limit", "100", "--no-progress", "-b", "50"])
    assert _last_line(capsys) == "mismatches: 0/1000"
    assert rc == 0


@pytest.mark.parametrize("arch,scheme,fast", [("resnet20_cifar10", s, None) for s in list_schemes("resnet20_cifar10")]
                         + [("resnet20_cifar10", "uniform8", False), ("resnet18", "bops_0.5", None),
                            ("resnet50", "uniform4", None)])
def test_random_inputs_bit_exact(arch, scheme, fast):
    """fast=None: the hand-scheduled NHWC program (tensorized convs); False: TVM's unscheduled default."""
    model, probe = build_calibrated(arch, scheme, 10, (3, 3, 32, 32))
    graph = export_integer(model, (3, 32, 32))["graph"]
    x = probe.numpy()
    out = _runner(graph, x.shape, fast=fast)(x)
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
    np.testing.assert_array_equal(_runner(graph, x.shape)(x), run_graph(graph, x))


@pytest.mark.parametrize("scheme,kernels", [("uniform8", {"conv2d_pmaddwd"}),
                                            ("uniform4", {"conv2d_pmaddwd", "conv2d_pmaddubsw"})])
def test_kernel_choice_follows_the_saturation_bound(scheme, kernels):
    """vpmaddubsw (int16 pair sums) only where 2·max|a|·max|w| <= 32767: never for 8x8-bit layers;
    for uniform4 every 4-bit layer uses it and the 8-bit stem keeps vpmaddwd."""
    graph = load_program(CKPT.format(scheme)).graph
    mod = build_module(graph, (1, 3, 32, 32), fast_conv=True)
    names = {str(gv.name_hint).rstrip("0123456789") for gv in mod.get_global_vars()} - {"main"}
    assert names == kernels
    convs = [n for n in graph["nodes"] if n["op"] == "conv2d"]
    fast = [S.choose_kernel("uint8", 15 if n["weight_bits"] == 4 else 255, n["weight"].numpy(), 1) for n in convs]
    assert all(k is S.PMADDUBSW for k, n in zip(fast, convs) if n["weight_bits"] == 4)
    assert S.choose_kernel("uint8", 255, np.full((8, 4, 1, 1), 127, np.int8), 1) is S.PMADDWD
    assert S.choose_kernel("uint8", 255, np.full((8, 4, 1, 1), 64, np.int8), 1) is S.PMADDUBSW   # 2·255·64 = 32640
    assert S.choose_kernel("int8", 15, np.ones((8, 4, 1, 1), np.int8), 1) is S.PMADDWD           # signed act


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler (nvcc) on this machine")
def test_cuda_cross_compiles(monkeypatch, small_model):
    """The CUDA program cross-compiles here (TVM calls the machine's CUDA compiler) even without a GPU."""
    monkeypatch.setenv("HAWQ_CUDA_ARCH", "sm_90")
    model, _ = small_model
    graph = export_integer(model, (3, 32, 32))["graph"]
    exe, target = compile_program(graph, (2, 3, 32, 32), "cuda")
    assert "sm_90" in str(target) and exe is not None


def test_input_quantizer_rounds_half_to_even_like_reference(small_model):
    """Inputs landing exactly on .5 steps of the input scale: TVM must divide and round half-even."""
    model, _ = small_model
    graph = export_integer(model, (3, 32, 32))["graph"]
    q = graph["nodes"][0]
    scale = np.float32(q["scale"].reshape(-1)[0])
    k = np.arange(-40, 40, dtype=np.float32) + np.float32(0.5)
    x = np.resize((k * scale).astype(np.float32), (2, 3, 32, 32)).astype(np.float32)
    out = _runner(graph, x.shape, all_outputs=True)(x)
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


def test_per_layer_names_the_corrupted_layer(small_model, capsys):
    model, probe = small_model
    graph = export_integer(model, (3, 32, 32))["graph"]
    victim = [n for n in graph["nodes"] if n["op"] == "requant"][5]
    bad = copy.deepcopy(graph)
    node = next(n for n in bad["nodes"] if n["name"] == victim["name"] and n["op"] == "requant")
    node["multiplier"] = node["multiplier"].clone()
    node["multiplier"][0] += 1 << 26
    x = probe.numpy()
    rows = tvm_verify.compare_layers(_runner(bad, x.shape, all_outputs=True)(x), graph, x)
    assert tvm_verify._print_layers(rows) == victim["name"]
    assert "first divergence: " + victim["name"] in capsys.readouterr().out
    clean = tvm_verify.compare_layers(_runner(graph, x.shape, all_outputs=True)(x), graph, x)
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
        from hawq.cli import one_line_errors
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
    exe, _ = compile_program(graph, x.shape, "cuda")
    np.testing.assert_array_equal(Runner(exe, tvm.cuda(0), x.shape[0])(x), run_graph(graph, x))


@pytest.mark.slow
def test_layer_latency_table(tmp_path):
    from tvm_benchmark import layer_latency
    assert layer_latency.main(["-a", "resnet20_cifar10", "--out", str(tmp_path / "t.csv"), "--no-progress"]) == 0
    import pandas as pd
    df = pd.read_csv(tmp_path / "t.csv")
    assert list(df.columns) == ["layer", "bits", "median_ms", "p90_ms"]
    from hawq.bit_config import load_scheme
    four = {k for k, v in load_scheme("resnet20_cifar10", "uniform4").items() if v == 4}
    assert set(df[df.bits == 4].layer) == {n for n in df.layer if n in four}
    assert (df.median_ms >= 0).all() and len(df[df.bits == 8]) == df.layer.nunique()


@pytest.mark.slow
def test_resnet18_224_compiles_and_matches():
    torch.manual_seed(0)
    model, probe = build_calibrated("resnet18", "bops_0.5", 1000, (1, 3, 224, 224))
    graph = export_integer(model, (3, 224, 224))["graph"]
    x = probe.numpy()
    np.testing.assert_array_equal(_runner(graph, x.shape)(x), run_graph(graph, x))


def test_latency_benchmark_writes_csv_table_and_plot(tmp_path, capsys):
    from tvm_benchmark import bench
    argv = ["-a", "resnet20_cifar10", "--quant-scheme", "uniform4", "-b", "2", "--rounds", "1", "--iters", "2",
            "--warmup", "1", "--out-dir", str(tmp_path), "--no-progress"]
    assert bench.main(argv) == 0
    rows = (tmp_path / "latency.csv").read_text().splitlines()
    assert rows[0] == "arch,scheme,batch,threads,engine,median_ms,p90_ms"
    assert {r.split(",")[4] for r in rows[1:]} == set(bench.ENGINES)
    md = (tmp_path / "latency.md").read_text()
    assert "ratio_to_ort_int8" in md and "| tvm-int | uniform4 |" in md
    assert (tmp_path / "latency_accuracy.png").stat().st_size > 1000
    assert bench.main(argv) == 0                       # rows are appended, the table keeps the latest
    assert len((tmp_path / "latency.csv").read_text().splitlines()) == 2 * len(rows) - 1
