"""Plumbing shared by the bit-exactness programs (``hawq.verify``, ``tvm_benchmark.verify``): the
flags and inputs of a check without a checkpoint, and the per-layer table."""
from __future__ import annotations

import argparse

from hawq.data import build_loaders
from hawq.errors import HawqError
from hawq.apps.cli import resolve_input_size

__all__ = ["add_calibration_args", "calibrated_inputs", "print_layers"]


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """Flags of a check without a checkpoint (:mod:`hawq.calibrated`)."""
    g = p.add_argument_group("without --checkpoint (needs -a and --quant-scheme)")
    g.add_argument("--random", action="store_true",
                   help="calibrate on, and compare on, random images (no dataset needed)")
    g.add_argument("--pretrained", default=None, metavar="PATH", help="FP checkpoint to start from")
    g.add_argument("--numerics", default="exact", help="numeric profile: exact, hawq or ort")
    g.add_argument("--calib-batches", type=int, default=4, help="calibration batches of 16 images")


def calibrated_inputs(args):
    """(model, input side, val loader, label) for a check without a checkpoint."""
    from hawq.calibrated import calibrated_model, random_batches
    if args.arch is None or args.quant_scheme is None:
        raise HawqError("without --checkpoint, give -a ARCH and --quant-scheme SCHEME")
    if args.calib_batches < 1:
        raise HawqError(f"--calib-batches must be >= 1, got {args.calib_batches}")
    size = resolve_input_size(args.input_size, "fashion-mnist", args.arch)
    model, size = calibrated_model(args.arch, args.quant_scheme, pretrained=args.pretrained, random=args.random,
                                   batches=args.calib_batches, numerics=args.numerics, data=args.data, input_size=size)
    limit = args.limit or (16 if args.random else 200)
    if args.random:
        val = list(random_batches(size, limit, args.batch_size))
    else:
        val = build_loaders("fashion-mnist", args.data, args.batch_size, 0, 1.0, 0, eval_limit=limit,
                            input_size=size).val
    return model, size, val, "random images" if args.random else "fashion-mnist"


def print_layers(rows: list[dict]) -> str | None:
    """Print :func:`hawq.verify.compare_layers`'s rows as a table and the first divergence; return
    the first diverging node's name (None when every node matches)."""
    w = max([40, *(len(r["node"]) + 2 for r in rows)])
    print(f"{'node':<{w}}{'op':<20}{'values':>10}{'mismatches':>12}{'max|diff|':>11}")
    for r in rows:
        diff = "fused" if r.get("fused") else r["max_abs_diff"]
        print(f"{r['node']:<{w}}{r['op']:<20}{r['values']:>10}{r['mismatches']:>12}{diff:>11}")
    first = next((r for r in rows if r["mismatches"]), None)
    if first:
        print(f"first divergence: {first['node']} ({first['op']}, output {first['output']}): "
              f"{first['mismatches']}/{first['values']} values differ")
    else:
        print("first divergence: none")
    return first and first["node"]
