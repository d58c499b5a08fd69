"""Run an exported TVM integer program (``tvm_benchmark.export``'s directory) on a batch.

    python -m tvm_benchmark.run --lib DIR [--images N | --input x.npy] [--output logits.npy]

Loads ``DIR/model.so`` and ``DIR/params.json``; runs the first N validation images of the dataset it
was trained on (or a float32 ``.npy`` of shape [N,3,S,S]), prints top-1 (when labels are known) and
the per-batch latency, and optionally saves the int64 logits.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tvm

from hawq.apps.cli import console_script, one_line_errors, run_main
from hawq.data import build_loaders
from hawq.errors import HawqError
from tvm_benchmark.apps.export import LIB, PARAMS
from tvm_benchmark.runtime import Runner
from tvm_benchmark.targets import device_of


__all__ = ["cli", "load_exported", "main"]

def load_exported(path: str) -> tuple[Runner, dict]:
    d = Path(path)
    if not (d / LIB).is_file() or not (d / PARAMS).is_file():
        raise HawqError(f"'{path}' is not an exported program (needs {LIB} and {PARAMS}; "
                        "make one with python -m tvm_benchmark.export)")
    try:
        params = json.loads((d / PARAMS).read_text())
    except ValueError as e:
        raise HawqError(f"'{d / PARAMS}' is not valid JSON ({e})") from None
    if params.get("format") != "hawq-tvm/1":
        raise HawqError(f"'{d / PARAMS}' is not a hawq-tvm/1 parameter file")
    lib = tvm.runtime.load_module(str(d / LIB))
    return Runner(lib, device_of(params["target_key"]), params["input_shape"][0], params.get("isa")), params


def _inputs(args, params) -> tuple[np.ndarray, np.ndarray | None]:
    if args.input:
        try:
            x = np.load(args.input)
        except (OSError, ValueError) as e:
            raise HawqError(f"cannot read --input '{args.input}': {e}") from None
        if x.ndim != 4 or list(x.shape[1:]) != params["input_shape"][1:]:
            raise HawqError(f"--input has shape {list(x.shape)}, expected [N, {', '.join(map(str, params['input_shape'][1:]))}]")
        return x.astype(np.float32), None
    data = build_loaders(params["dataset"], args.data, args.images, 0, 1.0, 0, eval_limit=args.images,
                         input_size=params["input_shape"][-1])
    x, y = next(iter(data.val))
    return x.numpy(), y.numpy()


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lib", required=True, help="directory written by python -m tvm_benchmark.export")
    p.add_argument("--images", type=int, default=100, help="first N validation images")
    p.add_argument("--data", default=None, help="dataset directory (ImageFolder root for imagenet)")
    p.add_argument("--input", default=None, help="float32 .npy [N,3,S,S] instead of the dataset")
    p.add_argument("--output", default=None, help="save the int64 logits here (.npy)")
    args = p.parse_args(argv)
    runner, params = load_exported(args.lib)
    x, y = _inputs(args, params)
    logits = runner(x)
    scale = params.get("logit_scale")
    pred = (logits * np.asarray(scale).reshape(1, -1) if scale else logits).argmax(1)
    lat = runner.time(x[:runner.batch] if len(x) >= runner.batch else
                      np.resize(x, (runner.batch, *x.shape[1:])), number=5, repeat=5)
    print(f"{params['arch']} {params['quant_scheme']} on {params['target']}: {len(x)} images, "
          f"batch {runner.batch}, median {np.median(lat):.3f} ms/batch")
    if y is not None:
        print(f"top-1: {100.0 * float((pred == y).mean()):.2f}")
    if args.output:
        np.save(args.output, logits)
        print(f"logits -> {args.output}")
    return 0


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
