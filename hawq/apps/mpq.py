"""``python -m hawq.mpq``: Hessian-aware mixed-precision bit allocation by integer linear programming
(the method: :mod:`hawq.mpq`).

    python -m hawq.mpq -a resnet20_cifar10 --sensitivity sens.csv --constraint bops=0.5 \
        [--constraint size=0.6] [--constraint latency=0.7 --latency-table PATH] --name my_scheme --out my_scheme.json
    python -m hawq.mpq -a resnet20_cifar10 --sensitivity sens.csv --sweep bops=0.25:1.0:0.05 --out front.csv

A latency constraint without ``--latency-table`` reads this host's committed per-layer table,
``results/layer_latency/<host key>/<arch>.csv`` (written by ``python -m tvm_benchmark.layer_latency``).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hawq.apps.cli import add_arch_arg, console_script, one_line_errors, run_main
from hawq.errors import HawqError
from hawq.fileio import rows_csv, write_text_atomic
from hawq.mpq import (SWEEP_FIELDS, UNITS, Constraint, Problem, Solution, parse_constraint, parse_sweep, plot_front,
                      read_latency_table, read_sensitivity, scheme_json, sweep_rows)

__all__ = ["cli", "LATENCY_ROOT", "host_latency_table", "build_parser", "main"]


#: Committed per-host tables (data, not code; written by ``python -m tvm_benchmark.layer_latency``).
LATENCY_ROOT = Path(__file__).resolve().parents[2] / "results" / "layer_latency"


def host_latency_table(arch: str) -> str:
    """The committed per-layer table of this host (``results/layer_latency/<host key>/<arch>.csv``,
    the key from :func:`tvm_benchmark.targets.target_tag`), or one line saying which exist."""
    try:
        from tvm_benchmark.targets import target_tag
        key = target_tag("llvm")
    except ImportError as e:
        raise HawqError(f"a latency constraint needs --latency-table PATH (TVM is not importable: {e})") from None
    path = LATENCY_ROOT / key / f"{arch}.csv"
    if path.is_file():
        return str(path)
    have = sorted(d.name for d in LATENCY_ROOT.iterdir() if (d / f"{arch}.csv").is_file()) if LATENCY_ROOT.is_dir() else []
    raise HawqError(f"no per-layer latency table for this host ({key}) and {arch}: measure one with "
                    f"python -m tvm_benchmark.layer_latency -a {arch}, or pass --latency-table "
                    + (f"{LATENCY_ROOT}/<key>/{arch}.csv with a key of: {', '.join(have)}" if have else "PATH"))



# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hawq.mpq",
                                description="Hessian-aware mixed-precision bit allocation (ILP, HAWQ-V3).")
    a = p.add_argument
    add_arch_arg(p)
    a("--sensitivity", required=True, metavar="CSV", help="output of python -m hawq.sensitivity")
    a("--constraint", action="append", default=[], metavar="KIND=VALUE",
      help="size|bops|latency = fraction in [0,1] (lo + r*(hi-lo), HAWQ-V3's bops_0.5 convention) or an "
           "absolute budget with its unit (6.5MB, 75GBOPS, 3.2ms); repeatable")
    a("--latency-table", metavar="CSV", help="per-layer latency: layer,bits,median_ms,p90_ms")
    a("--sweep", metavar="KIND=START:STOP:STEP",
      help="solve for every budget of the range; --out is then the Pareto CSV (plot beside it, .png)")
    a("--name", help="scheme name inside the JSON (default: the --out file name without .json)")
    a("--seed", type=int, default=0, help="accepted for symmetry; the ILP is deterministic")
    a("--out", required=True, help="scheme JSON (or, with --sweep, the front CSV)")
    return p


def _inputs(args) -> tuple[Problem, list[Constraint], list[Constraint]]:
    """Parse and check everything before any solve or write (the arch was checked while parsing)."""
    constraints = [parse_constraint(t) for t in args.constraint]
    sweep = parse_sweep(args.sweep) if args.sweep else []
    if not constraints and not sweep:
        raise HawqError("give at least one --constraint KIND=VALUE (or --sweep KIND=START:STOP:STEP)")
    kinds = {c.kind for c in constraints + sweep}
    if "latency" in kinds and not args.latency_table:
        args.latency_table = host_latency_table(args.arch)
        print(f"latency table: {args.latency_table} (this host)", file=sys.stderr)
    omega = read_sensitivity(args.sensitivity, args.arch)
    table = read_latency_table(args.latency_table, args.arch) if args.latency_table else None
    return Problem.build(args.arch, omega, table), constraints, sweep


def _summary(sol: Solution) -> str:
    parts = [f"size {sol.metrics['size']:.4f} MB", f"{sol.metrics['bops']:.4f} GBOPS"]
    if "latency" in sol.metrics:
        parts.append(f"latency {sol.metrics['latency']:.4f} ms")
    eight = sum(b == 8 for b in sol.choice.values())
    return f"Σ Ω {sol.objective:.6g}; " + ", ".join(parts) + f"; {eight}/{len(sol.choice)} free groups at 8 bits"


@one_line_errors
def main(argv: list[str] | None = None) -> Solution | list[dict[str, object]]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    problem, constraints, sweep = _inputs(args)
    if sweep:
        rows = sweep_rows(problem, sweep, constraints)
        if not rows:
            raise HawqError(f"--sweep {args.sweep}: no budget of the range is feasible")
        png = str(Path(args.out).with_suffix(".png"))
        write_text_atomic(args.out, rows_csv(rows, SWEEP_FIELDS))
        plot_front(rows, sweep[0].kind, args.arch, png)
        print(f"{len(rows)} budgets, {sum(bool(r['pareto']) for r in rows)} on the Pareto front -> {args.out}, {png}")
        return rows
    sol = problem.solve(constraints)
    budgets = [(c, c.budget(problem.cost(c))) for c in constraints]
    name = args.name or Path(args.out).name.removesuffix(".json")
    command = "python -m hawq.mpq " + shlex.join(argv)
    write_text_atomic(args.out, scheme_json(args.arch, name, sol, budgets, command))
    for c, budget in budgets:
        print(f"{c.text}: budget {budget:.4f} {UNITS[c.kind]}, achieved {sol.metrics[c.kind]:.4f}")
    print(f"{name}: {_summary(sol)} -> {args.out}")
    print(f"check: python bit_config.py --table -a {args.arch} --quant-scheme {args.out}")
    return sol


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
