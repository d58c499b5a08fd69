"""A runtime-only copy of TVM's Python packages, for a bundle run where TVM is not installed.

:func:`copy_tvm_runtime` writes ``dest/tvm/`` and ``dest/tvm_ffi/`` (plus a two-file
``apache_tvm_ffi-<ver>.dist-info`` shim); with ``PYTHONPATH=dest`` and ``TVM_USE_RUNTIME_LIB=1``
that is enough to ``tvm.runtime.load_module`` a library written by
``tvm.compile(relax_mod, target).export_library(...)`` and run it with
``tvm.runtime.vm.VirtualMachine`` (not ``tvm.relax.VirtualMachine``: ``tvm.relax`` is
compiler-side and ``import tvm`` skips it in runtime-only mode). About 11.5 MiB (libtvm_runtime*.so
4.9 MiB, tvm_ffi's libraries and core extension 5.2 MiB, Python sources 1.3 MiB) instead of the
installed ~320 MB.

How runtime-only mode works in TVM 0.27 (``tvm/base.py``): ``_RUNTIME_ONLY`` is
``os.environ.get("TVM_USE_RUNTIME_LIB") == "1"``; then only ``libtvm_runtime.so`` is loaded
(RTLD_GLOBAL), ``libtvm_compiler.so`` is never opened (it is not shipped; without the variable
``tvm/base.py`` also falls back to runtime-only when that library is missing), ``tvm.relax`` is
not imported, and ``tvm_ffi.registry._SKIP_UNKNOWN_OBJECTS`` is set. ``import tvm`` still imports
the Python side of ``tvm.ir``/``tirx``/``target``/``te``/``script``/``sym``/``driver``/``rpc``/
``support`` (pure Python, no compiler calls), so the copy holds exactly the files that import
touches (traced in a subprocess of the source interpreter) plus all of ``tvm/runtime``.

Also in runtime-only mode ``tvm.backend._autoload_backends`` loads *no* device backend, so the
CUDA runtime is not registered by ``import tvm``: the runner must ``ctypes.CDLL`` ``tvm/lib/
libtvm_runtime_cuda.so`` itself (RTLD_LOCAL is enough: it registers ``device_api.cuda``,
``ffi.Module.load_from_bytes.cuda`` and ``runtime.timer.cuda`` into libtvm_ffi's global registry)
*before* ``load_module`` of a CUDA program, whose embedded device blob needs that loader.

``ldd libtvm_runtime_cuda.so`` (0.27.0.post1): NEEDED ``libtvm_runtime.so`` and ``libtvm_ffi.so``
(both shipped; RUNPATH ``$ORIGIN``, and both are already loaded RTLD_GLOBAL by ``import tvm``),
``libcudart.so.13`` (CUDA 13 runtime: not shipped; PyTorch cu130 brings it as
``site-packages/nvidia/cu13/lib/libcudart.so.13``, CUDA toolkits as ``lib64/libcudart.so.13``),
``libcuda.so.1`` (the driver's, always on the GPU host) and the C/C++ runtime. No cuBLAS/cuDNN/
NVRTC. ``libtvm_runtime.so`` needs only libtvm_ffi + libc/libstdc++; the ``tvm_ffi.core``
extension needs ``libtvm_ffi.so`` *and* ``libtvm_ffi_testing.so`` (RUNPATH ``$ORIGIN/lib``), so
both are shipped. ``libtvm_runtime_extra.so`` (contrib sort/random, disco) is shipped for parity
with a full install, where ``import tvm`` loads it.

``tvm_ffi`` requires ``typing_extensions`` (PyTorch brings it too): the installed pure-Python
``typing_extensions.py`` is copied to ``dest/_fallback/``, which the runner *appends* to
``sys.path`` (so an installed, possibly newer one still wins for torch).

Note ``import tvm_ffi`` imports ``torch`` first when it is installed (a symbol-clash workaround),
and then may try to JIT a torch DLPack addon: set ``TVM_FFI_DISABLE_TORCH_C_DLPACK=1``
(:data:`RUNTIME_ENV`).

``apache-tvm`` is a py3-none wheel, so its Python files and libraries serve any CPython 3; the
``apache-tvm-ffi`` wheel is CPython-specific (``tvm_ffi/core.cpython-3XY-...so``): for the running
interpreter's version the installed package is copied, for another version its manylinux x86_64
wheel of the same version is fetched with ``pip download`` into ``build/wheels`` (reused when
present) and unpacked.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from hawq.errors import HawqError

__all__ = ["ROOT", "WHEEL_CACHE", "RUNTIME_ENV", "TVM_LIBS", "TVM_WHOLE", "FFI_SKIP_DIRS", "FFI_DIST",
           "FALLBACK", "FALLBACK_MODULES", "copy_tvm_runtime", "main"]

ROOT = Path(__file__).resolve().parent.parent
WHEEL_CACHE = ROOT / "build" / "wheels"
RUNTIME_ENV = {"TVM_USE_RUNTIME_LIB": "1", "TVM_FFI_DISABLE_TORCH_C_DLPACK": "1"}
TVM_LIBS = ("libtvm_runtime.so", "libtvm_runtime_cuda.so", "libtvm_runtime_extra.so")
TVM_WHOLE = ("runtime",)                     # subpackages shipped whole (lazy imports inside)
FFI_SKIP_DIRS = {"3rdparty", "include", "src", "share", "cython", "stub", "cmake", "__pycache__"}
FFI_DIST = "apache-tvm-ffi"
FALLBACK = "_fallback"                       # dest/_fallback: appended to sys.path by the runner
FALLBACK_MODULES = ("typing_extensions",)

# What `import tvm` (runtime-only) and the runner import; run in a subprocess of the source
# interpreter, torch blocked (tvm_ffi imports it only as a workaround).
_TRACE = r"""
import json, sys
sys.modules["torch"] = None
import tvm, tvm.runtime, tvm.runtime.vm, tvm.runtime.module, tvm.runtime.executable
assert tvm.base._RUNTIME_ONLY
files = sorted({m.__file__ for n, m in list(sys.modules.items())
                if n.split(".")[0] == "tvm" and getattr(m, "__file__", None)})
print(json.dumps({"tvm": tvm.__file__, "files": files}))
"""


def _version_tag(python: str) -> str:
    parts = python.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]) or parts[0] != "3":
        raise HawqError(f"bad python version '{python}' (expected e.g. 3.12)")
    return f"{parts[0]}.{parts[1]}"


def _traced_tvm_files(tvm_dir: Path) -> list[Path]:
    """Paths (relative to ``tvm_dir``) of the tvm modules a runtime-only import loads."""
    env = {**os.environ, **RUNTIME_ENV, "TVM_DEVICE_BACKEND_AUTOLOAD": "0"}
    env.pop("TVM_LIBRARY_PATH", None)
    r = subprocess.run([sys.executable, "-c", _TRACE], env=env, capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise HawqError(f"cannot trace TVM's runtime-only import: {tail}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if Path(info["tvm"]).resolve().parent != tvm_dir.resolve():
        raise HawqError(f"traced tvm is {info['tvm']}, not the one under {tvm_dir}")
    return [Path(f).resolve().relative_to(tvm_dir.resolve()) for f in info["files"]]


def _copy_tvm(dest: Path) -> None:
    import importlib.util
    spec = importlib.util.find_spec("tvm")        # locates the package without importing it
    if spec is None or spec.origin is None:
        raise HawqError("TVM is not installed in this interpreter")
    src = Path(spec.origin).parent
    rels = set(_traced_tvm_files(src))
    for sub in TVM_WHOLE:
        rels |= {p.relative_to(src) for p in (src / sub).rglob("*.py") if "__pycache__" not in p.parts}
    for rel in sorted(rels):
        if rel.suffix != ".py":
            raise HawqError(f"unexpected non-Python tvm module {rel}")
        (dest / "tvm" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / "tvm" / rel)
    (dest / "tvm" / "lib").mkdir(parents=True, exist_ok=True)
    for lib in TVM_LIBS:
        if not (src / "lib" / lib).is_file():
            raise HawqError(f"TVM install lacks lib/{lib}")
        shutil.copy2(src / "lib" / lib, dest / "tvm" / "lib" / lib)


def _ffi_wanted(rel: str) -> bool:
    parts = rel.split("/")
    if parts[0] != "tvm_ffi" or rel.endswith("/") or any(p in FFI_SKIP_DIRS for p in parts[1:-1]):
        return False
    name = parts[-1]
    return name.endswith(".py") or (len(parts) == 2 and name.startswith("core.") and name.endswith(".so")) \
        or (parts[1:-1] == ["lib"] and name.endswith(".so"))


def _ffi_version() -> str:
    import importlib.metadata as im
    try:
        return im.version(FFI_DIST)
    except im.PackageNotFoundError:
        raise HawqError(f"{FFI_DIST} is not installed in this interpreter") from None


def _fetch_ffi_wheel(version: str, python: str) -> Path:
    tag = "cp" + python.replace(".", "")
    pattern = f"apache_tvm_ffi-{version}-{tag}-{tag}-*manylinux*x86_64*.whl"
    found = sorted(WHEEL_CACHE.glob(pattern))
    if found:
        return found[0]
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--platform", "manylinux_2_28_x86_64",
           "-d", str(WHEEL_CACHE), f"{FFI_DIST}=={version}"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HawqError(f"cannot download the {FFI_DIST}=={version} wheel for Python {python}: {e}") from None
    found = sorted(WHEEL_CACHE.glob(pattern))
    if r.returncode != 0 or not found:
        tail = ((r.stderr or r.stdout).strip().splitlines() or ["no wheel"])[-1]
        raise HawqError(f"cannot download the {FFI_DIST}=={version} wheel for Python {python} "
                        f"into {WHEEL_CACHE}: {tail}")
    return found[0]


def _copy_ffi_installed(dest: Path) -> None:
    import tvm_ffi
    src = Path(tvm_ffi.__file__).resolve().parent
    for p in sorted(src.rglob("*")):
        rel = "tvm_ffi/" + p.relative_to(src).as_posix()
        if p.is_file() and _ffi_wanted(rel):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest / rel)


def _copy_ffi_wheel(dest: Path, wheel: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                if _ffi_wanted(info.filename):
                    out = dest / info.filename
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(z.read(info))
                    mode = (info.external_attr >> 16) & 0o777
                    os.chmod(out, mode or 0o644)
    except zipfile.BadZipFile:
        raise HawqError(f"'{wheel}' is not a wheel (delete it and retry)") from None


def _write_ffi_dist_info(dest: Path, version: str) -> None:
    """Minimal metadata so ``tvm_ffi.libinfo`` (``importlib.metadata.distribution(
    "apache-tvm-ffi")``, searched along sys.path) finds the bundle's ``libtvm_ffi.so`` before
    any installed one."""
    d = dest / f"apache_tvm_ffi-{version}.dist-info"
    d.mkdir(parents=True, exist_ok=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {FFI_DIST}\nVersion: {version}\n")
    libs = sorted(p.relative_to(dest).as_posix() for p in (dest / "tvm_ffi" / "lib").glob("*.so"))
    (d / "RECORD").write_text("".join(f"{p},,\n" for p in libs) + f"{d.name}/METADATA,,\n{d.name}/RECORD,,\n")


def _copy_fallback(dest: Path) -> None:
    import importlib.util
    (dest / FALLBACK).mkdir(parents=True, exist_ok=True)
    for name in FALLBACK_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not (spec.origin or "").endswith(".py") or spec.submodule_search_locations:
            raise HawqError(f"cannot copy {name}: not a single-file module in this interpreter")
        shutil.copy2(spec.origin, dest / FALLBACK / f"{name}.py")


def _parts(dest: Path) -> list[Path]:
    """What :func:`copy_tvm_runtime` writes (and replaces) in ``dest``."""
    return [dest / "tvm", dest / "tvm_ffi", dest / FALLBACK, *dest.glob("apache_tvm_ffi-*.dist-info")]


def _tree_bytes(paths: list[Path]) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def copy_tvm_runtime(dest: Path, python: str = "3.12") -> int:
    """Write ``dest/tvm/``, ``dest/tvm_ffi/``, the tvm_ffi dist-info shim and ``dest/_fallback/``
    (replacing any earlier copy) for CPython ``python``; returns the bytes written."""
    dest = Path(dest)
    python = _version_tag(python)
    version = _ffi_version()
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheel = None if python == here else _fetch_ffi_wheel(version, python)
    dest.mkdir(parents=True, exist_ok=True)
    for old in _parts(dest):
        if old.exists():
            shutil.rmtree(old)
    _copy_tvm(dest)
    if wheel is None:
        _copy_ffi_installed(dest)
    else:
        _copy_ffi_wheel(dest, wheel)
    tag = "cpython-" + python.replace(".", "")
    if not list((dest / "tvm_ffi").glob(f"core.{tag}-*.so")):
        raise HawqError(f"no tvm_ffi core extension for Python {python} in the copy")
    _write_ffi_dist_info(dest, version)
    _copy_fallback(dest)
    return _tree_bytes(_parts(dest))


def main(argv: list[str] | None = None) -> int:
    """``python -m tvm_benchmark.tvm_runtime_copy DEST [--python 3.12]``"""
    import argparse
    ap = argparse.ArgumentParser(description="Write a runtime-only copy of TVM into DEST.")
    ap.add_argument("dest")
    ap.add_argument("--python", default="3.12")
    a = ap.parse_args(argv)
    n = copy_tvm_runtime(Path(a.dest), a.python)
    print(f"{a.dest}: TVM runtime for Python {a.python}, {n / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    from hawq.apps.cli import run_main
    run_main(main)
