"""Run a HAWQ GPU bundle: verify and time its compiled TVM programs, and time PyTorch alongside.

    bash run.sh OUTDIR          (sets TVM_USE_RUNTIME_LIB=1 and PYTHONPATH, then runs this)

Reads ``bundle.json`` (format ``hawq-gpu-bundle/1``) beside this file. For each program: load the
``.so`` with the bundle's runtime-only TVM, build a Relax VM on ``tvm.cuda(0)`` (target cuda) or
``tvm.cpu(0)`` (llvm), upload the input and ``bundle_params.load_params(params)`` once, run
``main(x, *params)`` and count the logits that differ from the shipped int64 reference; then time
it. PyTorch runs the same arch (pytorchcv, random weights) at the same batch on the same device:
fp32, fp16 channels_last with cudnn.benchmark (on CPU: bf16 channels_last, in the fp16 column),
and torch.compile of that fp16/bf16 model in a worker process with a time limit. PyTorch timings
are cached per (model, classes, input shape): several schemes share them.

Writes ``OUTDIR/gpu_results.csv`` and ``OUTDIR/gpu_results.md`` (after the checks, and again after
torch.compile), prints one line per program and the table at the end. Exit status: 0 when every
program ran and matched its reference, 1 otherwise (the files are written first), 2 on a bad
bundle. A failing program is recorded in its row's ``notes``; the others still run.

Environment: ``HAWQ_BUNDLE_REPEAT`` timed calls (default 50), ``HAWQ_BUNDLE_WARMUP`` (default 10),
``HAWQ_BUNDLE_BUDGET_S`` total seconds (default 420: later rows skip what does not fit and say
so), ``HAWQ_BUNDLE_TORCH=0`` (no PyTorch), ``HAWQ_TORCH_COMPILE=0`` (no torch.compile),
``HAWQ_TORCH_COMPILE_MODE`` (default "default"), ``HAWQ_TORCH_COMPILE_TIMEOUT_S`` (per model,
default 150).

Imports only the standard library, numpy, the bundle's tvm, ``bundle_params`` and (lazily)
torch/pytorchcv. NB ``import tvm_ffi`` itself imports torch when it is installed.
"""
from __future__ import annotations

import csv
import ctypes
import datetime
import io
import json
import os
import platform
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent
FORMAT = "hawq-gpu-bundle/1"
FIELDS = ["host", "device", "target", "sm", "program", "arch", "scheme", "batch", "mismatches",
          "elements", "tvm_ms", "torch_fp32_ms", "torch_fp16_ms", "torch_compile_ms",
          "speedup_vs_fp16", "notes"]
MARK = "@@HAWQ "                 # prefix of the compile worker's result lines
RESERVE_S = 20.0                 # kept back from the budget for writing results
MAX_TIMING_S = 20.0              # one timing loop longer than this gets fewer calls (noted)
MAX_WARMUP_S = 10.0              # likewise for the warm-up (at least 2 calls)

os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")


class BundleError(Exception):
    """A bad bundle or environment: one line, exit 2."""


def _env_int(name: str, default: int, lo: int = 1) -> int:
    text = os.environ.get(name, "")
    try:
        return max(lo, int(text)) if text else default
    except ValueError:
        raise BundleError(f"{name} must be an integer, got '{text}'") from None


def _env_float(name: str, default: float) -> float:
    text = os.environ.get(name, "")
    try:
        return float(text) if text else default
    except ValueError:
        raise BundleError(f"{name} must be a number, got '{text}'") from None


def _short(e: BaseException, limit: int = 200) -> str:
    """One line for a notes cell: the exception type and the last non-empty line of its message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = f"{type(e).__name__}: {lines[-1] if lines else ''}".replace(";", ",").replace("|", "/")
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


class Clock:
    def __init__(self, budget_s: float):
        self.t0 = time.monotonic()
        self.budget = budget_s

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


# --------------------------------------------------------------------------------------------- TVM
def _check_python_abi() -> None:
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    cores = sorted(p.name for p in (BUNDLE / "tvm_ffi").glob("core.cpython-*.so"))
    if cores and not any(n.startswith(f"core.{tag}-") for n in cores):
        m = re.match(r"core\.cpython-(\d)(\d+)-", cores[0])
        have = f"{m.group(1)}.{m.group(2)}" if m else cores[0]
        raise BundleError(f"this bundle's tvm_ffi is for Python {have} ({cores[0]}), but "
                          f"{sys.executable} is {platform.python_version()}: run with PYTHON=python{have}")


def import_tvm():
    """The bundle's runtime-only TVM (``_fallback`` holds typing_extensions for bare interpreters)."""
    _check_python_abi()
    sys.path.append(str(BUNDLE / "_fallback"))
    try:
        import tvm
        import tvm.runtime.vm  # noqa: F401
    except Exception as e:
        raise BundleError(f"cannot import the bundle's tvm: {_short(e)}") from None
    print(f"tvm from {Path(tvm.__file__).resolve().parent}", flush=True)
    return tvm


def _loaded_tvm_libs() -> list[str]:
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if len(ln.split()) >= 6}
    except OSError:
        return []
    return sorted(p for p in paths if "tvm" in Path(p).name and ".so" in Path(p).name)


def _cuda_lib_dirs() -> list[Path]:
    """Where a CUDA runtime library (libcudart.so.N) may live on a host without LD_LIBRARY_PATH."""
    dirs: list[Path] = []
    for entry in sys.path:
        if entry and Path(entry).is_dir():
            dirs += sorted(Path(entry).glob("nvidia/*/lib")) + [Path(entry) / "torch" / "lib"]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            dirs += [Path(os.environ[var]) / "lib64", Path(os.environ[var]) / "lib"]
    for root in [Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"), reverse=True)]:
        dirs += [root / "lib64", root / "lib", root / "targets" / "x86_64-linux" / "lib"]
    return dirs


def load_tvm_device_libs(target: str) -> list[str]:
    """In runtime-only mode ``import tvm`` registers no device backend: load the CUDA runtime
    (``libtvm_runtime_cuda.so``: device API, CUDA module loader, CUDA-event timer) ourselves,
    first preloading the ``libcudart.so.N`` it needs when the loader cannot find it. Also load
    ``libtvm_runtime_extra.so`` as a full install does. Returns notes."""
    notes = []
    lib_dir = BUNDLE / "tvm" / "lib"
    extra = lib_dir / "libtvm_runtime_extra.so"
    if extra.is_file():
        try:
            ctypes.CDLL(str(extra), ctypes.RTLD_LOCAL)
        except OSError as e:
            notes.append(f"libtvm_runtime_extra not loaded ({_short(e)})")
    if target != "cuda":
        return notes
    cuda_lib = lib_dir / "libtvm_runtime_cuda.so"
    tried: set[str] = set()
    while True:
        try:
            ctypes.CDLL(str(cuda_lib), ctypes.RTLD_LOCAL)
            return notes
        except OSError as e:
            m = re.search(r"(lib[\w.+-]+\.so[.\d]*): cannot open shared object", str(e))
            name = m.group(1) if m else ""
            if not name or name in tried or name.startswith("libcuda.so"):
                hint = " (no NVIDIA driver?)" if name.startswith("libcuda.so") else ""
                raise BundleError(f"cannot load {cuda_lib.name}: {_short(e)}{hint}") from None
        tried.add(name)
        for d in _cuda_lib_dirs():
            try:
                if (d / name).is_file():
                    ctypes.CDLL(str(d / name), ctypes.RTLD_GLOBAL)
                    notes.append(f"{name} from {d}")
                    break
            except OSError:
                continue
        else:
            raise BundleError(f"cannot load {cuda_lib.name}: {name} not found (install the CUDA "
                              "runtime or set LD_LIBRARY_PATH)")


def register_cuda_compiler(manifest: dict, notes: list) -> None:
    """TVM 0.27 ships CUDA kernels as source and compiles them when a program is loaded, through the
    global function ``tvm_callback_cuda_compile``. Register ours: the cubin compiled for this
    bundle's sm on the build machine (``cubins/<sha256 of the source>.cubin.xz``); a source without
    one (should not happen) is compiled here with ``nvcc -cubin`` and noted."""
    import hashlib
    import lzma
    import tvm_ffi

    sm = manifest.get("sm") or "sm_90"

    def compile_cuda(code, *_):
        text = code if isinstance(code, str) else bytes(code).decode()
        digest = hashlib.sha256(text.encode()).hexdigest()
        cached = BUNDLE / "cubins" / f"{digest}.cubin.xz"
        if cached.is_file():
            return bytearray(lzma.decompress(cached.read_bytes()))
        with tempfile.TemporaryDirectory() as d:
            src, out = Path(d) / "k.cu", Path(d) / "k.cubin"
            src.write_text(text)
            r = subprocess.run(["nvcc", "-cubin", f"-arch={sm}", "-O3", "-o", str(out), str(src)],
                               capture_output=True, text=True)
            if r.returncode:
                raise RuntimeError(f"nvcc failed on a kernel without a shipped cubin: {r.stderr[-300:]}")
            notes.append(f"a kernel had no shipped cubin: compiled here with nvcc ({digest[:12]})")
            return bytearray(out.read_bytes())

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)


def _to_numpy(out):
    if hasattr(out, "numpy"):
        return out.numpy()
    return out[0].numpy()          # a tuple result: the logits come first


def run_tvm(tvm, prog: dict, dev, repeat: int, warmup: int, clock: Clock) -> dict:
    """Check and time one program; returns the row's TVM cells and notes."""
    import numpy as np
    import bundle_params
    from tvm.runtime.vm import VirtualMachine
    res: dict = {"notes": []}
    cache = Path(os.environ.get("HAWQ_BUNDLE_CACHE") or (Path(tempfile.gettempdir()) / "hawq-gpu-bundle-libs"))
    lib = tvm.runtime.load_module(str(bundle_params.load_program(BUNDLE / prog["lib"], cache)))
    vm = VirtualMachine(lib, dev)
    batch = int(prog["batch"])
    x = np.ascontiguousarray(bundle_params.batch_rows(np.load(BUNDLE / prog["input"]), batch), dtype=np.float32)
    ref = bundle_params.batch_rows(np.load(BUNDLE / prog["reference"]), batch)
    params = bundle_params.load_params(BUNDLE / prog["params"]) if prog.get("params") else []
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(np.ascontiguousarray(p), dev) for p in params]
    main = vm["main"]
    got = _to_numpy(main(*args))
    res["elements"] = int(ref.size)
    if got.shape != ref.shape:
        res["mismatches"] = int(ref.size)
        res["notes"].append(f"output shape {list(got.shape)} != reference {list(ref.shape)}")
    else:
        res["mismatches"] = int(np.count_nonzero(got.astype(np.int64) != ref.astype(np.int64)))
    # Timing. warm-up calls, then TVM's own time_evaluator with number=1 (one call per sample):
    # on CUDA it times with CUDA events (runtime.timer.cuda, registered by libtvm_runtime_cuda) and
    # synchronizes the device before reading them; on CPU it is a wall clock around each call.
    per_call = _warm_up(lambda: main(*args), dev.sync, warmup, res["notes"], "tvm")
    n = _fit_calls(repeat, per_call, clock, res["notes"], "tvm")
    samples = vm.time_evaluator("main", dev, number=1, repeat=n)(*args).results
    res["tvm_ms"] = statistics.median(samples) * 1e3
    del vm, lib, args
    return res


def _warm_up(fn, sync, warmup: int, notes: list, who: str) -> float:
    """Call ``fn`` ``warmup`` times, each synchronized (fewer, >= 2 and noted, once the warm-up has
    taken MAX_WARMUP_S); returns the last call's seconds."""
    start, last = time.perf_counter(), 0.0
    for i in range(warmup):
        t = time.perf_counter()
        fn()
        sync()
        last = time.perf_counter() - t
        if i >= 1 and i + 1 < warmup and time.perf_counter() - start > MAX_WARMUP_S:
            notes.append(f"{who}: {i + 1} warm-up calls (time budget)")
            break
    return last


def _fit_calls(repeat: int, per_call_s: float, clock: Clock, notes: list, who: str) -> int:
    """``repeat``, or fewer (>= 10, noted) when that many calls would take too long."""
    limit = min(MAX_TIMING_S, max(2.0, (clock.left() - RESERVE_S) / 4))
    if per_call_s * repeat <= limit:
        return repeat
    n = max(min(10, repeat), int(limit / max(per_call_s, 1e-9)))
    if n < repeat:
        notes.append(f"{who}: {n} timed calls (time budget)")
    return min(n, repeat)


# ----------------------------------------------------------------------------------------- PyTorch
def pytorchcv_factory(name: str):
    """The pytorchcv constructor ``name`` without ``pytorchcv.model_provider`` (which imports every
    model module, one of them needing torchvision): find the module that defines it and import it."""
    import importlib
    import pytorchcv.models
    pat = re.compile(rf"^def {re.escape(name)}\(", re.M)
    for f in sorted(Path(pytorchcv.models.__file__).parent.glob("*.py")):
        try:
            text = f.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        if pat.search(text):
            return getattr(importlib.import_module(f"pytorchcv.models.{f.stem}"), name)
    raise KeyError(f"pytorchcv has no model '{name}'")


def torch_model(name: str, num_classes: int):
    import torch.nn as nn
    model = pytorchcv_factory(name)(pretrained=False, num_classes=num_classes)
    feats = getattr(model, "features", None)
    if feats is not None and isinstance(getattr(feats, "final_pool", None), nn.AvgPool2d):
        feats.final_pool = nn.AdaptiveAvgPool2d(1)     # same at the native size, any size else
    return model.eval()


def _time_torch(fn, cuda: bool, repeat: int, warmup: int, clock: Clock, notes: list, who: str) -> float:
    """Median ms per call: CUDA events around each call (synchronized on the end event) on GPU,
    perf_counter on CPU."""
    import torch
    per_call = _warm_up(fn, torch.cuda.synchronize if cuda else (lambda: None), warmup, notes, who)
    n = _fit_calls(repeat, per_call, clock, notes, who)
    times = []
    for _ in range(n):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def torch_eager(spec: dict, shape: tuple, cuda: bool, repeat: int, warmup: int, clock: Clock) -> dict:
    """fp32 and fp16 (CPU: bf16) channels_last timings of the pytorchcv model on random weights."""
    import torch
    res: dict = {"notes": []}
    dev = torch.device("cuda:0" if cuda else "cpu")
    torch.manual_seed(0)
    model = torch_model(spec["model"], int(spec["num_classes"])).to(dev)
    x = torch.randn(*shape, device=dev)
    with torch.inference_mode():
        if cuda:
            torch.backends.cudnn.benchmark = False       # plain eager fp32 (PyTorch defaults)
        res["torch_fp32_ms"] = _time_torch(lambda: model(x), cuda, repeat, warmup, clock, res["notes"], "fp32")
        half = torch.float16 if cuda else torch.bfloat16
        if cuda:
            torch.backends.cudnn.benchmark = True
        m16 = model.to(dtype=half, memory_format=torch.channels_last)
        x16 = x.to(dtype=half).contiguous(memory_format=torch.channels_last)
        res["torch_fp16_ms"] = _time_torch(lambda: m16(x16), cuda, repeat, warmup, clock, res["notes"],
                                           "fp16" if cuda else "bf16")
        if not cuda:
            res["notes"].append("CPU: torch_fp16_ms is bf16 channels_last")
    del model, m16, x, x16
    if cuda:
        torch.cuda.empty_cache()
    return res


def compile_worker(jobs_json: str) -> int:
    """Worker process: torch.compile each job's fp16 (CPU: bf16) channels_last model in turn and
    print one ``@@HAWQ {json}`` line per job."""
    import torch
    jobs = json.loads(jobs_json)
    for job in jobs:
        out = {"key": job["key"]}
        try:
            cuda = job["cuda"]
            dev = torch.device("cuda:0" if cuda else "cpu")
            half = torch.float16 if cuda else torch.bfloat16
            torch.manual_seed(0)
            if cuda:
                torch.backends.cudnn.benchmark = True
            model = torch_model(job["model"], job["num_classes"]).to(dev)
            model = model.to(dtype=half, memory_format=torch.channels_last)
            x = torch.randn(*job["shape"], device=dev).to(dtype=half).contiguous(memory_format=torch.channels_last)
            t = time.perf_counter()
            mode = job["mode"]
            cm = torch.compile(model, mode=None if mode == "default" else mode)
            with torch.inference_mode():
                cm(x)
                if cuda:
                    torch.cuda.synchronize()
                out["compile_s"] = time.perf_counter() - t
                clock = Clock(1e9)
                out["ms"] = _time_torch(lambda: cm(x), cuda, job["repeat"], job["warmup"], clock, [], "compile")
            del cm, model, x
            torch._dynamo.reset()
        except Exception as e:  # noqa: BLE001 (reported in the row)
            out["error"] = _short(e, 160)
            traceback.print_exc(file=sys.stderr)
        print(MARK + json.dumps(out), flush=True)
    return 0


def run_compiles(jobs: list[dict], clock: Clock, timeout_s: float, log: Path, on_result) -> None:
    """Run the compile jobs in one worker process (restarted after a job overruns
    ``timeout_s``); ``on_result(key, dict)`` for each. Jobs that no longer fit the budget get
    ``{"skipped": reason}``."""
    pending = list(jobs)
    with open(log, "a") as logf:
        while pending:
            if clock.left() - RESERVE_S < 30:
                for job in pending:
                    on_result(job["key"], {"skipped": f"time budget ({max(0, clock.left()):.0f} s left)"})
                return
            proc = subprocess.Popen([sys.executable, str(BUNDLE / "gpu_run.py"), "--compile-worker",
                                     json.dumps(pending)], stdout=subprocess.PIPE, stderr=logf,
                                    cwd=BUNDLE, start_new_session=True)
            buf = b""
            job_start = time.monotonic()
            try:
                while pending:
                    budget_cut = clock.left() - RESERVE_S < timeout_s - (time.monotonic() - job_start)
                    limit = min(timeout_s, clock.left() - RESERVE_S) - (time.monotonic() - job_start)
                    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, limit))
                    if not ready:
                        job = pending.pop(0)
                        waited = time.monotonic() - job_start
                        why = "stopped by the time budget" if budget_cut else "timed out"
                        on_result(job["key"], {"error": f"{why} after {waited:.0f} s"})
                        break
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        rc = proc.wait()
                        job = pending.pop(0)
                        on_result(job["key"], {"error": f"worker exited with status {rc} (see {log.name})"})
                        break
                    buf += chunk
                    while b"\n" in buf and pending:
                        line, buf = buf.split(b"\n", 1)
                        text = line.decode("utf-8", "replace")
                        if text.startswith(MARK):
                            out = json.loads(text[len(MARK):])
                            job = pending.pop(0)
                            on_result(job["key"], out)
                            job_start = time.monotonic()
            finally:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait()
                proc.stdout.close()


# -------------------------------------------------------------------------------------------- main
def device_name(target: str, dev) -> str:
    if target == "cuda":
        try:
            import torch
            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001
            pass
        try:
            return str(dev.device_name)
        except Exception:  # noqa: BLE001
            return "GPU (unknown)"
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if ln.startswith("model name"):
                    return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(v, digits: int = 4) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def write_results(out: Path, rows: list[dict], header: dict) -> str:
    """Write gpu_results.csv and gpu_results.md (each via a temp file + rename); returns the md."""
    cells = []
    for r in rows:
        c = {k: _fmt(r.get(k)) for k in FIELDS}
        c["speedup_vs_fp16"] = _fmt(r.get("speedup_vs_fp16"), 2)
        c["notes"] = "; ".join(r.get("notes", []))
        cells.append(c)
    s = io.StringIO()
    w = csv.DictWriter(s, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(cells)
    md = [f"# HAWQ integer programs (TVM) vs PyTorch on {header['device']}, {header['date']}", "",
          f"Host {header['host']}; target {header['target']}"
          + (f" ({header['sm']})" if header.get("sm") else "")
          + f"; bundle built on {header['built_on']}; Python {platform.python_version()}; "
          + f"torch {header['torch']}; TVM runtime {header['tvm']}.", "",
          "Times are medians in ms per batch. TVM: time_evaluator (CUDA events on GPU); PyTorch: "
          "random weights, CUDA events on GPU; fp16 = fp16 channels_last + cudnn.benchmark "
          "(CPU: bf16 channels_last); compile = torch.compile of the fp16 model. "
          "speedup_vs_fp16 = torch_fp16_ms / tvm_ms.", "",
          "| " + " | ".join(FIELDS) + " |", "|" + "|".join("---" for _ in FIELDS) + "|"]
    for c in cells:
        md.append("| " + " | ".join(c[k].replace("|", "/") for k in FIELDS) + " |")
    text = "\n".join(md) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("gpu_results.csv", s.getvalue()), ("gpu_results.md", text)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, out / name)
    return text


def load_bundle() -> dict:
    try:
        bundle = json.loads((BUNDLE / "bundle.json").read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"cannot read {BUNDLE / 'bundle.json'}: {_short(e)}") from None
    if bundle.get("format") != FORMAT:
        raise BundleError(f"bundle.json format is {bundle.get('format')!r}, expected {FORMAT!r}")
    if bundle.get("target") not in ("cuda", "llvm"):
        raise BundleError(f"bundle.json target must be 'cuda' or 'llvm', got {bundle.get('target')!r}")
    if not isinstance(bundle.get("programs"), list) or not bundle["programs"]:
        raise BundleError("bundle.json lists no programs")
    for i, p in enumerate(bundle["programs"]):
        missing = [k for k in ("name", "lib", "input", "reference", "batch") if k not in p]
        if missing:
            raise BundleError(f"bundle.json program {i} lacks {', '.join(missing)}")
    return bundle


def run(out: Path) -> int:
    import numpy as np
    repeat = _env_int("HAWQ_BUNDLE_REPEAT", 50)
    warmup = _env_int("HAWQ_BUNDLE_WARMUP", 10)
    clock = Clock(_env_float("HAWQ_BUNDLE_BUDGET_S", 420.0))
    use_torch = os.environ.get("HAWQ_BUNDLE_TORCH", "1") != "0"
    use_compile = use_torch and os.environ.get("HAWQ_TORCH_COMPILE", "1") != "0"
    compile_mode = os.environ.get("HAWQ_TORCH_COMPILE_MODE", "default")
    compile_timeout = _env_float("HAWQ_TORCH_COMPILE_TIMEOUT_S", 150.0)
    bundle = load_bundle()
    target, sm = bundle["target"], bundle.get("sm")
    out.mkdir(parents=True, exist_ok=True)

    tvm = dev = None
    global_notes: list[str] = []
    setup_error = None
    try:
        tvm = import_tvm()
        global_notes += load_tvm_device_libs(target)
        if target == "cuda":
            register_cuda_compiler(bundle, global_notes)
        print(f"tvm libraries: {', '.join(_loaded_tvm_libs())}", flush=True)
        dev = tvm.cuda(0) if target == "cuda" else tvm.cpu(0)
        if not dev.exist:
            raise BundleError(f"TVM sees no {target} device")
        if target == "cuda" and sm:
            have = "sm_" + str(dev.compute_version).replace(".", "")
            if have != sm:
                global_notes.append(f"built for {sm}, device is {have}")
    except BundleError as e:          # still write a row per program, saying why
        setup_error = str(e)
        print(f"error: {e}", file=sys.stderr, flush=True)
        use_torch = use_compile = False
    torch_version = ""
    if use_torch:
        try:
            import torch
            torch_version = torch.__version__
            if target == "cuda" and not torch.cuda.is_available():
                global_notes.append("torch sees no CUDA device")
                use_torch = use_compile = False
        except ImportError as e:
            global_notes.append(f"no torch ({_short(e)})")
            use_torch = use_compile = False
    header = {"device": device_name(target, dev), "host": socket.gethostname(), "target": target,
              "sm": sm or "", "built_on": bundle.get("built_on", "?"), "torch": torch_version or "-",
              "tvm": getattr(tvm, "__version__", "?"),
              "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}
    print(f"device: {header['device']}; {len(bundle['programs'])} programs; "
          f"{repeat} timed calls after {warmup} warm-up", flush=True)
    for n in global_notes:
        print(f"note: {n}", flush=True)

    rows: list[dict] = []
    torch_cache: dict[str, dict] = {}
    cuda = target == "cuda"
    for prog in bundle["programs"]:
        row = {"host": header["host"], "device": header["device"], "target": target, "sm": sm or "",
               "program": prog["name"], "arch": prog.get("arch", ""), "scheme": prog.get("scheme", ""),
               "batch": prog["batch"], "notes": [], "ok": False}
        rows.append(row)
        if setup_error:
            row["notes"].append(setup_error)
            continue
        try:
            r = run_tvm(tvm, prog, dev, repeat, warmup, clock)
            row["notes"] += r.pop("notes")
            row.update(r)
            row["ok"] = r["mismatches"] == 0
        except Exception as e:  # noqa: BLE001 (one program's failure is its row's note)
            row["notes"].append(f"tvm: {_short(e)}")
        spec = prog.get("torch")
        if not spec:
            row["notes"].append("no torch entry")
        elif use_torch:
            key = f"error:{prog['name']}"
            try:
                shape = tuple(spec.get("input_shape")
                              or (int(prog["batch"]), *np.load(BUNDLE / prog["input"], mmap_mode="r").shape[1:]))
                key = json.dumps([spec["model"], int(spec["num_classes"]), list(shape)])
                if key not in torch_cache:
                    if clock.left() - RESERVE_S < 30:
                        torch_cache[key] = {"notes": ["torch skipped: time budget"]}
                    else:
                        torch_cache[key] = torch_eager(spec, shape, cuda, repeat, warmup, clock)
                        torch_cache[key]["_job"] = {"key": key, "model": spec["model"],
                                                    "num_classes": int(spec["num_classes"]),
                                                    "shape": list(shape), "cuda": cuda,
                                                    "mode": compile_mode, "repeat": repeat,
                                                    "warmup": warmup}
            except Exception as e:  # noqa: BLE001
                torch_cache[key] = {"notes": [f"torch: {_short(e)}"]}
            row["_torch"] = key
        _fill_torch(row, torch_cache)
        if "mismatches" in row:
            ms = {k: _fmt(row.get(k), 3) or "-" for k in ("tvm_ms", "torch_fp32_ms", "torch_fp16_ms")}
            print(f"{prog['name']}: mismatches: {row['mismatches']}/{row['elements']} | tvm {ms['tvm_ms']} ms"
                  f" | torch fp32 {ms['torch_fp32_ms']} ms, fp16 {ms['torch_fp16_ms']} ms"
                  f" | {clock.elapsed():.0f} s", flush=True)
        else:
            print(f"{prog['name']}: FAILED: {'; '.join(row['notes'])} | {clock.elapsed():.0f} s", flush=True)

    if not use_torch and not setup_error:
        reason = "HAWQ_BUNDLE_TORCH=0" if os.environ.get("HAWQ_BUNDLE_TORCH") == "0" else "see notes"
        for row in rows:
            row["notes"].append(f"torch skipped ({reason})")
    write_results(out, _finish(rows, torch_cache, global_notes), header)

    if use_compile:
        jobs = [c["_job"] for c in torch_cache.values() if "_job" in c]

        def on_result(key: str, res: dict) -> None:
            c = torch_cache[key]
            label = f"{c['_job']['model']} {'x'.join(map(str, c['_job']['shape']))}"
            if "ms" in res:
                c["torch_compile_ms"] = res["ms"]
                c.setdefault("notes", []).append(f"torch.compile {compile_mode}: compiled in {res['compile_s']:.0f} s")
                print(f"torch.compile {label}: {res['ms']:.3f} ms (compiled in {res['compile_s']:.0f} s)", flush=True)
            else:
                why = res.get("error") or res.get("skipped")
                c.setdefault("notes", []).append(f"torch.compile {'skipped' if 'skipped' in res else 'failed'}: {why}")
                print(f"torch.compile {label}: {why}", flush=True)

        run_compiles(jobs, clock, compile_timeout, out / "torch_compile.log", on_result)
        for row in rows:
            _fill_torch(row, torch_cache)
    elif use_torch:
        for c in torch_cache.values():
            c.setdefault("notes", []).append("torch.compile skipped (HAWQ_TORCH_COMPILE=0)")
        for row in rows:
            _fill_torch(row, torch_cache)
    md = write_results(out, _finish(rows, torch_cache, global_notes), header)
    print()
    print(md, end="")
    bad = [r["program"] for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(bad)}/{len(rows)} programs match their references"
          + (f"; failed: {', '.join(bad)}" if bad else "") + f"; {clock.elapsed():.0f} s; "
          f"results in {out}", flush=True)
    return 1 if bad else 0


def _fill_torch(row: dict, cache: dict) -> None:
    c = cache.get(row.get("_torch", ""), {})
    for k in ("torch_fp32_ms", "torch_fp16_ms", "torch_compile_ms"):
        if k in c:
            row[k] = c[k]


def _finish(rows: list[dict], cache: dict, global_notes: list[str]) -> list[dict]:
    """Rows for the files: notes = the program's own + its torch key's + global ones."""
    done = []
    for row in rows:
        r = dict(row)
        c = cache.get(row.get("_torch", ""), {})
        r["notes"] = list(global_notes) + list(row["notes"]) + list(c.get("notes", []))
        if r.get("tvm_ms") and r.get("torch_fp16_ms"):
            r["speedup_vs_fp16"] = r["torch_fp16_ms"] / r["tvm_ms"]
        done.append(r)
    return done


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "--compile-worker":
        return compile_worker(argv[1])
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: bash run.sh OUTDIR", file=sys.stderr)
        return 2
    try:
        return run(Path(argv[0]).resolve())
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
