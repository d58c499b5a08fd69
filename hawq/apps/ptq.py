"""``python -m hawq.ptq``: post-training quantization of an FP checkpoint into a quantized
checkpoint (``checkpoint.pth.tar``, the format quant_train.py writes) and its integer artifact
(``quantized_checkpoint.pth.tar``) in ``--save-path``."""
from __future__ import annotations

import argparse
import json
import os

import torch

from hawq import checkpoint as C
from hawq import engine
from hawq.bit_config import load_scheme
from hawq.apps.cli import (add_arch_arg, add_data_args, add_input_size_arg, add_quant_scheme_arg, console_script,
                           one_line_errors, resolve_dataset, resolve_input_size, run_main)
from hawq.data import build_loaders, calibration_images
from hawq.errors import HawqError
from hawq.export import export_integer, save_artifact
from hawq.models.factory import check_arch, fp_model, quant_model
from hawq.numerics import PROFILES
from hawq.ptq.observers import ACT_OBSERVERS
from hawq.ptq.pipeline import BITS, PTQSettings, quantize, scheme_bits, scheme_label
from hawq.ptq.recon import RECON_METHODS, ReconSettings
from hawq.ptq.weights import BN_FOLD, WEIGHT_QUANTIZERS
from hawq.quant.config import QuantConfig

__all__ = ["cli", "build_parser", "settings_of", "main"]

_R = ReconSettings()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hawq.ptq", description=__doc__.splitlines()[0].strip("`: "))
    a = p.add_argument
    add_arch_arg(p)
    add_data_args(p)
    add_input_size_arg(p, "the FP checkpoint's, else 224 with --data, 32 on the embedded dataset, 96 for inceptionv3")
    a("--pretrained", required=True, metavar="FP_CKPT", help="floating-point checkpoint to quantize")
    a("--w-bits", type=int, default=None, choices=list(BITS), help="weight bits (default 8)")
    a("--a-bits", type=int, default=None, choices=list(BITS), help="activation bits (default 8)")
    add_quant_scheme_arg(p, help="per-layer bit_config (name or JSON) instead of --w-bits/--a-bits")
    a("--first-last-8bit", action="store_true",
      help="keep the first conv, the last linear, the input and pooled features at 8 bits")
    a("--w-observer", default="minmax", choices=WEIGHT_QUANTIZERS, help="weight quantizer")
    a("--a-observer", default="emaminmax", choices=ACT_OBSERVERS, help="activation observer (MQBench)")
    a("--channel-wise", action=argparse.BooleanOptionalAction, default=True,
      help="per-output-channel weight scales (--no-channel-wise: one per layer)")
    a("--bn-fold", default="before", choices=BN_FOLD, help="fold BN before or after choosing the weight grid")
    a("--recon", default="none", choices=RECON_METHODS, help="rounding reconstruction")
    a("--iters", type=int, default=_R.iters, help="reconstruction iterations per layer or block")
    a("--recon-batch", type=int, default=_R.batch, help="images per reconstruction step")
    a("--recon-lr", type=float, default=_R.lr, help="Adam learning rate of the rounding variables")
    a("--reg-weight", type=float, default=_R.reg_weight, help="weight of AdaRound's rounding regularizer")
    a("--drop-prob", type=float, default=_R.drop_prob, help="QDrop: probability of leaving an activation unquantized")
    a("--calib-size", type=int, default=1024, help="training images for calibration and reconstruction")
    a("--numerics", default="exact", choices=list(PROFILES), help="numeric profile")
    a("--seed", type=int, default=0)
    a("--save-path", default="runs/ptq/", help="where the checkpoint and the integer artifact go")
    a("-b", "--batch-size", type=int, default=128, help="evaluation batch size")
    a("--eval-limit", type=int, default=None, help="evaluate on the first N validation images only")
    a("--no-progress", action="store_true")
    return p


def _check(args) -> None:
    if args.quant_scheme and (args.w_bits is not None or args.a_bits is not None):
        raise HawqError("give --quant-scheme or --w-bits/--a-bits, not both")
    if args.iters < 1 or args.recon_batch < 1 or args.calib_size < 1:
        raise HawqError("--iters, --recon-batch and --calib-size must be >= 1")
    if not 0.0 <= args.drop_prob < 1.0:
        raise HawqError(f"--drop-prob must be in [0, 1), got {args.drop_prob}")
    if os.path.exists(args.save_path) and not os.path.isdir(args.save_path):
        raise HawqError(f"--save-path '{args.save_path}' exists and is not a directory")


def settings_of(args) -> PTQSettings:
    recon = ReconSettings(method=args.recon, iters=args.iters, batch=args.recon_batch, lr=args.recon_lr,
                          reg_weight=args.reg_weight, drop_prob=args.drop_prob)
    return PTQSettings(w_observer=args.w_observer, a_observer=args.a_observer, per_channel=args.channel_wise,
                       bn_fold=args.bn_fold, recon=recon)


def _fp_file(args) -> C.ModelFile:
    f = C.read(args.pretrained)
    if f.quantized:
        raise HawqError(f"--pretrained {f.describe()} is already quantized; post-training quantization "
                        "starts from a floating-point checkpoint")
    check_arch(f, args.arch)
    return f


@one_line_errors
def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    _check(args)
    args.dataset = resolve_dataset(args.dataset, args.data)
    torch.manual_seed(args.seed)
    f = _fp_file(args)
    if args.quant_scheme:
        bits, label = load_scheme(args.arch, args.quant_scheme), args.quant_scheme
    else:
        w, a = args.w_bits or 8, args.a_bits or 8
        bits, label = scheme_bits(args.arch, w, a, args.first_last_8bit), scheme_label(w, a, args.first_last_8bit)
    settings = settings_of(args)
    size = resolve_input_size(args.input_size, args.dataset, args.arch, f.input_size)
    data = build_loaders(args.dataset, args.data, args.batch_size, 0, 1.0, args.seed,
                         eval_limit=args.eval_limit, input_size=size)
    if f.num_classes is not None and f.num_classes != data.num_classes:
        raise HawqError(f"{f.describe()} has {f.num_classes} classes, the dataset {data.num_classes}")
    images = calibration_images(args.dataset, args.data, args.calib_size, args.seed, input_size=size)
    config = QuantConfig(numerics=args.numerics, per_channel=args.channel_wise, fix_BN=True)
    model = quant_model(args.arch, bits, data.num_classes, fp=fp_model(args.arch, data.num_classes, weights=f),
                        config=config, input_size=size)
    report = quantize(model, images, settings, seed=args.seed, progress=not args.no_progress)
    print(f"calibration ({settings.a_observer} / {settings.w_observer}, {args.calib_size} images): "
          f"{report.calib_seconds:.1f}s; reconstruction ({settings.recon.method}): {report.recon_seconds:.1f}s")
    res = engine.evaluate(model, data.val, "cpu", progress=not args.no_progress)
    ptq = {"w_observer": settings.w_observer, "a_observer": settings.a_observer, "per_channel": settings.per_channel,
           "bn_fold": settings.bn_fold, "recon": settings.recon.method, "iters": settings.recon.iters,
           "recon_batch": settings.recon.batch, "recon_lr": settings.recon.lr, "reg_weight": settings.recon.reg_weight,
           "drop_prob": settings.recon.drop_prob, "calib_size": args.calib_size, "seed": args.seed,
           "pretrained": args.pretrained, "calib_seconds": round(report.calib_seconds, 2),
           "recon_seconds": round(report.recon_seconds, 2)}
    state = C.checkpoint_state(model, arch=args.arch, quant_scheme=label, num_classes=data.num_classes,
                               dataset=args.dataset, input_size=size, bit_config=bits, config=config,
                               best_acc1=res["top1"], ptq=ptq)
    os.makedirs(args.save_path, exist_ok=True)
    ckpt = os.path.join(args.save_path, "checkpoint.pth.tar")
    C.save_atomic(state, ckpt)
    art_path = os.path.join(args.save_path, "quantized_checkpoint.pth.tar")
    save_artifact(export_integer(model, (3, data.input_size, data.input_size),
                                 meta={"arch": args.arch, "quant_scheme": label, "top1": res["top1"],
                                       "dataset": args.dataset}), art_path)
    print(f"{args.arch} {label} PTQ ({settings.recon.method}) eval on {res['n']} images: "
          f"top1 {res['top1']:.2f}  top5 {res['top5']:.2f}")
    print(f"wrote {ckpt} and {art_path}; check it with: python -m tvm_benchmark.verify --checkpoint {ckpt}")
    return {"top1": res["top1"], "n": res["n"], "checkpoint": ckpt, "artifact": art_path, "ptq": ptq,
            "units": report.units}


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
