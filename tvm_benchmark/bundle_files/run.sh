#!/usr/bin/env bash
# Run this GPU bundle: check each compiled TVM program's integer logits against the shipped
# references, time it, time PyTorch on the same architecture, write OUTDIR/gpu_results.{csv,md}.
#
#   bash run.sh OUTDIR            (PYTHON=python3.12 bash run.sh OUTDIR to pick the interpreter)
#
# Needs Python (the version the bundle's tvm_ffi was built for), numpy, and for the PyTorch
# columns torch; TVM itself is the runtime-only copy in ./tvm and ./tvm_ffi.
set -euo pipefail
if [ $# -lt 1 ] || [ -z "$1" ]; then
    echo "error: missing OUTDIR (usage: bash run.sh OUTDIR)" >&2
    exit 2
fi
mkdir -p -- "$1"
OUT="$(cd -- "$1" && pwd)"
shift
HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
export TVM_USE_RUNTIME_LIB=1               # tvm/base.py: load libtvm_runtime only, no compiler
export TVM_FFI_DISABLE_TORCH_C_DLPACK=1    # tvm_ffi: no JIT build of a torch DLPack addon
export PYTHONPATH="$HERE:$HERE/site${PYTHONPATH:+:$PYTHONPATH}"
exec ${PYTHON:-python3} gpu_run.py "$OUT" "$@"
