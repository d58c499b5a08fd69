"""``python -m hawq.export_onnx``: a checkpoint's integer program as an ONNX file that ONNX Runtime runs bit-exactly.

    python -m hawq.export_onnx --checkpoint CKPT --out model.onnx [--format integer|qdq]

``CKPT``: a QAT/PTQ checkpoint (exported in memory), its integer artifact, or HAWQ-V3's files
with ``--quant-scheme`` (as for ``tvm_benchmark.export``). ``--format integer`` (profiles exact
and hawq): ONNX integer operators (:mod:`hawq.export_onnx`); ``qdq`` is exact only for profile
``ort``. The file is written atomically and passes ``onnx.checker.check_model(full_check=True)``;
check it with ``python -m hawq.verify --checkpoint CKPT --runtime onnxruntime``.
"""
from __future__ import annotations

import argparse
import collections
import os

from hawq.apps.cli import add_arch_arg, add_input_size_arg, add_quant_scheme_arg, console_script, one_line_errors, run_main
from hawq.errors import HawqError
from hawq.export_onnx import FORMATS, QDQ_WEIGHTS, exact_format, save_onnx, to_onnx
from hawq.program import load_program
from hawq.tables import INT8_HOST_NOTE, exact_int8_host

__all__ = ["cli", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hawq.export_onnx", description=__doc__.splitlines()[0].strip("`: "))
    p.add_argument("--checkpoint", required=True,
                   help="QAT/PTQ checkpoint, its integer artifact quantized_checkpoint.pth.tar, or HAWQ-V3's files "
                        "(with --quant-scheme)")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="output file (its directory must exist)")
    p.add_argument("--format", default=None, choices=list(FORMATS),
                   help="integer: ONNX integer ops (every profile); qdq: QuantizeLinear/DequantizeLinear, run by "
                        "ONNX Runtime's int8 kernels (profile ort). Default: qdq for profile ort, else integer")
    p.add_argument("--weights", default="s8", choices=QDQ_WEIGHTS,
                   help="qdq: weights as int8 (zero point 0: the standard, fused exactly on VNNI/AMX/ARM hosts) or "
                        "uint8 with zero point 128 (the same integers, exact on AVX2-only hosts too)")
    add_arch_arg(p, None, help="for HAWQ-V3 files that do not record it")
    add_quant_scheme_arg(p, help="for HAWQ-V3 files, which do not record their bit_config")
    add_input_size_arg(p, "the checkpoint's (an artifact's is fixed)")
    return p


@one_line_errors
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):        # before the (slow) export
        raise HawqError(f"--out directory '{parent}' does not exist")
    prog = load_program(args.checkpoint, args.arch, args.quant_scheme, input_size=args.input_size)
    fmt = args.format or exact_format(prog.numerics)
    if args.weights != "s8" and fmt != "qdq":
        raise HawqError("--weights applies to --format qdq (the integer format's weights are always uint8)")
    model = to_onnx(prog.graph, prog.input_chw, fmt=fmt, numerics=prog.numerics, qdq_weights=args.weights,
                    meta={"arch": prog.arch, "quant_scheme": prog.scheme, "dataset": prog.dataset})
    save_onnx(model, args.out)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    common = ", ".join(f"{k} {v}" for k, v in ops.most_common(4))
    print(f"wrote {args.out}: {prog.arch} {prog.scheme} (numerics {prog.numerics}, format {fmt}), input float32"
          f"[batch,{','.join(map(str, prog.input_chw))}], {len(model.graph.node)} nodes ({common}, ...), "
          f"{os.path.getsize(args.out) / 1e6:.2f} MB")
    if fmt == "qdq" and args.weights == "s8" and not exact_int8_host():
        print(INT8_HOST_NOTE)
    return 0


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
