"""Build the GPU bundle: tensor-core programs, their inputs and reference logits, runtime-only TVM, one script.

    python -m tvm_benchmark.gpu_bundle --out build/gpu-bundle [--sm sm_90] [--target cuda|llvm]
        [--released | --no-released] [-a resnet18 resnet50] [--quant-scheme uniform8 uniform4 bops_0.5]
        [-b 1 8 64] [--size 224] [--python 3.12]

(``make gpu-bundle`` runs the default set; ``CUDA_ARCH=sm_80 make gpu-bundle`` picks the GPU.)

Everything is computed here, on the CPU machine; the GPU machine only runs ``bash run.sh OUTDIR``
(``tvm_benchmark/bundle_files``: loads each program, counts mismatches against the shipped
reference, times it and PyTorch, writes ``gpu_results.{csv,md}``). The bundle holds:

- ``programs/NAME.so``: one compiled program per model × scheme × batch (``--target cuda``: the
  tensor-core program for ``--sm``; ``--target llvm``: the *same* schedule with the PTX instructions
  emulated by loops, for testing the bundle on a CPU). Weights are ``main`` parameters, so the
  programs are small and the batches of a model share one weight file.
- ``data/MODEL_SCHEME.npz`` (released checkpoints: their trained weights) or
  ``data/MODEL_SCHEME.synth.json`` (resnet18/resnet50, no trained ImageNet checkpoint exists offline:
  a calibrated random model whose GEMM weights are replaced by integers regenerated bit-identically
  from a seed on the GPU machine, see ``bundle_params.py``).
- ``data/*_input8.npy`` (8 float32 images: the first Fashion-MNIST test images for released
  checkpoints, seeded standard-normal images for the others; one file per arch and size) and
  ``data/*_ref8.npy`` (their int64 logits from the NumPy integer reference,
  :func:`hawq.reference.run_graph`, computed here). A program of batch B runs the first B of them,
  cycling (``bundle_params.batch_rows``): batch 64 is the 8 repeated 8 times — each image is
  computed independently, so the check is the same and the timing is that of 64.
- programs are stored ``.so.xz`` (lzma; the runner decompresses them into a cache directory). TVM
  0.27 embeds CUDA kernels as source and compiles them when a program loads; ``cubins/`` holds each
  program's kernels compiled here with nvcc for ``--sm`` (keyed by the source's SHA-256), which the
  runner returns from its ``tvm_callback_cuda_compile``.
- ``tvm/``, ``tvm_ffi/``: runtime-only TVM for the GPU machine's Python (:mod:`tvm_benchmark.tvm_runtime_copy`);
  ``site/pytorchcv``: the PyTorch models for the baseline columns.
- ``bundle.json`` (the manifest), ``run.sh``, ``gpu_run.py``, ``bundle_params.py``, ``CONTENTS.md``
  (every file and its size).
"""
from __future__ import annotations

import argparse
import datetime
import json
import lzma
import os
import shutil
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hawq.apps.cli import one_line_errors, run_main
from hawq.errors import HawqError

__all__ = ["FILES", "RELEASED", "REF_IMAGES", "LIMIT_MIB", "Model", "released_model", "synthetic_model",
           "build_bundle", "cuda_source", "main"]

FILES = Path(__file__).resolve().parent.parent / "bundle_files"
RELEASED = ("resnet20_cifar10_uniform8", "resnet20_cifar10_uniform4", "resnet20_cifar10_mixed_stage1_8bit",
            "mobilenetv2_w1_uniform8", "bireal_resnet20_binary")    # the last: its 18 sign convs on b1 MMA
REF_IMAGES = 8
LIMIT_MIB = 60


@dataclass
class Model:
    """One integer graph to bundle: its name, arch, scheme, input side, classes, weights kind."""
    name: str
    arch: str
    scheme: str
    size: int
    classes: int
    graph: dict
    images: np.ndarray            # float32 [REF_IMAGES, 3, S, S]
    #: synthetic models: node name -> (OIHW / [O, F] shape, per-output-channel magnitude)
    synthetic: dict[str, tuple[list[int], list[int]]] | None = None


def _load_params_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bundle_params", FILES / "bundle_params.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def released_model(stem: str, root: Path) -> Model:
    from hawq.data import build_loaders
    from hawq.program import load_program
    path = root / "checkpoints" / f"{stem}.pth.tar"
    if not path.is_file():
        raise HawqError(f"released checkpoint {path} not found")
    prog = load_program(str(path))
    data = build_loaders(prog.dataset, None, REF_IMAGES, 0, 1.0, 0, eval_limit=REF_IMAGES,
                         input_size=prog.input_chw[1])
    x, _ = next(iter(data.val))
    return Model(stem, prog.arch, prog.scheme, prog.input_chw[1], 10, prog.graph, x.numpy().astype(np.float32))


def synthetic_model(arch: str, scheme: str, size: int, classes: int, seed: int = 0) -> Model:
    """A calibrated random model of ``arch`` at ``size`` px whose conv/dense integer weights are
    replaced by :func:`bundle_params.synthetic_weight` integers of the same per-channel magnitude."""
    import torch
    from hawq import ir
    from hawq.bit_config import load_scheme
    from hawq.engine import calibrate_random
    from hawq.export import export_integer
    from hawq.models.factory import fp_model, quant_model
    from hawq.quant.config import QuantConfig
    bp = _load_params_module()
    torch.manual_seed(seed)
    model = quant_model(arch, load_scheme(arch, scheme), classes, fp=fp_model(arch, classes),
                        config=QuantConfig(fix_BN=True))
    calibrate_random(model, (4, 3, size, size), batches=2, seed=seed)
    model.eval()
    graph = ir.as_graph(export_integer(model, (3, size, size))["graph"])
    layers = {}
    for node in graph.nodes:
        if isinstance(node, (ir.Conv2d, ir.Dense)):
            w = np.asarray(node.weight.detach().cpu().numpy() if hasattr(node.weight, "detach") else node.weight)
            absmax = np.abs(w.astype(np.int64)).reshape(w.shape[0], -1).max(1).clip(min=1).tolist()
            node.weight = torch.from_numpy(bp.synthetic_weight(list(w.shape), absmax, _seed(arch, scheme, node.name)))
            layers[node.name] = (list(w.shape), absmax)
    graph.validate()
    g = torch.Generator().manual_seed(seed + 1)
    images = torch.randn(REF_IMAGES, 3, size, size, generator=g).numpy()
    return Model(f"{arch}_{scheme}", arch, scheme, size, classes, graph.to_dict(), images, layers)


def _seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


def _recipe(model: Model, nodes: tuple[str, ...], weights: tuple[np.ndarray, ...]) -> dict:
    """The ``hawq-synth-weights/1`` recipe of a synthetic model's GEMM weights, in parameter order."""
    layers = []
    for tag, packed in zip(nodes, weights):
        name, bits = tag.rsplit(":", 1)          # "<node>:<operand bits>" (tvm_benchmark.frontend)
        shape, absmax = model.synthetic[name]
        layers.append({"node": name, "shape": shape, "absmax": absmax, "seed": _seed(model.arch, model.scheme, name),
                       "packed": list(packed.shape), "bits": int(bits),
                       "crc32": zlib.crc32(np.ascontiguousarray(packed).tobytes())})
    return {"format": "hawq-synth-weights/1", "model": model.name, "layers": layers}


def _reference(model: Model) -> np.ndarray:
    from hawq.reference import run_graph
    return np.asarray(run_graph(model.graph, model.images), dtype=np.int64)


def _save_once(tmp: Path, stem: str, a: np.ndarray, saved: dict) -> str:
    """Save ``a`` as ``data/<stem>.npy`` unless an identical array is already in the bundle; returns
    the bundle path of the array's one copy (inputs are shared by every scheme of a model)."""
    key = (a.shape, str(a.dtype), zlib.crc32(a.tobytes()))
    if key not in saved:
        used = set(saved.values())
        name, n = f"data/{stem}.npy", 1
        while name in used:                     # same stem, other content (released vs synthetic images)
            n += 1
            name = f"data/{stem}_{n}.npy"
        saved[key] = name
        np.save(tmp / name, a)
    return saved[key]


def build_bundle(out: Path, target: str = "cuda", sm: str = "sm_90", released: bool = True,
                 archs: tuple[str, ...] = ("resnet18", "resnet50"),
                 schemes: tuple[str, ...] = ("uniform8", "uniform4", "bops_0.5"),
                 batches: tuple[int, ...] = (1, 8, 64), size: int = 224, python: str = "3.12",
                 released_stems: tuple[str, ...] = RELEASED, progress: bool = True, compress: bool = True) -> dict:
    """Write the bundle into ``out`` (replaced as a whole: built in ``out.tmp`` then renamed)."""
    previous = os.environ.get("HAWQ_CUDA_ARCH")
    os.environ["HAWQ_CUDA_ARCH"] = sm            # the sm the programs are compiled for (tvm_benchmark.targets)
    try:
        return _build(out, target, sm, released, archs, schemes, batches, size, python, released_stems,
                      progress, compress)
    finally:                                     # no lasting change to the caller's environment
        if previous is None:
            os.environ.pop("HAWQ_CUDA_ARCH", None)
        else:
            os.environ["HAWQ_CUDA_ARCH"] = previous


def _build(out: Path, target: str, sm: str, released: bool, archs, schemes, batches, size: int, python: str,
           released_stems, progress: bool, compress: bool) -> dict:
    from tqdm import tqdm
    from tvm_benchmark.compile import compile_program
    from tvm_benchmark.tvm_runtime_copy import copy_tvm_runtime
    if target not in ("cuda", "llvm"):
        raise HawqError(f"--target must be cuda or llvm, got {target!r}")
    if any(b < 1 for b in batches):
        raise HawqError(f"batch sizes must be >= 1, got {list(batches)}")
    root = Path(__file__).resolve().parents[2]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "programs").mkdir(parents=True)
    (tmp / "data").mkdir()
    bp = _load_params_module()

    models = [released_model(s, root) for s in (released_stems if released else ())]
    # ImageNet's 1000 classes (the CIFAR-style archs take 10 or 100: 10)
    models += [synthetic_model(a, s, size, 10 if "cifar" in a else 1000) for a in archs for s in schemes]
    entries, saved = [], {}
    bar = tqdm(total=len(models) * (len(batches) + 1), desc="gpu bundle", disable=not progress)
    for m in models:
        bar.set_postfix_str(f"{m.name} reference")
        ref = _reference(m)
        bar.update()
        graph = m.graph
        params_file = None
        kind = "synthetic" if m.synthetic is not None else "dataset"
        inputs = _save_once(tmp, f"{m.arch}_{m.size}px_{kind}_input{REF_IMAGES}", m.images, saved)
        reference = _save_once(tmp, f"{m.name}_ref{REF_IMAGES}", ref, saved)
        for b in batches:
            bar.set_postfix_str(f"{m.name} b{b}")
            built = compile_program(graph, (b, 3, m.size, m.size), "cuda", emulate=(target == "llvm"),
                                    weights_as_params=True)
            name = f"{m.name}_b{b}"
            so = tmp / "programs" / f"{name}.so"
            built.executable.export_library(str(so))
            if target == "cuda":
                ship_cubin(tmp, built.executable, sm)
            if compress:
                (tmp / "programs" / f"{name}.so.xz").write_bytes(lzma.compress(so.read_bytes(), preset=6))
                so.unlink()
            if params_file is None:
                if m.synthetic is not None:
                    recipe = _recipe(m, built.weight_nodes, built.weights)
                    params_file = f"data/{m.name}.synth.json"
                    (tmp / params_file).write_text(json.dumps(recipe))
                    regenerated = bp.load_params(tmp / params_file)
                    if any(not np.array_equal(r, w) for r, w in zip(regenerated, built.weights)):
                        raise HawqError(f"{m.name}: regenerated weights differ from the compiled ones")
                else:
                    params_file = f"data/{m.name}.npz"
                    np.savez(tmp / params_file, **{f"w{i}": w for i, w in enumerate(built.weights)})
            entries.append({"name": name, "arch": m.arch, "scheme": m.scheme, "batch": b,
                            "lib": f"programs/{name}.so" + (".xz" if compress else ""), "input": inputs,
                            "reference": reference, "params": params_file,
                            "weights": "trained checkpoint" if m.synthetic is None else "synthetic (seeded integers)",
                            # pytorchcv has no Bi-Real nets (our own hawq: archs): no PyTorch row
                            "torch": None if m.arch.startswith("hawq:") else {"model": m.arch,
                                                                              "num_classes": m.classes}})
            bar.update()
    bar.close()

    for f in ("run.sh", "gpu_run.py", "bundle_params.py"):
        shutil.copy2(FILES / f, tmp / f)
    os.chmod(tmp / "run.sh", 0o755)
    copy_tvm_runtime(tmp, python=python)
    _copy_pytorchcv(tmp / "site")
    manifest = {"format": "hawq-gpu-bundle/1", "target": target, "sm": sm if target == "cuda" else None,
                "built_on": socket.gethostname(), "created": datetime.datetime.now().isoformat(timespec="seconds"),
                "python": python, "programs": entries}
    (tmp / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = _write_contents(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    manifest["bytes"] = total
    return manifest


def cuda_source(executable) -> str:
    """The CUDA C source TVM embedded in a compiled program (it compiles it when the program loads)."""
    def walk(m):
        yield m
        for x in m.imports:
            yield from walk(x)
    return "".join(m.inspect_source("") for m in walk(executable.mod) if m.kind == "cuda")


def ship_cubin(tmp: Path, executable, sm: str) -> None:
    """Compile the program's CUDA source here (``nvcc -cubin -arch=sm``) into
    ``cubins/<sha256 of the source>.cubin.xz``: the bundle's runner hands it to TVM's load-time
    ``tvm_callback_cuda_compile``, so the GPU machine compiles nothing."""
    import hashlib
    import subprocess
    import tempfile
    src = cuda_source(executable)
    dest = tmp / "cubins" / f"{hashlib.sha256(src.encode()).hexdigest()}.cubin.xz"
    if dest.exists():
        return
    if shutil.which("nvcc") is None:
        raise HawqError("nvcc not found: the GPU bundle needs it to compile the CUDA kernels")
    dest.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        cu, cubin = Path(d) / "k.cu", Path(d) / "k.cubin"
        cu.write_text(src)
        r = subprocess.run(["nvcc", "-cubin", f"-arch={sm}", "-O3", "-o", str(cubin), str(cu)],
                           capture_output=True, text=True)
        if r.returncode:
            raise HawqError(f"nvcc could not compile the CUDA kernels for {sm}: {r.stderr.strip()[-300:]}")
        dest.write_bytes(lzma.compress(cubin.read_bytes(), preset=6))


def _copy_pytorchcv(site: Path) -> None:
    import pytorchcv
    src = Path(pytorchcv.__file__).resolve().parent
    shutil.copytree(src, site / "pytorchcv", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _write_contents(d: Path) -> int:
    """``CONTENTS.md``: every top-level part of the bundle and its size; returns the total bytes."""
    rows, total = [], 0
    for p in sorted(d.iterdir()):
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        count = sum(1 for f in p.rglob("*") if f.is_file()) if p.is_dir() else 1
        rows.append(f"| `{p.name}{'/' if p.is_dir() else ''}` | {count} | {size / 2 ** 20:.2f} |")
        total += size
    (d / "CONTENTS.md").write_text("| part | files | MiB |\n|---|---:|---:|\n" + "\n".join(rows)
                                   + f"\n| **total** | | **{total / 2 ** 20:.2f}** |\n")
    return total


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="build/gpu-bundle")
    p.add_argument("--target", default="cuda", choices=("cuda", "llvm"),
                   help="cuda: for the GPU; llvm: the same schedules emulated, to test the bundle on a CPU")
    p.add_argument("--sm", default=os.environ.get("CUDA_ARCH", "sm_90"), help="GPU architecture (sm_80, sm_90, ...)")
    p.add_argument("--released", action=argparse.BooleanOptionalAction, default=True,
                   help="bundle the released quantized checkpoints too")
    p.add_argument("-a", "--arch", nargs="*", default=["resnet18", "resnet50"])
    p.add_argument("--quant-scheme", nargs="*", default=["uniform8", "uniform4", "bops_0.5"])
    p.add_argument("-b", "--batch-size", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--size", type=int, default=224, help="input side of the resnet18/resnet50 programs (px)")
    p.add_argument("--python", default="3.12", help="Python version of the GPU machine (for tvm_ffi's wheel)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    m = build_bundle(out, args.target, args.sm, args.released, tuple(args.arch), tuple(args.quant_scheme),
                     tuple(args.batch_size), args.size, args.python, progress=not args.no_progress)
    print((out / "CONTENTS.md").read_text())
    print(f"wrote {out}/ ({len(m['programs'])} programs, {m['bytes'] / 2 ** 20:.1f} MiB); "
          f"on the GPU machine: bash {out}/run.sh OUTDIR")
    if m["bytes"] > LIMIT_MIB * 2 ** 20:
        print(f"warning: the bundle is over {LIMIT_MIB} MiB")
    return 0


if __name__ == "__main__":
    run_main(main)
