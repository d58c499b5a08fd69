"""Bit-exactness check: the QAT model's eval (integer) path, ONNX Runtime or TVM vs the integer reference.

    python -m hawq.verify --checkpoint runs/x/model_best.pth.tar [--artifact quantized_checkpoint.pth.tar]
    python -m hawq.verify --checkpoint hawq_run/checkpoint.pth.tar --quant-scheme uniform8 --data IMAGENET_DIR
    python -m hawq.verify -a mobilenetv2_w1 --quant-scheme uniform4 [--random]    # no checkpoint: calibrated
    python -m hawq.verify --checkpoint CKPT --runtime onnxruntime [--per-layer]   # the exported ONNX in ORT
    python -m hawq.verify --checkpoint CKPT --runtime tvm                         # = python -m tvm_benchmark.verify

``--runtime qat`` (default) compares the QAT model with the reference; ``onnxruntime`` exports the
integer program to ONNX in memory (:func:`hawq.export_onnx.to_onnx`, the format exact for the
model's numeric profile) and runs it in ONNX Runtime; ``tvm`` hands over to
:mod:`tvm_benchmark.apps.verify`. ``--per-layer`` (onnxruntime, tvm) compares every node's output
on the first batch and names the first node that diverges.

Without ``--checkpoint`` the model is built from ``-a``/``--quant-scheme`` (random weights, or
``--pretrained``) and calibrated on a few batches of the embedded data (``--random``: of random images,
and compared on random images too): :mod:`hawq.calibrated`.

Evaluates both on the validation set (or its first --limit images) and prints a table, then, as the
last line, ``mismatches: M/N`` where N is the number of output logits compared integer to integer.
Exit status 1 when M > 0.
"""
from __future__ import annotations

import argparse
import sys

import torch

from hawq import checkpoint as C
from hawq.apps.checks import add_calibration_args, calibrated_inputs, print_layers
from hawq.apps.cli import (RECORDED_DATASET_HELP, add_arch_arg, add_data_args, add_input_size_arg,
                           add_quant_scheme_arg, console_script, one_line_errors, resolve_dataset,
                           resolve_input_size, run_main)
from hawq.data import build_loaders
from hawq.errors import HawqError
from hawq.export import artifact_of, export_integer
from hawq.models.restore import quant_model_from
from hawq.program import Program, load_program
from hawq.tables import INT8_HOST_NOTE, exact_int8_host
from hawq.verify import compare, compare_layers, compare_with_reference

__all__ = ["cli", "RUNTIMES", "main"]

#: What ``--runtime`` compares with the integer reference.
RUNTIMES = ("qat", "onnxruntime", "tvm")


def _verify_calibrated(args) -> int:
    model, size, val, what = calibrated_inputs(args)
    art = export_integer(model, (3, size, size))
    r = compare(model, art["graph"], val, progress=not args.no_progress)
    w = max(18, len(model.arch) + 2)      # torchvision:NAME / file.py:FUNCTION specs are long
    print(f"{'arch':<{w}}{'scheme':<20}{'numerics':<10}{'inputs':<16}{'images':>8}")
    print(f"{model.arch:<{w}}{args.quant_scheme:<20}{model.config.numerics:<10}{what:<16}{r['images']:>8}")
    print(f"mismatches: {r['mismatches']}/{r['logits']}")
    return 1 if r["mismatches"] else 0


def _tvm(argv: list[str], args) -> int:
    """--runtime tvm: the same check by :mod:`tvm_benchmark.apps.verify` (imported only then)."""
    from tvm_benchmark.apps.verify import main as tvm_main
    if args.artifact:
        raise HawqError("--runtime tvm compiles --checkpoint (which may be the artifact itself); drop --artifact")
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--runtime":
            skip = True
        elif not a.startswith("--runtime="):
            rest.append(a)
    return tvm_main(rest)


def _program(args) -> tuple[Program, object]:
    """(program, validation batches) for --runtime onnxruntime."""
    if args.checkpoint is None:
        model, size, val, what = calibrated_inputs(args)
        art = export_integer(model, (3, size, size))
        return Program(art["graph"], (3, size, size), model.arch, args.quant_scheme, what, model.bit_config(),
                       "calibrated", model.config.numerics), val
    prog = load_program(args.checkpoint, args.arch, args.quant_scheme, args.dataset, args.data, args.input_size)
    if args.artifact:
        art = artifact_of(C.read(args.artifact))
        if art.get("arch") not in (None, prog.arch):
            raise HawqError(f"artifact '{args.artifact}' is for {art.get('arch')}, checkpoint for {prog.arch}")
        prog.graph = art["graph"]
    data = build_loaders(args.dataset or prog.dataset, args.data, args.batch_size, 0, 1.0, 0, eval_limit=args.limit,
                         input_size=prog.input_chw[1])
    return prog, data.val


def _verify_onnxruntime(args) -> int:
    from hawq.export_onnx import OnnxProgram, exact_format, to_onnx
    prog, val = _program(args)
    fmt = exact_format(prog.numerics)
    runner = OnnxProgram(to_onnx(prog.graph, prog.input_chw, fmt=fmt, numerics=prog.numerics,
                                 expose=args.per_layer), threads=args.threads)
    print(f"runtime: onnxruntime  format: {fmt}  numerics: {prog.numerics}")
    if fmt == "qdq" and not exact_int8_host():
        print(INT8_HOST_NOTE)
    if args.per_layer:
        x = next(iter(val))[0].numpy()
        rows = compare_layers(runner.values(x), prog.graph, x, fused_ok=fmt == "qdq")
        print_layers(rows)
        m, total = sum(r["mismatches"] for r in rows), sum(r["values"] for r in rows)
    else:
        r = compare_with_reference(runner, prog.graph, val, "ort", progress=not args.no_progress)
        w = max(18, len(prog.arch) + 2)
        print(f"{'arch':<{w}}{'scheme':<20}{'images':>8}{'ort_top1':>10}{'ref_top1':>10}")
        print(f"{prog.arch:<{w}}{str(prog.scheme):<20}{r['images']:>8}{r['ort_top1']:>10.2f}{r['ref_top1']:>10.2f}")
        m, total = r["mismatches"], r["logits"]
    print(f"mismatches: {m}/{total}")
    return 1 if m else 0


@one_line_errors
@torch.no_grad()          # not set_grad_enabled(False): callers in the same process keep autograd
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None,
                   help="QAT checkpoint (checkpoint.pth.tar / model_best.pth.tar), or HAWQ-V3's checkpoint.pth.tar "
                        "or quantized_checkpoint.pth.tar (these need --quant-scheme); with --runtime onnxruntime "
                        "or tvm also our integer artifact")
    add_arch_arg(p, None, help="for HAWQ-V3 files that do not record it")
    add_quant_scheme_arg(p, help="for HAWQ-V3 files, which do not record their bit_config")
    p.add_argument("--artifact", default=None,
                   help="integer artifact to check (default: export one from the checkpoint in memory)")
    p.add_argument("--runtime", default="qat", choices=RUNTIMES,
                   help="what to compare with the integer reference (default: the QAT model's eval path)")
    p.add_argument("--per-layer", action="store_true",
                   help="onnxruntime/tvm: compare every node's output on the first batch, name the first divergence")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime: intra-op threads (default: all cores)")
    add_data_args(p, dataset_help=RECORDED_DATASET_HELP)
    add_calibration_args(p)
    add_input_size_arg(p, "the checkpoint's, else 224 with --data, 32 on the embedded dataset, 96 for inceptionv3")
    p.add_argument("--limit", type=int, default=None, help="first N validation images (default: all)")
    p.add_argument("-b", "--batch-size", type=int, default=200)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        raise HawqError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.runtime == "tvm":
        return _tvm(list(sys.argv[1:] if argv is None else argv), args)
    if args.runtime == "onnxruntime":
        return _verify_onnxruntime(args)
    if args.per_layer:
        raise HawqError("--per-layer needs --runtime onnxruntime or tvm (the QAT check compares logits)")
    if args.checkpoint is None:
        return _verify_calibrated(args)
    f = C.read(args.checkpoint)
    dataset = resolve_dataset(args.dataset, args.data, f.dataset or ("imagenet" if f.numerics_inferred else None))
    size = resolve_input_size(args.input_size, dataset, args.arch or f.arch, f.input_size)
    model, _ = quant_model_from(f, arch=args.arch, scheme=args.quant_scheme, input_size=size)
    if f.numerics_inferred:
        print(f"note: {f.describe()} records no numeric profile: evaluated under numerics {model.config.numerics}")
    data = build_loaders(dataset, args.data, args.batch_size, 0, 1.0, 0, eval_limit=args.limit,
                         input_size=size)
    if args.artifact:
        art = artifact_of(C.read(args.artifact))
        if art.get("arch") not in (None, model.arch):
            raise HawqError(f"artifact '{args.artifact}' is for {art.get('arch')}, checkpoint for {model.arch}")
    else:
        art = export_integer(model, (3, data.input_size, data.input_size))
    r = compare(model, art["graph"], data.val, progress=not args.no_progress)
    scheme = f.quant_scheme or args.quant_scheme
    w = max(18, len(model.arch) + 2)      # torchvision:NAME / file.py:FUNCTION specs are long
    print(f"{'arch':<{w}}{'scheme':<20}{'numerics':<10}{'images':>8}{'qat_top1':>10}{'ref_top1':>10}")
    print(f"{model.arch:<{w}}{str(scheme):<20}{model.config.numerics:<10}{r['images']:>8}"
          f"{r['qat_top1']:>10.2f}{r['ref_top1']:>10.2f}")
    print(f"mismatches: {r['mismatches']}/{r['logits']}")
    return 1 if r["mismatches"] else 0


if __name__ == "__main__":
    run_main(main)


#: Console script (``[project.scripts]`` in pyproject.toml).
cli = console_script(main)
