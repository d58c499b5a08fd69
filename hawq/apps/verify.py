"""Bit-exactness check: the QAT model's eval (integer) path vs the integer reference executor.

    python -m hawq.verify --checkpoint runs/x/model_best.pth.tar [--artifact quantized_checkpoint.pth.tar]
    python -m hawq.verify --checkpoint hawq_run/checkpoint.pth.tar --quant-scheme uniform8 --data IMAGENET_DIR
    python -m hawq.verify -a mobilenetv2_w1 --quant-scheme uniform4 [--random]    # no checkpoint: calibrated

Without ``--checkpoint`` the model is built from ``-a``/``--quant-scheme`` (random weights, or
``--pretrained``) and calibrated on a few batches of the embedded data (``--random``: of random images,
and compared on random images too): :mod:`hawq.calibrated`.

Evaluates both on the validation set (or its first --limit images) and prints a table, then, as the
last line, ``mismatches: M/N`` where N is the number of output logits compared integer to integer.
Exit status 1 when M > 0.
"""
from __future__ import annotations

import argparse

import torch

from hawq import checkpoint as C
from hawq.apps.cli import (RECORDED_DATASET_HELP, add_arch_arg, add_data_args, add_input_size_arg,
                           add_quant_scheme_arg, console_script, one_line_errors, resolve_dataset,
                           resolve_input_size, run_main)
from hawq.data import build_loaders
from hawq.errors import HawqError
from hawq.export import artifact_of, export_integer
from hawq.models.restore import quant_model_from
from hawq.verify import compare

__all__ = ["cli", "add_calibration_args", "calibrated_inputs", "main"]


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """Flags of a check without a checkpoint (:mod:`hawq.calibrated`)."""
    g = p.add_argument_group("without --checkpoint (needs -a and --quant-scheme)")
    g.add_argument("--random", action="store_true",
                   help="calibrate on, and compare on, random images (no dataset needed)")
    g.add_argument("--pretrained", default=None, metavar="PATH", help="FP checkpoint to start from")
    g.add_argument("--numerics", default="exact", help="numeric profile: exact or hawq")
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


def _verify_calibrated(args) -> int:
    model, size, val, what = calibrated_inputs(args)
    art = export_integer(model, (3, size, size))
    r = compare(model, art["graph"], val, progress=not args.no_progress)
    w = max(18, len(model.arch) + 2)      # torchvision:NAME / file.py:FUNCTION specs are long
    print(f"{'arch':<{w}}{'scheme':<20}{'numerics':<10}{'inputs':<16}{'images':>8}")
    print(f"{model.arch:<{w}}{args.quant_scheme:<20}{model.config.numerics:<10}{what:<16}{r['images']:>8}")
    print(f"mismatches: {r['mismatches']}/{r['logits']}")
    return 1 if r["mismatches"] else 0


@one_line_errors
@torch.no_grad()          # not set_grad_enabled(False): callers in the same process keep autograd
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None,
                   help="QAT checkpoint (checkpoint.pth.tar / model_best.pth.tar), or HAWQ-V3's checkpoint.pth.tar "
                        "or quantized_checkpoint.pth.tar (these need --quant-scheme)")
    add_arch_arg(p, None, help="for HAWQ-V3 files that do not record it")
    add_quant_scheme_arg(p, help="for HAWQ-V3 files, which do not record their bit_config")
    p.add_argument("--artifact", default=None,
                   help="integer artifact to check (default: export one from the checkpoint in memory)")
    add_data_args(p, dataset_help=RECORDED_DATASET_HELP)
    add_calibration_args(p)
    add_input_size_arg(p, "the checkpoint's, else 224 with --data, 32 on the embedded dataset, 96 for inceptionv3")
    p.add_argument("--limit", type=int, default=None, help="first N validation images (default: all)")
    p.add_argument("-b", "--batch-size", type=int, default=200)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    if args.checkpoint is None:
        return _verify_calibrated(args)
    f = C.read(args.checkpoint)
    dataset = resolve_dataset(args.dataset, args.data, f.dataset or ("imagenet" if f.numerics_inferred else None))
    size = resolve_input_size(args.input_size, dataset, args.arch or f.arch, f.input_size)
    model, _ = quant_model_from(f, arch=args.arch, scheme=args.quant_scheme, input_size=size)
    if f.numerics_inferred:
        print(f"note: {f.describe()} records no numeric profile: evaluated under numerics {model.config.numerics}")
    data = build_loaders(dataset, args.data, args.batch_size, 0, 1.0, 0, eval_limit=args.limit,
                         input_size=size)
    if args.artifact:
        art = artifact_of(C.read(args.artifact))
        if art.get("arch") not in (None, model.arch):
            raise HawqError(f"artifact '{args.artifact}' is for {art.get('arch')}, checkpoint for {model.arch}")
    else:
        art = export_integer(model, (3, data.input_size, data.input_size))
    r = compare(model, art["graph"], data.val, progress=not args.no_progress)
    scheme = f.quant_scheme or args.quant_scheme
    w = max(18, len(model.arch) + 2)      # torchvision:NAME / file.py:FUNCTION specs are long
    print(f"{'arch':<{w}}{'scheme':<20}{'numerics':<10}{'images':>8}{'qat_top1':>10}{'ref_top1':>10}")
    print(f"{model.arch:<{w}}{str(scheme):<20}{model.config.numerics:<10}{r['images']:>8}"
          f"{r['qat_top1']:>10.2f}{r['ref_top1']:>10.2f}")
    print(f"mismatches: {r['mismatches']}/{r['logits']}")
    return 1 if r["mismatches"] else 0


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
