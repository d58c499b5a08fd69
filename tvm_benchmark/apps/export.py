"""Compile a checkpoint's integer program with TVM and write it as a deployable directory.

    python -m tvm_benchmark.export --checkpoint PATH --target llvm --out DIR [-b 1] [--threads N]

``DIR/model.so``: the compiled Relax VM library. Weights, biases, multipliers and shifts are
compile-time constants inside it, so it is self-contained: ``main(x: float32[B,3,S,S]) ->
int32 logits [B, classes]``. ``DIR/params.json``: the program's parameters a caller needs —
input shape, per-class logit scale (float logits = int logits · scale), arch, scheme, bit_config,
target, and the x86 kernel family (``isa``, ``--isa`` or detected) with the CPU flags it needs
(``tvm_benchmark.run`` refuses a program this CPU cannot execute). Both files are written atomically (temp file, then rename).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from hawq.apps.cli import console_script, one_line_errors, run_main
from hawq.errors import HawqError
from hawq.fileio import atomic_write, write_text_atomic
from tvm_benchmark.apps.cli_args import add_program_args
from tvm_benchmark.compile import compile_program
from hawq.program import load_program

__all__ = ["cli", "export", "main"]

LIB, PARAMS = "model.so", "params.json"


def export(checkpoint: str, target_key: str, out: str, batch: int = 1, threads: int | None = None,
           untuned: bool = False, arch: str | None = None, scheme: str | None = None,
           isa: str | None = None, input_size: int | None = None) -> dict:
    """Compile and write ``out/model.so`` + ``out/params.json``; returns the params dict."""
    if batch < 1:
        raise HawqError(f"--batch-size must be >= 1, got {batch}")
    prog = load_program(checkpoint, arch, scheme, input_size=input_size)
    built = compile_program(prog.graph, prog.input_shape(batch), target_key, threads,
                            fast=False if untuned else None, isa=isa)
    scale = prog.graph.get("output_scale")
    params = {
        "format": "hawq-tvm/1", "arch": prog.arch, "quant_scheme": prog.scheme, "dataset": prog.dataset,
        "bit_config": prog.bit_config, "numerics": prog.numerics, "input_shape": list(prog.input_shape(batch)),
        "output_dtype": "int32",
        "logit_scale": None if scale is None else np.asarray(scale, dtype=np.float64).tolist(),
        "target_key": target_key, "target": str(built.target), "scheduled": not untuned,
        "isa": built.isa_name, "isa_flags": list(built.isa.flags) if built.isa else [],
        "source": os.path.abspath(checkpoint),
    }
    dest = Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write(dest / LIB, built.executable.export_library, suffix=".so")
    write_text_atomic(dest / PARAMS, json.dumps(params, indent=1) + "\n")
    return params


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_program_args(p, batch_default=1)
    p.add_argument("--out", required=True, help="output directory (created)")
    args = p.parse_args(argv)
    params = export(args.checkpoint, args.target, args.out, args.batch_size, args.threads, args.untuned,
                    args.arch, args.quant_scheme, args.isa, args.input_size)
    print(f"wrote {Path(args.out) / LIB} and {PARAMS}: {params['arch']} {params['quant_scheme']} "
          f"input {params['input_shape']} isa {params['isa']} target {params['target']}")
    return 0


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
