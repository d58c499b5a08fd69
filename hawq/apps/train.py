"""The quant_train.py job: argument parsing (HAWQ-V3's flag set) and the run itself.

Order of work: validate every input (arch, scheme, data, checkpoints) before anything is written,
then train / evaluate, writing ``checkpoint.pth.tar``, ``model_best.pth.tar``, ``log.csv`` and, for
quantized models, the integer artifact ``quantized_checkpoint.pth.tar`` into ``--save-path``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from hawq import checkpoint as C
from hawq import engine
from hawq.bit_config import load_scheme
from hawq.apps.cli import (add_arch_arg, add_data_args, add_input_size_arg, add_quant_scheme_arg, arch_name,
                           console_script, one_line_errors, resolve_dataset, resolve_input_size)
from hawq.data import build_loaders
from hawq.errors import HawqError
from hawq.export import export_integer, save_artifact
from hawq.models.factory import check_arch, fp_model, fp_model_pretrained, quant_model, zero_init_residual
from hawq.models.restore import quant_model_from
from hawq.numerics import PROFILES
from hawq.quant.config import QuantConfig
from hawq.quant.learned import LSQ_INITS, METHODS
from hawq import distributed

__all__ = ["cli", "FP_SCHEME", "Recipe", "Distillation", "TrainSettings", "build_parser", "settings_of",
           "resolve_recipe", "quant_config", "build_model", "load_resume", "restore_training_state", "main", "run",
           "train"]

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
           "transform), xnor or bireal (1-bit layers: XNOR-Net's or Bi-Real's sign gradients; dorefa and lsq have "
           "1-bit forms too); default: the "
           "--resume checkpoint's, else minmax")
    a("--lsq-init", default=None, choices=list(LSQ_INITS),
      help="where --quantizer lsq starts its steps: minmax (the min/max scale; default) or mean (LSQ's "
           "2*mean|v|/sqrt(Qp); at 2 bits the min/max step puts most values on 0)")
    a("--optimizer", default="sgd", choices=list(engine.OPTIMIZERS),
      help="sgd (HAWQ's, with --momentum) or adam (the binary networks' recipe, README); the weights of "
           "1-bit layers never get weight decay")
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
      help="numeric profile: exact (this project's spec), hawq (HAWQ-V3's grids and rounding) or ort (ONNX Runtime's int8 arithmetic, "
           "exported as QDQ ONNX); docs/numerics.md. Default: the --resume checkpoint's (hawq for HAWQ-V3 checkpoints), else exact")
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


@dataclass(frozen=True)
class Recipe:
    """The optimization recipe, every flag the user left out filled in (:func:`resolve_recipe`).
    ``lr`` is the peak learning rate; ``warmup_epochs`` is a linear per-step ramp; ``finetune`` is
    True when the run starts from --pretrained or --resume weights."""
    epochs: int
    lr: float
    lr_schedule: str
    warmup_epochs: float
    batch_size: int
    momentum: float
    weight_decay: float
    finetune: bool
    optimizer: str = "sgd"

    def describe(self) -> str:
        """The one line that states the recipe (printed before training)."""
        return (f"recipe: {self.epochs} epochs, {self.optimizer} lr {self.lr:.4g} ({self.lr_schedule}, warm-up "
                f"{self.warmup_epochs:g} epochs), batch {self.batch_size}, wd {self.weight_decay:g}, "
                f"{'fine-tuning' if self.finetune else 'from scratch'}")


@dataclass(frozen=True)
class Distillation:
    """--distill-method KD_naive: the teacher and the loss mix (HAWQ-V3's ``kd_loss``)."""
    teacher_arch: str
    teacher_pretrained: str | None       # our FP checkpoint; None = pytorchcv's ImageNet weights
    alpha: float
    temperature: float


@dataclass(frozen=True)
class TrainSettings:
    """One quant_train.py run, typed: what :func:`settings_of` makes of the flags, every default
    resolved and every input file already read and checked (nothing is written before this exists).

    ``config`` is None for an fp32 run; ``pretrained`` is False (random init), True (pytorchcv's
    ImageNet weights) or our FP checkpoint, read; ``resume`` the --resume checkpoint, read;
    ``input_size`` the square side in pixels; ``flags`` the plain command-line values recorded in
    checkpoints as ``args`` (HAWQ-V3 checkpoints carry the same key)."""
    arch: str
    quant_scheme: str
    dataset: str
    data: str | None
    input_size: int
    workers: int
    data_percentage: float
    eval_limit: int | None
    recipe: Recipe
    config: QuantConfig | None
    fix_bn: bool
    pretrained: bool | C.ModelFile
    resume: C.ModelFile | None
    start_epoch: int
    evaluate: bool
    seed: int
    gpu: int | None
    save_path: str
    distill: Distillation | None
    bn_reestimate: int
    checkpoint_iter: int
    progress: bool
    flags: dict = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return self.quant_scheme != FP_SCHEME


def settings_of(args: argparse.Namespace) -> TrainSettings:
    """The boundary: parsed flags → :class:`TrainSettings`. Validates every input (numbers, save
    path, dataset, --resume and --pretrained files, input size, quantizer settings) before anything
    runs or is written."""
    if (args.epochs is not None and args.epochs < 0) or args.batch_size < 1:
        raise HawqError("--epochs must be >= 0 and --batch-size >= 1")
    if os.path.exists(args.save_path) and not os.path.isdir(args.save_path):
        raise HawqError(f"--save-path '{args.save_path}' exists and is not a directory")
    dataset = resolve_dataset(args.dataset, args.data)
    resume = load_resume(args)
    # --pretrained PATH is read once, here: its recorded input size is this run's default too
    pretrained = C.read(args.pretrained) if isinstance(args.pretrained, str) else bool(args.pretrained)
    recorded = resume or (pretrained if isinstance(pretrained, C.ModelFile) else None)
    input_size = resolve_input_size(args.input_size, dataset, args.arch,
                                    recorded.input_size if recorded is not None else None)
    quantized = args.quant_scheme != FP_SCHEME
    config = quant_config(args, resume) if quantized else None
    recipe = resolve_recipe(args, dataset, finetune=bool(pretrained) or resume is not None)
    distill = (None if args.distill_method == "None" else
               Distillation(args.teacher_arch, args.teacher_pretrained, args.distill_alpha, args.temperature))
    s = TrainSettings(arch=args.arch, quant_scheme=args.quant_scheme, dataset=dataset, data=args.data,
                      input_size=input_size, workers=args.workers, data_percentage=args.data_percentage,
                      eval_limit=args.eval_limit, recipe=recipe, config=config, fix_bn=args.fix_BN,
                      pretrained=pretrained, resume=resume, start_epoch=args.start_epoch, evaluate=args.evaluate,
                      seed=args.seed, gpu=args.gpu, save_path=args.save_path, distill=distill,
                      bn_reestimate=args.bn_reestimate, checkpoint_iter=args.checkpoint_iter,
                      progress=not args.no_progress)
    flags = {**vars(args), **dataclasses.asdict(recipe), "dataset": dataset, "input_size": input_size}
    return dataclasses.replace(s, flags={k: v for k, v in flags.items()
                                         if isinstance(v, (str, int, float, bool)) or v is None})


def _device(s: TrainSettings) -> torch.device:
    """cuda:--gpu (under torchrun cuda:LOCAL_RANK) when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        local = os.environ.get("LOCAL_RANK")
        return torch.device(f"cuda:{int(local) if local is not None else (s.gpu or 0)}")
    return torch.device("cpu")


def resolve_recipe(args: argparse.Namespace, dataset: str, *, finetune: bool) -> Recipe:
    """The recipe flags the user left out (epochs, lr, schedule, warm-up), filled in from the
    dataset and whether the run fine-tunes (README, "Default recipes")."""
    embedded = dataset == "fashion-mnist"
    epochs = args.epochs if args.epochs is not None else ((2 if finetune else 6) if embedded else 90)
    lr = args.lr if args.lr is not None else (FINETUNE_LR if finetune else SCRATCH_LR) * args.batch_size / 128
    warmup = args.warmup_epochs
    if warmup is None:
        # 5 % of the run, at most one epoch (Goyal et al.: 5 of 90): long enough to tame the first
        # steps, short enough not to eat a short run (the demo's 2 epochs lost a whole one to it)
        warmup = 0.0 if finetune else min(1.0, round(0.05 * epochs, 3))
    if warmup < 0:
        raise HawqError(f"--warmup-epochs must be >= 0, got {warmup}")
    return Recipe(epochs=epochs, lr=lr, lr_schedule=args.lr_schedule or ("cosine" if embedded else "step"),
                  warmup_epochs=warmup, batch_size=args.batch_size, momentum=args.momentum,
                  weight_decay=args.weight_decay, finetune=finetune, optimizer=args.optimizer)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def quant_config(args: argparse.Namespace, resume: C.ModelFile | None) -> QuantConfig:
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


def build_model(s: TrainSettings, num_classes: int, prepare_fp: Callable[[nn.Module], None] | None = None):
    """The model for this run and its bit widths (None for fp32), with --pretrained / --resume
    weights applied. ``prepare_fp`` is applied to the floating-point model before it is quantized
    (not to a quantized --resume checkpoint)."""
    resume = s.resume
    if resume is not None and resume.quantized:
        if resume.num_classes is not None and resume.num_classes != num_classes:
            raise HawqError(f"{resume.describe()} has {resume.num_classes} classes, the dataset {num_classes}")
        model, bits = quant_model_from(resume, arch=s.arch, scheme=s.quant_scheme, config=s.config,
                                       input_size=s.input_size)
        return model.train(), bits
    fp = (fp_model(s.arch, num_classes, weights=resume) if resume is not None
          else fp_model_pretrained(s.arch, num_classes, s.pretrained))
    if resume is None and not s.pretrained:
        zero_init_residual(fp)          # from scratch: bottleneck units start as the identity
    if prepare_fp is not None:
        prepare_fp(fp)
    if not s.quantized:
        return fp, None
    bits = load_scheme(s.arch, s.quant_scheme)
    return quant_model(s.arch, bits, num_classes, fp=fp, config=s.config, input_size=s.input_size), bits


def load_resume(args: argparse.Namespace) -> C.ModelFile | None:
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


def restore_training_state(s: TrainSettings, optimizer, config: QuantConfig | None) -> tuple[int, float]:
    """When the --resume checkpoint is ours, of the same scheme and quantizer, restore the optimizer
    and epoch counter (the model state was loaded when the model was built). A minmax checkpoint
    continued with a learned quantizer is a new run from its weights (new parameters, new optimizer).
    Returns (the epoch to start at, best_acc1 so far)."""
    f = s.resume
    if f is None:
        return s.start_epoch, 0.0
    ckpt = f.raw
    recorded = (ckpt.get("quant_config") or {}).get("quantizer", "minmax")
    same_quantizer = config is None or recorded == config.quantizer
    same_run = (f.kind in (C.Kind.QAT, C.Kind.FP) and ckpt.get("quant_scheme") == s.quant_scheme
                and "optimizer" in ckpt and same_quantizer
                and (ckpt.get("args") or {}).get("optimizer", "sgd") == s.recipe.optimizer)
    start = s.start_epoch
    if same_run and not s.evaluate:
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise HawqError(f"optimizer state in '{f.path}' does not fit this model ({e})") from None
        start = int(ckpt.get("epoch", 0))
    return start, (float(ckpt.get("best_acc1", 0.0)) if same_run else 0.0)


def _bn_reestimation(s: TrainSettings, data, device, say, world) -> Callable[[nn.Module], None] | None:
    """--fix-BN fine-tuning from --pretrained folds BN with running statistics from the first step:
    recompute them for the pretrained weights first (:func:`hawq.engine.reestimate_bn`)."""
    if not (s.fix_bn and s.pretrained and s.resume is None and not s.evaluate and s.bn_reestimate > 0):
        return None

    def prepare(fp: nn.Module) -> None:
        fp.to(device)
        if world.distributed:
            distributed.convert_batchnorm(fp)       # global batch statistics: every rank the same
        n = engine.reestimate_bn(fp, data.train, math.ceil(s.bn_reestimate / s.recipe.batch_size), device,
                                 progress=s.progress and world.main)
        say(f"BN running statistics re-estimated on {n} training images before folding "
            f"(--fix-BN; --bn-reestimate 0 keeps the checkpoint's)")
    return prepare


def _teacher(s: TrainSettings, num_classes: int, device):
    if s.distill is None:
        return None
    teacher = fp_model_pretrained(s.distill.teacher_arch, num_classes, s.distill.teacher_pretrained or True)
    return teacher.to(device).eval()


def _featuremap_hook(s: TrainSettings, model):
    """--checkpoint-iter: at that global iteration, save every quantizer's output of the batch."""
    if s.checkpoint_iter < 0:
        return None
    state = {"step": 0}

    def hook(i, images):
        if state["step"] == s.checkpoint_iter:
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
            C.save_atomic(maps, os.path.join(s.save_path, f"featuremaps_iter{s.checkpoint_iter}.pth.tar"))
        state["step"] += 1
    return hook


def _checkpoint_state(s: TrainSettings, model, optimizer, epoch: int, best: float, num_classes: int, bits,
                      config: QuantConfig | None) -> dict:
    return C.checkpoint_state(model, arch=s.arch, quant_scheme=s.quant_scheme, num_classes=num_classes,
                              dataset=s.dataset, input_size=s.input_size, bit_config=bits, config=config,
                              epoch=epoch, best_acc1=best, optimizer=optimizer.state_dict(), args=dict(s.flags))


def _export(s: TrainSettings, model, bits, top1: float) -> str:
    path = os.path.join(s.save_path, "quantized_checkpoint.pth.tar")
    art = export_integer(model, (3, s.input_size, s.input_size),
                         meta={"arch": s.arch, "quant_scheme": s.quant_scheme, "top1": top1, "dataset": s.dataset})
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
    return train(settings_of(build_parser().parse_args(argv)))


def train(s: TrainSettings) -> dict:
    """Run one job (train, or evaluate with ``s.evaluate``) from its settings; see :func:`run`."""
    _seed_everything(s.seed)
    device = _device(s)
    world = distributed.init(device)
    try:
        return _run(s, device, world)
    finally:
        distributed.shutdown()


def _run(s: TrainSettings, device, world: distributed.World) -> dict:
    say = print if world.main else (lambda *a, **k: None)
    r = s.recipe
    data = build_loaders(s.dataset, s.data, r.batch_size, s.workers, s.data_percentage, s.seed,
                         eval_limit=s.eval_limit, rank=world.rank, world=world.size, input_size=s.input_size)
    config = s.config
    if not s.evaluate:
        say(r.describe() + (f", {world.size} processes ({world.backend})" if world.distributed else "")
            + (f", quantizer {config.quantizer}" if config is not None else ""))
    model, bits = build_model(s, data.num_classes, prepare_fp=_bn_reestimation(s, data, device, say, world))
    if bits is not None and not s.evaluate and s.resume is None and not s.pretrained:
        say(f"note: training --quant-scheme {s.quant_scheme} from random initialization; QAT usually "
            "starts from a trained floating-point model (--pretrained [PATH])")
    if world.distributed:
        distributed.convert_batchnorm(model)
    model.to(device)
    teacher = _teacher(s, data.num_classes, device)
    optimizer = engine.make_optimizer(model, r.optimizer, r.lr, r.momentum, r.weight_decay)
    start_epoch, best = restore_training_state(s, optimizer, config)
    progress = s.progress and world.main

    if s.evaluate:
        res = engine.evaluate(model, data.val, device, progress=progress)
        out = {"top1": res["top1"], "top5": res["top5"], "n": res["n"], "artifact": None}
        if bits is not None and world.main:
            os.makedirs(s.save_path, exist_ok=True)
            out["artifact"] = _export(s, model, bits, res["top1"])
        profile = f" (numerics {config.numerics})" if config is not None else ""
        say(f"{s.arch} {s.quant_scheme}{profile} eval on {res['n']} images: "
            f"top1 {res['top1']:.2f}  top5 {res['top5']:.2f}")
        return out

    trainee = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # Buffers need no broadcast: ranges and BN statistics are already synchronized every step.
        trainee = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if world.main:
        os.makedirs(s.save_path, exist_ok=True)
    log = engine.CsvLog(os.path.join(s.save_path, "log.csv"))
    hook = _featuremap_hook(s, model) if world.main else None
    last = {}
    kd = s.distill or Distillation("", None, 0.95, 6.0)     # unused without a teacher

    def lr_fn(t: float) -> float:
        return engine.lr_at(t, r.lr, r.epochs, r.lr_schedule, r.warmup_epochs)

    for epoch in range(start_epoch, r.epochs):
        t0 = time.time()
        data.train.set_epoch(epoch)
        tr = engine.train_one_epoch(trainee, data.train, optimizer, device, epoch, teacher=teacher,
                                    distill_alpha=kd.alpha, temperature=kd.temperature,
                                    fix_bn_fp=(bits is None and s.fix_bn), step_hook=hook, progress=progress,
                                    lr_fn=lr_fn, world=world)
        lr = tr["lr_first"] if tr["lr_first"] is not None else lr_fn(epoch)
        ev = engine.evaluate(model, data.val, device, progress=progress)
        is_best = ev["top1"] > best
        best = max(best, ev["top1"])
        if world.main:
            state = _checkpoint_state(s, model, optimizer, epoch + 1, best, data.num_classes, bits, config)
            C.save_atomic(state, os.path.join(s.save_path, "checkpoint.pth.tar"))
            if is_best:
                C.save_atomic(state, os.path.join(s.save_path, "model_best.pth.tar"))
                if bits is not None:
                    _export(s, model, bits, ev["top1"])
            log.write({"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_top1": tr["top1"],
                       "val_loss": ev["loss"], "val_top1": ev["top1"], "val_top5": ev["top5"], "best_top1": best,
                       "seconds": round(time.time() - t0, 1)})
        distributed.barrier()
        lrs = f"{lr:.4g}" if tr["lr_last"] in (None, lr) else f"{lr:.4g}->{tr['lr_last']:.4g}"
        say(f"epoch {epoch}: lr {lrs}  train loss {tr['loss']:.4f} top1 {tr['top1']:.2f}  "
            f"val top1 {ev['top1']:.2f} top5 {ev['top5']:.2f}  best {best:.2f}  ({time.time() - t0:.0f}s)")
        last = ev
    return {"top1": last.get("top1"), "best_top1": best, "save_path": s.save_path, "model": model}


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
