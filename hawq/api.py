"""The Python API: a user's own float CNN in, an integer-only program out.

::

    import hawq
    qmodel = hawq.quantize(model, example_inputs, calib_data, w_bits=8, a_bits=8)   # PTQ -> QuantModel (eval)
    qmodel = hawq.prepare_qat(model, example_inputs, scheme="uniform4")             # train it like any module
    graph = hawq.export_program(qmodel, path=None)                                  # the integer program
    logits = hawq.run_reference(graph, images)                                      # int64 logits, NumPy

The model is captured with torch.fx (:mod:`hawq.capture`); layer names (bit_config keys) are its own
module paths. ``tvm_benchmark.compile.compile_program(graph.to_dict(), shape, "llvm")`` compiles the
same graph with TVM.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn

from hawq import ir
from hawq.bit_config import binary_bits, bits_of_layers
from hawq.capture import QuantGraphModel, QuantPoint, capture
from hawq.errors import HawqError
from hawq.export import export_integer, record_graph, save_artifact
from hawq.models.binary import SignPoint
from hawq.models.layers import model_layers
from hawq.quant.config import QuantConfig
from hawq.reference import run_graph

__all__ = ["quantize", "prepare_qat", "export_program", "run_reference", "scheme_of", "QuantPoint", "SignPoint"]


def _as_batch(example_inputs) -> torch.Tensor:
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise HawqError("example_inputs: expected one float tensor [B, C, H, W] (or a 1-tuple of it)")
    return x.float()


def scheme_of(model: QuantGraphModel, scheme: str | Mapping[str, int] | None, w_bits: int, a_bits: int,
              input_size: int) -> dict[str, int]:
    """{layer: bits}: ``scheme`` as given (a mapping, ``uniformN``, or ``binary``:
    :func:`hawq.bit_config.binary_bits`), else every conv/linear at
    ``w_bits`` and activation at ``a_bits`` with the model input, first conv, last linear and the
    quantizer feeding it at 8 and residual accumulators at 16 (HAWQ's convention,
    :func:`hawq.bit_config.bits_of_layers` of the model's inventory at ``input_size`` pixels)."""
    if isinstance(scheme, Mapping):
        return dict(scheme)
    if scheme == "binary":
        bits = binary_bits(model_layers(copy.deepcopy(model), input_size))
        if 1 not in bits.values():
            raise HawqError("scheme 'binary': no layer can be 1-bit (a 1-bit activation needs a signed "
                            "quantizer, e.g. hawq.SignPoint, before k×k convs other than the stem)")
        return bits
    if scheme is not None:
        if not (isinstance(scheme, str) and scheme.startswith("uniform") and scheme[7:].isdigit()):
            raise HawqError(f"scheme {scheme!r}: give uniformN (N = 2..8), binary or a {{layer: bits}} mapping")
        w_bits = a_bits = int(scheme[7:])
    for what, b in (("w_bits", w_bits), ("a_bits", a_bits)):
        if b not in range(2, 9):
            raise HawqError(f"{what} must be between 2 and 8, got {b}")
    # the inventory's training-mode forward moves activation ranges: read it off a copy
    specs = model_layers(copy.deepcopy(model), input_size)
    return bits_of_layers(specs, w_bits, a_bits, first_last_8bit=True)


def _calib_images(calib_data, limit: int | None) -> torch.Tensor:
    """Stack ``calib_data`` (tensors [B, C, H, W] / [C, H, W] or (input, label) pairs) into one batch."""
    parts = []
    for item in itertools.islice(calib_data, limit):
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise HawqError(f"calib_data yields {type(x).__name__}; expected tensors or (input, label) pairs")
        parts.append(x.unsqueeze(0) if x.dim() == 3 else x)
    if not parts:
        raise HawqError("calib_data is empty")
    return torch.cat(parts).float()


def quantize(model: nn.Module, example_inputs, calib_data: Iterable, w_bits: int = 8, a_bits: int = 8,
             scheme: str | Mapping[str, int] | None = None, observer: str = "emaminmax", recon: str = "none",
             w_observer: str = "minmax", recon_iters: int = 1000, calib_batches: int | None = None,
             config: QuantConfig | None = None, progress: bool = False) -> QuantGraphModel:
    """Post-training quantization of a float ``model`` (not modified): capture, weight grids,
    activation ranges from ``calib_data`` (``calib_batches`` items at most), then ``recon``
    (``none``; ``adaround`` layer by layer; ``brecq`` / ``qdrop`` by residual blocks found in the
    graph, :meth:`hawq.capture.QuantGraphModel.graph_blocks`). Returns the quantized model in eval mode."""
    from hawq.ptq.pipeline import PTQSettings
    from hawq.ptq.pipeline import quantize as ptq_quantize
    from hawq.ptq.recon import RECON_METHODS, ReconSettings
    if recon not in RECON_METHODS:
        raise HawqError(f"recon {recon!r}: choose one of {', '.join(RECON_METHODS)}")
    config = (config or QuantConfig()).replace(fix_BN=True)
    example = _as_batch(example_inputs)
    q = capture(model, example, config)
    q.apply_bit_config(scheme_of(q, scheme, w_bits, a_bits, example.shape[-1]))
    settings = PTQSettings(w_observer=w_observer, a_observer=observer,
                           recon=ReconSettings(method=recon, iters=recon_iters))
    ptq_quantize(q, _calib_images(calib_data, calib_batches), settings, progress=progress)
    return q.eval()


def prepare_qat(model: nn.Module, example_inputs, scheme: str | Mapping[str, int] | None = "uniform8",
                w_bits: int = 8, a_bits: int = 8, config: QuantConfig | None = None,
                copy_model: bool = True) -> QuantGraphModel:
    """A float ``model`` ready for quantization-aware training (train mode): train it as any module
    (its ``forward`` returns float logits), then ``eval()`` runs the integer path."""
    example = _as_batch(example_inputs)
    q = capture(model, example, config or QuantConfig(), copy_model=copy_model)
    q.apply_bit_config(scheme_of(q, scheme, w_bits, a_bits, example.shape[-1]))
    return q.train()


def export_program(qmodel: nn.Module, path: str | None = None, input_shape: tuple[int, int, int] | None = None,
           example_inputs=None) -> ir.Graph:
    """The integer program of a quantized model (eval mode). ``input_shape`` (C, H, W) or
    ``example_inputs`` fix the resolution; ``path``: also write the artifact there (atomically)."""
    if input_shape is None:
        if example_inputs is None:
            raise HawqError("export: give input_shape=(C, H, W) or example_inputs")
        input_shape = tuple(_as_batch(example_inputs).shape[1:])
    qmodel.eval()
    if path is not None:
        art = export_integer(qmodel, tuple(input_shape))
        save_artifact(art, path)
        return ir.as_graph(art["graph"])
    device = next(qmodel.parameters()).device
    return record_graph(qmodel, torch.zeros(1, *input_shape, device=device))


def run_reference(artifact, images) -> np.ndarray:
    """int64 logits [B, classes] of the NumPy integer reference on float ``images`` [B, C, H, W]
    (a tensor or array). ``artifact``: an :class:`hawq.ir.Graph`, its dict, or an artifact dict."""
    graph = artifact["graph"] if isinstance(artifact, dict) and "graph" in artifact else artifact
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return run_graph(graph, x.astype(np.float32))
