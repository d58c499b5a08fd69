"""The GPU bundle's runner side (tvm_benchmark/bundle_files: run.sh + gpu_run.py) in runtime-only
mode on CPU: a hand-built bundle (a toy integer Relax program compiled for llvm, its NumPy
reference, the bundle's bundle_params.py, the runtime-only TVM copy from tvm_runtime_copy), run with
`bash run.sh OUT` in a clean environment (no PYTHONPATH, torchvision made unimportable)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm.script import ir as I
from tvm.script import relax as R

from conftest import PYVER, ROOT, csv_rows, run_bundle
from tvm_benchmark.tvm_runtime_copy import copy_tvm_runtime

FILES = Path(ROOT) / "tvm_benchmark" / "bundle_files"
B, S = 2, 32



@I.ir_module
class Toy:
    @R.function
    def main(x: R.Tensor((B, 3, S, S), "float32"), w: R.Tensor((4, 3), "int8")) -> R.Tensor((B, 4), "int32"):
        with R.dataflow():
            q = R.astype(R.round(R.multiply(x, R.const(16.0, "float32"))), "int32")
            s = R.sum(q, axis=[2, 3])
            y = R.matmul(s, R.permute_dims(R.astype(w, "int32")))
            z = R.right_shift(y, R.const(2, "int32"))
            R.output(z)
        return z


def _toy_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    s = np.round(x * np.float32(16)).astype(np.int64).sum(axis=(2, 3))
    return (s @ w.astype(np.int64).T) >> 2


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bundle")
    (d / "programs").mkdir()
    (d / "data").mkdir()
    tvm.compile(Toy, "llvm").export_library(str(d / "programs" / "toy_int8_b2.so"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, 3, S, S)).astype(np.float32)
    w = rng.integers(-128, 128, (4, 3)).astype(np.int8)
    np.save(d / "data" / "toy_b2_input.npy", x)
    np.save(d / "data" / "toy_int8_b2_ref.npy", _toy_reference(x, w))
    np.savez(d / "data" / "toy_int8.npz", w0=w)
    shutil.copy2(FILES / "bundle_params.py", d / "bundle_params.py")
    # the GPU machine may lack torchvision: make it unimportable for the run
    (d / "site" / "torchvision").mkdir(parents=True)
    (d / "site" / "torchvision" / "__init__.py").write_text('raise ImportError("no torchvision here")\n')
    (d / "bundle.json").write_text(json.dumps({
        "format": "hawq-gpu-bundle/1", "target": "llvm", "sm": None, "built_on": "test",
        "programs": [{"name": "toy_int8_b2", "arch": "toy", "scheme": "int8", "batch": B,
                      "lib": "programs/toy_int8_b2.so", "input": "data/toy_b2_input.npy",
                      "reference": "data/toy_int8_b2_ref.npy", "params": "data/toy_int8.npz",
                      "torch": {"model": "resnet20_cifar10", "num_classes": 10}}]}))
    assert copy_tvm_runtime(d, python=PYVER) > 0
    for name in ("run.sh", "gpu_run.py"):
        shutil.copy2(FILES / name, d / name)
    return d


def _inside(path: str, d: Path) -> bool:
    return Path(path).resolve().is_relative_to(d.resolve())


def test_bundle_runs_runtime_only(bundle, tmp_path):
    out = tmp_path / "out"
    # a 1 s torch.compile limit: exercises the worker's kill path quickly (CPU inductor is slow)
    r = run_bundle(bundle, out, timeout=120, HAWQ_BUNDLE_REPEAT="3", HAWQ_TORCH_COMPILE_TIMEOUT_S="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list(bundle.rglob("libtvm_compiler*")), "the compiler library must not be shipped"
    m = re.search(r"^tvm from (.+)$", r.stdout, re.M)
    assert m and _inside(m.group(1), bundle), r.stdout
    libs = re.search(r"^tvm libraries: (.+)$", r.stdout, re.M).group(1).split(", ")
    assert any(p.endswith("libtvm_runtime.so") for p in libs) and all(_inside(p, bundle) for p in libs), libs
    assert "toy_int8_b2: mismatches: 0/8" in r.stdout
    (row,) = csv_rows(out / "gpu_results.csv")
    assert (row["program"], row["arch"], row["scheme"], row["batch"], row["target"]) == ("toy_int8_b2", "toy", "int8", "2", "llvm")
    assert (row["mismatches"], row["elements"]) == ("0", "8")
    assert float(row["tvm_ms"]) > 0 and float(row["torch_fp32_ms"]) > 0 and float(row["torch_fp16_ms"]) > 0
    assert float(row["speedup_vs_fp16"]) > 0
    assert row["torch_compile_ms"] == "" and "torch.compile failed: timed out" in row["notes"], row["notes"]
    md = (out / "gpu_results.md").read_text()
    assert "toy_int8_b2" in md and md.count("|") > 2 * len(row)


def test_bundle_mismatch_fails(bundle, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(bundle, bad, symlinks=True)
    ref = np.load(bad / "data" / "toy_int8_b2_ref.npy")
    ref[1, 2] += 1
    np.save(bad / "data" / "toy_int8_b2_ref.npy", ref)
    out = tmp_path / "out"
    r = run_bundle(bad, out, timeout=120, HAWQ_BUNDLE_REPEAT="3", HAWQ_BUNDLE_TORCH="0")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "toy_int8_b2: mismatches: 1/8" in r.stdout
    (row,) = csv_rows(out / "gpu_results.csv")
    assert int(row["mismatches"]) == 1 and "torch skipped" in row["notes"]


def test_run_sh_needs_outdir(bundle):
    r = subprocess.run(["bash", str(bundle / "run.sh")], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ["error: missing OUTDIR (usage: bash run.sh OUTDIR)"]
