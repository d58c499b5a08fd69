"""Static check that a lowered module is integer-only after the input quantizer.

Walks the Relax ``main`` of a lowered module (after FuseOps/FuseTIR) and every TIR kernel it calls:

- the only kernels allowed to touch floating point are those that read the float input ``x``
  (the fused input quantizer: divide, or multiply by the reciprocal, round, clip, cast) and they must
  return an integer tensor;
- every other kernel must have no floating-point dtype anywhere in its TIR (buffers, casts,
  constants, intrinsics), except profile ort's requantization (a kernel built from
  :data:`tvm_benchmark.frontend.FLOAT_REQUANT_KERNEL`), whose float use must be exactly that step:
  ``T.Cast(int, T.max(T.min(T.nearbyint(T.Cast("float32", x) * m[c]), hi), lo))`` with float32
  multiplier buffers, nothing else (no FMA, division, other rounding or float64);
- every Relax binding after the first one must have an integer dtype.

TVM 0.27's Python has no TIR visitor, so kernels are checked on their TVMScript text, where every
typed value spells its dtype (``T.float32(...)``, ``T.Buffer(..., "float32")``, ``T.Cast("float64", …)``).
"""
from __future__ import annotations

import re

import tvm
from tvm import relax

from tvm_benchmark.frontend import FLOAT_REQUANT_KERNEL

__all__ = ["relax_float_violations", "float_violations", "kernel_float_violations"]

_FLOAT = re.compile(r"\b(b?float(8|16|32|64)|e4m3|e5m2|bfloat16)\b")
_NUM = r"-?[0-9.]+(?:e[-+]?[0-9]+)?"
#: Profile ort's float32 requantization as TVMScript prints it (see the module docstring).
_FLOAT_REQUANT = re.compile(r'T\.Cast\("u?int(?:8|16|32|64)", T\.max\(T\.min\(T\.nearbyint\(T\.Cast\("float32", '
                            r'\w+\[[^\]]*\]\) \* \w+\[[^\]]*\]\), T\.float32\(' + _NUM + r'\)\), T\.float32\(' + _NUM + r'\)\)\)')
#: A float32 buffer parameter (the per-channel multipliers) in a kernel's signature.
_FLOAT32_PARAM = re.compile(r'\w+: T\.Buffer\(\([^()]*(?:\([^()]*\)[^()]*)*\), "float32"\)')


def _calls(main: relax.Function):
    """(bound var, callee name or op name, args) for every binding of ``main``, in order."""
    for block in main.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call):
                op = v.op
                if isinstance(op, tvm.ir.Op) and op.name == "relax.call_tir":
                    yield b.var, _name(v.args[0]), list(v.args[1].fields)
                else:
                    name = op.name if isinstance(op, tvm.ir.Op) else str(op)
                    yield b.var, name, list(v.args)
            else:
                yield b.var, type(v).__name__, []


def _name(v) -> str:
    return str(getattr(v, "name_hint", None) or getattr(v, "name", v))


def _dtype(var) -> str | None:
    ty = getattr(var, "ty", None)
    return getattr(ty, "dtype", None)


def relax_float_violations(mod: tvm.IRModule) -> list[str]:
    """High-level Relax module: every binding after the input quantizer's cast to an integer dtype
    (the first integer-typed binding) must be integer-typed."""
    bad, seen_int = [], False
    for var, callee, _ in _calls(mod["main"]):
        dt = str(_dtype(var))
        is_float = bool(_FLOAT.search(dt))
        if seen_int and is_float:
            bad.append(f"relax binding {_name(var)} = {callee}(...) has dtype {dt} after the input quantizer")
        seen_int = seen_int or (not is_float and dt.startswith(("int", "uint")))
    return bad


def float_violations(mod: tvm.IRModule) -> list[str]:
    """Every floating-point use after the input quantizer in ``mod`` (high-level Relax, as built by
    :func:`tvm_benchmark.frontend.build_module`) and in its lowered kernels; empty = integer-only."""
    from tvm_benchmark.compile import lower
    return relax_float_violations(mod) + kernel_float_violations(lower(mod))


def kernel_float_violations(lowered: tvm.IRModule) -> list[str]:
    """Lowered module: only kernels reading the float input (a float ``main`` parameter) may use
    floating point, and profile ort's requantization kernels that one float step."""
    main = lowered["main"]
    inputs = {p for p in main.params if _FLOAT.search(str(_dtype(p)))}      # the float image
    bad = []
    for var, callee, args in _calls(main):
        reads_input = any(a in inputs for a in args if isinstance(a, relax.Var))
        dt = _dtype(var)
        if dt is not None and _FLOAT.search(str(dt)):
            bad.append(f"relax binding {_name(var)} = {callee}(...) has dtype {dt}")
        if reads_input or callee not in {_name(gv) for gv in lowered.get_global_vars()}:
            continue
        func = lowered[callee]
        if isinstance(func, tvm.tirx.PrimFunc):
            text = func.script()
            if FLOAT_REQUANT_KERNEL in callee:
                text = _FLOAT32_PARAM.sub("", _FLOAT_REQUANT.sub("", text))
            m = _FLOAT.search(text)
            if m:
                bad.append(f"kernel {callee} uses {m.group(0)}")
    return bad
