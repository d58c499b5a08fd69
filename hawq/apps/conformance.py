"""``python -m hawq.conformance DIR [DIR ...]``: compare our integers with HAWQ-V3's original code's,
layer by layer, on the fixtures ``../shared/hawq_ref/make_ref.py`` writes (:mod:`hawq.conformance`)."""
from __future__ import annotations

import argparse

import torch

from hawq.apps.cli import one_line_errors, run_main
from hawq.conformance import compare_fixture, format_result

__all__ = ["main"]

@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+", help="make_ref.py output directories (<arch>_<scheme>/)")
    p.add_argument("--per-layer", action="store_true", help="print every QuantAct's row")
    p.add_argument("--numerics", default=None, help="evaluate under this profile (default: inferred, hawq)")
    p.add_argument("--file", default="checkpoint.pth.tar",
                   help="HAWQ file in each DIR to evaluate (checkpoint.pth.tar or quantized_checkpoint.pth.tar)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    bad = 0
    for d in args.dirs:
        r = compare_fixture(d, args.numerics, args.file)
        print(format_result(r, args.per_layer))
        failed = [L.name for L in r.layers if not L.conformant]
        if failed or r.top1_equal != r.images:
            what = (f"{len(failed)} layers, first {', '.join(failed[:3])}" if failed else "top-1 differs")
            print(f"NOT CONFORMANT: {what}")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    run_main(main)
