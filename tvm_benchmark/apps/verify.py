"""Bit-exactness of the compiled TVM program against the integer reference (NumPy int64).

    python -m tvm_benchmark.verify --checkpoint PATH [--target llvm] [--isa avx2|...] [--limit N] [--per-layer]
    python -m tvm_benchmark.verify -a ARCH --quant-scheme S [--random]   # no checkpoint: a calibrated model

Compiles the checkpoint's integer graph, runs TVM and :func:`hawq.reference.run_graph` on the
validation set, prints a table and, as the last line, ``mismatches: M/N`` (N logits compared
integer to integer). ``--per-layer`` compares every node's integer output (first batch) and names
the first node that diverges. Exit status 1 when anything differs.
"""
from __future__ import annotations

import argparse

from hawq.apps.cli import console_script, one_line_errors, run_main
from hawq.data import build_loaders
from hawq.errors import HawqError
from hawq.export import export_integer
from hawq.apps.checks import add_calibration_args, calibrated_inputs, print_layers
from hawq.verify import compare_layers, compare_with_reference
from tvm_benchmark.apps.cli_args import add_data_args, add_program_args
from tvm_benchmark.compile import compile_program
from tvm_benchmark.frontend import node_outputs
from hawq.program import Program, load_program
from tvm_benchmark.runtime import Runner
from tvm_benchmark.targets import device_of

__all__ = ["cli", "main"]

@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_program_args(p, batch_default=50, checkpoint_required=False)
    add_data_args(p)
    add_calibration_args(p)
    p.add_argument("--per-layer", action="store_true", help="compare every node's output on the first batch")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        raise HawqError(f"--batch-size must be >= 1, got {args.batch_size}")

    if args.checkpoint is None:
        model, size, val, what = calibrated_inputs(args)
        art = export_integer(model, (3, size, size))
        prog = Program(art["graph"], (3, size, size), model.arch, args.quant_scheme, what, model.bit_config(),
                       "calibrated", model.config.numerics)
    else:
        prog = load_program(args.checkpoint, args.arch, args.quant_scheme, args.dataset, args.data, args.input_size)
        data = build_loaders(args.dataset or prog.dataset, args.data, args.batch_size, 0, 1.0, 0,
                             eval_limit=args.limit, input_size=prog.input_chw[1])
        val = data.val
    built = compile_program(prog.graph, prog.input_shape(args.batch_size), args.target, args.threads,
                            all_outputs=args.per_layer, fast=False if args.untuned else None, isa=args.isa)
    runner = Runner(built.executable, device_of(args.target), args.batch_size, built.isa_name)
    print(f"target: {built.target}  isa: {built.isa_name}  scheduled: {'no' if args.untuned else 'yes'}  "
          f"numerics: {prog.numerics}")
    if args.per_layer:
        x, _ = next(iter(val))
        x = x.numpy()
        values = {value: out for (_, value), out in zip(node_outputs(prog.graph), runner(x))}
        rows = compare_layers(values, prog.graph, x)
        print_layers(rows)
        m, total = sum(r["mismatches"] for r in rows), sum(r["values"] for r in rows)
    else:
        r = compare_with_reference(runner, prog.graph, val, "tvm", progress=not args.no_progress)
        w = max(18, len(prog.arch) + 2)      # torchvision:NAME / file.py:FUNCTION specs are long
        print(f"{'arch':<{w}}{'scheme':<20}{'images':>8}{'tvm_top1':>10}{'ref_top1':>10}")
        print(f"{prog.arch:<{w}}{prog.scheme:<20}{r['images']:>8}{r['tvm_top1']:>10.2f}{r['ref_top1']:>10.2f}")
        m, total = r["mismatches"], r["logits"]
    print(f"mismatches: {m}/{total}")
    return 1 if m else 0

if __name__ == "__main__":
    run_main(main)

#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
