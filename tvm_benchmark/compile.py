"""Targets, lowering, MetaSchedule tuning and building of the integer Relax modules.

A target is named by a short key (``llvm``, ``cuda``) on the command line and turned into the dict
form TVM 0.27 requires. ``llvm`` means *this* host: the CPU LLVM reports (``znver3``,
``icelake-server``, …), so LLVM uses every vector extension the host has (AVX2, AVX-512, VNNI).

Tuning records live in ``tvm_benchmark/tuning/<target tag>/<arch>-b<batch>/`` (MetaSchedule's JSON
database). Workloads are matched ignoring tensor data (``ignore-tensor``), and uniform8/uniform4/mixed
schemes share their dtypes (4-bit values travel in 8-bit containers), so one tuning run per
(arch, batch, target) serves every checkpoint and scheme of that arch; benchmarks never retune.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import tvm
import tvm_ffi
from tvm import relax

from hawq.errors import HawqError

TARGETS = ("llvm", "cuda")
TUNING_ROOT = Path(__file__).resolve().parent / "tuning"
MODULE_EQUALITY = "ignore-tensor"


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. ``znver3``, ``icelake-server``)."""
    return str(tvm_ffi.get_global_func("target.llvm_get_system_cpu")())


def host_has_vnni() -> bool:
    """True when this CPU has AVX-512 VNNI (vpdpbusd)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags


def cuda_available() -> bool:
    return bool(tvm.cuda(0).exist)


def make_target(key: str, threads: int | None = None) -> tvm.target.Target:
    """``llvm`` (this host) or ``cuda`` (with an llvm host) as a TVM Target."""
    if key == "llvm":
        spec = {"kind": "llvm", "mcpu": host_cpu(), "num-cores": int(threads or os.cpu_count() or 1)}
        return tvm.target.Target(spec)
    if key == "cuda":
        arch = _cuda_arch()
        return tvm.target.Target({"kind": "cuda", "arch": arch, "max_threads_per_block": 1024,
                                  "max_shared_memory_per_block": 49152, "thread_warp_size": 32},
                                 host={"kind": "llvm"})
    raise HawqError(f"unsupported target '{key}': choose one of {', '.join(TARGETS)}")


def _cuda_arch() -> str:
    dev = tvm.cuda(0)
    if dev.exist:
        return "sm_" + str(dev.compute_version).replace(".", "")
    return os.environ.get("HAWQ_CUDA_ARCH", "sm_90")   # cross-compile default: Hopper (the lent GPUs)


def target_tag(key: str) -> str:
    """Directory name for per-target data: ``llvm-znver3``, ``cuda-sm_90``."""
    return f"llvm-{host_cpu()}" if key == "llvm" else f"cuda-{_cuda_arch()}"


def tuning_dir(key: str, arch: str, batch: int) -> Path:
    return TUNING_ROOT / target_tag(key) / f"{arch}-b{batch}"


def lower(mod: tvm.IRModule) -> tvm.IRModule:
    """High-level Relax ops -> fused TIR kernels (conv + bias + requant + clip + cast in one)."""
    seq = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])
    return seq(mod)


def _database(path: Path):
    from tvm.s_tir import meta_schedule as ms
    return ms.database.JSONDatabase(work_dir=str(path), module_equality=MODULE_EQUALITY)


def has_records(key: str, arch: str, batch: int) -> bool:
    d = tuning_dir(key, arch, batch)
    return (d / "database_tuning_record.json").is_file()


def tune(mod: tvm.IRModule, target: tvm.target.Target, work_dir: Path, trials: int,
         trials_per_task: int | None = None, seed: int = 0) -> None:
    """MetaSchedule-tune every fused kernel of the lowered module; records go to ``work_dir``.

    Only the JSON database is kept (MetaSchedule's logs go to a scratch dir).
    """
    from tvm.s_tir import meta_schedule as ms
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = work_dir / "_logs"
    with target:
        ms.relax_integration.tune_relax(
            mod=lower(mod), params={}, target=target, work_dir=str(scratch), max_trials_global=trials,
            max_trials_per_task=trials_per_task, database=_database(work_dir), seed=seed,
            module_equality=MODULE_EQUALITY)
    shutil.rmtree(scratch, ignore_errors=True)


def build(mod: tvm.IRModule, target: tvm.target.Target, records: Path | None = None) -> relax.VMExecutable:
    """Compile with the tuned schedules from ``records`` applied where they match (else TVM's default)."""
    lowered = lower(mod)
    if records is not None and (records / "database_tuning_record.json").is_file():
        with _database(records), target, tvm.transform.PassContext(opt_level=3):
            lowered = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(lowered)
    return tvm.compile(lowered, target)


def device_of(key: str):
    return tvm.cpu(0) if key == "llvm" else tvm.cuda(0)


def compile_program(graph: dict, input_shape: tuple[int, int, int, int], key: str, arch: str,
                    threads: int | None = None, records: str | None = "auto", all_outputs: bool = False):
    """Build an artifact graph for target ``key``; returns (executable, target, records dir used or None).

    ``records``: ``"auto"`` uses the committed tuning records of (target, arch, batch) when present,
    ``None``/``"none"`` compiles untuned, any other value is a records directory.
    """
    from tvm_benchmark.relax_graph import build_module
    if key == "cuda" and not cuda_available() and os.environ.get("HAWQ_CUDA_ARCH") is None:
        raise HawqError("target cuda: no CUDA GPU visible to TVM (set HAWQ_CUDA_ARCH=sm_XX to cross-compile)")
    target = make_target(key, threads)
    if records == "auto":
        d = tuning_dir(key, arch, input_shape[0])
        rec = d if (d / "database_tuning_record.json").is_file() else None
    elif records in (None, "none"):
        rec = None
    else:
        rec = Path(records)
        if not (rec / "database_tuning_record.json").is_file():
            raise HawqError(f"tuning records '{records}' not found (expected database_tuning_record.json there)")
    return build(build_module(graph, input_shape, all_outputs=all_outputs), target, rec), target, rec
