"""Released checkpoints: the commands that train them and the manifest that describes them.

    python -m hawq.release train      # runs every command below (resnet20: ~20 min, mobilenetv2_w1: ~45 min,
                                      # mobilenet_v3_small: ~20 min, the two profile-ort runs: ~27 min,
                                      # bireal_resnet20 FP + binary: ~15 min, resnet20 uniform2 LSQ + LQ-Net: ~17 min on 2 cores)
    python -m hawq.release manifest   # copies the best checkpoints into checkpoints/, evaluates
                                      # each one with quant_train.py -e and writes MANIFEST.csv

The manifest's top1 is measured by the same evaluation a user runs (``quant_train.py -e``) on the
full Fashion-MNIST test set, so re-running that command reproduces it exactly.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import shlex
import shutil

from hawq.apps.cli import one_line_errors, run_main
from hawq.fileio import write_text_atomic
from hawq.apps.train import run

__all__ = ["ARCH", "RUNS", "OUT", "FP_FILE", "RELEASES", "MB", "MB_FP_FILE", "TV", "MV3", "MV3_FP_FILE", "BR", "BR_FP_FILE",
           "WEIGHTS_ONLY",
           "MANIFEST_FIELDS", "command_of", "sha256", "evaluate_release", "train_all", "publish",
           "manifest_row", "write_manifest", "main"]

ARCH = "resnet20_cifar10"
RUNS = "runs/release"
OUT = "checkpoints"
FP_FILE = f"{OUT}/{ARCH}_fp32.pth.tar"
_COMMON = ["-a", ARCH, "-b", "128", "--lr-schedule", "cosine", "--no-progress"]
_QAT = ["--fix-BN", "--act-range-momentum", "0.99", "--wd", "1e-4", "--pretrained", FP_FILE]

#: (released file, quant_train.py arguments). QAT runs start from the released FP checkpoint.
RELEASES = [
    (FP_FILE, ["--quant-scheme", "fp32", "--epochs", "6", "--lr", "0.1", "--wd", "5e-4",
               "--save-path", f"{RUNS}/fp32", *_COMMON]),
    # uniform8 / uniform4: two full QAT epochs at lr 0.01 (issue 15's recipe search: KD from the FP
    # teacher at lr 0.001, LSQ, and 4-bit KD at lr 0.002 all ended lower; see README)
    (f"{OUT}/{ARCH}_uniform8.pth.tar", ["--quant-scheme", "uniform8", "--quantizer", "minmax", "--epochs", "2", "--lr", "0.01",
                                       "--save-path", f"{RUNS}/uniform8", *_QAT, *_COMMON]),
    (f"{OUT}/{ARCH}_uniform4.pth.tar", ["--quant-scheme", "uniform4", "--quantizer", "minmax", "--epochs", "2", "--lr", "0.01",
                                       "--save-path", f"{RUNS}/uniform4", *_QAT, *_COMMON]),
    (f"{OUT}/{ARCH}_mixed_stage1_8bit.pth.tar", ["--quant-scheme", "mixed_stage1_8bit", "--epochs", "1",
                                                "--lr", "0.005", "--data-percentage", "0.5", "--save-path", f"{RUNS}/mixed_stage1_8bit",
                                                *_QAT, *_COMMON]),
]

MB = "mobilenetv2_w1"
MB_FP_FILE = f"{OUT}/{MB}_fp32.pth.tar"
_MB_COMMON = ["-a", MB, "-b", "128", "--lr-schedule", "cosine", "--no-progress"]
# FP from scratch for 3 epochs, then one QAT epoch on half the training set, as for resnet20.
RELEASES += [
    (MB_FP_FILE, ["--quant-scheme", "fp32", "--epochs", "3", "--lr", "0.05", "--wd", "4e-5",
                  "--save-path", f"{RUNS}/{MB}_fp32", *_MB_COMMON]),
    (f"{OUT}/{MB}_uniform8.pth.tar", ["--quant-scheme", "uniform8", "--epochs", "1", "--lr", "0.002",
                                      "--data-percentage", "0.5", "--fix-BN",
                                      "--act-range-momentum", "0.99", "--wd", "1e-4", "--pretrained", MB_FP_FILE,
                                      "--save-path", f"{RUNS}/{MB}_uniform8", *_MB_COMMON]),
]
TV = "torchvision:resnet18"
# A user's architecture (torchvision's, captured with torch.fx) trained by the default recipe; its
# PTQ and QAT results are in the README ("Your own model"). Released without optimizer state.
RELEASES += [
    (f"{OUT}/torchvision_resnet18_fp32.pth.tar", ["-a", TV, "--quant-scheme", "fp32",
                                                  "--save-path", f"{RUNS}/torchvision_resnet18_fp32", "--no-progress"]),
]
MV3 = "torchvision:mobilenet_v3_small"
MV3_FP_FILE = f"{OUT}/torchvision_mobilenet_v3_small_fp32.pth.tar"
# A family that needs the table activations (hardswish, hardsigmoid) and squeeze-excitation: the default
# recipes (FP from scratch: 6 epochs; QAT uniform8 from it: 2 epochs, --fix-BN with BN re-estimation).
RELEASES += [
    (MV3_FP_FILE, ["-a", MV3, "--quant-scheme", "fp32", "--save-path", f"{RUNS}/mobilenet_v3_small_fp32",
                   "-b", "128", "--no-progress"]),
    (f"{OUT}/torchvision_mobilenet_v3_small_uniform8.pth.tar",
     ["-a", MV3, "--quant-scheme", "uniform8", "--fix-BN", "--pretrained", MV3_FP_FILE,
      "--save-path", f"{RUNS}/mobilenet_v3_small_uniform8", "-b", "128", "--no-progress"]),
]
# Numeric profile ort (ONNX Runtime's int8 arithmetic, exported as QDQ): the uniform8 recipes above,
# unchanged but for --numerics ort, so each pair compares the two profiles (results/onnx.md).
RELEASES += [
    (f"{OUT}/{ARCH}_uniform8_ort.pth.tar", ["--quant-scheme", "uniform8", "--quantizer", "minmax", "--epochs", "2",
                                           "--lr", "0.01", "--save-path", f"{RUNS}/uniform8_ort", "--numerics", "ort",
                                           *_QAT, *_COMMON]),
    (f"{OUT}/{MB}_uniform8_ort.pth.tar", ["--quant-scheme", "uniform8", "--epochs", "1", "--lr", "0.002",
                                         "--data-percentage", "0.5", "--fix-BN", "--act-range-momentum", "0.99",
                                         "--wd", "1e-4", "--pretrained", MB_FP_FILE, "--save-path",
                                         f"{RUNS}/{MB}_uniform8_ort", "--numerics", "ort", *_MB_COMMON]),
]
BR = "hawq:bireal_resnet20"
BR_FP_FILE = f"{OUT}/bireal_resnet20_fp32.pth.tar"
_BR_COMMON = ["-a", BR, "-b", "128", "--lr-schedule", "cosine", "--no-progress"]
# Binary (W1/A1) and 2-bit: the best rows of results/binary.md, released as those runs made them (a
# seeded 30 % of the training set). Bi-Real's two steps: its real-valued network (hardtanh where the
# signs go), then the binary scheme with Bi-Real's gradients, Adam, BN trained on batch statistics
# (no --fix-BN), no weight decay on the binary weights (hawq.engine.make_optimizer).
RELEASES += [
    (BR_FP_FILE, ["--quant-scheme", "fp32", "--epochs", "5", "--data-percentage", "0.3", "--lr", "0.05",
                  "--save-path", f"{RUNS}/bireal_resnet20_fp32", *_BR_COMMON]),
    (f"{OUT}/bireal_resnet20_binary.pth.tar", ["--quant-scheme", "binary", "--quantizer", "bireal", "--pretrained", BR_FP_FILE,
                                               "--epochs", "4", "--lr", "0.001", "--optimizer", "adam", "--wd", "5e-6",
                                               "--data-percentage", "0.3", "--save-path", f"{RUNS}/bireal_resnet20_binary",
                                               *_BR_COMMON]),
]
# 2-bit (W2/A2 on every layer but the stem, the classifier and the 16-bit accumulators): LSQ started
# at the paper's steps (--lsq-init mean; from min/max steps 2-bit QAT collapses), from the released
# FP checkpoint, a seeded 30 % of the training set (results/binary.md).
RELEASES += [
    (f"{OUT}/{ARCH}_uniform2.pth.tar", ["--quant-scheme", "uniform2", "--quantizer", "lsq", "--lsq-init", "mean",
                                        "--epochs", "6", "--lr", "0.005", "--data-percentage", "0.3",
                                        "--save-path", f"{RUNS}/{ARCH}_uniform2", *_COMMON, *_QAT]),
]
# LQ-Net 2/2 (--quantizer lqnet: learned bases by QEM on an integer grid), the binary networks'
# recipe (Adam, BN on batch statistics, small weight decay) from the released FP checkpoint: the best
# 2-bit row of results/binary.md (91.60 against LSQ's 87.00).
RELEASES += [
    (f"{OUT}/{ARCH}_uniform2_lqnet.pth.tar", ["--quant-scheme", "uniform2", "--quantizer", "lqnet", "--pretrained", FP_FILE,
                                              "--epochs", "6", "--lr", "0.001", "--optimizer", "adam", "--wd", "5e-6",
                                              "--data-percentage", "0.3", "--save-path", f"{RUNS}/{ARCH}_uniform2_lqnet",
                                              *_COMMON]),
]
#: Released files stored without the optimizer state (the weights alone are 45 MB for resnet18).
WEIGHTS_ONLY = {f"{OUT}/torchvision_resnet18_fp32.pth.tar", MV3_FP_FILE,
                f"{OUT}/torchvision_mobilenet_v3_small_uniform8.pth.tar", f"{OUT}/{MB}_uniform8_ort.pth.tar"}
MANIFEST_FIELDS = ("file", "sha256", "arch", "scheme", "dataset", "top1", "command")


def _arg(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def command_of(argv: list[str]) -> str:
    return "python quant_train.py " + shlex.join(argv)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def evaluate_release(path: str, scheme: str, arch: str = ARCH) -> float:
    """Top-1 of a released checkpoint exactly as `quant_train.py -e` reports it (full test set)."""
    argv = ["-a", arch, "--quant-scheme", scheme, "--resume", path, "-e", "--no-progress",
            "--save-path", os.path.join(RUNS, "eval", arch, scheme)]
    return run(argv)["top1"]


def train_all(only: list[str] | None = None) -> None:
    for dest, argv in RELEASES:
        scheme = _arg(argv, "--quant-scheme")
        if only and scheme not in only and os.path.basename(dest) not in only:
            continue
        print(f"$ {command_of(argv)}", flush=True)
        run(argv)
        publish(os.path.join(_arg(argv, "--save-path"), "model_best.pth.tar"), dest)


def publish(src: str, dest: str) -> None:
    """Copy a run's best checkpoint to ``dest`` (atomically); for :data:`WEIGHTS_ONLY` files
    without the optimizer state, which only ``--resume`` of that very run would use."""
    if dest not in WEIGHTS_ONLY:
        shutil.copyfile(src, dest)
        return
    import torch
    from hawq.checkpoint import save_atomic
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt.pop("optimizer", None)
    save_atomic(ckpt, dest)


def manifest_row(dest: str, argv: list[str]) -> dict:
    scheme, arch = _arg(argv, "--quant-scheme"), _arg(argv, "-a")
    return {"file": os.path.basename(dest), "sha256": sha256(dest), "arch": arch, "scheme": scheme,
            "dataset": "fashion-mnist", "top1": f"{evaluate_release(dest, scheme, arch):.2f}",
            "command": command_of(argv)}


def write_manifest(path: str = f"{OUT}/MANIFEST.csv", only: list[str] | None = None) -> list[dict]:
    """Evaluate every release (or, with ``only``, those files; the other rows are kept when their
    file is unchanged) and rewrite the manifest atomically."""
    old = {}
    if only and os.path.exists(path):
        with open(path, newline="") as f:
            old = {r["file"]: r for r in csv.DictReader(f)}
    rows = []
    for dest, argv in RELEASES:
        name = os.path.basename(dest)
        keep = only and name not in only and name in old and old[name]["sha256"] == sha256(dest)
        rows.append(old[name] if keep else manifest_row(dest, argv))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\r\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())
    for r in rows:
        print(f"{r['file']:<40}{r['scheme']:<20}{r['top1']:>7}")
    return rows


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["train", "manifest"])
    p.add_argument("--only", nargs="*", help="schemes or released file names to (re)train")
    args = p.parse_args(argv)
    os.makedirs(OUT, exist_ok=True)
    if args.what == "train":
        train_all(args.only)
    else:
        write_manifest(only=args.only)
    return 0


if __name__ == "__main__":
    run_main(main)
