"""The cheap inspect.stack() that TVMScript parsing runs under when TVM's CUDA intrinsics are imported."""
from __future__ import annotations

import inspect

from conftest import cli
from tvm_benchmark.intrinsics import tvmscript_stack as S


def _fields(stack):
    return [(f.frame, f.filename, f.lineno, f.function, f.code_context, f.index) for f in stack]


def _both(context):
    return S.frame_stack(context), inspect.stack(context)


def test_cheap_stack_is_inspect_stack():
    """Same frames, files, lines, functions and source lines (None where a frame has none) as
    inspect.stack, for every context size TVM or anyone might ask."""
    for context in (0, 1, 3):
        fast, slow = _both(context)
        assert _fields(fast) == _fields(slow)

    def no_source():                                    # a frame whose file does not exist
        return S.frame_stack(1)[:2], inspect.stack(1)[:2]
    ns = {}
    exec(compile("def f(g):\n    return g()\n", "<generated>", "exec"), ns)
    fast, slow = ns["f"](no_source)
    assert _fields(fast) == _fields(slow) and slow[1].code_context is None


def test_cheap_stack_is_scoped():
    before = inspect.stack
    with S.cheap_stack():
        assert inspect.stack is S.frame_stack
    assert inspect.stack is before


def test_cuda_intrinsics_import_registers_tvms_intrinsics():
    """In a fresh process (the module registers on first import): TVM's own CUDA intrinsics exist
    after the cheap import and parse to the same TensorIR as under the standard stack."""
    code = ("from tvm_benchmark.intrinsics.tvmscript_stack import cuda_intrinsics\n"
            "from tvm.s_tir import TensorIntrin\n"
            "C = cuda_intrinsics()\n"
            "import tvm\n"
            "got = TensorIntrin.get(C.LDMATRIX_i8_A_INTRIN)\n"
            "desc, impl = C.get_ldmatrix_intrin(32, 'int8', 'A', False)\n"   # parsed under the standard stack
            "tvm.ir.assert_structural_equal(got.desc, desc); tvm.ir.assert_structural_equal(got.impl, impl); print(True)\n")
    r = cli("-c", code, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "True"
