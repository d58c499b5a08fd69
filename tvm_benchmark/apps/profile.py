"""Where a whole integer program's time goes: every kernel timed inside the program, per kernel.

    python -m tvm_benchmark.apps.profile -a resnet18 [--quant-scheme uniform8] [-b 8] [--threads 2] [--isa amx] [--top 30]

Builds the arch's program exactly as ``bench`` does (calibrated on random data, the host's kernel
family or ``--isa``), times the whole ``main`` (median of 5 × 10 calls), then runs it ``--runs``
times more with TVM's VM instrument hook around every call it makes, and prints one markdown row
per kernel: its name (the fused ops it holds), calls per run, milliseconds per run and its share of
the summed kernel time; ``--out`` also writes the table (host and command included) as markdown.
The hook costs a few microseconds per call, so the summed time exceeds the whole program's by
about that much per call; a kernel's own row is what it costs where it runs, with its real inputs
and the caches the kernels before it left — unlike ``layer_latency``, which times each layer alone.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import numpy as np

from hawq.apps.cli import add_arch_arg, add_input_size_arg, console_script, one_line_errors, run_main
from hawq.bit_config import list_schemes
from hawq.errors import HawqError
from hawq.fileio import write_text_atomic
from hawq.models.archs import arch_info
from hawq.tables import markdown_table, run_context
from tvm_benchmark.apps.cli_args import add_isa_arg
from tvm_benchmark.apps.layer_latency import calibrated_graph

__all__ = ["cli", "FIELDS", "kernel_times", "main"]

FIELDS = ("kernel", "calls", "ms", "share_pct")


def kernel_times(runner, x: np.ndarray, runs: int = 5) -> tuple[list[dict], float]:
    """(rows sorted by time, summed ms per run) of ``runner``'s program on batch ``x``: each
    function ``main`` calls (kernels and VM builtins) timed around its call, summed per name."""
    import tvm
    total: dict[str, float] = collections.Counter()
    calls: dict[str, int] = collections.Counter()
    start = [0.0]

    def hook(func, name, before, ret, *args):   # noqa: ARG001  (TVM's instrument signature)
        if before:
            start[0] = time.perf_counter()
        else:
            total[str(name)] += time.perf_counter() - start[0]
            calls[str(name)] += 1
        return 0

    xt = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), runner.device)
    runner.vm.set_instrument(hook)
    try:
        for _ in range(runs):
            runner.vm["main"](xt)
    finally:
        runner.vm.set_instrument(None)
    summed = sum(total.values()) * 1e3 / runs
    rows = [{"kernel": k, "calls": calls[k] // runs, "ms": round(v * 1e3 / runs, 4),
             "share_pct": round(100 * v * 1e3 / runs / summed, 1)} for k, v in total.items()]
    return sorted(rows, key=lambda r: -r["ms"]), summed


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arch_arg(p, required=True)
    p.add_argument("--quant-scheme", default="uniform8")
    p.add_argument("-b", "--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    add_input_size_arg(p, "the arch's canonical size")
    add_isa_arg(p)
    p.add_argument("--runs", type=int, default=5, help="instrumented runs averaged (default 5)")
    p.add_argument("--top", type=int, default=30, help="rows printed (default 30; --out gets all)")
    p.add_argument("--out", default=None, help="also write the table as markdown here")
    args = p.parse_args(argv)
    if args.quant_scheme not in list_schemes(args.arch):
        raise HawqError(f"--quant-scheme {args.quant_scheme!r}: not a scheme of {args.arch} "
                        f"(one of: {', '.join(list_schemes(args.arch))})")
    if args.batch_size < 1 or args.runs < 1:
        raise HawqError("--batch-size and --runs must be at least 1")
    os.environ["TVM_NUM_THREADS"] = str(args.threads)   # read when TVM's pool first starts
    import tvm
    from tvm_benchmark.compile import compile_program
    from tvm_benchmark.runtime import Runner

    size = args.input_size or arch_info(args.arch).input_size
    shape = (args.batch_size, 3, size, size)
    warn, host, date = run_context(args.threads)
    graph, _ = calibrated_graph(args.arch, args.quant_scheme, args.batch_size, input_size=size)
    built = compile_program(graph.to_dict(), shape, "llvm", args.threads, isa=args.isa)
    runner = Runner(built.executable, tvm.cpu(0), args.batch_size, built.isa_name)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    whole = float(np.median(runner.time(x, number=10, repeat=5)))
    rows, summed = kernel_times(runner, x, args.runs)
    head = (f"{args.arch} {args.quant_scheme}, batch {args.batch_size}, {args.threads} threads, family "
            f"{built.isa_name}; host {host}; {date}. Whole program {whole:.3f} ms (median); kernels "
            f"summed {summed:.3f} ms ({len(rows)} functions).")
    print(head)
    print("\n".join(markdown_table(rows[:args.top], FIELDS, text_fields=("kernel",))))
    if args.out:
        command = "python -m tvm_benchmark.apps.profile " + " ".join(argv if argv is not None else sys.argv[1:])
        text = [f"# Kernel profile: {args.arch}", "", f"`{command}`", "", head, ""]
        text += ([f"**{warn}**", ""] if warn else []) + markdown_table(rows, FIELDS, text_fields=("kernel",))
        write_text_atomic(Path(args.out), "\n".join(text) + "\n")
        print(f"table -> {args.out}")
    return 0


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)

if __name__ == "__main__":
    run_main(main)
