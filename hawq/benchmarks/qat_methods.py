"""Quantizer × scheme table: one QAT run per (--quantizer, --quant-scheme) with the same recipe.

    python -m hawq.qat_methods --pretrained checkpoints/resnet20_cifar10_fp32.pth.tar \\
        --quant-scheme uniform8 uniform4 --quantizer minmax lsq pact dorefa --epochs 1 --kd
    python -m hawq.qat_methods -a hawq:bireal_resnet20 --pretrained FP.pth.tar --quant-scheme binary \\
        --quantizer xnor bireal --optimizer adam --lr1 0.001 --wd 0 --train-bn --verify 1000 --name binary

Each run is ``quant_train.py`` itself (in-process, :func:`hawq.train.run`) from the same FP
checkpoint, saved under ``--runs DIR/<scheme>_<quantizer>``; its top-1 is the integer eval path on the
validation set (the full 10k Fashion-MNIST test set by default). Writes ``OUT_DIR/NAME.csv``
(:data:`FIELDS`; ``a_w``: activation/weight bits of the scheme's binary or uniform layers, as QTool's
tables give them) and ``NAME.md`` (``--name``, default ``qat_methods``), both naming the host and the
command. The learning rate per scheme is ``--lr``, when a layer is below 8 bits ``--lr4``, when a
layer is 1-bit ``--lr1``. ``--verify N``: each run's integer program against the NumPy reference on
the first N validation images, run by the QAT model's eval path and by TVM (llvm, this CPU's kernel
family); ``mismatches`` counts differing logits of both.
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
from hawq.engine import OPTIMIZERS
from hawq.models.archs import input_size_of
from hawq.quant.learned import LSQ_INITS, METHODS
from hawq.tables import cpu_summary, markdown_table

__all__ = ["FIELDS", "build_parser", "a_w", "main"]

FIELDS = ("host", "arch", "scheme", "a_w", "quantizer", "epochs", "lr", "kd", "top1", "fp_top1", "delta", "mismatches")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hawq.qat_methods", description=__doc__.splitlines()[0])
    add_arch_arg(p)
    p.add_argument("--pretrained", required=True, metavar="PATH", help="the FP checkpoint every run starts from")
    p.add_argument("--quant-scheme", nargs="+", default=["uniform8", "uniform4"])
    p.add_argument("--quantizer", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.001, help="learning rate of 8-bit schemes (default 0.001)")
    p.add_argument("--lr4", type=float, default=0.005, help="learning rate of schemes with 4-bit layers (default 0.005)")
    p.add_argument("--lr1", type=float, default=0.001, help="learning rate of schemes with 1-bit layers (default 0.001)")
    p.add_argument("--optimizer", default="sgd", choices=list(OPTIMIZERS), help="quant_train.py's --optimizer")
    p.add_argument("--lsq-init", default=None, choices=list(LSQ_INITS), help="quant_train.py's --lsq-init")
    p.add_argument("--wd", type=float, default=None, help="quant_train.py's --wd (default: its own)")
    p.add_argument("--train-bn", action="store_true",
                   help="train BN on batch statistics (binary networks) instead of quant_train.py's --fix-BN")
    p.add_argument("--verify", type=int, default=0, metavar="N",
                   help="check each run's integer program (QAT eval and TVM vs the reference) on N images")
    p.add_argument("--name", default="qat_methods", help="stem of the CSV and markdown files")
    p.add_argument("--kd", action="store_true", help="distil from the FP checkpoint (KD_naive)")
    p.add_argument("--data-percentage", type=float, default=1.0)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--runs", default="runs/qat_methods", help="where each run's checkpoints go")
    p.add_argument("--out-dir", default="results")
    p.add_argument("--no-progress", action="store_true")
    return p


def _train_args(args, scheme: str, method: str, lr: float) -> list[str]:
    argv = ["-a", args.arch, "--quant-scheme", scheme, "--quantizer", method, "--pretrained", args.pretrained,
            "--epochs", str(args.epochs), "--lr", f"{lr:g}", "--lr-schedule", "cosine", "--optimizer", args.optimizer,
            "--data-percentage", f"{args.data_percentage:g}", "--save-path", os.path.join(args.runs, f"{scheme}_{method}"),
            "--no-progress", *([] if args.train_bn else ["--fix-BN"])]
    if args.wd is not None:
        argv += ["--wd", f"{args.wd:g}"]
    if args.lsq_init and method == "lsq":
        argv += ["--lsq-init", args.lsq_init]
    if args.eval_limit:
        argv += ["--eval-limit", str(args.eval_limit)]
    if args.kd:
        argv += ["--distill-method", "KD_naive", "--teacher-arch", args.arch, "--teacher-pretrained", args.pretrained]
    return argv


def a_w(arch: str, bits: dict[str, int]) -> str:
    """QTool's "A/W" of a scheme: the narrowest activation and weight widths of ``arch``'s layers."""
    from hawq.models.layers import WEIGHT_KINDS, quant_layers
    specs = quant_layers(arch)
    acts = min(bits[s.name] for s in specs if s.kind == "act")
    weights = min(bits[s.name] for s in specs if s.kind in WEIGHT_KINDS)
    return f"{acts}/{weights}"


def _family() -> str:
    from tvm_benchmark.isa import detect
    isa = detect()
    return isa.name if isa else "generic"


def _mismatches(model, args, input_size: int) -> str:
    """Differing logits of (QAT eval, TVM) against the reference on the first ``--verify`` images."""
    import tvm
    from hawq.data import build_loaders
    from hawq.export import export_integer
    from hawq.verify import compare, compare_with_reference
    from tvm_benchmark.compile import compile_program
    from tvm_benchmark.runtime import Runner

    model = model.cpu().eval()
    data = build_loaders("fashion-mnist", None, 100, 0, 1.0, 0, eval_limit=args.verify, input_size=input_size)
    graph = export_integer(model, (3, input_size, input_size))["graph"]
    qat = compare(model, graph, data.val, progress=False)["mismatches"]
    built = compile_program(graph, (100, 3, input_size, input_size), "llvm")
    runner = Runner(built.executable, tvm.cpu(), 100, isa=built.isa_name)
    tvm_m = compare_with_reference(runner, graph, data.val, "tvm", progress=False)["mismatches"]
    return str(qat + tvm_m)


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
    # a checkpoint from before input sizes were recorded trained at the dataset's default
    size = input_size_of("fashion-mnist", args.arch, fp.input_size)
    for scheme, method in tqdm(plan, desc="qat methods", disable=args.no_progress, dynamic_ncols=True):
        low = min(bits[scheme].values())
        lr = args.lr1 if low == 1 else args.lr4 if low < 8 else args.lr
        res = run(_train_args(args, scheme, method, lr))
        mismatches = _mismatches(res["model"], args, size) if args.verify else ""
        rows.append({"host": host, "arch": args.arch, "scheme": scheme, "a_w": a_w(args.arch, bits[scheme]), "quantizer": method,
                     "epochs": args.epochs, "lr": f"{lr:g}", "kd": "yes" if args.kd else "no",
                     "top1": f"{res['top1']:.2f}", "fp_top1": f"{fp_top1:.2f}", "delta": f"{res['top1'] - fp_top1:+.2f}",
                     "mismatches": mismatches})
    os.makedirs(args.out_dir, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(os.path.join(args.out_dir, f"{args.name}.csv"), buf.getvalue())
    cmd = "python -m hawq.qat_methods " + shlex.join(argv)
    shown = [f for f in FIELDS if f != "host" and (args.verify or f != "mismatches")]
    md = "\n".join(["# QAT quantizers × schemes", "", f"Command: `{cmd}`", "", f"Host: {host}", "",
                    *markdown_table(rows, shown, text_fields=("arch", "scheme", "a_w", "quantizer", "kd")), "",
                    f"Each row: `quant_train.py` from the FP checkpoint (top-1 {fp_top1:.2f}), "
                    f"{'BN trained on batch statistics' if args.train_bn else '`--fix-BN`'}, {args.optimizer}, cosine "
                    "schedule, top-1 of the integer eval path (bit-exact with the reference and TVM)"
                    + (f"; `mismatches`: logits of the QAT eval path and of TVM (llvm, {_family()}) that differ "
                       f"from the NumPy reference on the first {args.verify} validation images." if args.verify else "."),
                    ""])
    write_text_atomic(os.path.join(args.out_dir, f"{args.name}.md"), md)
    print(md, end="")
    return rows


if __name__ == "__main__":
    run_main(main)
