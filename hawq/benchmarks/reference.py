"""``python -m hawq.benchmarks.reference``: the speed of the NumPy integer reference (what every
``verify`` runs), per image, against the same graph with every conv/dense product summed in int64
(:func:`hawq.reference.int64_products`, the definition), in one process on one host; and whether
both give the same integers. Named archs with calibrated random weights (the speed does not depend
on training; the float32/float64 paths do depend on the weights' sums, which random init makes
representative of uniform8). Writes ``results/reference.{csv,md}``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from hawq.apps.cli import one_line_errors, run_main
from hawq.fileio import rows_csv, write_text_atomic
from hawq.tables import markdown_table, run_context

__all__ = ["FIELDS", "measure", "main"]

FIELDS = ("host", "date", "arch", "scheme", "input", "batch", "reference_ms", "int64_ms", "speedup", "same")


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(arch: str, scheme: str, size: int, batch: int, repeats: int = 2, seed: int = 0) -> dict:
    """Milliseconds per image of :func:`hawq.reference.run_graph` on ``batch`` images (best of
    ``repeats`` after a warm-up) and of its int64 products (one run), and whether they agree."""
    from hawq.bit_config import load_scheme
    from hawq.export import export_integer
    from hawq.models.archs import arch_info
    from hawq.models.factory import fp_model, quant_model
    from hawq.reference import int64_products, run_graph
    torch.manual_seed(seed)
    classes = arch_info(arch).num_classes
    q = quant_model(arch, load_scheme(arch, scheme), classes, fp=fp_model(arch, classes))
    with torch.no_grad():
        q.train()
        q(torch.randn(4, 3, size, size))
    q.eval()
    graph = export_integer(q, (3, size, size))["graph"]
    x = np.random.default_rng(seed).standard_normal((batch, 3, size, size), dtype=np.float32)
    fast = run_graph(graph, x)
    t_fast = _best(lambda: run_graph(graph, x), repeats)
    with int64_products():
        t0 = time.perf_counter()
        slow = run_graph(graph, x)
        t_slow = time.perf_counter() - t0
    return {"arch": arch, "scheme": scheme, "input": size, "batch": batch,
            "reference_ms": round(t_fast / batch * 1e3, 1), "int64_ms": round(t_slow / batch * 1e3, 1),
            "speedup": round(t_slow / t_fast, 1), "same": bool(np.array_equal(fast, slow))}


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-a", "--arch", nargs="+", default=["resnet18", "resnet50"])
    p.add_argument("--quant-scheme", default="uniform8")
    p.add_argument("-b", "--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--out-dir", default="results")
    args = p.parse_args(argv)
    warn, host, date = run_context(torch.get_num_threads())
    rows = []
    for arch in args.arch:
        for b in args.batch:
            r = {"host": host, "date": date, **measure(arch, args.quant_scheme, args.input_size, b)}
            print(f"{arch} b{b}: reference {r['reference_ms']} ms/image, int64 products {r['int64_ms']} ms/image "
                  f"({r['speedup']}x), same integers: {r['same']}", flush=True)
            rows.append(r)
    os.makedirs(args.out_dir, exist_ok=True)
    write_text_atomic(os.path.join(args.out_dir, "reference.csv"), rows_csv(rows, FIELDS))
    cmd = (f"python -m hawq.benchmarks.reference -a {' '.join(args.arch)} --quant-scheme {args.quant_scheme} "
           f"-b {' '.join(map(str, args.batch))} --input-size {args.input_size}")
    lines = ["# NumPy integer reference: speed per image", "",
             f"`{cmd}` on {host}, {date}; {torch.get_num_threads()} threads. `reference_ms`: the reference as "
             "`verify` runs it (float32 BLAS slices, float64, int64 by the proven bounds); `int64_ms`: the same "
             "graph with every product in int64; `same`: identical logits.", ""]
    lines += [warn, ""] if warn else []
    lines += markdown_table(rows, FIELDS[2:], text_fields=("arch", "scheme"))
    write_text_atomic(os.path.join(args.out_dir, "reference.md"), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
