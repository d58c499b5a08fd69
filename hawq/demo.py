"""`make demo`: the whole pipeline on the embedded Fashion-MNIST in a few minutes on 2 CPU cores.

FP baseline -> uniform8 QAT (from the baseline) -> integer export -> integer-reference evaluation,
each step being the same command a user would type (printed before it runs), then a results table.
"""
from __future__ import annotations

import argparse
import os
import shlex
import time

import torch

from hawq.cli import add_arch_arg, one_line_errors, run_main
from hawq.data import build_loaders
from hawq.export import load_artifact
from hawq.models.factory import load_quant_checkpoint
from hawq.train import run
from hawq.verify import compare


def _step(title: str, argv: list[str]) -> tuple[dict, float]:
    print(f"\n== {title}\n$ python quant_train.py {shlex.join(argv)}", flush=True)
    t0 = time.time()
    res = run(argv)
    return res, time.time() - t0


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arch_arg(p)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data-percentage", type=float, default=0.15, help="training subset for both stages")
    p.add_argument("--ref-images", type=int, default=1000, help="test images run through the integer reference")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    common = ["-a", args.arch, "-b", "128", "--data-percentage", str(args.data_percentage),
              "--lr-schedule", "cosine"] + (["--no-progress"] if args.no_progress else [])
    fp_dir, q_dir = os.path.join(args.out, "fp32"), os.path.join(args.out, "uniform8")

    fp, t_fp = _step("1/4 floating-point baseline",
                     ["--quant-scheme", "fp32", "--epochs", "2", "--lr", "0.05", "--save-path", fp_dir, *common])
    qat, t_q = _step("2/4 uniform8 quantization-aware training from the baseline",
                     ["--quant-scheme", "uniform8", "--epochs", "1", "--lr", "0.005", "--fix-BN",
                      "--act-range-momentum", "0.99",
                      "--pretrained", os.path.join(fp_dir, "model_best.pth.tar"), "--save-path", q_dir, *common])

    artifact = os.path.join(q_dir, "quantized_checkpoint.pth.tar")
    print(f"\n== 3/4 integer export\nwritten with the best QAT epoch: {artifact} "
          f"({os.path.getsize(artifact) / 1024:.0f} KiB)")
    print(f"\n== 4/4 integer reference vs QAT eval on the first {args.ref_images} test images\n"
          f"$ python -m hawq.verify --checkpoint {q_dir}/model_best.pth.tar --artifact {artifact} "
          f"--limit {args.ref_images}", flush=True)
    t0 = time.time()
    torch.set_grad_enabled(False)
    model, _ = load_quant_checkpoint(os.path.join(q_dir, "model_best.pth.tar"))
    data = build_loaders("fashion-mnist", None, 200, 0, 1.0, 0, eval_limit=args.ref_images)
    ver = compare(model, load_artifact(artifact)["graph"], data.val, progress=not args.no_progress)
    t_ref = time.time() - t0

    rows = [("fp32 (float, eval mode)", fp["best_top1"], 10000, t_fp),
            ("uniform8 QAT (integer eval path)", qat["best_top1"], 10000, t_q),
            ("uniform8 integer reference (NumPy int64)", ver["ref_top1"], ver["images"], t_ref)]
    print(f"\n{'model':<44}{'top1 %':>8}{'images':>8}{'seconds':>9}")
    for name, top1, n, sec in rows:
        print(f"{name:<44}{top1:>8.2f}{n:>8}{sec:>9.0f}")
    print(f"QAT top-1 on the same {ver['images']} images: {ver['qat_top1']:.2f}")
    print(f"mismatches: {ver['mismatches']}/{ver['logits']}")
    return 1 if ver["mismatches"] else 0


if __name__ == "__main__":
    run_main(main)
