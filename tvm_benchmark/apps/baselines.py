"""The engines users would otherwise pick, built from the same FP model as our integer program.

Every builder returns a zero-argument callable that runs one batch (the input is bound once), so
the benchmark times only inference.

- ``torch-fp32``: eager FP32.
- ``torch-int8``: PyTorch's x86 int8 backend via FX graph mode (``get_default_qconfig_mapping("x86")``:
  per-channel int8 weights, uint8 activations, calibrated on the calibration batches). Checked: every
  convolution of the FP model became a quantized one (:func:`quantized_convs`), else the engine
  would time float convolutions under an int8 name. Which oneDNN kernels it ran (``ONEDNN_VERBOSE``):
  :func:`onednn_primitives`, recorded by the benchmark.
- ``ort-fp32``: ONNX Runtime on the ONNX export, all graph optimizations.
- ``ort-int8``: ORT's own best CPU recipe: ``quant_pre_process`` (shape inference + ORT
  optimizations) first, then static QDQ quantization with per-channel int8 weights and uint8
  activations (MinMax calibration on the calibration batches), all graph optimizations.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from hawq.errors import HawqError

__all__ = ["torch_fp32", "torch_int8", "onednn_primitives", "quantized_convs", "export_onnx", "ort_run",
           "quantize_onnx_int8"]

Run = Callable[[], object]


def torch_fp32(model: torch.nn.Module, x: np.ndarray) -> Run:
    model = model.eval()
    t = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return model(t)
    return run


@contextlib.contextmanager
def _quiet():
    """torch's int8 (torch.ao) and TorchScript-ONNX APIs warn that they are deprecated; they still
    are what PyTorch users run today, so the warnings are silenced, not the engines dropped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def torch_int8(model: torch.nn.Module, x: np.ndarray, calib: list[np.ndarray]) -> Run:
    with _quiet():
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
        torch.backends.quantized.engine = "x86"
        m = copy.deepcopy(model).eval()
        prepared = prepare_fx(m, get_default_qconfig_mapping("x86"), example_inputs=(torch.from_numpy(x),))
        with torch.inference_mode():
            for c in calib:
                prepared(torch.from_numpy(c))
        converted = convert_fx(prepared)
    done, total = quantized_convs(converted), sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if done != total:
        raise HawqError(f"torch-int8: FX quantization turned {done} of the model's {total} convolutions into "
                        "quantized ones; the engine would time float convolutions")
    return torch_fp32(converted, x)


def onednn_primitives(run: Run) -> dict[tuple[str, str], int]:
    """``{(primitive kind, implementation): calls}`` of the oneDNN primitives one call of ``run``
    executes (``ONEDNN_VERBOSE`` through ``torch.backends.mkldnn.verbose``: oneDNN prints one
    ``onednn_verbose,...,exec,cpu,KIND,IMPL,...`` line per execution to the process's stdout, which
    is captured at the file-descriptor level for that one call). Empty when no oneDNN primitive ran
    (PyTorch's x86 backend may run FBGEMM's kernels instead)."""
    counts: dict[tuple[str, str], int] = {}
    sys.stdout.flush()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(1)
        try:
            os.dup2(tmp.fileno(), 1)
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                run()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        for line in tmp.read().decode(errors="replace").splitlines():
            fields = line.split(",")
            if not fields[0].startswith("onednn_verbose") or "exec" not in fields:
                continue
            i = fields.index("exec")
            if i + 3 < len(fields):
                key = (fields[i + 2], fields[i + 3])
                counts[key] = counts.get(key, 0) + 1
    return counts


def quantized_convs(model: torch.nn.Module) -> int:
    """How many quantized convolutions (torch.ao's ``Conv2d``/``ConvReLU2d``, int8 kernels) ``model`` holds."""
    from torch.ao.nn.quantized.modules.conv import _ConvNd
    return sum(isinstance(m, _ConvNd) for m in model.modules())


def export_onnx(model: torch.nn.Module, x: np.ndarray, path: Path) -> Path:
    """FP32 ONNX export (opset 17) with a static input shape."""
    with _quiet():
        torch.onnx.export(copy.deepcopy(model).eval(), (torch.from_numpy(x),), str(path), opset_version=17,
                          input_names=["x"], output_names=["logits"], dynamo=False)
    return path


def _session(path: Path, threads: int):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(path: Path, x: np.ndarray, threads: int) -> Run:
    sess = _session(path, threads)
    feed = {sess.get_inputs()[0].name: x}

    def run():
        return sess.run(None, feed)
    return run


def quantize_onnx_int8(fp32: Path, calib: list[np.ndarray], out_dir: Path) -> Path:
    """ORT static QDQ int8 model of ``fp32`` following ORT's CPU recipe (pre-processing first)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"x": b}

    pre, out = out_dir / "model.pre.onnx", out_dir / "model.int8.onnx"
    logging.getLogger().setLevel(logging.ERROR)
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out
