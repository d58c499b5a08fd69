"""Per-layer latency of every quantized conv/dense layer at 4 and 8 bits (and 1 bit) on a TVM target.

    python -m tvm_benchmark.layer_latency -a resnet18 [--target llvm] [--isa vnni] [-b 1] [--threads 2]

writes ``results/layer_latency/<host key>/<arch>.csv`` (``layer,bits,median_ms,p90_ms,macs,gmac_s,
pct_of_limit,epilogue_ms``; the key names the host's LLVM CPU and the kernel family, e.g. ``llvm-znver3-avx2``),
which ``hawq.mpq --constraint latency=...`` reads for the current host (or ``--latency-table PATH``).
``macs``: multiply-accumulates per batch; ``gmac_s``: what the layer achieved (macs / median);
``pct_of_limit``: that against the host's int8 MAC limit for the family (``Isa.macs_per_cycle`` ×
threads × the clock ``/proc/cpuinfo`` reports: the next bottleneck shows as a low percentage);
``epilogue_ms``: the time the requantization that reads the layer's accumulators adds to it (with a
ReLU or clamp before it, as TVM fuses them: the layer and its epilogue compiled together, timed the
same way, minus the layer alone; empty where a residual add or several nodes read them), so a slow
epilogue shows beside its convolution.

Each layer is compiled alone, exactly as it is compiled inside the whole program (same kernel
choice — at 4 bits the saturation-free ``vpmaddubsw`` kernel applies — same epilogue), from the
integer graph of a model calibrated on random data with every free layer at ``bits`` (the
``uniform4``/``uniform8`` schemes, and the ``binary`` one where the arch has it: its 1-bit layers
run the popcount kernels on the sign grid; layers the schemes keep at 8 bits get an 8-bit row only). Its
input is produced by a stand-in quantizer over the layer's real input range; that quantizer is timed
alone, alternately with the layer, and subtracted round by round, in 3 passes over all layers; the
CSV holds the median and 90th percentile of those differences. Latencies are per batch of ``-b``
images.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hawq import ir
from hawq.bit_config import list_schemes, load_scheme
from hawq.apps.cli import add_arch_arg, add_input_size_arg, console_script, one_line_errors, run_main
from hawq.engine import calibrate_random
from hawq.fileio import rows_csv, write_text_atomic
from hawq.export import export_integer
from hawq.models.factory import fp_model, quant_model
from hawq.models.archs import arch_info, check_input_size
from hawq.quant.config import QuantConfig
from tvm_benchmark.apps.cli_args import add_isa_arg
from tvm_benchmark.compile import compile_program
from tvm_benchmark.frontend import value_ranges
from tvm_benchmark.isa import host_mhz, mac_limit_gmac_s, resolve
from tvm_benchmark.runtime import Runner
from tvm_benchmark.targets import device_of, target_tag

__all__ = ["cli", "FIELDS", "ROOT", "calibrated_graph", "layer_macs", "epilogue_of", "paired_ms", "layer_rows", "write_rows", "main"]

FIELDS = ("layer", "bits", "median_ms", "p90_ms", "macs", "gmac_s", "pct_of_limit", "epilogue_ms")
ROOT = Path(__file__).resolve().parents[2] / "results" / "layer_latency"   # data, not code


def calibrated_graph(arch: str, scheme: str, batch: int, seed: int = 0,
                     input_size: int | None = None) -> tuple[ir.Graph, dict]:
    """(integer graph, value shapes) of ``arch`` under ``scheme`` for ``input_size``-pixel images
    (default: the arch's canonical size), calibrated on random batches."""
    info = arch_info(arch)
    size = input_size or info.input_size
    check_input_size(arch, size)
    torch.manual_seed(seed)
    shape = (batch, 3, size, size)
    bits = load_scheme(arch, scheme)
    q = quant_model(arch, bits, info.num_classes, fp=fp_model(arch, info.num_classes),
                    config=QuantConfig(fix_BN=True).for_bits(bits), input_size=size)
    graph = ir.Graph.from_dict(export_integer(calibrate_random(q, shape, seed=seed), shape[1:])["graph"])
    info = graph.infer((1, *shape[1:]))
    return graph, {k: shp[1:] for k, (shp, _) in info.items()}


def _stub(lo: int, hi: int) -> ir.Quantize:
    """A quantize node that turns float inputs in [lo, hi] into those integers (scale 1, z 0)."""
    return ir.Quantize(name="stub", inputs=["input"], output="stub:out", scale=torch.ones(1), zero_point=0,
                       qmin=lo, qmax=hi, bits=8)


def _runner(graph: ir.Graph, shape, threads: int, target: str, rng, isa: str | None) -> tuple[Runner, np.ndarray]:
    """The compiled ``graph`` and an input batch inside its input quantizer's range."""
    built = compile_program(graph, shape, target, threads, isa=isa)
    node = graph.nodes[0]
    x = rng.integers(int(node.qmin), int(node.qmax) + 1, size=shape).astype(np.float32)
    return Runner(built.executable, device_of(target), shape[0], built.isa_name), x


def paired_ms(layer: tuple[Runner, np.ndarray], stub: tuple[Runner, np.ndarray], rounds: int = 15) -> np.ndarray:
    """Per-round (layer − stub) ms: the two are timed alternately, so drift hits both alike."""
    diffs = []
    for _ in range(rounds):
        a = float(np.median(layer[0].time(layer[1], number=5, repeat=3)))
        b = float(np.median(stub[0].time(stub[1], number=5, repeat=3)))
        diffs.append(a - b)
    return np.asarray(diffs)


def layer_macs(node: "ir.Conv2d | ir.Dense", out_shape: tuple[int, ...], batch: int) -> int:
    """Multiply-accumulates of one conv/dense node per batch: output elements (``out_shape`` per
    image) times the weights each one reads."""
    return batch * int(np.prod(out_shape)) * int(np.prod(np.shape(node.weight)[1:]))


def epilogue_of(graph: ir.Graph, node: ir.Op) -> list[ir.Op]:
    """The epilogue of ``node``'s accumulators: the chain of one-input nodes (ReLU, clamps) ending in
    a requantization, each the only reader of the one before, that TVM fuses into one kernel; [] when
    a residual add or several nodes read them."""
    chain, value = [], node.output
    while True:
        readers = [n for n in graph.nodes if value in n.inputs]
        if len(readers) != 1 or len(readers[0].inputs) != 1 or not isinstance(
                readers[0], (ir.Relu, ir.Clamp, ir.Requant, ir.RequantFloat)):
            return []
        chain.append(readers[0])
        if isinstance(readers[0], (ir.Requant, ir.RequantFloat)):
            return chain
        value = readers[0].output


@dataclasses.dataclass
class _Job:
    """One layer at one width: its compiled program (and with its epilogue), stub, MACs per batch,
    and the (layer − stub) ms of its timed rounds, alone and with the epilogue."""
    name: str
    bits: int
    layer: tuple
    stub: tuple
    macs: int
    with_epilogue: tuple | None
    diffs: list = dataclasses.field(default_factory=list)
    epilogue_diffs: list = dataclasses.field(default_factory=list)


def _jobs(arch: str, batch: int, threads: int, target: str, rng, isa: str | None,
          input_size: int | None = None) -> list[_Job]:
    """A job for every conv/dense layer at 8 and at 4 bits (and at 1 where the arch has a binary scheme)."""
    jobs, stubs = [], {}
    widths = [(8, "uniform8"), (4, "uniform4")] + ([(1, "binary")] if "binary" in list_schemes(arch) else [])
    for bits, scheme in widths:
        graph, shapes = calibrated_graph(arch, scheme, batch, input_size=input_size)
        signs = {n.output for n in graph.nodes if isinstance(n, ir.Sign)}
        # The static ranges the whole program uses (not just the nodes' qmin/qmax: e.g. a post-ReLU
        # requant is [0, qmax]), so the stub feeds each layer the container and kernel it gets there.
        ranges = value_ranges(graph, (batch, *shapes[graph.input]))
        for node in (n for n in graph.nodes if isinstance(n, (ir.Conv2d, ir.Dense))):
            if int(node.weight_bits) != bits:
                continue   # a layer the schemes keep at 8 bits: 8-bit row only
            src = node.inputs[0]
            shape = (batch, *shapes[src])
            base = [_stub(*ranges[src])]
            if src in signs:       # a binary layer reads the sign grid (what its popcount kernel packs)
                base.append(ir.Sign(name="stub_sign", inputs=["stub:out"], output="stub:sign"))
            first = graph.nodes[0] if graph.nodes[0].output == src else None   # the stem reads the real input quantizer
            layer = node if first else dataclasses.replace(node, inputs=[base[-1].output])
            head = [first] if first else base
            head = [*head, layer]
            key = (shape, base[0].qmin, base[0].qmax, len(base))
            if key not in stubs:
                stubs[key] = _runner(ir.Graph("input", base[-1].output, base), shape, threads, target, rng, isa)
            epi = epilogue_of(graph, node)
            jobs.append(_Job(node.name, bits, _runner(ir.Graph("input", node.output, head), shape, threads, target, rng, isa),
                             stubs[key], layer_macs(node, shapes[node.output], batch),
                             None if not epi else
                             _runner(ir.Graph("input", epi[-1].output, [*head, *epi]), shape, threads, target, rng, isa)))
    return jobs


def layer_rows(arch: str, batch: int, threads: int, target: str, passes: int = 3,
               progress: bool = True, isa: str | None = None, input_size: int | None = None,
               limit_gmac_s: float | None = None) -> list[dict]:
    """Every layer is measured in ``passes`` passes spread over the whole run (5 paired rounds
    each), so a slow spell of a shared machine cannot own one layer's figure. ``limit_gmac_s``: the
    host's int8 MAC limit (:func:`tvm_benchmark.isa.mac_limit_gmac_s`), which ``pct_of_limit`` of
    the 4- and 8-bit rows is measured against (empty without it, and for 1-bit rows, whose
    popcount MACs are not int8 ones)."""
    rng = np.random.default_rng(0)
    jobs = _jobs(arch, batch, threads, target, rng, isa, input_size)
    with tqdm(total=passes * len(jobs), desc=f"{arch} layers", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for _ in range(passes):
            for j in jobs:
                j.diffs.extend(paired_ms(j.layer, j.stub, rounds=5))
                if j.with_epilogue is not None:
                    j.epilogue_diffs.extend(paired_ms(j.with_epilogue, j.stub, rounds=5))
                bar.update()
    rows = []
    for j in jobs:
        d, e = j.diffs, j.epilogue_diffs
        median = max(float(np.median(d)), 0.0)
        gmac_s = j.macs / (median * 1e6) if median > 0 else None
        pct = round(100 * gmac_s / limit_gmac_s, 1) if gmac_s and limit_gmac_s and j.bits > 1 else ""
        rows.append({"layer": j.name, "bits": j.bits, "median_ms": round(median, 5),
                     "p90_ms": round(max(float(np.percentile(d, 90)), 0.0), 5), "macs": j.macs,
                     "gmac_s": round(gmac_s, 2) if gmac_s else "", "pct_of_limit": pct,
                     "epilogue_ms": round(max(float(np.median(e)) - median, 0.0), 5) if e else ""})
    return rows


def write_rows(rows: list[dict], path: Path) -> None:
    write_text_atomic(path, rows_csv(sorted(rows, key=lambda r: (r["layer"], r["bits"])), FIELDS))


@one_line_errors
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arch_arg(p, required=True)
    p.add_argument("--target", default="llvm")
    p.add_argument("-b", "--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    add_input_size_arg(p, "the arch's canonical size (224 for ImageNet archs, torchvision and timm, 32 for "
                          "resnet20_cifar10 and files)")
    add_isa_arg(p)
    p.add_argument("--out", default=None, help="default: results/layer_latency/<host key>/<arch>.csv "
                                               "(<arch>@<N>.csv at another --input-size)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    family = resolve(args.isa) if args.target == "llvm" else None
    mhz = host_mhz()                         # read once: the limit and its printed clock agree
    limit = mac_limit_gmac_s(family, args.threads, mhz)
    rows = layer_rows(args.arch, args.batch_size, args.threads, args.target, progress=not args.no_progress,
                      isa=args.isa, input_size=args.input_size, limit_gmac_s=limit)
    canonical = args.input_size in (None, arch_info(args.arch).input_size)
    name = args.arch if canonical else f"{args.arch}@{args.input_size}"
    out = Path(args.out) if args.out else ROOT / target_tag(args.target, family) / f"{name}.csv"
    write_rows(rows, out)
    total = {b: sum(r["median_ms"] for r in rows if r["bits"] == b) for b in (1, 4, 8)}
    epilogue = sum(r["epilogue_ms"] for r in rows if r["bits"] == 8 and r["epilogue_ms"] != "")
    binary = f", 1-bit rows {total[1]:.3f} ms" if total[1] else ""
    print(f"{len(rows)} rows -> {out}  (sum of medians: 8-bit {total[8]:.3f} ms, 4-bit rows {total[4]:.3f} ms{binary}; "
          f"8-bit requantization epilogues measured: {epilogue:.3f} ms)")
    if limit:
        print(f"int8 MAC limit of this host for {family.name}: {limit:.0f} GMAC/s ({family.macs_per_cycle} "
              f"MAC/cycle/core x {args.threads} threads x {mhz:.0f} MHz); pct_of_limit is against it")
    return 0


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
