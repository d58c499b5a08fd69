"""Latency benchmark: our integer program (TVM, and its ONNX export in ONNX Runtime) vs PyTorch FP32/int8 and ONNX Runtime FP32/int8.

    python -m tvm_benchmark.bench -a resnet18 --quant-scheme uniform8 --batch-size 1 8 --threads 2
    python -m tvm_benchmark.bench -a resnet18 resnet50 --quant-scheme all      # every bit_config scheme
    python -m tvm_benchmark.bench -a resnet18 --isa avx2 vnni                  # one TVM engine per ISA family

All engines run in one process, on the same input batch, with the same thread count. Each engine
first warms up, then ``--rounds`` rounds each time ``--iters`` single calls of every engine, in an
order rotated per round, so drift on a noisy machine hits all engines alike; an engine's figures
are the median and 90th percentile of all its timed calls. With ``--isolate`` every engine runs
alone in a process of its own (the same settings, one child per engine): no engine's thread pool
(ONNX Runtime's spinning workers, PyTorch's OpenMP team, TVM's pool) competes with another's, at
the price of drift no longer hitting all engines alike — run it on an idle machine.

Engines: ``tvm-int`` (our program compiled by TVM), ``ort-int`` (the same program exported by
:mod:`hawq.export_onnx`, format ``integer``, in ONNX Runtime: bit-exact, built from integer ops),
``ort-qdq`` (the scheme's model under numeric profile ``ort``, exported as QDQ: bit-exact, run by
ONNX Runtime's own int8 kernels; 8-bit schemes only), and the baselines of
:mod:`tvm_benchmark.apps.baselines` (``ort-int8`` is ONNX Runtime's ``quantize_static`` of the FP
model, the same kernels: the ratio of the two is the price of exactness).

Weights: ``resnet20_cifar10`` uses the released checkpoints (FP and, where released, the scheme's
QAT checkpoint), and its points in the accuracy plot carry their MANIFEST top-1. ImageNet archs use
a randomly initialised FP model whose quantized copy is calibrated on random batches (pretrained
weights cannot be downloaded here); latency does not depend on weight values.

Rows are appended to ``results/latency.csv`` (``host,isa,arch,scheme,batch,threads,engine,median_ms,
p90_ms``; ``host`` names the CPU model, LLVM's CPU name and the CPU's vector flags, ``isa`` the kernel
family of a TVM row, for a baseline the host's best family); ``results/latency.md`` (median, p90,
speed-up over FP32 eager, ratio to the faster of torch-int8 and ORT int8) and
``results/latency_accuracy.png`` are rebuilt from *this host's* rows only (latest row per key): rows
of other hosts stay in the CSV and never enter its tables.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hawq.errors import HawqError
from hawq.apps.cli import add_arch_arg, add_input_size_arg, add_quant_scheme_arg, console_script, one_line_errors, run_main
from hawq.tables import busy_warning, cpu_summary, markdown_table
from hawq.quant.config import QuantConfig
from tvm_benchmark.isa import CHOICES as ISA_CHOICES

__all__ = ["cli", "ENGINES", "FIELDS", "ONEDNN_FIELDS", "ONEDNN_CSV", "KEY", "MD_FIELDS", "RESULTS", "RELEASED_ARCH", "bench_models", "time_engines",
           "bench_arch_batch", "host_key", "append_rows", "latest", "markdown", "onednn_markdown", "manifest_top1",
           "plot_accuracy", "main"]

ENGINES = ("tvm-int", "ort-int", "ort-qdq", "torch-fp32", "torch-int8", "ort-fp32", "ort-int8")
FIELDS = ("host", "isa", "arch", "scheme", "batch", "threads", "engine", "median_ms", "p90_ms")
#: What torch-int8 really ran (``ONEDNN_VERBOSE``), per (host, arch, batch, threads), in ONEDNN_CSV.
ONEDNN_FIELDS = ("host", "arch", "batch", "threads", "primitive", "implementation", "calls")
ONEDNN_CSV = "torch_int8_onednn.csv"
KEY = ("host", "isa", "arch", "scheme", "batch", "threads", "engine")
MD_FIELDS = ("engine", "isa", "scheme", "median_ms", "p90_ms", "speedup_vs_torch_fp32", "ratio_to_best_int8")
RESULTS = Path("results")
RELEASED_ARCH = "resnet20_cifar10"


def bench_models(arch: str, scheme: str, num_classes: int, shape, fp_cache: dict, numerics: str = "exact"):
    """(FP model, calibrated/loaded quantized model) for ``arch`` and ``scheme`` under ``numerics``
    (a released checkpoint ``<arch>_<scheme>[_<numerics>].pth.tar`` where there is one)."""
    import torch
    from hawq.bit_config import load_scheme
    from hawq.engine import calibrate_random
    from hawq import checkpoint as C
    from hawq.models.factory import fp_model, quant_model
    from hawq.models.restore import load_quant_checkpoint
    if arch not in fp_cache:
        torch.manual_seed(0)
        released = Path("checkpoints") / f"{arch}_fp32.pth.tar"
        f = C.read(str(released)) if released.is_file() else None
        # A released FP checkpoint (trained on the embedded dataset) fixes the class count.
        fp_cache[arch] = fp_model(arch, f.num_classes if f else num_classes, weights=f).eval()
    fp = fp_cache[arch]
    with torch.no_grad():           # the head's width, whatever the model calls its head
        num_classes = int(fp(torch.zeros(1, *shape[1:])).shape[1])
    qat = Path("checkpoints") / f"{arch}_{scheme}{'' if numerics == 'exact' else '_' + numerics}.pth.tar"
    if qat.is_file():
        return fp, load_quant_checkpoint(str(qat))[0]
    bits = load_scheme(arch, scheme)
    q = quant_model(arch, bits, num_classes, fp=copy.deepcopy(fp),
                    config=QuantConfig(numerics=numerics, fix_BN=True).for_bits(bits), input_size=shape[-1])
    return fp, calibrate_random(q, shape, seed=1)


def _ort_export_engine(graph: dict, x: np.ndarray, threads: int, tmp: Path, name: str, fmt: str, numerics: str):
    """One-batch call of an integer program exported to ONNX (``fmt``), in an ONNX Runtime session
    set up exactly like the baselines' (:func:`tvm_benchmark.apps.baselines.ort_run`)."""
    from hawq.export_onnx import save_onnx, to_onnx
    from tvm_benchmark.apps import baselines as B
    path = tmp / f"{name}.{fmt}.onnx"
    save_onnx(to_onnx(graph, tuple(x.shape[1:]), fmt=fmt, numerics=numerics), str(path))
    return B.ort_run(path, x, threads)


def _ort_qdq_engine(arch: str, scheme: str, num_classes: int, shape, fp_cache: dict, x: np.ndarray,
                    threads: int, tmp: Path):
    """One-batch call of the scheme's profile-ort model exported as QDQ."""
    from hawq.export import export_integer
    _, q = bench_models(arch, scheme, num_classes, shape, fp_cache, numerics="ort")
    graph = export_integer(q, tuple(x.shape[1:]))["graph"]
    return _ort_export_engine(graph, x, threads, tmp, scheme, "qdq", "ort")


def _tvm_engine(graph: dict, x: np.ndarray, threads: int, isa: str | None):
    """(one-batch call, the kernel family it was built for) of an integer program."""
    import tvm
    from tvm_benchmark.compile import compile_program
    from tvm_benchmark.runtime import Runner
    built = compile_program(graph, x.shape, "llvm", threads, isa=isa)
    runner = Runner(built.executable, tvm.cpu(0), x.shape[0], built.isa_name)
    xt = tvm.runtime.tensor(x, tvm.cpu(0))
    fn = runner.vm["main"]
    return (lambda: fn(xt)), built.isa_name


def time_engines(engines: dict, warmup: int, rounds: int, iters: int, progress: bool = True) -> dict:
    """Interleaved timing; returns {engine: (median_ms, p90_ms)}."""
    from tqdm import tqdm
    names = list(engines)
    for n in names:
        for _ in range(warmup):
            engines[n]()
    samples = {n: [] for n in names}
    for r in tqdm(range(rounds), desc="rounds", disable=not progress, leave=False, dynamic_ncols=True):
        for n in names[r % len(names):] + names[:r % len(names)]:
            f = engines[n]
            for _ in range(iters):
                t = time.perf_counter()
                f()
                samples[n].append((time.perf_counter() - t) * 1e3)
    return {n: (float(np.median(s)), float(np.percentile(s, 90))) for n, s in samples.items()}


def bench_arch_batch(arch: str, schemes: list[str], batch: int, threads: int, engines: list[str],
                     warmup: int, rounds: int, iters: int, progress: bool,
                     isas: list[str | None] = (None,), input_size: int | None = None) -> tuple[list[dict], list[dict]]:
    """One interleaved timing run of every engine (one TVM engine per scheme × ISA family) on
    ``input_size``-pixel images (default: the arch's canonical size; another size is recorded in
    the rows' ``arch`` as ``ARCH@SIZE``). Returns (latency rows, :data:`ONEDNN_FIELDS` rows: the
    oneDNN primitives one torch-int8 call executed, by kind and implementation)."""
    from tvm_benchmark import isa as I
    from hawq.export import export_integer
    from hawq.models.archs import arch_info, check_input_size
    from tvm_benchmark.apps import baselines as B
    info = arch_info(arch)
    size = input_size or info.input_size
    check_input_size(arch, size)
    shape = (batch, 3, size, size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    calib = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]
    fp_cache: dict = {}
    fp, _ = bench_models(arch, schemes[0], info.num_classes, shape, fp_cache)
    runs, labels = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "torch-fp32" in engines:
            runs["torch-fp32"], labels["torch-fp32"] = B.torch_fp32(fp, x), "fp32"
        if "torch-int8" in engines:
            runs["torch-int8"], labels["torch-int8"] = B.torch_int8(fp, x, calib), "uniform8"
            kernels = B.onednn_primitives(runs["torch-int8"])      # (one untimed call)
        if {"ort-fp32", "ort-int8"} & set(engines):
            onnx = B.export_onnx(fp, x, tmp / "model.onnx")
            if "ort-fp32" in engines:
                runs["ort-fp32"], labels["ort-fp32"] = B.ort_run(onnx, x, threads), "fp32"
            if "ort-int8" in engines:
                runs["ort-int8"], labels["ort-int8"] = B.ort_run(B.quantize_onnx_int8(onnx, calib, tmp), x, threads), "uniform8"
        host_isa = I.detect()
        families = {k: (host_isa.name if host_isa else "generic") for k in runs}
        for s in schemes if {"tvm-int", "ort-int", "ort-qdq"} & set(engines) else ():
            if "ort-qdq" in engines:
                try:
                    run = _ort_qdq_engine(arch, s, info.num_classes, shape, fp_cache, x, threads, tmp)
                except HawqError as e:          # profile ort is 8-bit only: say so, time the rest
                    print(f"note: ort-qdq skipped for {arch} {s}: {e}")
                else:
                    key = f"ort-qdq:{s}"
                    runs[key], labels[key], families[key] = run, s, host_isa.name if host_isa else "generic"
            if not {"tvm-int", "ort-int"} & set(engines):
                continue
            _, q = bench_models(arch, s, info.num_classes, shape, fp_cache)
            graph = export_integer(q, tuple(x.shape[1:]))["graph"]
            if "ort-int" in engines:
                key = f"ort-int:{s}"
                runs[key], labels[key] = _ort_export_engine(graph, x, threads, tmp, s, "integer", "exact"), s
                families[key] = host_isa.name if host_isa else "generic"
            for name in isas if "tvm-int" in engines else ():
                run, family = _tvm_engine(graph, x, threads, name)
                key = f"tvm-int:{s}:{family}"
                runs[key], labels[key], families[key] = run, s, family
        stats = time_engines(runs, warmup, rounds, iters, progress)
    host = host_key()
    label = arch if size == info.input_size else f"{arch}@{size}"
    onednn = []
    if "torch-int8" in engines:
        found = sorted(kernels.items()) or [(("(none)", "no oneDNN primitive ran"), 0)]
        onednn = [{"host": host, "arch": label, "batch": batch, "threads": threads, "primitive": kind,
                   "implementation": impl, "calls": n} for (kind, impl), n in found]
    return [{"host": host, "isa": families[k], "arch": label, "scheme": labels[k], "batch": batch,
             "threads": threads, "engine": k.split(":")[0], "median_ms": round(m, 4), "p90_ms": round(p, 4)}
            for k, (m, p) in stats.items()], onednn


def host_key() -> str:
    """``CPU model (LLVM cpu; flags)``: what a latency row was measured on."""
    from hawq.tables import cpu_name
    from tvm_benchmark.isa import describe
    from tvm_benchmark.targets import host_cpu
    return f"{cpu_name()} ({host_cpu()}; {describe().replace(', ', '+')})"


def append_rows(rows: list[dict], path: Path, fields: tuple[str, ...] = FIELDS) -> None:
    """Append to the CSV; a CSV of an older layout (no host column) is kept aside as ``*.old.csv``:
    its rows cannot be attributed to a host, so they never mix with these."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        with open(path) as f:
            head = f.readline().strip().split(",")
        if head != list(fields):
            path.replace(path.with_suffix(".old.csv"))
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)


def latest(path: Path, host: str | None = None):
    """Latest row per key, of ``host``'s rows only (None: every host)."""
    import pandas as pd
    df = pd.read_csv(path)
    if host is not None:
        df = df[df.host == host]
    return df.drop_duplicates(subset=list(KEY), keep="last")


def markdown(df, header: str) -> str:
    """Per (arch, batch, threads) of one host: every engine's median/p90, speed-up over FP32 eager,
    ratio to the faster of torch-int8 and ORT int8 (the goal is <= 0.75 for TVM uniform8)."""
    if df.host.nunique() > 1:
        raise ValueError("a latency table must hold one host's rows")
    out = [header, ""]
    for (arch, batch, threads), g in df.groupby(["arch", "batch", "threads"], sort=True):
        base = g[g.engine == "torch-fp32"].median_ms
        int8 = g[g.engine.isin(["torch-int8", "ort-int8"])].median_ms
        g = g.sort_values("median_ms").copy()
        g["speedup_vs_torch_fp32"] = (float(base.iloc[0]) / g.median_ms).round(2) if len(base) else np.nan
        g["ratio_to_best_int8"] = (g.median_ms / float(int8.min())).round(2) if len(int8) else np.nan
        out += [f"### {arch}, batch {batch}, {threads} threads", ""]
        out += markdown_table(g.to_dict("records"), MD_FIELDS, ("engine", "isa", "scheme")) + [""]
    return "\n".join(out)


def onednn_markdown(path: Path, host: str) -> str:
    """The latest oneDNN primitives per (arch, batch, threads) of ``host``'s torch-int8 runs, as a
    markdown section ('' when none were recorded)."""
    if not path.is_file():
        return ""
    import pandas as pd
    df = pd.read_csv(path)
    df = df[df.host == host]
    if df.empty:
        return ""
    # the rows of one run are consecutive: keep, per (arch, batch, threads), its last run's rows
    run = (df[["arch", "batch", "threads"]] != df[["arch", "batch", "threads"]].shift()).any(axis=1).cumsum()
    last = run.groupby([df.arch, df.batch, df.threads]).transform("max")
    df = df[run == last]
    return ("\n\n## What torch-int8 ran (ONEDNN_VERBOSE)\n\nThe oneDNN primitives one torch-int8 call executed "
            "(kind, implementation, executions), from the latest run per (arch, batch, threads); "
            "`(none)`: PyTorch ran FBGEMM's kernels, not oneDNN's.\n\n"
            + "\n".join(markdown_table(df.to_dict("records"), ONEDNN_FIELDS[1:],
                                        text_fields=("arch", "primitive", "implementation"))))


def manifest_top1() -> dict[tuple[str, str], float]:
    path = Path("checkpoints/MANIFEST.csv")
    if not path.is_file():
        return {}
    with open(path) as f:
        return {(r["arch"], r["scheme"]): float(r["top1"]) for r in csv.DictReader(f)}


def plot_accuracy(df, path: Path) -> bool:
    """Top-1 vs median latency for every row whose (arch, scheme) has a released accuracy."""
    top1 = manifest_top1()
    known = np.array([(a, s) in top1 for a, s in zip(df.arch, df.scheme)], dtype=bool)
    pts = df[known & df.engine.isin(["tvm-int", "torch-fp32"]).to_numpy()]
    if pts.empty:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (arch, batch, threads, engine), g in pts.groupby(["arch", "batch", "threads", "engine"]):
        ys = [top1[(arch, s)] for s in g.scheme]
        ax.scatter(g.median_ms, ys, label=f"{arch} {engine} b{batch} t{threads}")
        for xm, y, s in zip(g.median_ms, ys, g.scheme):
            ax.annotate(s, (xm, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("median latency per batch (ms)")
    ax.set_ylabel("top-1 (%) on Fashion-MNIST test")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _host() -> str:
    from tvm_benchmark.isa import describe, detect
    from tvm_benchmark.targets import host_cpu
    fam = detect()
    return (f"{cpu_summary()} (LLVM: {host_cpu()}); CPU flags: {describe()}; "
            f"kernel family detected: {fam.name if fam else 'none (no AVX2)'}")


def _isolated(args: argparse.Namespace, arch: str, schemes: list[str], batch: int,
              engine: str) -> tuple[list[dict], list[dict]]:
    """The rows of ``engine`` alone (latency, oneDNN primitives), timed by a child process of this
    benchmark with the same settings."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "tvm_benchmark.apps.bench", "-a", arch, "--quant-scheme", *schemes,
               "-b", str(batch), "--threads", str(args.threads), "--engines", engine, "--warmup", str(args.warmup),
               "--rounds", str(args.rounds), "--iters", str(args.iters), "--out-dir", tmp, "--no-progress"]
        cmd += ["--input-size", str(args.input_size)] if args.input_size else []
        cmd += ["--isa", *args.isa] if args.isa else []
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise HawqError(f"--isolate: the {engine} process failed: {last}")
        if "note:" in r.stdout:
            print("\n".join(line for line in r.stdout.splitlines() if line.startswith("note:")))
        return _read_rows(Path(tmp) / "latency.csv", FIELDS), _read_rows(Path(tmp) / ONEDNN_CSV, ONEDNN_FIELDS)


def _read_rows(path: Path, fields: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: row[k] for k in fields} for row in csv.DictReader(f)]


@one_line_errors
def main(argv=None) -> int:
    from hawq.bit_config import list_schemes
    from hawq.errors import HawqError
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arch_arg(p, ["resnet18"], nargs="+")
    add_quant_scheme_arg(p, ["uniform8"], nargs="+", help="scheme names, or 'all'")
    p.add_argument("-b", "--batch-size", nargs="+", type=int, default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    add_input_size_arg(p, "each arch's canonical size: 224 for ImageNet archs, torchvision and timm, 32 for "
                          "resnet20_cifar10 and files; rows at another size are labelled ARCH@SIZE")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--isa", nargs="+", default=None, choices=ISA_CHOICES,
                   help="TVM kernel families to time, one tvm-int engine each (default: the detected one)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=10, help="timed calls per engine per round")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--isolate", action="store_true", help="time every engine alone in its own process")
    args = p.parse_args(argv)
    if args.threads < 1 or any(b < 1 for b in args.batch_size):
        raise HawqError("--threads and --batch-size must be >= 1")
    from tvm_benchmark import isa as I
    for name in args.isa or []:   # up front: the baselines take minutes before a TVM Runner would refuse
        I.require_runnable(I.resolve(name))
    os.environ["TVM_NUM_THREADS"] = str(args.threads)   # read when TVM's pool first starts
    import torch
    torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    warn = busy_warning(args.threads)
    if warn:
        print(warn, file=sys.stderr)
    for arch in args.arch:
        schemes = list_schemes(arch) if args.quant_scheme == ["all"] else args.quant_scheme
        for s in schemes:
            if s not in list_schemes(arch):
                raise HawqError(f"unknown scheme '{s}' for {arch}; choose from {', '.join(list_schemes(arch))}")
        for batch in args.batch_size:
            if args.isolate:
                parts = [_isolated(args, arch, schemes, batch, e) for e in args.engines]
                rows, onednn = [r for p, _ in parts for r in p], [r for _, o in parts for r in o]
            else:
                rows, onednn = bench_arch_batch(arch, schemes, batch, args.threads, args.engines, args.warmup,
                                                args.rounds, args.iters, not args.no_progress, args.isa or [None],
                                                args.input_size)
            append_rows(rows, out / "latency.csv")
            if onednn:
                append_rows(onednn, out / ONEDNN_CSV, ONEDNN_FIELDS)
            for r in rows:
                print(",".join(str(r[k]) for k in FIELDS), flush=True)
    df = latest(out / "latency.csv", host_key())
    cmd = "python -m tvm_benchmark.bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    header = (f"# Latency (ms per batch)\n\nHost: {_host()}. Host key in `latency.csv`: `{host_key()}`; "
              f"only that host's rows are tabulated here.\n\nLatest command: `{cmd}`. Rows are the latest "
              "measurement per (isa, arch, scheme, batch, threads, engine) in `results/latency.csv`."
              + (f"\n\n**{warn}**" if warn else ""))
    (out / "latency.md").write_text(markdown(df, header) + onednn_markdown(out / ONEDNN_CSV, host_key()) + "\n")
    if plot_accuracy(df, out / "latency_accuracy.png"):
        print(f"plot -> {out / 'latency_accuracy.png'}")
    print(f"table -> {out / 'latency.md'}")
    return 0


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
