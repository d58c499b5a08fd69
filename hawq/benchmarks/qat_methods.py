"""Quantizer × scheme table: one QAT run per (--quantizer, --quant-scheme) with the same recipe.

    python -m hawq.qat_methods --pretrained checkpoints/resnet20_cifar10_fp32.pth.tar \\
        --quant-scheme uniform8 uniform4 --quantizer minmax lsq pact dorefa --epochs 1 --kd

Each run is ``quant_train.py`` itself (in-process, :func:`hawq.train.run`) from the same FP
checkpoint, saved under ``--runs DIR/<scheme>_<quantizer>``; its top-1 is the integer eval path on the
validation set (the full 10k Fashion-MNIST test set by default). Writes ``OUT_DIR/qat_methods.csv``
(``host,arch,scheme,quantizer,epochs,lr,kd,top1,fp_top1,delta``) and ``qat_methods.md``, both naming
the host and the command. The learning rate per scheme is ``--lr`` or, when 4-bit, ``--lr4``.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
import socket
import sys

from tqdm import tqdm

from hawq import checkpoint as C
from hawq.apps.cli import add_arch_arg, one_line_errors, run_main
from hawq.errors import HawqError
from hawq.fileio import write_text_atomic
from hawq.quant.learned import METHODS
from hawq.tables import cpu_summary, markdown_table

__all__ = ["FIELDS", "build_parser", "main"]

FIELDS = ("host", "arch", "scheme", "quantizer", "epochs", "lr", "kd", "top1", "fp_top1", "delta")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hawq.qat_methods", description=__doc__.splitlines()[0])
    add_arch_arg(p)
    p.add_argument("--pretrained", required=True, metavar="PATH", help="the FP checkpoint every run starts from")
    p.add_argument("--quant-scheme", nargs="+", default=["uniform8", "uniform4"])
    p.add_argument("--quantizer", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.001, help="learning rate of 8-bit schemes (default 0.001)")
    p.add_argument("--lr4", type=float, default=0.005, help="learning rate of schemes with 4-bit layers (default 0.005)")
    p.add_argument("--kd", action="store_true", help="distil from the FP checkpoint (KD_naive)")
    p.add_argument("--data-percentage", type=float, default=1.0)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--runs", default="runs/qat_methods", help="where each run's checkpoints go")
    p.add_argument("--out-dir", default="results")
    p.add_argument("--no-progress", action="store_true")
    return p


def _train_args(args, scheme: str, method: str, lr: float) -> list[str]:
    argv = ["-a", args.arch, "--quant-scheme", scheme, "--quantizer", method, "--pretrained", args.pretrained,
            "--fix-BN", "--epochs", str(args.epochs), "--lr", f"{lr:g}", "--lr-schedule", "cosine",
            "--data-percentage", f"{args.data_percentage:g}", "--save-path", os.path.join(args.runs, f"{scheme}_{method}"),
            "--no-progress"]
    if args.eval_limit:
        argv += ["--eval-limit", str(args.eval_limit)]
    if args.kd:
        argv += ["--distill-method", "KD_naive", "--teacher-arch", args.arch, "--teacher-pretrained", args.pretrained]
    return argv


@one_line_errors
def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from hawq.bit_config import load_scheme
    from hawq.apps.train import run

    fp = C.read(args.pretrained)
    if fp.kind is not C.Kind.FP:
        raise HawqError(f"{fp.describe()} is not a floating-point checkpoint")
    bits = {s: load_scheme(args.arch, s) for s in args.quant_scheme}
    fp_top1 = run(["-a", args.arch, "--quant-scheme", "fp32", "--resume", args.pretrained, "-e", "--no-progress",
                   *(["--eval-limit", str(args.eval_limit)] if args.eval_limit else [])])["top1"]
    host = f"{socket.gethostname()} ({cpu_summary()})"
    rows = []
    plan = [(s, m) for s in args.quant_scheme for m in args.quantizer]
    for scheme, method in tqdm(plan, desc="qat methods", disable=args.no_progress, dynamic_ncols=True):
        lr = args.lr4 if min(bits[scheme].values()) < 8 else args.lr
        res = run(_train_args(args, scheme, method, lr))
        rows.append({"host": host, "arch": args.arch, "scheme": scheme, "quantizer": method, "epochs": args.epochs,
                     "lr": f"{lr:g}", "kd": "yes" if args.kd else "no", "top1": f"{res['top1']:.2f}",
                     "fp_top1": f"{fp_top1:.2f}", "delta": f"{res['top1'] - fp_top1:+.2f}"})
    os.makedirs(args.out_dir, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(os.path.join(args.out_dir, "qat_methods.csv"), buf.getvalue())
    cmd = "python -m hawq.qat_methods " + shlex.join(argv)
    shown = [f for f in FIELDS if f != "host"]
    md = "\n".join(["# QAT quantizers × schemes", "", f"Command: `{cmd}`", "", f"Host: {host}", "",
                    *markdown_table(rows, shown, text_fields=("arch", "scheme", "quantizer", "kd")), "",
                    f"Each row: `quant_train.py` from the FP checkpoint (top-1 {fp_top1:.2f}), `--fix-BN`, cosine schedule, "
                    "top-1 of the integer eval path (bit-exact with the reference and TVM).", ""])
    write_text_atomic(os.path.join(args.out_dir, "qat_methods.md"), md)
    print(md, end="")
    return rows


if __name__ == "__main__":
    run_main(main)
