"""Bit-exactness check: the QAT model's eval (integer) path vs the integer reference executor, image by
image over a loader (:func:`compare`), or any executor vs the reference (:func:`compare_with_reference`).
The program ``python -m hawq.verify`` is :mod:`hawq.apps.verify`.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from hawq import ir
from hawq.export import float_logits
from hawq.reference import run_graph


__all__ = ["compare_with_reference", "compare", "compare_layers"]

def compare_with_reference(run, graph: "ir.Graph | dict", loader, name: str, progress: bool = True) -> dict:
    """Run an executor and the integer reference over ``loader``; count logit mismatches, top-1 of each.

    ``run``: float32 NumPy batch [B,C,H,W] -> int64 NumPy logits [B, classes]. Returns
    ``mismatches``, ``logits`` (compared), ``images``, ``<name>_top1`` and ``ref_top1`` (percent,
    classes ranked by the scaled logits).
    """
    graph = ir.as_graph(graph)        # parsed and checked once, not per batch
    mismatches = total = n = hit = hit_ref = 0
    for x, y in tqdm(loader, desc="verify", disable=not progress, dynamic_ncols=True, leave=False):
        x, y = x.numpy(), y.numpy()
        out, ref = run(x), run_graph(graph, x)
        mismatches += int((out != ref).sum())
        total += ref.size
        n += len(y)
        hit += int((float_logits(out, graph).argmax(1) == y).sum())
        hit_ref += int((float_logits(ref, graph).argmax(1) == y).sum())
    return {"mismatches": mismatches, "logits": total, "images": n,
            f"{name}_top1": 100.0 * hit / max(n, 1), "ref_top1": 100.0 * hit_ref / max(n, 1)}


def compare(model, graph: dict, loader, progress: bool = True) -> dict:
    """The QAT model's integer eval path vs the reference (:func:`compare_with_reference`, ``qat_top1``)."""
    return compare_with_reference(lambda x: model.forward_int(torch.from_numpy(x)).cpu().numpy(),
                                  graph, loader, "qat", progress)


def compare_layers(values: dict[str, np.ndarray], graph: dict, x: np.ndarray, fused_ok: bool = False) -> list[dict]:
    """Every node's integer output from an executor (``values``: IR value name -> array, e.g. ONNX
    Runtime's exposed outputs or TVM's tuple of node outputs) against the reference's on batch ``x``.
    One row per node in execution order: ``node``, ``op``, ``output``, ``values``, ``mismatches``,
    ``max_abs_diff``, ``fused``; a value the executor did not return counts as all mismatched, or
    with ``fused_ok`` (a QDQ file: ONNX Runtime never materializes a conv's accumulator) as a
    ``fused`` row with nothing compared (``values`` 0)."""
    _, env = run_graph(graph, x, keep=True)
    rows = []
    for node in graph["nodes"]:
        ref = env[node["output"]]
        got = values.get(node["output"])
        if got is None and fused_ok:
            rows.append({"node": node["name"], "op": node["op"], "output": node["output"], "values": 0,
                         "mismatches": 0, "max_abs_diff": -1, "fused": True})
            continue
        if got is None or np.shape(got) != ref.shape:
            mism, diff = int(ref.size), -1
        else:
            d = np.abs(np.asarray(got, dtype=np.int64) - ref)
            mism, diff = int((d != 0).sum()), int(d.max(initial=0))
        rows.append({"node": node["name"], "op": node["op"], "output": node["output"], "values": int(ref.size),
                     "mismatches": mism, "max_abs_diff": diff, "fused": False})
    return rows


if __name__ == "__main__":          # python -m hawq.verify: the program is hawq.apps.verify
    from hawq.apps.cli import run_main
    from hawq.apps.verify import main
    run_main(main)
