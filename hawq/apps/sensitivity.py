"""``python -m hawq.sensitivity``: per-layer Hessian traces and 4/8-bit weight errors of an FP model,
written as the CSV ``hawq.mpq`` reads (the method: :mod:`hawq.sensitivity`).

    python -m hawq.sensitivity -a resnet20_cifar10 --pretrained checkpoints/resnet20_cifar10_fp32.pth.tar \
        --out sens.csv [--data DIR] [-b 64] [--batches 1] [--tol 0.1] [--max-iter 100] [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from hawq.apps.cli import (add_arch_arg, add_data_args, add_input_size_arg, console_script, one_line_errors,
                           resolve_dataset, resolve_input_size, run_main)
from hawq.data import build_loaders
from hawq.errors import HawqError
from hawq.fileio import rows_csv, write_text_atomic
from hawq.models.factory import fp_model_pretrained
from hawq.sensitivity import CSV_FIELDS, batches_of, layer_sensitivity

__all__ = ["cli", "build_parser", "main"]

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hawq.sensitivity",
                                description="Per-layer Hessian trace (Hutchinson) and quantization "
                                            "perturbation for 4/8-bit weights; writes a CSV for hawq.mpq.")
    a = p.add_argument
    add_arch_arg(p)
    add_data_args(p, data_help="as quant_train.py (default: the embedded Fashion-MNIST)")
    add_input_size_arg(p)
    a("--pretrained", nargs="?", const=True, default=False, metavar="PATH",
      help="pytorchcv ImageNet weights, or our floating-point checkpoint at PATH (as quant_train.py)")
    a("-b", "--batch-size", type=int, default=64)
    a("--batches", type=int, default=1, help="training batches in the loss (default: 1)")
    a("--tol", type=float, default=0.1,
      help="stop when every layer's relative standard error is <= TOL (default: 0.1)")
    a("--max-iter", type=int, default=100, help="most Hutchinson probes (default: 100)")
    a("--seed", type=int, default=0, help="seeds the probes and the training-set order")
    a("--channel-wise", action=argparse.BooleanOptionalAction, default=True,
      help="per-output-channel weight scales, as quant_train.py (default on)")
    a("--weight-percentile", type=float, default=0.0, help="as quant_train.py (0 = max)")
    a("-j", "--workers", type=int, default=4, help="data loading workers (ImageFolder only)")
    a("--out", required=True, help="output CSV")
    a("--no-progress", action="store_true")
    return p


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@one_line_errors
def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    args = build_parser().parse_args(argv)
    if args.batches < 1 or args.batch_size < 1 or args.max_iter < 1:
        raise HawqError("--batches, --batch-size and --max-iter must be >= 1")
    if not args.tol > 0:
        raise HawqError(f"--tol must be > 0, got {args.tol}")
    dataset = resolve_dataset(args.dataset, args.data)
    size = resolve_input_size(args.input_size, dataset, args.arch)
    data = build_loaders(dataset, args.data, args.batch_size, args.workers, 1.0, args.seed,
                         input_size=size)
    torch.manual_seed(args.seed)
    model = fp_model_pretrained(args.arch, data.num_classes, args.pretrained).to(_device())
    if not args.pretrained:
        print("warning: no --pretrained: the sensitivity of a randomly initialized model", file=sys.stderr)
    t0 = time.time()
    rows = layer_sensitivity(model, args.arch, batches_of(data.train, args.batches), tol=args.tol,
                             max_iter=args.max_iter, seed=args.seed, per_channel=args.channel_wise,
                             percentile=args.weight_percentile, progress=not args.no_progress)
    write_text_atomic(args.out, rows_csv(rows, CSV_FIELDS))
    worst = max(float(r["rel_err"]) for r in rows)
    print(f"{args.arch}: {len(rows)} layers, {rows[0]['iters']} probes, max rel_err {worst:.3g}, "
          f"{time.time() - t0:.0f} s -> {args.out}")
    return rows


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
