"""``python -m hawq.api_bench``: the cost of ``hawq.quantize`` on a user's model: torch.fx capture,
then PTQ calibration, per torchvision model, at a resolution and calibration-set size (issue 27's
goal: resnet50 at 224 with 64 images under 60 s on 2 cores). Writes ``results/api.{csv,md}``, each
row naming its host; one run, seconds of wall clock (the machine's load is reported with them).
"""
from __future__ import annotations

import argparse
import csv
import os
import time

import torch

from hawq.apps.cli import one_line_errors, run_main
from hawq.tables import markdown_table, run_context

__all__ = ["FIELDS", "measure", "main"]

FIELDS = ("host", "date", "model", "input", "images", "capture_s", "calibrate_s", "total_s", "layers")


def measure(name: str, size: int, images: int, batch: int = 16, seed: int = 0) -> dict:
    """One ``hawq.quantize`` of torchvision's ``name`` (random weights; the cost does not depend on
    them) on ``images`` standard-normal images, timed in its two phases."""
    import torchvision

    from hawq.capture import capture
    from hawq.ptq.pipeline import PTQSettings, quantize
    from hawq.quant.config import QuantConfig
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None)
    data = torch.randn(images, 3, size, size)
    t0 = time.perf_counter()
    q = capture(model, data[:batch], QuantConfig(fix_BN=True))
    t1 = time.perf_counter()
    quantize(q, data, PTQSettings(calib_batch=batch), progress=False)
    t2 = time.perf_counter()
    return {"model": f"torchvision:{name}", "input": size, "images": images, "capture_s": round(t1 - t0, 2),
            "calibrate_s": round(t2 - t1, 2), "total_s": round(t2 - t0, 2), "layers": len(q.quant_layer_names())}


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--out-dir", default="results")
    args = p.parse_args(argv)
    warn, host, date = run_context(torch.get_num_threads())
    rows = []
    for name in args.models:
        r = {"host": host, "date": date, **measure(name, args.input_size, args.images)}
        print(f"{r['model']}: capture {r['capture_s']} s, calibration {r['calibrate_s']} s, total {r['total_s']} s")
        rows.append(r)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "api.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    lines = ["# `hawq.quantize` cost (capture + calibration)", "",
             f"`python -m hawq.api_bench --models {' '.join(args.models)} --input-size {args.input_size} "
             f"--images {args.images}` on {host}, {date}; {torch.get_num_threads()} torch threads.", ""]
    lines += [warn, ""] if warn else []
    lines += markdown_table(rows, FIELDS[2:], text_fields=("model",))
    with open(os.path.join(args.out_dir, "api.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    run_main(main)
