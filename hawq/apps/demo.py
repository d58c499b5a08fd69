"""`make demo`: the whole pipeline on the embedded Fashion-MNIST in a few minutes on 2 CPU cores.

FP baseline -> uniform8 QAT (from the baseline) -> integer export -> integer-reference evaluation,
each step being the same command a user would type (printed before it runs), then a results table.
"""
from __future__ import annotations

import argparse
import os
import shlex
import time
from dataclasses import dataclass

import torch

from hawq.apps.cli import add_arch_arg, console_script, one_line_errors, run_main
from hawq.data import build_loaders
from hawq.export import load_artifact
from hawq.models.archs import input_size_of
from hawq.models.restore import load_quant_checkpoint
from hawq.apps.train import run
from hawq.verify import compare


__all__ = ["cli", "MAX_QAT_DROP", "DemoResult", "run_demo", "main"]

#: The demo's story, checked on every run: QAT may trail its FP model by at most this (points).
MAX_QAT_DROP = 0.5


@dataclass(frozen=True)
class DemoResult:
    """What the demo measured: top-1 in percent, on ``val_images`` test images (FP, QAT) and on the
    first ``ref_images`` of them (reference and QAT there); ``mismatches`` of ``logits`` compared."""
    fp_top1: float
    qat_top1: float
    ref_top1: float
    qat_top1_on_ref: float
    val_images: int
    ref_images: int
    mismatches: int
    logits: int
    seconds: tuple[float, float, float]

    @property
    def story_holds(self) -> bool:
        """QAT keeps the accuracy of the FP model it starts from, and the reference agrees exactly."""
        return self.qat_top1 >= self.fp_top1 - MAX_QAT_DROP and self.mismatches == 0


def _step(title: str, argv: list[str]) -> tuple[dict, float]:
    print(f"\n== {title}\n$ python quant_train.py {shlex.join(argv)}", flush=True)
    t0 = time.time()
    res = run(argv)
    return res, time.time() - t0


def run_demo(arch: str = "resnet20_cifar10", out: str = "runs/demo", data_percentage: float = 0.15,
             eval_limit: int | None = None, ref_images: int = 1000, progress: bool = True) -> DemoResult:
    """FP baseline (2 epochs from scratch) -> uniform8 QAT (1 epoch from it, --fix-BN) -> integer
    export -> reference vs QAT on the first ``ref_images`` test images. ``eval_limit``: test images
    for the FP/QAT evaluations (None: all 10000)."""
    common = ["-a", arch, "-b", "128", "--data-percentage", str(data_percentage), "--lr-schedule", "cosine"]
    common += ([] if eval_limit is None else ["--eval-limit", str(eval_limit)]) + ([] if progress else ["--no-progress"])
    fp_dir, q_dir = os.path.join(out, "fp32"), os.path.join(out, "uniform8")

    fp, t_fp = _step("1/4 floating-point baseline",
                     ["--quant-scheme", "fp32", "--epochs", "2", "--lr", "0.05", "--save-path", fp_dir, *common])
    qat, t_q = _step("2/4 uniform8 quantization-aware training from the baseline",
                     ["--quant-scheme", "uniform8", "--epochs", "1", "--fix-BN",
                      "--act-range-momentum", "0.99",
                      "--pretrained", os.path.join(fp_dir, "model_best.pth.tar"), "--save-path", q_dir, *common])

    artifact = os.path.join(q_dir, "quantized_checkpoint.pth.tar")
    print(f"\n== 3/4 integer export\nwritten with the best QAT epoch: {artifact} "
          f"({os.path.getsize(artifact) / 1024:.0f} KiB)")
    print(f"\n== 4/4 integer reference vs QAT eval on the first {ref_images} test images\n"
          f"$ python -m hawq.verify --checkpoint {q_dir}/model_best.pth.tar --artifact {artifact} "
          f"--limit {ref_images}", flush=True)
    t0 = time.time()
    with torch.no_grad():
        model, _ = load_quant_checkpoint(os.path.join(q_dir, "model_best.pth.tar"))
        data = build_loaders("fashion-mnist", None, 200, 0, 1.0, 0, eval_limit=ref_images,
                             input_size=input_size_of("fashion-mnist", arch))
        ver = compare(model, load_artifact(artifact)["graph"], data.val, progress=progress)
    val_images = 10000 if eval_limit is None else min(eval_limit, 10000)
    return DemoResult(fp["best_top1"], qat["best_top1"], ver["ref_top1"], ver["qat_top1"], val_images,
                      ver["images"], ver["mismatches"], ver["logits"], (t_fp, t_q, time.time() - t0))


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arch_arg(p)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data-percentage", type=float, default=0.15, help="training subset for both stages")
    p.add_argument("--eval-limit", type=int, default=None, help="test images for the FP and QAT evaluations (default: all)")
    p.add_argument("--ref-images", type=int, default=1000, help="test images run through the integer reference")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    r = run_demo(args.arch, args.out, args.data_percentage, args.eval_limit, args.ref_images, not args.no_progress)

    rows = [("fp32 (float, eval mode)", r.fp_top1, r.val_images, r.seconds[0]),
            ("uniform8 QAT (integer eval path)", r.qat_top1, r.val_images, r.seconds[1]),
            ("uniform8 integer reference (NumPy int64)", r.ref_top1, r.ref_images, r.seconds[2])]
    print(f"\n{'model':<44}{'top1 %':>8}{'images':>8}{'seconds':>9}")
    for name, top1, n, sec in rows:
        print(f"{name:<44}{top1:>8.2f}{n:>8}{sec:>9.0f}")
    print(f"QAT top-1 on the same {r.ref_images} images: {r.qat_top1_on_ref:.2f}")
    print(f"QAT - FP: {r.qat_top1 - r.fp_top1:+.2f} points"
          + ("" if r.qat_top1 >= r.fp_top1 - MAX_QAT_DROP else f"  (warning: more than {MAX_QAT_DROP} below FP)"))
    print(f"mismatches: {r.mismatches}/{r.logits}")
    return 1 if r.mismatches else 0


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
