"""The GPU bundle as built by ``make gpu-bundle`` (tvm_benchmark.gpu_bundle), run on this CPU: an llvm
bundle (the tensor-core schedules with the PTX instructions emulated) of a released checkpoint and
a synthetic-weight model, executed by its own run.sh in runtime-only mode; and the synthetic-weight
generator the GPU machine relies on to rebuild weights bit-identically."""
from __future__ import annotations

import json
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import PYVER, csv_rows, run_bundle
from tvm_benchmark.bundle_files import bundle_params as bp
from tvm_benchmark.apps.gpu_bundle import REF_IMAGES, build_bundle


def test_synthetic_weight_is_fixed():
    """The integers are a pure function of (shape, magnitude, seed): a changed generator would make
    every shipped recipe fail its CRC on the GPU machine, so the exact bytes are pinned here."""
    w = bp.synthetic_weight([4, 3, 3, 3], [127, 7, 1, 50], 12345)
    assert w.dtype == np.int8 and w.shape == (4, 3, 3, 3)
    for o, a in enumerate([127, 7, 1, 50]):
        assert np.abs(w[o]).max() <= a
    assert len(np.unique(w[0])) > 20                     # spread, not a constant
    assert zlib.crc32(w.tobytes()) == 0x5BA0DA05, hex(zlib.crc32(w.tobytes()))
    assert not np.array_equal(w, bp.synthetic_weight([4, 3, 3, 3], [127, 7, 1, 50], 12346))


def test_recipe_crc_is_checked(tmp_path):
    w = bp.pack_gemm(bp.synthetic_weight([8, 3, 1, 1], [100] * 8, 7), [64, 64])
    layer = {"node": "conv", "shape": [8, 3, 1, 1], "absmax": [100] * 8, "seed": 7, "packed": [64, 64],
             "crc32": bp.crc(w)}
    f = tmp_path / "m.synth.json"
    f.write_text(json.dumps({"format": "hawq-synth-weights/1", "layers": [layer]}))
    (got,) = bp.load_params(f)
    assert np.array_equal(got, w) and got.shape == (64, 64) and not got[8:].any() and not got[:, 3:].any()
    f.write_text(json.dumps({"format": "hawq-synth-weights/1", "layers": [layer | {"crc32": layer["crc32"] ^ 1}]}))
    with pytest.raises(ValueError, match="differs"):
        bp.load_params(f)


@pytest.fixture(scope="module")
def llvm_bundle(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gb") / "gpu-bundle"
    m = build_bundle(out, target="llvm", released=True, released_stems=("resnet20_cifar10_uniform4",),
                     archs=("resnet20_cifar10",), schemes=("uniform8",), batches=(3,), size=32,
                     python=PYVER, progress=False)
    return out, m


def test_bundle_layout(llvm_bundle):
    out, m = llvm_bundle
    names = [p["name"] for p in m["programs"]]
    assert names == ["resnet20_cifar10_uniform4_b3", "resnet20_cifar10_uniform8_b3"]
    assert (out / "data" / "resnet20_cifar10_uniform4.npz").is_file()
    assert (out / "data" / "resnet20_cifar10_uniform8.synth.json").is_file()
    assert not (out.parent / "gpu-bundle.tmp").exists()
    assert "total" in (out / "CONTENTS.md").read_text()
    progs = {p["name"]: p for p in m["programs"]}
    assert all(p["lib"].endswith(".so.xz") and (out / p["lib"]).is_file() for p in progs.values())
    # the released model reads Fashion-MNIST, the synthetic one seeded noise: two input files
    assert progs["resnet20_cifar10_uniform4_b3"]["input"] != progs["resnet20_cifar10_uniform8_b3"]["input"]
    x = np.load(out / progs["resnet20_cifar10_uniform8_b3"]["input"])
    assert x.shape == (REF_IMAGES, 3, 32, 32) and x.dtype == np.float32
    big = bp.batch_rows(x, 20)           # batch 64 cycles through the 8 reference images
    assert big.shape == (20, 3, 32, 32) and np.array_equal(big[8:16], x) and np.array_equal(big[16:], x[:4])
    ref = np.load(out / progs["resnet20_cifar10_uniform4_b3"]["reference"])
    assert ref.shape == (REF_IMAGES, 10) and ref.dtype == np.int64 and len({tuple(r) for r in ref}) == REF_IMAGES


def test_bundle_runs_runtime_only(llvm_bundle, tmp_path):
    out, _ = llvm_bundle
    r = run_bundle(out, tmp_path / "res", HAWQ_BUNDLE_REPEAT="2", HAWQ_BUNDLE_WARMUP="1", HAWQ_TORCH_COMPILE="0",
                   HAWQ_BUNDLE_CACHE=str(tmp_path / "libcache"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    src = re.search(r"^tvm from (.+)$", r.stdout, re.M).group(1)
    assert Path(src).resolve().is_relative_to(out.resolve()), src
    rows = csv_rows(tmp_path / "res" / "gpu_results.csv")
    assert len(rows) == 2
    for row in rows:
        assert row["mismatches"] == "0" and int(row["elements"]) == 10 * int(row["batch"]), row
        assert float(row["tvm_ms"]) > 0


def test_bundle_detects_a_wrong_weight(llvm_bundle, tmp_path):
    """A trained weight file whose one integer differs gives mismatches (the check can fail)."""
    import shutil
    out, _ = llvm_bundle
    bad = tmp_path / "bundle"
    shutil.copytree(out, bad, symlinks=True)
    f = bad / "data" / "resnet20_cifar10_uniform4.npz"
    env_cache = tmp_path / "libcache"
    with np.load(f) as z:
        ws = {k: z[k].copy() for k in z.files}
    ws["w0"][0, 0] = 7 if ws["w0"][0, 0] != 7 else -7
    np.savez(f, **ws)
    manifest = json.loads((bad / "bundle.json").read_text())
    manifest["programs"] = [p for p in manifest["programs"] if p["name"] == "resnet20_cifar10_uniform4_b3"]
    (bad / "bundle.json").write_text(json.dumps(manifest))
    r = run_bundle(bad, tmp_path / "res", HAWQ_BUNDLE_REPEAT="1", HAWQ_BUNDLE_WARMUP="1", HAWQ_BUNDLE_TORCH="0",
                   HAWQ_BUNDLE_CACHE=str(env_cache))
    assert r.returncode == 1, r.stdout[-2000:]
    assert re.search(r"resnet20_cifar10_uniform4_b3: mismatches: [1-9]\d*/30", r.stdout), r.stdout[-2000:]


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="no CUDA compiler (nvcc) on this machine")
def test_cuda_kernels_ship_as_cubin(tmp_path, monkeypatch, small_model):
    """TVM embeds CUDA source and compiles it at load time: the bundle ships each program's kernels
    compiled here, under the SHA-256 of exactly the source the program embeds."""
    import hashlib
    import lzma
    from hawq.export import export_integer
    from tvm_benchmark.compile import compile_program
    from tvm_benchmark.apps.gpu_bundle import cuda_source, ship_cubin
    monkeypatch.setenv("HAWQ_CUDA_ARCH", "sm_80")
    model, _ = small_model
    built = compile_program(export_integer(model, (3, 32, 32))["graph"], (2, 3, 32, 32), "cuda")
    src = cuda_source(built.executable)
    assert "mma.sync" in src and "__global__" in src
    ship_cubin(tmp_path, built.executable, "sm_80")
    (f,) = (tmp_path / "cubins").iterdir()
    assert f.name == hashlib.sha256(src.encode()).hexdigest() + ".cubin.xz"
    cubin = lzma.decompress(f.read_bytes())
    assert cubin[:4] == b"\x7fELF" and len(cubin) > 10000


@pytest.mark.parametrize("before", ["sm_86", None])
def test_build_leaves_the_environment_as_it_was(before, monkeypatch, tmp_path):
    """The builder compiles for its --sm through HAWQ_CUDA_ARCH; afterwards (here: after a bad
    batch size) the caller's value is back, so later CUDA builds are not silently cross-compiled."""
    from hawq.errors import HawqError
    if before is None:
        monkeypatch.delenv("HAWQ_CUDA_ARCH", raising=False)
    else:
        monkeypatch.setenv("HAWQ_CUDA_ARCH", before)
    with pytest.raises(HawqError, match="batch sizes"):
        build_bundle(tmp_path / "b", sm="sm_75", released=False, archs=(), batches=(0,), progress=False)
    assert os.environ.get("HAWQ_CUDA_ARCH") == before
    assert not (tmp_path / "b").exists()
