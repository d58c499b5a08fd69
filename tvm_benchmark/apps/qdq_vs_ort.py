"""``python -m tvm_benchmark.apps.qdq_vs_ort``: our bit-exact QDQ export (profile ort) against ONNX
Runtime's own ``quantize_static`` model of the same architecture, each in its own process.

    python -m tvm_benchmark.apps.qdq_vs_ort -a resnet20_cifar10 mobilenetv2_w1 -b 1 8 --threads 2

For every arch and batch: the FP model (the released FP checkpoint where there is one) through
``quantize_static`` (static QDQ, per-channel int8 weights, uint8 activations: ORT's CPU recipe,
:func:`tvm_benchmark.apps.baselines.quantize_onnx_int8`), and the arch's uniform8 model of profile
ort (the released ``<arch>_uniform8_ort`` checkpoint where there is one) exported as QDQ by
:mod:`hawq.export_onnx`. Both files run the same kernels (QLinearConv, QLinearAdd, ...). Each timing
is a fresh process (ONNX Runtime's defaults, pool threads spinning as a deployment has them, the
same ``--threads``), ``--rounds`` times alternating which file goes first; a file's figure is the
median over rounds of each process's median of ``--iters`` calls. Rows are appended to
``results/qdq_vs_ort.csv`` (with the host) and ``results/qdq_vs_ort.md`` is rebuilt from this host's rows.
"""
from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

from hawq.apps.cli import add_arch_arg, add_input_size_arg, console_script, one_line_errors, run_main
from hawq.tables import busy_warning, markdown_table

__all__ = ["FIELDS", "RESULTS", "time_file", "compare", "main", "cli"]

FIELDS = ("host", "arch", "batch", "threads", "ort_int8_ms", "qdq_ms", "ratio")
RESULTS = Path("results")

_TIMER = """
import sys, time, numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[3]); so.log_severity_level = 3
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
feed = {s.get_inputs()[0].name: np.load(sys.argv[2])}
for _ in range(30): s.run(None, feed)
t = []
for _ in range(int(sys.argv[4])):
    a = time.perf_counter(); s.run(None, feed); t.append((time.perf_counter() - a) * 1e3)
print(np.median(t))
"""


def time_file(path: Path, x_path: Path, threads: int, iters: int) -> float:
    """Median ms of ``iters`` calls of an ONNX file in a fresh Python process."""
    r = subprocess.run([sys.executable, "-c", _TIMER, str(path), str(x_path), str(threads), str(iters)],
                       capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def _files(arch: str, batch: int, size: int | None, d: Path) -> tuple[Path, Path, Path]:
    """(quantize_static file, our QDQ file, input batch) for ``arch`` at ``batch`` and ``size`` px in ``d``."""
    from hawq.export import export_integer
    from hawq.export_onnx import save_onnx, to_onnx
    from hawq.models.archs import arch_info
    from tvm_benchmark.apps import baselines as B
    from tvm_benchmark.apps.bench import bench_models
    info = arch_info(arch)
    size = size or info.input_size
    shape = (batch, 3, size, size)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    calib = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]
    fp, q = bench_models(arch, "uniform8", info.num_classes, shape, {}, numerics="ort")
    int8 = B.quantize_onnx_int8(B.export_onnx(fp, x, d / "fp32.onnx"), calib, d)
    qdq = d / "qdq.onnx"
    save_onnx(to_onnx(export_integer(q, shape[1:])["graph"], shape[1:], fmt="qdq", numerics="ort"), str(qdq))
    np.save(d / "x.npy", x)
    return int8, qdq, d / "x.npy"


def compare(arch: str, batch: int, threads: int, rounds: int, iters: int, size: int | None = None) -> dict:
    from tvm_benchmark.apps.bench import host_key
    with tempfile.TemporaryDirectory() as tmp:
        int8, qdq, x = _files(arch, batch, size, Path(tmp))
        t = {"int8": [], "qdq": []}
        for r in range(rounds):
            order = [("int8", int8), ("qdq", qdq)][:: 1 if r % 2 == 0 else -1]
            for name, path in order:
                t[name].append(time_file(path, x, threads, iters))
    a, b = float(np.median(t["int8"])), float(np.median(t["qdq"]))
    label = arch if size is None else f"{arch}@{size}"
    return {"host": host_key(), "arch": label, "batch": batch, "threads": threads, "ort_int8_ms": round(a, 4),
            "qdq_ms": round(b, 4), "ratio": round(b / a, 3)}


def _write(rows: list[dict], command: str) -> None:
    from tvm_benchmark.apps.bench import append_rows
    path = RESULTS / "qdq_vs_ort.csv"
    append_rows(rows, path, FIELDS)
    with open(path, newline="") as f:
        mine = [r for r in csv.DictReader(f) if r["host"] == rows[0]["host"]]
    latest = {(r["arch"], r["batch"], r["threads"]): r for r in mine}
    lines = ["# Our QDQ export (profile ort) vs ONNX Runtime's quantize_static, same kernels", "",
             f"Host: {rows[0]['host']}; {date.today().isoformat()}. Latest command: `{command}` (each file timed in its "
             "own process with ONNX Runtime's defaults, medians; see the program's docstring). Only this host's rows "
             "(all: `qdq_vs_ort.csv`). `ratio` = qdq / ort_int8.", "",
             *markdown_table(list(latest.values()), [f for f in FIELDS if f != "host"], text_fields=("arch",))]
    (RESULTS / "qdq_vs_ort.md").write_text("\n".join(lines) + "\n")


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tvm_benchmark.apps.qdq_vs_ort", description=__doc__.splitlines()[0])
    add_arch_arg(p, ["resnet20_cifar10", "mobilenetv2_w1"], nargs="+")
    p.add_argument("-b", "--batch-size", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2)
    add_input_size_arg(p, "the arch's canonical size (rows of another size are named ARCH@SIZE)")
    p.add_argument("--rounds", type=int, default=4, help="processes per file (alternating order)")
    p.add_argument("--iters", type=int, default=300, help="timed calls per process")
    args = p.parse_args(argv)
    warn = busy_warning(args.threads)
    if warn:
        print(warn)
    rows = []
    for arch in args.arch:
        for b in args.batch_size:
            rows.append(compare(arch, b, args.threads, args.rounds, args.iters, args.input_size))
            r = rows[-1]
            print(f"{arch:<20} b{b:<3} ort int8 {r['ort_int8_ms']:.4f} ms  qdq {r['qdq_ms']:.4f} ms  ratio {r['ratio']:.3f}",
                  flush=True)
    _write(rows, "python -m tvm_benchmark.apps.qdq_vs_ort " + shlex.join(sys.argv[1:] if argv is None else argv))
    print(f"table -> {RESULTS / 'qdq_vs_ort.md'}")
    return 0


cli = console_script(main)

if __name__ == "__main__":
    run_main(main)
