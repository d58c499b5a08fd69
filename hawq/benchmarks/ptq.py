"""``python -m hawq.ptq_bench`` (``make ptq-bench``): the post-training quantization benchmark in
MQBench's table layout (W_calibration, A_calibration, wbit, abit, reconstruction, top-1) on the
embedded dataset, from our released FP checkpoints, into ``results/ptq.{csv,md}``.

Every quantized row (except the weight-only ones) is the integer model: top-1 is the eval path
(the same integers as the artifact), and its exported artifact is checked against the NumPy
integer reference on the first ``--verify-images`` test images (``mismatches/logits``). The
weight-only W4A32 rows (MyAdaRound's study) keep float activations, so they have no integer
program: they are evaluated with the training path (fake-quantized weights, float activations)
and marked ``weight-only``. Like every row of the peers' table: per-channel symmetric weights
unless the row says ``layer``, per-tensor activations, BN folded, first conv / last FC / model
input / pooled features at 8 bits (``--first-last-8bit``), ``--calib-size`` seeded training
images shared by calibration and reconstruction.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from hawq import checkpoint as C
from hawq import engine
from hawq.apps.cli import one_line_errors, run_main
from hawq.data import build_loaders, calibration_images
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.models.archs import input_size_of
from hawq.fileio import rows_csv, write_text_atomic
from hawq.models.factory import fp_model, quant_model
from hawq.ptq.pipeline import PTQSettings, quantize, scheme_bits
from hawq.ptq.recon import ReconSettings, quant_mode
from hawq.quant.config import QuantConfig
from hawq.tables import cpu_summary, markdown_table
from hawq.verify import compare

__all__ = ["FP_CHECKPOINTS", "FIELDS", "KEY", "Row", "default_rows", "run_row", "merge", "markdown",
           "build_parser", "main"]

FP_CHECKPOINTS = {"resnet20_cifar10": "checkpoints/resnet20_cifar10_fp32.pth.tar",
                  "mobilenetv2_w1": "checkpoints/mobilenetv2_w1_fp32.pth.tar"}
FIELDS = ["host", "arch", "W_calibration", "A_calibration", "wbit", "abit", "granularity", "bn_fold", "recon",
          "iters", "top1", "fp_top1", "delta", "images", "verified", "calib_size", "seed", "calib_s", "recon_s",
          "date", "command"]
KEY = ("host", "arch", "W_calibration", "A_calibration", "wbit", "abit", "granularity", "bn_fold", "recon", "iters")


@dataclass(frozen=True)
class Row:
    """One benchmark row: weight quantizer, activation observer, bits, reconstruction; ``abit`` 32
    means float activations (weight-only)."""
    w_obs: str
    a_obs: str
    wbit: int
    abit: int
    recon: str = "none"
    per_channel: bool = True
    bn_fold: str = "before"

    @property
    def weight_only(self) -> bool:
        return self.abit == 32

    @property
    def tag(self) -> str:
        gran = "" if self.per_channel else "_layer"
        fold = "" if self.bn_fold == "before" else "_foldafter"
        return f"w{self.wbit}a{self.abit}_{self.w_obs}_{self.a_obs}_{self.recon}{gran}{fold}"


def default_rows() -> list[Row]:
    """The issue's rows: W8A8 and W4A8 with MQBench's three calibrations (W4A8 also AdaRound),
    W3A8/W2A8 nearest vs AdaRound, W4A4/W2A4/W3A3 with every reconstruction, MyAdaRound's W4A32."""
    cal = [("minmax", "emaminmax"), ("minmax", "emaquantile"), ("mse", "emamse")]
    rows = [Row(w, a, 8, 8) for w, a in cal] + [Row(w, a, 4, 8) for w, a in cal]
    rows.append(Row("mse", "emamse", 4, 8, "adaround"))
    for wb in (3, 2):
        rows += [Row("mse", "emamse", wb, 8), Row("mse", "emamse", wb, 8, "adaround")]
    for wb, ab in ((4, 4), (2, 4), (3, 3)):
        rows += [Row("mse", "mse", wb, ab, r) for r in ("none", "adaround", "brecq", "qdrop")]
    for w in ("minmax", "mse", "lp2.4"):
        for pc in (False, True):
            for fold in ("after", "before"):
                rows.append(Row(w, "-", 4, 32, per_channel=pc, bn_fold=fold))
    return rows


@torch.no_grad()
def _train_path_top1(model, loader, progress: bool) -> tuple[float, int]:
    """Top-1 of the training path with activation quantizers off (float activations)."""
    hit = n = 0
    with quant_mode(model, weights=True, acts=False):
        model.train()
        for x, y in tqdm(loader, desc="eval (weight-only)", disable=not progress, leave=False, dynamic_ncols=True):
            out = model(x)
            out = getattr(out, "value", out)
            hit += int((out.argmax(1) == y).sum())
            n += len(y)
    model.eval()
    return 100.0 * hit / max(n, 1), n


def run_row(arch: str, row: Row, fp_file, images, data, verify_loader, args) -> dict:
    # weight-only rows still need activation widths for the scheme; their quantizers stay off
    bits = scheme_bits(arch, row.wbit, 8 if row.weight_only else row.abit, first_last_8bit=True)
    config = QuantConfig(numerics="exact", per_channel=row.per_channel, fix_BN=True)
    model = quant_model(arch, bits, data.num_classes, fp=fp_model(arch, data.num_classes, weights=fp_file),
                        config=config)
    recon = ReconSettings(method=row.recon, iters=args.iters)
    settings = PTQSettings(w_observer=row.w_obs, a_observer="minmax" if row.weight_only else row.a_obs,
                           per_channel=row.per_channel, bn_fold=row.bn_fold, recon=recon)
    report = quantize(model, images, settings, seed=args.seed, progress=not args.no_progress)
    if row.weight_only:
        top1, n = _train_path_top1(model, data.val, not args.no_progress)
        verified = "weight-only (no integer program)"
    else:
        res = engine.evaluate(model, data.val, "cpu", progress=not args.no_progress)
        top1, n = res["top1"], res["n"]
        art = export_integer(model, (3, data.input_size, data.input_size))
        v = compare(model, art["graph"], verify_loader, progress=not args.no_progress)
        verified = f"{v['mismatches']}/{v['logits']} ({v['images']} img)"
        if v["mismatches"]:
            print(f"warning: {arch} {row.tag}: {verified} logits differ from the integer reference", file=sys.stderr)
    return {"arch": arch, "W_calibration": row.w_obs, "A_calibration": row.a_obs, "wbit": row.wbit,
            "abit": row.abit, "granularity": "channel" if row.per_channel else "layer", "bn_fold": row.bn_fold,
            "recon": row.recon, "iters": args.iters if row.recon != "none" else "", "top1": round(top1, 2),
            "images": n, "verified": verified, "calib_size": args.calib_size, "seed": args.seed,
            "calib_s": round(report.calib_seconds, 1), "recon_s": round(report.recon_seconds, 1)}


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows if rows and set(FIELDS) <= set(rows[0]) else []


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of ``old`` not replaced by a row of ``new`` with the same :data:`KEY`, then ``new``."""
    keys = {tuple(str(r[k]) for k in KEY) for r in new}
    return [r for r in old if tuple(str(r[k]) for k in KEY) not in keys] + new


def markdown(rows: list[dict], host: str, command: str) -> str:
    """The report: one table per arch, of ``host``'s rows only."""
    mine = [r for r in rows if r["host"] == host]
    out = ["# Post-training quantization (hawq.ptq) on the embedded Fashion-MNIST", "",
           f"Host: {host}. Only this host's rows are tabulated here (all hosts: `ptq.csv`).", "",
           f"Latest command: `{command}`", "",
           "Per-channel symmetric weights unless `granularity` says layer; per-tensor activations; BN folded "
           "(`bn_fold`: before or after choosing the weight grid); first conv, last FC, model input and pooled "
           "features at 8 bits. `top1`: the integer model on `images` test images (weight-only rows: the "
           "fake-quantized training path, float activations). `verified`: logits differing from the NumPy "
           "integer reference / logits compared. `calib_s`, `recon_s`: seconds (noisy, this host).", ""]
    cols = ["W_calibration", "A_calibration", "wbit", "abit", "granularity", "bn_fold", "recon", "iters", "top1",
            "delta", "images", "verified", "calib_size", "seed", "calib_s", "recon_s"]
    for arch in sorted({r["arch"] for r in mine}):
        rs = [r for r in mine if r["arch"] == arch]
        fp = next((r for r in rs if r["W_calibration"] == "FP"), rs[0])
        out += [f"## {arch} (FP {fp['fp_top1']} on {fp['images']} test images)", ""]
        out += [f"Command: `{c}`" for c in dict.fromkeys(r["command"] for r in rs)] + [""]
        out += markdown_table(rs, cols, text_fields=("W_calibration", "A_calibration", "granularity", "bn_fold",
                                                     "recon", "verified"))
        out.append("")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hawq.ptq_bench", description=__doc__.splitlines()[0].strip("`: "))
    p.add_argument("-a", "--arch", nargs="+", default=["resnet20_cifar10"], choices=sorted(FP_CHECKPOINTS))
    p.add_argument("--only", nargs="+", default=None, metavar="TAG",
                   help="rows whose tag contains any of these (e.g. w4a4 adaround); see --list")
    p.add_argument("--list", action="store_true", help="print the row tags and exit")
    p.add_argument("--iters", type=int, default=500, help="reconstruction iterations per layer or block")
    p.add_argument("--calib-size", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-limit", type=int, default=None, help="first N test images (default: all 10000)")
    p.add_argument("--verify-images", type=int, default=500, help="test images checked against the reference")
    p.add_argument("--data", default=None, help="Fashion-MNIST directory (default: the Debian package's)")
    p.add_argument("--out", default="results", help="directory of ptq.csv and ptq.md")
    p.add_argument("--no-progress", action="store_true")
    return p


@one_line_errors
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    rows = default_rows()
    if args.only:
        rows = [r for r in rows if any(t in r.tag for t in args.only)]
    if args.list:
        print("\n".join(r.tag for r in rows))
        return 0
    if not rows:
        raise HawqError(f"no benchmark row matches --only {' '.join(args.only)} (see --list)")
    if args.iters < 1 or args.verify_images < 1:
        raise HawqError("--iters and --verify-images must be >= 1")
    host = cpu_summary()
    command = "python -m hawq.ptq_bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out_dir = Path(args.out)
    results = []
    for arch in args.arch:
        fp_file = C.read(FP_CHECKPOINTS[arch])
        data = build_loaders("fashion-mnist", args.data, 250, 0, 1.0, args.seed, eval_limit=args.eval_limit,
                             input_size=input_size_of("fashion-mnist", arch))
        verify_loader = build_loaders("fashion-mnist", args.data, 250, 0, 1.0, args.seed,
                                    eval_limit=args.verify_images,
                                      input_size=input_size_of("fashion-mnist", arch)).val
        images = calibration_images("fashion-mnist", args.data, args.calib_size, args.seed,
                                    input_size=input_size_of("fashion-mnist", arch))
        fp = engine.evaluate(fp_model(arch, data.num_classes, weights=fp_file), data.val, "cpu",
                             progress=not args.no_progress)
        today = _dt.date.today().isoformat()
        results.append({"host": host, "arch": arch, "W_calibration": "FP", "A_calibration": "FP", "wbit": 32,
                        "abit": 32, "granularity": "", "bn_fold": "", "recon": "", "iters": "",
                        "top1": round(fp["top1"], 2), "fp_top1": round(fp["top1"], 2), "delta": 0.0,
                        "images": fp["n"], "verified": "", "calib_size": "", "seed": "", "calib_s": "",
                        "recon_s": "", "date": today, "command": command})
        for row in tqdm(rows, desc=arch, disable=args.no_progress, dynamic_ncols=True):
            t0 = time.perf_counter()
            r = run_row(arch, row, fp_file, images, data, verify_loader, args)
            r.update(host=host, fp_top1=round(fp["top1"], 2), delta=round(r["top1"] - fp["top1"], 2), date=today,
                     command=command)
            results.append(r)
            print(f"{arch} {row.tag}: top1 {r['top1']:.2f} ({r['delta']:+.2f}) verified {r['verified']} "
                  f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    merged = merge(_read(out_dir / "ptq.csv"), results)
    write_text_atomic(out_dir / "ptq.csv", rows_csv(merged, FIELDS))
    write_text_atomic(out_dir / "ptq.md", markdown(merged, host, command) + "\n")
    print(f"wrote {out_dir / 'ptq.csv'} and {out_dir / 'ptq.md'}")
    return 0


if __name__ == "__main__":
    run_main(main)
