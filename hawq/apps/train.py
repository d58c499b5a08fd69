"""The quant_train.py job: argument parsing (HAWQ-V3's flag set) and the run itself.

Order of work: validate every input (arch, scheme, data, checkpoints) before anything is written,
then train / evaluate, writing ``checkpoint.pth.tar``, ``model_best.pth.tar``, ``log.csv`` and, for
quantized models, the integer artifact ``quantized_checkpoint.pth.tar`` into ``--save-path``.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from hawq import checkpoint as C
from hawq import engine
from hawq.bit_config import load_scheme
from hawq.apps.cli import (add_arch_arg, add_data_args, add_input_size_arg, add_quant_scheme_arg, arch_name,
                           console_script, one_line_errors, resolve_dataset, resolve_input_size, run_main)
from hawq.data import build_loaders
from hawq.errors import HawqError
from hawq.export import export_integer, save_artifact
from hawq.models.factory import check_arch, fp_model, fp_model_pretrained, quant_model, zero_init_residual
from hawq.models.restore import quant_model_from
from hawq.numerics import PROFILES
from hawq.quant.config import QuantConfig
from hawq.quant.learned import METHODS
from hawq import distributed

__all__ = ["cli", "FP_SCHEME", "build_parser", "resolve_recipe", "quant_config", "build_model", "load_resume",
           "restore_training_state", "main", "run"]

FP_SCHEME = "fp32"
#: Default learning rates at batch 128 (scaled linearly with -b): training from scratch, fine-tuning.
SCRATCH_LR, FINETUNE_LR = 0.1, 0.002
#: Flag defaults are QuantConfig's (the one place they are stated).
_Q = QuantConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Integer-only quantization-aware training (HAWQ-V3 flags).")
    a = p.add_argument
    add_data_args(p, data_help="ImageFolder root with train/ and val/ (implies --dataset imagenet), or, with "
                               "--dataset fashion-mnist, a directory of the four IDX files; default: the embedded "
                               "Fashion-MNIST; unreadable images are skipped, with one warning line per pass")
    add_arch_arg(p, help="model architecture: a pytorchcv name, or any CNN as torchvision:NAME, timm:NAME or "
                         "path/to/file.py:FUNCTION (captured with torch.fx)")
    add_input_size_arg(p, "the --resume checkpoint's, else 224 with --data, 32 on the embedded dataset, "
                          "96 for inceptionv3")
    a("--teacher-arch", default="resnet101", type=arch_name, help="teacher for --distill-method KD_naive")
    a("--teacher-pretrained", default=None, metavar="PATH",
      help="floating-point checkpoint for the teacher (default: pytorchcv ImageNet weights)")
    a("-j", "--workers", default=4, type=int, help="data loading workers (ImageFolder only)")
    a("--epochs", default=None, type=int,
      help="default: the recipe's (README, 'Default recipes'): 90 on ImageNet (HAWQ's); on the embedded "
           "dataset 6 from scratch, 2 when fine-tuning (--pretrained / --resume)")
    a("--start-epoch", default=0, type=int)
    a("-b", "--batch-size", default=128, type=int,
      help="global mini-batch size, split over torchrun's processes (HAWQ's default of 1 is not kept)")
    a("--lr", "--learning-rate", default=None, type=float, dest="lr",
      help=f"default: {SCRATCH_LR} x b/128 from scratch, {FINETUNE_LR} x b/128 when fine-tuning")
    a("--lr-schedule", default=None, choices=["step", "cosine", "constant"],
      help="step = HAWQ's x0.1 every 30 epochs; default: step on ImageNet, cosine on the embedded dataset")
    a("--warmup-epochs", default=None, type=float,
      help="linear learning-rate warm-up, per step (default: 1 epoch from scratch, 0 when fine-tuning)")
    a("--quantizer", default=None, choices=list(METHODS),
      help="minmax (ranges), lsq (learned steps), pact (learned activation clips), dorefa (tanh weight "
           "transform); default: the --resume checkpoint's, else minmax")
    a("--momentum", default=0.9, type=float)
    a("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay")
    a("-p", "--print-freq", default=10, type=int, help="accepted for HAWQ compatibility (tqdm shows progress)")
    a("--resume", default="", metavar="PATH", help="checkpoint to resume from / evaluate")
    a("-e", "--evaluate", action="store_true", help="evaluate on the validation set and exit")
    a("--pretrained", nargs="?", const=True, default=False, metavar="PATH",
      help="start from pytorchcv ImageNet weights, or from our floating-point checkpoint at PATH")
    a("--seed", default=0, type=int)
    a("--gpu", default=None, type=int, help="CUDA device index (default: cuda:0 when available, else CPU)")
    a("--act-range-momentum", default=_Q.act_range_momentum, type=float,
      help="EMA momentum of activation ranges; -1 = running min/max")
    a("--quant-mode", default="symmetric", choices=["symmetric", "asymmetric"],
      help="accepted for HAWQ compatibility; grids follow the numeric profile (--numerics)")
    a("--numerics", default=None, choices=list(PROFILES),
      help="numeric profile: exact (this project's spec) or hawq (HAWQ-V3's grids and rounding, "
           "docs/numerics.md). Default: the --resume checkpoint's (hawq for HAWQ-V3 checkpoints), else exact")
    a("--save-path", default="runs/test/", help="where checkpoints, logs and the integer artifact go")
    a("--data-percentage", default=1.0, type=float, help="fraction of the training set used (seeded subset)")
    a("--eval-limit", default=None, type=int, help="evaluate on the first N validation images only")
    a("--fix-BN", action="store_true", dest="fix_BN", help="fold BN with running statistics from the start")
    a("--fix-BN-threshold", default=None, type=int, dest="fix_BN_threshold",
      help="train BN unfolded for this many iterations, then fold and freeze it")
    a("--bn-reestimate", default=4096, type=int, metavar="IMAGES",
      help="with --fix-BN from a --pretrained model: first recompute BN running statistics for its "
           "weights on about this many training images, in whole batches (0: keep the checkpoint's; "
           "default 4096)")
    a("--checkpoint-iter", default=-1, type=int,
      help="save every quantizer's feature map at this training iteration (-1: never)")
    a("--evaluate-times", default=-1, type=int, help="accepted for HAWQ compatibility")
    add_quant_scheme_arg(p, default="uniform8", help="bit_config scheme name, a JSON file, or fp32")
    a("--resume-quantize", action="store_true",
      help="the --resume checkpoint is a quantized one (detected automatically; given, it is checked)")
    a("--act-percentile", default=_Q.act_percentile, type=float, help="percentile for activation ranges (0 = min/max)")
    a("--weight-percentile", default=_Q.weight_percentile, type=float, help="percentile for weight ranges (0 = max)")
    a("--channel-wise", action=argparse.BooleanOptionalAction, default=_Q.per_channel,
      help="per-output-channel weight scales (default on; --no-channel-wise = per-tensor). "
           "Unlike HAWQ-V3, passing --channel-wise turns it ON")
    a("--bias-bit", default=_Q.bias_bit, type=int)
    a("--distill-method", default="None", choices=["None", "KD_naive"])
    a("--distill-alpha", default=0.95, type=float)
    a("--temperature", default=6.0, type=float)
    a("--fixed-point-quantization", action="store_true",
      help="train with plain fake quantization instead of emulating the integer requantization; "
           "eval is integer-exact either way")
    a("--no-progress", action="store_true", help="disable progress bars")
    return p


def _device(args) -> torch.device:
    """cuda:--gpu (under torchrun cuda:LOCAL_RANK) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        local = os.environ.get("LOCAL_RANK")
        return torch.device(f"cuda:{int(local) if local is not None else (args.gpu or 0)}")
    return torch.device("cpu")


def resolve_recipe(args, resume: C.ModelFile | None) -> str:
    """Fill the recipe flags the user left out (epochs, lr, schedule, warm-up) and return the one
    line that states them. Fine-tuning = --pretrained or --resume; else training from scratch."""
    finetune = bool(args.pretrained) or resume is not None
    embedded = args.dataset == "fashion-mnist"
    if args.epochs is None:
        args.epochs = (2 if finetune else 6) if embedded else 90
    if args.lr is None:
        args.lr = (FINETUNE_LR if finetune else SCRATCH_LR) * args.batch_size / 128
    if args.lr_schedule is None:
        args.lr_schedule = "cosine" if embedded else "step"
    if args.warmup_epochs is None:
        # 5 % of the run, at most one epoch (Goyal et al.: 5 of 90): long enough to tame the first
        # steps, short enough not to eat a short run (the demo's 2 epochs lost a whole one to it)
        args.warmup_epochs = 0.0 if finetune else min(1.0, round(0.05 * args.epochs, 3))
    if args.warmup_epochs < 0:
        raise HawqError(f"--warmup-epochs must be >= 0, got {args.warmup_epochs}")
    return (f"recipe: {args.epochs} epochs, lr {args.lr:.4g} ({args.lr_schedule}, warm-up {args.warmup_epochs:g} "
            f"epochs), batch {args.batch_size}, wd {args.weight_decay:g}, "
            f"{'fine-tuning' if finetune else 'from scratch'}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_args(args) -> None:
    if (args.epochs is not None and args.epochs < 0) or args.batch_size < 1:
        raise HawqError("--epochs must be >= 0 and --batch-size >= 1")
    if os.path.exists(args.save_path) and not os.path.isdir(args.save_path):
        raise HawqError(f"--save-path '{args.save_path}' exists and is not a directory")
    args.dataset = resolve_dataset(args.dataset, args.data)


def quant_config(args, resume: C.ModelFile | None) -> QuantConfig:
    """The run's one :class:`QuantConfig`: from the flags; when resuming a quantized checkpoint, the
    settings that define its integers (profile, per-channel, bias width, weight percentile) are the
    checkpoint's, and a HAWQ-V3 checkpoint without a recorded profile runs under ``hawq`` (said in one line)."""
    rec = resume.config if resume is not None and resume.quantized else None
    numerics = args.numerics or (rec.numerics if rec is not None else "exact")
    if rec is not None and args.numerics is None and resume.numerics_inferred:
        print(f"note: {resume.describe()} records no numeric profile: evaluated and resumed "
              f"under --numerics {numerics} (HAWQ-V3's arithmetic)")
    config = QuantConfig.from_args(args, numerics)
    if rec is None:
        return config
    quantizer = args.quantizer or rec.quantizer
    if quantizer != rec.quantizer and rec.quantizer != "minmax":
        raise HawqError(f"{resume.describe()} was trained with --quantizer {rec.quantizer}; "
                        f"resume it with that quantizer (only minmax checkpoints can switch)")
    return config.replace(per_channel=rec.per_channel, bias_bit=rec.bias_bit, weight_percentile=rec.weight_percentile,
                          quantizer=quantizer)


def build_model(args, num_classes: int, resume: C.ModelFile | None, config: QuantConfig,
                prepare_fp: Callable[[nn.Module], None] | None = None):
    """The model for this run, with --pretrained / --resume weights applied (files already read).
    ``prepare_fp`` is applied to the floating-point model before it is quantized (not to a
    quantized --resume checkpoint)."""
    if resume is not None and resume.quantized:
        if resume.num_classes is not None and resume.num_classes != num_classes:
            raise HawqError(f"{resume.describe()} has {resume.num_classes} classes, the dataset {num_classes}")
        model, bits = quant_model_from(resume, arch=args.arch, scheme=args.quant_scheme, config=config,
                                       input_size=args.input_size)
        return model.train(), bits
    fp = (fp_model(args.arch, num_classes, weights=resume) if resume is not None
          else fp_model_pretrained(args.arch, num_classes, args.pretrained_file or args.pretrained))
    if resume is None and not args.pretrained:
        zero_init_residual(fp)          # from scratch: bottleneck units start as the identity
    if prepare_fp is not None:
        prepare_fp(fp)
    if args.quant_scheme == FP_SCHEME:
        return fp, None
    bits = load_scheme(args.arch, args.quant_scheme)
    return quant_model(args.arch, bits, num_classes, fp=fp, config=config, input_size=args.input_size), bits


def load_resume(args) -> C.ModelFile | None:
    """Read and check the --resume checkpoint (arch, quantized vs FP) before anything runs."""
    if not args.resume:
        return None
    f = C.read(args.resume)
    if f.kind is C.Kind.ARTIFACT:
        raise HawqError(f"{f.describe()} cannot be resumed; pass the checkpoint.pth.tar it was exported from")
    check_arch(f, args.arch)
    if args.resume_quantize and not f.quantized:
        raise HawqError(f"--resume-quantize given but '{args.resume}' is a floating-point checkpoint")
    if f.quantized and args.quant_scheme == FP_SCHEME:
        raise HawqError(f"'{args.resume}' is a quantized checkpoint; it cannot resume an fp32 run")
    if f.kind is C.Kind.HAWQ_QUANTIZED and not args.evaluate:
        raise HawqError(f"{f.describe()} holds integers and scales only, no float weights: it can be "
                        "evaluated (-e) but not trained; resume from HAWQ's checkpoint.pth.tar instead")
    if f.bit_config is not None and f.quant_scheme not in (None, args.quant_scheme):
        raise HawqError(f"{f.describe()} was trained as --quant-scheme {f.quant_scheme}, not {args.quant_scheme}")
    return f


def restore_training_state(args, optimizer, f: C.ModelFile, config: QuantConfig | None) -> float:
    """When the --resume checkpoint is ours, of the same scheme and quantizer, restore the optimizer
    and epoch counter (the model state was loaded when the model was built). A minmax checkpoint
    continued with a learned quantizer is a new run from its weights (new parameters, new optimizer).
    Returns best_acc1 so far."""
    ckpt = f.raw
    recorded = (ckpt.get("quant_config") or {}).get("quantizer", "minmax")
    same_quantizer = config is None or recorded == config.quantizer
    same_run = (f.kind in (C.Kind.QAT, C.Kind.FP) and ckpt.get("quant_scheme") == args.quant_scheme
                and "optimizer" in ckpt and same_quantizer)
    if same_run and not args.evaluate:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise HawqError(f"optimizer state in '{args.resume}' does not fit this model ({e})") from None
        args.start_epoch = int(ckpt.get("epoch", 0))
    return float(ckpt.get("best_acc1", 0.0)) if same_run else 0.0


def _bn_reestimation(args, data, device, resume, say, world) -> Callable[[nn.Module], None] | None:
    """--fix-BN fine-tuning from --pretrained folds BN with running statistics from the first step:
    recompute them for the pretrained weights first (:func:`hawq.engine.reestimate_bn`)."""
    if not (args.fix_BN and args.pretrained and resume is None and not args.evaluate and args.bn_reestimate > 0):
        return None

    def prepare(fp: nn.Module) -> None:
        fp.to(device)
        if world.distributed:
            distributed.convert_batchnorm(fp)       # global batch statistics: every rank the same
        n = engine.reestimate_bn(fp, data.train, math.ceil(args.bn_reestimate / args.batch_size), device,
                                 progress=not args.no_progress and world.main)
        say(f"BN running statistics re-estimated on {n} training images before folding "
            f"(--fix-BN; --bn-reestimate 0 keeps the checkpoint's)")
    return prepare


def _teacher(args, num_classes: int, device):
    if args.distill_method == "None":
        return None
    teacher = fp_model_pretrained(args.teacher_arch, num_classes, args.teacher_pretrained or True)
    return teacher.to(device).eval()


def _featuremap_hook(args, model):
    """--checkpoint-iter: at that global iteration, save every quantizer's output of the batch."""
    if args.checkpoint_iter < 0:
        return None
    state = {"step": 0}

    def hook(i, images):
        if state["step"] == args.checkpoint_iter:
            maps = {}
            handles = [m.register_forward_hook(lambda mod, inp, out, n=n: maps.__setitem__(n, out.value.detach().cpu()))
                       for n, m in model.named_modules() if hasattr(m, "activation_bit")]
            with torch.no_grad():
                was = model.training
                model.eval()
                model(images)
                model.train(was)
            for h in handles:
                h.remove()
            C.save_atomic(maps, os.path.join(args.save_path, f"featuremaps_iter{args.checkpoint_iter}.pth.tar"))
        state["step"] += 1
    return hook


def _checkpoint_state(args, model, optimizer, epoch: int, best: float, num_classes: int, bits,
                      config: QuantConfig | None) -> dict:
    return C.checkpoint_state(model, arch=args.arch, quant_scheme=args.quant_scheme, num_classes=num_classes,
                              dataset=args.dataset, input_size=args.input_size, bit_config=bits, config=config,
                              epoch=epoch, best_acc1=best, optimizer=optimizer.state_dict(), args=_plain(vars(args)))


def _plain(d: dict) -> dict:
    """Only weights_only-loadable values (str/int/float/bool/None)."""
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool)) or v is None}


def _export(args, model, input_size: int, bits, top1: float) -> str:
    path = os.path.join(args.save_path, "quantized_checkpoint.pth.tar")
    art = export_integer(model, (3, input_size, input_size),
                         meta={"arch": args.arch, "quant_scheme": args.quant_scheme, "top1": top1,
                               "dataset": args.dataset})
    save_artifact(art, path)
    return path


@one_line_errors
def main(argv=None) -> dict:
    """quant_train.py: :func:`run` with one-line errors (``error: ...``, exit status 2)."""
    return run(argv)


def run(argv=None) -> dict:
    """Parse ``argv`` and run the job. Returns a summary dict (final/best top-1, save path, and the
    trained ``model``, unwrapped).

    Under ``torchrun --nproc_per_node N`` every rank runs this; rank 0 prints and writes files."""
    args = build_parser().parse_args(argv)
    _check_args(args)
    _seed_everything(args.seed)
    device = _device(args)
    resume = load_resume(args)
    # --pretrained PATH is read once, here: its recorded input size is this run's default too
    args.pretrained_file = C.read(args.pretrained) if isinstance(args.pretrained, str) else None
    recorded = resume or args.pretrained_file
    args.input_size = resolve_input_size(args.input_size, args.dataset, args.arch,
                                         recorded.input_size if recorded is not None else None)
    config = quant_config(args, resume)
    recipe = resolve_recipe(args, resume)
    world = distributed.init(device)
    try:
        return _run(args, device, resume, config, recipe, world)
    finally:
        distributed.shutdown()


def _run(args, device, resume, config, recipe: str, world: distributed.World) -> dict:
    say = print if world.main else (lambda *a, **k: None)
    data = build_loaders(args.dataset, args.data, args.batch_size, args.workers, args.data_percentage,
                         args.seed, eval_limit=args.eval_limit, rank=world.rank, world=world.size,
                         input_size=args.input_size)
    if not args.evaluate:
        say(recipe + (f", {world.size} processes ({world.backend})" if world.distributed else "")
            + (f", quantizer {config.quantizer}" if args.quant_scheme != FP_SCHEME else ""))
    model, bits = build_model(args, data.num_classes, resume, config,
                              prepare_fp=_bn_reestimation(args, data, device, resume, say, world))
    if bits is None:
        config = None
    elif not args.evaluate and resume is None and not args.pretrained:
        say(f"note: training --quant-scheme {args.quant_scheme} from random initialization; QAT usually "
            "starts from a trained floating-point model (--pretrained [PATH])")
    if world.distributed:
        distributed.convert_batchnorm(model)
    model.to(device)
    teacher = _teacher(args, data.num_classes, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    best = restore_training_state(args, optimizer, resume, config) if resume is not None else 0.0
    progress = not args.no_progress and world.main

    if args.evaluate:
        res = engine.evaluate(model, data.val, device, progress=progress)
        out = {"top1": res["top1"], "top5": res["top5"], "n": res["n"], "artifact": None}
        if bits is not None and world.main:
            os.makedirs(args.save_path, exist_ok=True)
            out["artifact"] = _export(args, model, data.input_size, bits, res["top1"])
        profile = f" (numerics {config.numerics})" if config is not None else ""
        say(f"{args.arch} {args.quant_scheme}{profile} eval on {res['n']} images: "
            f"top1 {res['top1']:.2f}  top5 {res['top5']:.2f}")
        return out

    trainee = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # Buffers need no broadcast: ranges and BN statistics are already synchronized every step.
        trainee = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if world.main:
        os.makedirs(args.save_path, exist_ok=True)
    log = engine.CsvLog(os.path.join(args.save_path, "log.csv"))
    hook = _featuremap_hook(args, model) if world.main else None
    last = {}

    def lr_fn(t: float) -> float:
        return engine.lr_at(t, args.lr, args.epochs, args.lr_schedule, args.warmup_epochs)

    for epoch in range(args.start_epoch, args.epochs):
        t0 = time.time()
        data.train.set_epoch(epoch)
        tr = engine.train_one_epoch(trainee, data.train, optimizer, device, epoch, teacher=teacher,
                                    distill_alpha=args.distill_alpha, temperature=args.temperature,
                                    fix_bn_fp=(bits is None and args.fix_BN), step_hook=hook, progress=progress,
                                    lr_fn=lr_fn, world=world)
        lr = tr["lr_first"] if tr["lr_first"] is not None else lr_fn(epoch)
        ev = engine.evaluate(model, data.val, device, progress=progress)
        is_best = ev["top1"] > best
        best = max(best, ev["top1"])
        if world.main:
            state = _checkpoint_state(args, model, optimizer, epoch + 1, best, data.num_classes, bits, config)
            C.save_atomic(state, os.path.join(args.save_path, "checkpoint.pth.tar"))
            if is_best:
                C.save_atomic(state, os.path.join(args.save_path, "model_best.pth.tar"))
                if bits is not None:
                    _export(args, model, data.input_size, bits, ev["top1"])
            log.write({"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_top1": tr["top1"],
                       "val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"], "best_top1": best,
                       "seconds": round(time.time() - t0, 1)})
        distributed.barrier()
        lrs = f"{lr:.4g}" if tr["lr_last"] in (None, lr) else f"{lr:.4g}->{tr['lr_last']:.4g}"
        say(f"epoch {epoch}: lr {lrs}  train loss {tr['loss']:.4f} top1 {tr['top1']:.2f}  "
            f"val top1 {ev['top1']:.2f} top5 {ev['top5']:.2f}  best {best:.2f}  ({time.time() - t0:.0f}s)")
        last = ev
    return {"top1": last.get("top1"), "best_top1": best, "save_path": args.save_path, "model": model}


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
