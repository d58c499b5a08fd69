"""Does the Hessian-aware ILP pick better schemes than chance? ``python -m hawq.mpq_bench``

On the embedded Fashion-MNIST with the released floating-point checkpoint of resnet20_cifar10:

1. sensitivity of every conv/linear layer (``hawq.sensitivity``, Hutchinson trace x quantization
   perturbation) -> ``OUT_DIR/mpq_sensitivity.csv``;
2. at each BOPS budget (default 0.5 and 0.75, HAWQ-V3's fraction of the way from all-4-bit to
   all-8-bit): the ILP scheme (``hawq.mpq``) and ``--random`` random feasible schemes close to the
   budget (groups visited in a random order, each raised to 8 bits while the budget allows, so the
   scheme is maximal: no single group can still go to 8 bits);
3. the baselines "all middle layers 4-bit" (``uniform4``: stem, head 8-bit) and ``uniform8``;
4. every scheme evaluated by post-calibration top-1: the quantized model of the FP checkpoint
   (BN folded with its running statistics), activation ranges calibrated by training-mode forwards
   on ``--calib-batches`` training batches without gradients, then the integer eval path
   (``hawq.engine.evaluate``) on the test set; with ``--qat-percentage P`` also after one epoch of
   QAT on that fraction of the training set (``quant_train.py`` with the scheme's JSON file).

Writes ``OUT_DIR/mpq_comparison.csv`` / ``.md`` and each scheme as ``OUT_DIR/mpq_schemes/<label>.json``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from tqdm import tqdm

from hawq import engine
from hawq.apps.cli import one_line_errors, run_main
from hawq.data import build_loaders
from hawq.errors import HawqError
from hawq.models.factory import fp_model_pretrained, quant_model
from hawq.mpq import BITS, Constraint, Problem, Solution, parse_constraint, read_sensitivity, scheme_json
from hawq.fileio import rows_csv, write_text_atomic
from hawq.sensitivity import CSV_FIELDS, batches_of, layer_sensitivity
from hawq.apps.train import run as quant_train
from hawq.quant.config import QuantConfig

__all__ = ["ARCH", "DEFAULT_CKPT", "FIELDS", "random_fill", "candidates", "calibrated_top1", "qat_top1",
           "markdown", "build_parser", "sensitivity", "main"]

ARCH = "resnet20_cifar10"
DEFAULT_CKPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints",
                            "resnet20_cifar10_fp32.pth.tar")
FIELDS = ("budget", "scheme", "method", "gbops", "size_mb", "sum_omega", "groups_8bit", "top1_calib", "top1_qat")


# --------------------------------------------------------------------------- schemes
def random_fill(problem: Problem, constraint: Constraint, rng: np.random.Generator) -> dict[str, int]:
    """A random maximal feasible choice: all groups at 4 bits, then in a random order each group
    goes to 8 bits if the ``constraint`` budget still holds."""
    cost = problem.cost(constraint)
    budget = constraint.budget(cost)
    choice = {g.act: BITS[0] for g in problem.groups}
    for i in rng.permutation(len(problem.groups)):
        act = problem.groups[i].act
        trial = {**choice, act: BITS[-1]}
        if cost.total(trial) <= budget:
            choice = trial
    return choice


def candidates(problem: Problem, budgets: list[str], n_random: int, seed: int) -> list[tuple[str, str, str, Solution]]:
    """(budget text, label, method, solution) for every scheme to evaluate, baselines first."""
    rng = np.random.default_rng(seed)
    low = {g.act: BITS[0] for g in problem.groups}
    out = [("-", "uniform8", "all 8-bit (reference)", problem.evaluate({g: BITS[-1] for g in low})),
           ("-", "uniform4", "all middle layers 4-bit", problem.evaluate(low))]
    for text in budgets:
        c = parse_constraint(text)
        out.append((text, f"ilp_{c.kind}_{c.value:g}", "ILP (Hessian-aware)", problem.solve([c])))
        out += [(text, f"random{i + 1}_{c.kind}_{c.value:g}", "random maximal feasible",
                 problem.evaluate(random_fill(problem, c, rng))) for i in range(n_random)]
    return out


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def calibrated_top1(scheme: dict[str, int], ckpt: str, data, calib, momentum: float) -> float:
    """Post-calibration top-1 (%) of ``scheme`` on the FP checkpoint, integer eval path."""
    fp = fp_model_pretrained(ARCH, data.num_classes, ckpt)
    model = quant_model(ARCH, scheme, data.num_classes, fp=fp,
                        config=QuantConfig(fix_BN=True, act_range_momentum=momentum))
    engine.calibrate(model, (x for x, _y in calib))
    return engine.evaluate(model, data.val, torch.device("cpu"), progress=False)["top1"]


def qat_top1(path: str, ckpt: str, percentage: float, eval_limit: int | None, seed: int) -> float:
    """Best top-1 (%) of one QAT epoch (quant_train.py) from the FP checkpoint with the scheme file."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["-a", ARCH, "--quant-scheme", path, "--pretrained", ckpt, "--epochs", "1", "--lr", "0.005",
                "--lr-schedule", "cosine", "--fix-BN", "--wd", "1e-4", "-b", "128", "--data-percentage",
                str(percentage), "--seed", str(seed), "--save-path", tmp, "--no-progress"]
        if eval_limit:
            argv += ["--eval-limit", str(eval_limit)]
        return quant_train(argv)["best_top1"]


# --------------------------------------------------------------------------- report
def markdown(rows: list[dict], meta: str) -> str:
    qat = any(r["top1_qat"] != "" for r in rows)
    fields = [f for f in FIELDS if f != "top1_qat" or qat]
    lines = ["# Hessian-aware ILP vs random and uniform bit allocations", "", meta, "",
             "| " + " | ".join(fields) + " |",
             "|" + "|".join("---" if f in ("budget", "scheme", "method") else "---:" for f in fields) + "|"]
    lines += ["| " + " | ".join(str(r[f]) for f in fields) + " |" for r in rows]
    lines += ["", "Summary (top-1 %):", "", "| budget | metric | ILP | random mean (min..max) | uniform4 |",
              "|---|---|---:|---:|---:|"]
    uniform4 = {r["scheme"]: r for r in rows}["uniform4"]
    for budget in dict.fromkeys(r["budget"] for r in rows if r["budget"] != "-"):
        for metric in ("top1_calib", "top1_qat") if qat else ("top1_calib",):
            ilp = next(float(r[metric]) for r in rows if r["budget"] == budget and r["method"].startswith("ILP"))
            rand = [float(r[metric]) for r in rows if r["budget"] == budget and r["method"].startswith("random")]
            lines.append(f"| {budget} | {metric} | {ilp:.2f} | {statistics.mean(rand):.2f} "
                         f"({min(rand):.2f}..{max(rand):.2f}) | {float(uniform4[metric]):.2f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hawq.mpq_bench", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--pretrained", default=DEFAULT_CKPT, help="FP checkpoint of resnet20_cifar10 (default: the released one)")
    a("--budgets", nargs="+", default=["bops=0.5", "bops=0.75"], help="constraints to compare at")
    a("--random", type=int, default=4, help="random schemes per budget (default: 4)")
    a("--sensitivity", metavar="CSV", help="reuse this hawq.sensitivity CSV instead of computing it")
    a("--sens-batch", type=int, default=64, help="images in the sensitivity loss (default: 64)")
    a("--max-iter", type=int, default=100, help="most Hutchinson probes (default: 100)")
    a("--tol", type=float, default=0.1, help="Hutchinson relative standard error target (default: 0.1)")
    a("--calib-batches", type=int, default=16, help="training batches of 128 for calibration (default: 16)")
    a("--act-range-momentum", type=float, default=0.9, help="EMA momentum during calibration (default: 0.9)")
    a("--eval-limit", type=int, default=None, help="first N test images (default: all 10000)")
    a("--qat-percentage", type=float, default=0.0,
      help="also run one QAT epoch on this fraction of the training set per scheme (default: 0 = off)")
    a("--seed", type=int, default=0)
    a("--out-dir", default="results")
    a("--no-progress", action="store_true")
    return p


def sensitivity(args, argv: list[str]) -> tuple[str, float]:
    """Compute and write ``OUT_DIR/mpq_sensitivity.csv``; returns (its path, seconds taken)."""
    t0 = time.time()
    sens_data = build_loaders("fashion-mnist", None, args.sens_batch, 0, 1.0, args.seed)
    fp = fp_model_pretrained(ARCH, sens_data.num_classes, args.pretrained)
    print(f"sensitivity of {args.pretrained} on {args.sens_batch} training images ...", flush=True)
    rows = layer_sensitivity(fp, ARCH, batches_of(sens_data.train, 1), tol=args.tol, max_iter=args.max_iter,
                             seed=args.seed, progress=not args.no_progress)
    path = os.path.join(args.out_dir, "mpq_sensitivity.csv")
    write_text_atomic(path, rows_csv(rows, CSV_FIELDS))
    print(f"  {rows[0]['iters']} probes, max rel_err {max(float(r['rel_err']) for r in rows):.3f}, "
          f"{time.time() - t0:.0f} s -> {path}", flush=True)
    return path, time.time() - t0


@one_line_errors
def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.random < 1 or args.calib_batches < 1:
        raise HawqError("--random and --calib-batches must be >= 1")
    t0 = time.time()
    torch.manual_seed(args.seed)
    data = build_loaders("fashion-mnist", None, 128, 0, 1.0, args.seed, eval_limit=args.eval_limit)
    sens_path, t_sens = args.sensitivity, 0.0
    if sens_path is None:
        sens_path, t_sens = sensitivity(args, argv)
    problem = Problem.build(ARCH, read_sensitivity(sens_path, ARCH))
    calib = batches_of(data.train, args.calib_batches)
    out, scheme_dir = [], os.path.join(args.out_dir, "mpq_schemes")
    todo = candidates(problem, args.budgets, args.random, args.seed)
    for budget, label, method, sol in tqdm(todo, desc="evaluate", disable=args.no_progress, dynamic_ncols=True):
        path = os.path.join(scheme_dir, f"{label}.json")
        write_text_atomic(path, scheme_json(ARCH, label, sol, [], "python -m hawq.mpq_bench " + shlex.join(argv)))
        top1 = calibrated_top1(sol.scheme, args.pretrained, data, calib, args.act_range_momentum)
        qat = (f"{qat_top1(path, args.pretrained, args.qat_percentage, args.eval_limit, args.seed):.2f}"
               if args.qat_percentage > 0 else "")
        out.append({"budget": budget, "scheme": label, "method": method, "gbops": f"{sol.metrics['bops']:.4f}",
                    "size_mb": f"{sol.metrics['size']:.4f}", "sum_omega": f"{sol.objective:.3e}",
                    "groups_8bit": sum(b == BITS[-1] for b in sol.choice.values()), "top1_calib": f"{top1:.2f}",
                    "top1_qat": qat})
    write_text_atomic(os.path.join(args.out_dir, "mpq_comparison.csv"), rows_csv(out, FIELDS))
    images = data.val.dataset_size
    meta = (f"Command: `python -m hawq.mpq_bench{' ' + shlex.join(argv) if argv else ''}` · {ARCH}, "
            f"Fashion-MNIST, {images} test images · sensitivity {sens_path}"
            f"{f' ({t_sens:.0f} s)' if t_sens else ' (given)'} · "
            f"total {time.time() - t0:.0f} s · torch {torch.__version__}, {torch.get_num_threads()} threads. "
            f"top1_calib: post-calibration ({args.calib_batches} batches of 128, EMA momentum "
            f"{args.act_range_momentum}), integer eval path"
            + (f"; top1_qat: best of 1 QAT epoch on {args.qat_percentage:g} of the training set" if args.qat_percentage
               > 0 else "") + ".")
    md = markdown(out, meta)
    write_text_atomic(os.path.join(args.out_dir, "mpq_comparison.md"), md)
    print(md, end="")
    return out


if __name__ == "__main__":
    run_main(main)
