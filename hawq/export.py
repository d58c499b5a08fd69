"""Integer export: a trained QAT model -> an integer artifact (``quantized_checkpoint.pth.tar``).

The artifact keeps HAWQ-V3's five dicts (``weight_integer``, ``bias_integer``,
``convbn_scaling_factor``, ``fc_scaling_factor``, ``act_scaling_factor``, keyed by state_dict key)
and adds ``graph``: the integer program recorded from the model's eval path — node list in
execution order with integer weights (int8 containers, 4-bit values included), int32 biases,
dyadic multipliers (int64, < 2^31) and shifts, zero points and clamp ranges. Everything is tensors,
ints, strings, lists and dicts, so it loads with ``weights_only=True``.
"""
from __future__ import annotations

import numpy as np
import torch

from hawq import checkpoint as C
from hawq import ir
from hawq.checkpoint import ARTIFACT_FORMAT as FORMAT
from hawq.checkpoint import HAWQ_KEYS, save_atomic
from hawq.errors import HawqError
from hawq.quant.graph import recording


__all__ = ["record_graph", "float_logits", "export_integer", "save_artifact", "load_artifact", "artifact_of"]

@torch.no_grad()
def record_graph(model: torch.nn.Module, example: torch.Tensor) -> ir.Graph:
    """Run the model's integer path once on ``example`` [B,C,H,W] and return its (validated) graph."""
    model.eval()
    with recording() as rec:
        rec.bind(example, "input")
        q = model.forward_int_q(example)
    # Per-class float64 scale of the int64 logits: backends need it to rank classes (per-class S_fc).
    graph = ir.Graph("input", rec.nodes[-1].output, rec.nodes,
                     output_scale=q.scale.detach().double().cpu().reshape(-1).clone())
    graph.validate()
    graph.infer(tuple(example.shape))          # shape rules hold for the recorded program
    return graph


def float_logits(logits_int, graph: "ir.Graph | dict") -> np.ndarray:
    """Integer logits [B, classes] -> float64 logits (int · per-class scale), for ranking classes.

    Graphs exported before ``output_scale`` existed rank the raw integers (one shared scale).
    """
    scale = graph.output_scale if isinstance(graph, ir.Graph) else graph.get("output_scale")
    out = np.asarray(logits_int, dtype=np.float64)
    return out if scale is None else out * np.asarray(scale, dtype=np.float64).reshape(1, -1)


def export_integer(model: torch.nn.Module, input_shape: tuple[int, int, int], meta: dict | None = None) -> dict:
    """Build the integer artifact of an eval-ready QAT model for inputs of shape ``input_shape`` (C,H,W).

    The graph is specific to that spatial size (the global pool's divisor is folded into the
    following requantization).
    """
    device = next(model.parameters()).device
    example = torch.zeros(1, *input_shape, device=device)
    graph = record_graph(model, example).to_dict()
    sd = model.state_dict()
    art = {key: {k: v.detach().cpu().clone() for k, v in sd.items() if key in k} for key in HAWQ_KEYS}
    config = model.config
    art.update(format=FORMAT, graph=graph, input_shape=list(input_shape),
               bit_config=dict(model.bit_config()), numerics=config.numerics, quant_config=config.to_dict(),
               **(meta or {}))
    return art


def save_artifact(art: dict, path: str) -> None:
    save_atomic(art, path)


def load_artifact(path: str) -> dict:
    """Load an integer artifact; HawqError if the file is not one."""
    return artifact_of(C.read(path))


def artifact_of(f: C.ModelFile) -> dict:
    """The artifact dict of a file classified as one, else HawqError saying what the file is."""
    if f.kind is not C.Kind.ARTIFACT:
        hint = (" (it has no integer graph: evaluate it with --quant-scheme, or quant_train.py "
                "--resume PATH --quant-scheme S -e to write an artifact)" if f.kind is C.Kind.HAWQ_QUANTIZED else "")
        raise HawqError(f"{f.describe()} is not an integer artifact (format {FORMAT}){hint}")
    return f.raw
