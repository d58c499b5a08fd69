"""``python -m hawq.capture_report``: which torchvision classification builders capture today, as a
table (``results/capture.md``): per builder, the quantized layer count or the one-line reason it
stops. Capture only (meta tensors: shapes without weights or arithmetic); the bit-exactness of
the captured ones is what ``tests/hawq/test_capture.py`` checks.
"""
from __future__ import annotations

import argparse
import datetime
import os

import torch
from tqdm import tqdm

from hawq.apps.cli import one_line_errors, run_main
from hawq.errors import HawqError

__all__ = ["status"]


def status(name: str, size: int) -> str:
    """``captured: N layers`` or the capture's one-line error for torchvision's ``name``."""
    import torchvision

    from hawq.capture import capture
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
            example = torch.zeros(1, 3, size, size)
    except (NotImplementedError, RuntimeError):      # a builder that reads its own init values (regnet)
        model = torchvision.models.get_model(name, weights=None)
        example = torch.zeros(1, 3, size, size)
    try:
        q = capture(model, example, name=f"torchvision:{name}", copy_model=False)
    except HawqError as e:
        return str(e).replace(f"torchvision:{name}: ", "").split(" (/")[0]
    return f"captured: {len(q.quant_layer_names())} quantized layers"


@one_line_errors
def main(argv=None) -> int:
    import torchvision
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--out", default="results/capture.md")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    names = sorted(torchvision.models.list_models(module=torchvision.models))
    rows = [(n, status(n, args.input_size)) for n in tqdm(names, disable=args.no_progress)]
    ok = sum(r.startswith("captured") for _, r in rows)
    lines = [f"# torchvision {torchvision.__version__} classification builders through `hawq.capture`", "",
             f"`python -m hawq.capture_report --input-size {args.input_size}` ({datetime.date.today().isoformat()}): "
             f"{ok} of {len(rows)} capture. Capture only; bit-exactness: `tests/hawq/test_capture.py`.", "",
             "| builder | status |", "|---|---|"] + [f"| {n} | {r} |" for n, r in rows]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{ok} of {len(rows)} builders capture -> {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
