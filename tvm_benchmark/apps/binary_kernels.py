"""Binary (popcount) against 8-bit convolutions of the same shape, per ISA family, on this host.

    python -m tvm_benchmark.apps.binary_kernels [--isa amx vnni avx2] [--threads 2]

For each layer shape (3×3, stride 1, pad 1, batch 1: resnet18's stages at 224) and each family this
CPU runs: the median latency of the popcount kernel (:func:`tvm_benchmark.binary.compare_latency`,
packed padded input), of the activation packing, and of the 8-bit kernel the planner picks for that
family (uint8 activations, int8 weights in [−128, 127]: the general 8-bit conv; on avx2 also the ±1
weights themselves, for which the planner takes its faster small-weight kernel). Rows are appended
to ``results/binary_kernels.csv`` (with the host) and ``results/binary_kernels.md`` is rebuilt from
this host's rows.
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
from pathlib import Path

from hawq.apps.cli import one_line_errors, run_main
from hawq.fileio import rows_csv, write_text_atomic
from hawq.tables import markdown_table, run_context

__all__ = ["FIELDS", "LAYERS", "RESULTS", "main"]

FIELDS = ("host", "date", "family", "layer", "binary_us", "pack_us", "int8_kernel", "int8_weights", "int8_us",
          "ratio", "ratio_with_pack")
#: (input channels, output channels, side): resnet18's 3×3 convs at 224 by stage.
LAYERS = ((64, 64, 56), (128, 128, 28), (256, 256, 14), (512, 512, 7))
RESULTS = Path("results")


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    from tvm_benchmark import isa as I
    from tvm_benchmark.binary import compare_latency

    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m tvm_benchmark.apps.binary_kernels", description=__doc__.splitlines()[0])
    p.add_argument("--isa", nargs="+", default=None, choices=I.CHOICES,
                   help="families to time (default: amx, vnni and avx2, those this CPU runs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    families = args.isa or [n for n in ("amx", "vnni", "avx2") if I.ISAS[n].runs_on(I.cpu_flags())]
    for name in families:
        I.require_runnable(I.ISAS[name])
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    warn, host, day = run_context(args.threads)
    rows = []
    for c, o, hw in LAYERS:
        for name in families:
            for weights in ("int8", "pm1") if name == "avx2" else ("int8",):
                r = compare_latency(I.ISAS[name], c, o, hw, threads=args.threads, int8_weights=weights)
                rows.append({"host": host, "date": day, "family": name, "layer": f"3x3 {c}->{o} {hw}x{hw}",
                             "binary_us": round(r["binary_us"], 1), "pack_us": round(r["pack_us"], 1),
                             "int8_kernel": r["int8_kernel"], "int8_weights": "±1" if weights == "pm1" else "int8",
                             "int8_us": round(r["int8_us"], 1), "ratio": round(r["ratio"], 2),
                             "ratio_with_pack": round(r["ratio_with_pack"], 2)})
                print(" ".join(f"{k}={v}" for k, v in rows[-1].items() if k not in ("host", "date")), flush=True)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "binary_kernels.csv"
    old = list(csv.DictReader(path.open())) if path.exists() else []
    write_text_atomic(path, rows_csv(old + rows, FIELDS))
    mine = [r for r in old + rows if r["host"] == host]
    cmd = "python -m tvm_benchmark.apps.binary_kernels " + shlex.join(argv)
    md = ["# Binary (popcount) vs 8-bit convolutions", "", f"Command: `{cmd}`", "", f"Host: {host}; {args.threads} threads.",
          *([warn] if warn else []), "",
          *markdown_table(mine, [f for f in FIELDS if f != "host"], text_fields=("date", "family", "layer", "int8_kernel", "int8_weights")),
          "", "Median µs of one call, batch 1; `ratio` = 8-bit / binary, `ratio_with_pack` counts the sign-bit "
          "packing too (in a program it runs in the producer's kernel). Why about 3× against `vpdpbusd` is the "
          "ceiling: [docs/tvm.md](../docs/tvm.md).", ""]
    write_text_atomic(out / "binary_kernels.md", "\n".join(md))
    return 0


if __name__ == "__main__":
    run_main(main)
