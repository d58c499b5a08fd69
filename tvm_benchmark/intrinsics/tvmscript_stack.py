"""A cheap ``inspect.stack()`` for TVMScript parsing, and TVM's CUDA tensor-intrinsic module through it.

Every ``@T.prim_func`` calls ``inspect.stack()`` to find the variables its body captures. The standard
one reads the source file of every frame, and for a frame without one (``<frozen importlib._bootstrap>``,
``<string>``) ``inspect.getmodule`` walks all of ``sys.modules`` - about 2,600 modules with torch and
TVM loaded - each time. Importing ``tvm.s_tir.tensor_intrin.cuda`` parses about 500 prim_funcs at
import, under a stack of import frames: 46 s on a 2-core AMD EPYC with torch and TVM already loaded
(71 s for all of ``import tvm_benchmark.compile``), paid by every TVM command and test process. :func:`cheap_stack` gives TVM's parser the same frames,
line numbers and source lines (``linecache``, None where a frame has no source, as ``inspect`` does)
without the module search: the import takes 3.4 s (7.6 s for ``tvm_benchmark.compile``).
"""
from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
import threading

__all__ = ["frame_stack", "cheap_stack", "cuda_intrinsics"]

_LOCK = threading.Lock()


def frame_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """``inspect.stack(context)`` from the caller's frame outwards, without ``inspect.getmodule``."""
    out = []
    frame = sys._getframe(1)
    while frame is not None:
        code, lineno = frame.f_code, frame.f_lineno
        lines, index = None, None
        source = linecache.getlines(code.co_filename, frame.f_globals) if context > 0 else []
        if source:                      # the window inspect.getframeinfo takes, clamped to the file
            start = max(0, min(lineno - 1 - context // 2, len(source) - context))
            lines, index = source[start:start + context], lineno - 1 - start
        out.append(inspect.FrameInfo(frame, code.co_filename, lineno, code.co_name, lines, index))
        frame = frame.f_back
    return out


@contextlib.contextmanager
def cheap_stack():
    """Within the block, ``inspect.stack`` is :func:`frame_stack` (process-wide; one block at a time)."""
    with _LOCK:
        saved = inspect.stack
        inspect.stack = frame_stack
        try:
            yield
        finally:
            inspect.stack = saved


def cuda_intrinsics():
    """``tvm.s_tir.tensor_intrin.cuda`` (its ldmatrix/mma builders and fragment layouts), imported with
    :func:`cheap_stack`: the module registers TVM's own CUDA intrinsics when first imported."""
    if "tvm.s_tir.tensor_intrin.cuda" not in sys.modules:
        with cheap_stack():
            from tvm.s_tir.tensor_intrin import cuda  # noqa: F401
    return sys.modules["tvm.s_tir.tensor_intrin.cuda"]
