"""QAT overhead benchmark: training-step time of the quantized model vs. its floating-point model.

``python -m hawq.bench`` (``make bench``) times one training step -- forward, cross-entropy,
backward, SGD step (momentum 0.9, weight decay 1e-4) -- of the FP model and of the QAT model
(fake quantization, ``fix_BN=True``) of the same arch, on the same random batch, with the same
thread count, in one process, and writes ``results/qat_overhead.csv``
(``arch,scheme,quantizer,batch,fp_step_ms,qat_step_ms,ratio``; one QAT row per scheme × ``--quantizer``)
and ``results/qat_overhead.md``. Target (from the issue): ratio = qat/fp <= 1.5 for every quantizer.
``--ddp N`` adds ``results/qat_ddp_step.csv``: the step of an N-process gloo DDP run (torchrun's path,
ranges all-reduced) against the one-process QAT step.

Timing on a noisy machine: every model first runs ``--warmup`` steps (the first QAT step also
calibrates the activation ranges), then ``--rounds`` rounds each run a block of ``--steps``
steps of every model of the arch/batch (the FP model and one QAT model per scheme), with the
order rotated each round so that no model always runs first or last. Each step is timed alone;
a model's time is the median over all its timed steps. The FP model of an arch/batch is shared
by that arch/batch's rows.

Both models start from the same weights. The FP model's BatchNorm running statistics are set
from the benchmark batch before the QAT copy is made, as after FP training, so the folded
BN of the QAT model normalizes and the losses stay finite.
"""
from __future__ import annotations

import argparse
import copy
import csv
import datetime as _dt
import os
import shlex
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from hawq.bit_config import load_scheme
from hawq.apps.cli import add_arch_arg, add_quant_scheme_arg, one_line_errors, run_main
from hawq.errors import HawqError
from hawq.models.archs import arch_info
from hawq.tables import busy_warning, cpu_summary, markdown_table
from hawq.quant.config import QuantConfig
from hawq.quant.learned import METHODS

__all__ = ["FIELDS", "DDP_FIELDS", "TARGET_RATIO", "Trainee", "build_trainees", "measure", "profile_step",
           "row_of", "write_csv", "ddp_step_ms", "markdown", "build_parser", "main"]

FIELDS = ("arch", "scheme", "quantizer", "batch", "fp_step_ms", "qat_step_ms", "ratio")
DDP_FIELDS = ("arch", "scheme", "quantizer", "processes", "batch", "single_step_ms", "ddp_step_ms", "ratio")
TARGET_RATIO = 1.5
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4


# --------------------------------------------------------------------------- models / steps
def _set_bn_stats(model: nn.Module, x: torch.Tensor) -> None:
    """Running mean/var of every BatchNorm := the exact statistics of batch ``x``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one batch gives its exact statistics
    model.train()
    with torch.no_grad():
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom


class Trainee:
    """A model, its SGD optimizer and one timed training step on a fixed batch."""

    def __init__(self, label: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        self.label, self.model, self.x, self.y = label, model, x, y
        self.opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.times: list[float] = []
        self.last_loss = float("nan")
        self._cuda = x.device.type == "cuda"

    def step(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss

    def _sync(self):
        if self._cuda:
            torch.cuda.synchronize(self.x.device)

    def run(self, n: int, record: bool = True) -> None:
        self.model.train()
        loss = None
        for _ in range(n):
            self._sync()
            t0 = time.perf_counter()
            loss = self.step()
            self._sync()
            if record:
                self.times.append(time.perf_counter() - t0)
        if loss is not None:
            self.last_loss = float(loss.detach())

    @property
    def median_ms(self) -> float:
        return 1000.0 * statistics.median(self.times)


def build_trainees(arch: str, schemes: list[tuple[str, dict]], batch: int, input_size: int,
                   device: torch.device, seed: int = 0, quantizers: tuple[str, ...] = ("minmax",)) -> list[Trainee]:
    """[FP trainee, QAT trainee per scheme × quantizer], same initial weights, same batch. A QAT
    trainee's label is ``scheme/quantizer``."""
    from hawq.models.factory import fp_model, quant_model  # pytorchcv import is slow

    num_classes = arch_info(arch).num_classes
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, input_size, input_size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    fp = fp_model(arch, num_classes).to(device)
    _set_bn_stats(fp, x)
    trainees = []
    for label, bits in schemes:
        for method in quantizers:
            config = QuantConfig(fix_BN=True, quantizer=method)
            q = quant_model(arch, bits, num_classes, fp=copy.deepcopy(fp), config=config).to(device)
            trainees.append(Trainee(f"{label}/{method}", q, x, y))
    return [Trainee("fp32", fp, x, y)] + trainees


def measure(trainees: list[Trainee], rounds: int, steps: int, warmup: int, desc: str = "",
            progress: bool = True) -> None:
    """Warm up every trainee, then ``rounds`` interleaved blocks of ``steps`` timed steps each."""
    for t in trainees:
        t.run(warmup, record=False)
    n = len(trainees)
    for r in tqdm(range(rounds), desc=desc, disable=not progress, dynamic_ncols=True, leave=False):
        # rotate the order (and reverse it every other round) so no model is always first/last
        order = trainees[r % n:] + trainees[:r % n]
        if r % 2:
            order = order[::-1]
        for t in order:
            t.run(steps)


def profile_step(trainee: Trainee, steps: int = 3, row_limit: int = 25) -> str:
    """torch.profiler table (sorted by self CPU time) of ``steps`` training steps of ``trainee``."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainee.x.device.type == "cuda" else [])
    trainee.run(1, record=False)
    with profile(activities=acts) as prof:
        trainee.run(steps, record=False)
    sort = "self_cuda_time_total" if trainee.x.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=row_limit)


# --------------------------------------------------------------------------- output
def row_of(arch: str, label: str, batch: int, fp_ms: float, qat_ms: float) -> dict:
    scheme, _, method = label.rpartition("/")
    return {"arch": arch, "scheme": scheme, "quantizer": method, "batch": batch, "fp_step_ms": f"{fp_ms:.2f}",
            "qat_step_ms": f"{qat_ms:.2f}", "ratio": f"{qat_ms / fp_ms:.3f}"}


def write_csv(path: str, rows: list[dict], fields=FIELDS) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


# --------------------------------------------------------------------------- distributed step
def _ddp_worker(rank: int, world: int, port: int, arch: str, bits: dict, method: str, batch: int, size: int,
                rounds: int, warmup: int, out: str) -> None:
    """One rank of the DDP step timing: gloo, one thread, this rank's share of the global batch."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from hawq import distributed
    from hawq.models.factory import fp_model, quant_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    distributed.init(torch.device("cpu"))
    try:
        num_classes = arch_info(arch).num_classes
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, size, size, generator=g)
        y = torch.randint(0, num_classes, (batch,), generator=g)
        fp = fp_model(arch, num_classes)
        _set_bn_stats(fp, x)
        q = quant_model(arch, bits, num_classes, fp=fp, config=QuantConfig(fix_BN=True, quantizer=method))
        part = torch.tensor_split(torch.arange(batch), world)[rank]
        t = Trainee("ddp", DDP(q, broadcast_buffers=False), x[part], y[part])
        t.run(warmup, record=False)
        t.run(rounds)
        if rank == 0:
            with open(out, "w") as f:
                f.write(f"{t.median_ms}\n")
    finally:
        dist.barrier()
        distributed.shutdown()


def ddp_step_ms(arch: str, bits: dict, method: str, batch: int, size: int, processes: int, rounds: int,
                warmup: int) -> float:
    """Median training-step time (ms) of a ``processes``-rank gloo DDP run on this host (global batch
    ``batch``, activation ranges all-reduced every step, one thread per rank)."""
    import socket
    import tempfile

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ms")
        mp.spawn(_ddp_worker, args=(processes, port, arch, bits, method, batch, size, rounds, warmup, out),
                 nprocs=processes, join=True)
        with open(out) as f:
            return float(f.read())


def markdown(rows: list[dict], meta: str, method: str) -> str:
    lines = ["# QAT training-step overhead", "", meta, ""] + markdown_table(rows, FIELDS)
    worst = max((float(r["ratio"]) for r in rows), default=float("nan"))
    verdict = "met" if worst <= TARGET_RATIO else "NOT met"
    lines += ["", method, "",
              f"Goal: ratio = qat_step_ms / fp_step_ms <= {TARGET_RATIO} -- {verdict} (worst ratio {worst:.3f})."]
    return "\n".join(lines) + "\n"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({cpu_summary()})"


def _busy_warning(device: torch.device, threads: int) -> str:
    return busy_warning(threads) if device.type == "cpu" else ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hawq.bench",
                                description="Training-step time of QAT vs. floating-point models "
                                            "(writes OUT_DIR/qat_overhead.csv and .md).")
    add_arch_arg(p, ["resnet20_cifar10"], nargs="+", help="architectures (default: resnet20_cifar10)")
    add_quant_scheme_arg(p, ["uniform8", "uniform4"], nargs="+",
                         help="bit_config schemes (names or JSON paths; default: uniform8 uniform4)")
    p.add_argument("--quantizer", nargs="+", default=["minmax"], choices=list(METHODS),
                   help="QAT quantizers to time (default: minmax)")
    p.add_argument("--ddp", type=int, default=0, metavar="N",
                   help="also time an N-process gloo DDP step of the first scheme per quantizer (0: no)")
    p.add_argument("-b", "--batch-size", nargs="+", type=int, default=[128], help="batch sizes (default: 128)")
    p.add_argument("--input-size", type=int, default=None,
                   help="square input side (default: the arch's, 32 for CIFAR archs, 224 for ImageNet archs)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's current setting, usually one per core)")
    p.add_argument("--rounds", type=int, default=12, help="interleaved measurement rounds (default: 12)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per model per round (default: 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default: 2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--out-dir", default="results", help="output folder (default: results)")
    p.add_argument("--profile", action="store_true",
                   help="also print a torch.profiler table of the QAT training step (slowest scheme)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def _device(spec: str) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise HawqError(f"unknown device {spec!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HawqError("--device cuda: no CUDA device is available")
    if dev.type not in ("cpu", "cuda"):
        raise HawqError(f"unsupported device {spec!r}; use cpu, cuda, cuda:N or auto")
    return dev


@one_line_errors
def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; returns the CSV rows. ``--threads`` applies for this call only."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    saved_threads = torch.get_num_threads()
    try:
        return _run(args, argv)
    finally:
        torch.set_num_threads(saved_threads)


def _run(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    for name in ("rounds", "steps"):
        if getattr(args, name) < 1:
            raise HawqError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise HawqError(f"--warmup must be >= 0, got {args.warmup}")
    if args.ddp < 0 or args.ddp == 1:
        raise HawqError(f"--ddp must be 0 or >= 2 processes, got {args.ddp}")
    if any(b < 1 for b in args.batch_size):
        raise HawqError(f"--batch-size must be >= 1, got {min(args.batch_size)}")
    if args.input_size is not None and args.input_size < 8:
        raise HawqError(f"--input-size must be >= 8, got {args.input_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise HawqError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    # validate every arch and scheme before spending time measuring
    plan = [(arch, [(s, load_scheme(arch, s)) for s in args.quant_scheme]) for arch in args.arch]
    threads = torch.get_num_threads()
    busy = _busy_warning(device, threads)
    if busy:
        print(busy, file=sys.stderr)

    rows, ddp_rows, slowest = [], [], None
    for arch, schemes in plan:
        size = args.input_size or arch_info(arch).input_size
        for batch in args.batch_size:
            trainees = build_trainees(arch, schemes, batch, size, device, quantizers=tuple(args.quantizer))
            measure(trainees, args.rounds, args.steps, args.warmup, desc=f"{arch} b{batch}",
                    progress=not args.no_progress)
            fp, qats = trainees[0], trainees[1:]
            for t in [fp] + qats:
                if not torch.isfinite(torch.tensor(t.last_loss)):
                    print(f"warning: {arch} {t.label} loss is {t.last_loss} after training; "
                          "timings may not be representative", file=sys.stderr)
            for q in qats:
                rows.append(row_of(arch, q.label, batch, fp.median_ms, q.median_ms))
            if args.ddp:
                first = schemes[0][0]
                for q in (q for q in qats if q.label.startswith(first + "/")):
                    method = q.label.rpartition("/")[2]
                    ms = ddp_step_ms(arch, schemes[0][1], method, batch, size, args.ddp, args.rounds * args.steps,
                                     args.warmup)
                    ddp_rows.append({"arch": arch, "scheme": first, "quantizer": method, "processes": args.ddp,
                                     "batch": batch, "single_step_ms": f"{q.median_ms:.2f}",
                                     "ddp_step_ms": f"{ms:.2f}", "ratio": f"{ms / q.median_ms:.3f}"})
                ratio = q.median_ms / fp.median_ms
                if slowest is None or ratio > slowest[0]:
                    slowest = (ratio, f"{arch} {q.label} batch {batch}", q)
            del trainees, fp, qats

    os.makedirs(args.out_dir, exist_ok=True)
    write_csv(os.path.join(args.out_dir, "qat_overhead.csv"), rows)
    cmd = "python -m hawq.bench" + (" " + shlex.join(argv) if argv else "")
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    meta = (f"Command: `{cmd}` · torch {torch.__version__} · {threads} threads · "
            f"device {_device_name(device)} · {date}{load}")
    sizes = ", ".join(f"{a} {args.input_size or arch_info(a).input_size}x{args.input_size or arch_info(a).input_size}"
                      for a, _ in plan)
    method = (f"Step = forward + cross-entropy + backward + SGD (momentum {MOMENTUM}, wd {WEIGHT_DECAY}); "
              f"QAT model: fake quantization, fix_BN=True. Same random batch and initial weights for both "
              f"(input {sizes}). Median per-step time over {args.rounds} interleaved rounds x {args.steps} "
              f"steps per model, after {args.warmup} warm-up steps.")
    md = markdown(rows, meta, method + (f"\n\n**{busy}**" if busy else ""))
    if ddp_rows:
        write_csv(os.path.join(args.out_dir, "qat_ddp_step.csv"), ddp_rows, DDP_FIELDS)
        md += "\n".join(["", "## Distributed QAT step (torchrun's path, gloo)", ""] + markdown_table(ddp_rows, DDP_FIELDS) + [
            "", f"ddp_step_ms: median step of {args.ddp} processes on this host, one thread each, each on its share "
            "of the same global batch, activation ranges all-reduced every step; single_step_ms: the QAT row above "
            f"(one process, {threads} threads). On a host with fewer cores than processes x threads this measures "
            "the synchronization cost, not a speed-up.", ""])
    with open(os.path.join(args.out_dir, "qat_overhead.md"), "w") as f:
        f.write(md)
    print(md, end="")
    if args.profile and slowest is not None:
        print(f"\n## Profile: QAT training step, {slowest[1]}\n")
        print(profile_step(slowest[2]))
    return rows


if __name__ == "__main__":
    run_main(main)
