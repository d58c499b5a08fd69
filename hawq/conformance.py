"""Conformance with HAWQ-V3's original code: our profile-``hawq`` integers vs the ones HAWQ computed.

    python -m hawq.conformance DIR [DIR ...]

Each DIR is one ``<arch>_<scheme>/`` written by ``../shared/hawq_ref/make_ref.py`` (HAWQ-V3's own
code run on the CPU): its ``checkpoint.pth.tar`` is loaded as a user's HAWQ checkpoint (profile
``hawq``, inferred), the integer graph is exported and run by the integer reference on the eval batch
of ``io.pt``, and every ``QuantAct`` output of sample 0 is compared with ``acts_sample0.pt``.

Where HAWQ's float arithmetic is exact the integers must be identical. It is not exact where a
value's float32 convolution sum can pass 2^24, where recovering the accumulator from its dequantized
float (``z / s_in / s_w``, three float32 roundings) can miss by 0.5 (|acc| >= 2^21), or where its
float64 requantization product acc·m passes 2^53 (|acc| >= 2^22): a layer is **certified** when none
of this can happen to it and every quantizer feeding it agreed exactly. Certified layers must be
identical except at values within float32 rounding of a requantization tie (``acc·m/2^s`` closer to
``k + 1/2`` than ``2^-22`` of its size: a one-ulp difference in a float32 scale, which HAWQ's
training and PyTorch's vector code form differently on different CPUs, moves them across; they may
differ by 1); every other layer is allowed differences of ±1, counted in the table.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from hawq import checkpoint as C
from hawq.errors import HawqError
from hawq.export import export_integer, float_logits
from hawq.models.restore import quant_model_from
from hawq.reference import run_graph

__all__ = ["ACC_EXACT", "F32_EXACT", "TIE_MARGIN", "QUANT_OPS", "LayerResult", "RunResult",
           "compare_fixture", "format_result"]

#: Accumulator magnitude below which HAWQ's float recovery and float64 product are exact (see module doc).
ACC_EXACT = 1 << 21
#: float32 sums of integers are exact while every partial sum is below this.
F32_EXACT = 1 << 24
#: A requantized value this close to a tie, relative to its size, depends on float32 scale ulps.
TIE_MARGIN = 2.0 ** -22
QUANT_OPS = ("quantize", "requant", "requant_add")


@dataclass(frozen=True)
class LayerResult:
    """One QuantAct's sample-0 output: ``values`` compared, ``identical`` of them, largest |diff|,
    ``certified`` (HAWQ's arithmetic provably exact there, inputs identical), ``ties`` of them within
    float32 rounding of a requantization tie and ``off_tie_mismatches`` differing elsewhere."""
    name: str
    values: int
    identical: int
    max_abs_diff: int
    certified: bool
    ties: int = 0            # values within float32 rounding of a requantization tie
    off_tie_mismatches: int = 0

    @property
    def conformant(self) -> bool:
        """Certified: identical except near-tie values (±1); otherwise ±1 anywhere."""
        return self.max_abs_diff <= 1 and (not self.certified or self.off_tie_mismatches == 0)


@dataclass(frozen=True)
class RunResult:
    """A fixture's comparison: per-layer results, top-1 agreement of the logits on the eval batch."""
    source: str
    arch: str
    scheme: str
    layers: tuple[LayerResult, ...]
    top1_equal: int
    images: int

    @property
    def values(self) -> int:
        return sum(r.values for r in self.layers)

    @property
    def identical(self) -> int:
        return sum(r.identical for r in self.layers)

    @property
    def max_abs_diff(self) -> int:
        return max(r.max_abs_diff for r in self.layers)


def _producers(graph: dict) -> dict[str, dict]:
    return {n["output"]: n for n in graph["nodes"]}


def _feeding_quantizers(node: dict, producers: dict[str, dict]) -> list[str]:
    """Names of the QuantAct nodes whose outputs reach ``node`` through non-quantizer nodes."""
    out, stack = [], list(node["inputs"])
    while stack:
        v = stack.pop()
        p = producers.get(v)
        if p is None:
            continue
        if p["op"] in QUANT_OPS:
            out.append(p["name"])
        else:
            stack.extend(p["inputs"])
    return out


def _tie_mask(node: dict, env: dict) -> np.ndarray | None:
    """Sample 0's values of a requant / requant_add whose rescaled term ``x·m/2^s`` lies within
    float32 rounding of a tie (relative ``TIE_MARGIN``); None for other ops."""
    if node["op"] not in ("requant", "requant_add"):
        return None
    pairs = [(node["inputs"][0], "multiplier", "shift")]
    if node["op"] == "requant_add":
        pairs.append((node["inputs"][1], "identity_multiplier", "identity_shift"))
    mask = None
    for value, mk, sk in pairs:
        x = np.asarray(env[value][:1], dtype=np.float64)
        shape = [1, -1] + [1] * (x.ndim - 2)
        m = np.asarray(node[mk], dtype=np.float64).reshape(shape)
        s = np.asarray(node[sk], dtype=np.float64).reshape(shape)
        t = x * m / np.exp2(s)
        near = np.abs(t - np.floor(t) - 0.5) <= np.abs(t) * TIE_MARGIN
        mask = near if mask is None else (mask | near)
    return mask[0]


def _conv_bound(node: dict, producers: dict[str, dict], env: dict) -> int:
    """Worst-case float32 partial sum of the conv/dense accumulators feeding ``node`` (0 if none)."""
    bound = 0
    for v in node["inputs"]:
        p = producers.get(v)
        while p is not None and p["op"] in ("relu", "maxpool2d"):
            p = producers.get(p["inputs"][0])
        if p is not None and p["op"] in ("conv2d", "dense"):
            w = np.abs(p["weight"].numpy().astype(np.int64)).reshape(p["weight"].shape[0], -1).sum(1)
            x = np.abs(env[p["inputs"][0]]).max()
            bound = max(bound, int((w * x).max()) + int(np.abs(p["bias"].numpy().astype(np.int64)).max()))
    return bound


def compare_fixture(path: str, numerics: str | None = None, file: str = "checkpoint.pth.tar") -> RunResult:
    """Compare one make_ref.py output directory (see module docstring).

    ``numerics``: evaluate under this profile instead of the inferred one (``hawq``); ``file``: the
    HAWQ file to evaluate (``quantized_checkpoint.pth.tar`` works too: arch and scheme come from the
    directory name).
    """
    for name in (file, "io.pt", "acts_sample0.pt"):
        if not os.path.isfile(os.path.join(path, name)):
            raise HawqError(f"'{path}' is not a make_ref.py output directory (no {name})")
    f = C.read(os.path.join(path, file))
    arch, scheme = os.path.basename(os.path.normpath(path)).split("_", 1)
    config = None if numerics is None else f.config.replace(numerics=numerics)
    model, _ = quant_model_from(f, arch=arch, scheme=scheme, config=config)
    io = torch.load(os.path.join(path, "io.pt"), map_location="cpu", weights_only=True)
    acts = torch.load(os.path.join(path, "acts_sample0.pt"), map_location="cpu", weights_only=True)
    x = io["input"].float()
    graph = export_integer(model, tuple(x.shape[1:]))["graph"]
    logits, env = run_graph(graph, x.numpy(), keep=True)
    producers = _producers(graph)
    exact: dict[str, bool] = {}
    rows = []
    for node in graph["nodes"]:
        if node["op"] not in QUANT_OPS:
            continue
        name = node["name"]
        if name not in acts:
            raise HawqError(f"'{path}': HAWQ recorded no output for '{name}'")
        ours = env[node["output"]][0].astype(np.int64)
        theirs = acts[name]["int"].numpy().astype(np.int64).reshape(ours.shape)
        diff = np.abs(ours - theirs)
        inputs_ok = all(exact.get(n, False) for n in _feeding_quantizers(node, producers))
        acc_max = max((int(np.abs(env[v]).max()) for v in node["inputs"] if v in env and v != graph["input"]),
                      default=0)
        certified = (node["op"] == "quantize" or
                     (inputs_ok and acc_max < ACC_EXACT and _conv_bound(node, producers, env) < F32_EXACT))
        identical = int((diff == 0).sum())
        tie = _tie_mask(node, env)
        tie = np.zeros(diff.shape, bool) if tie is None else tie.reshape(diff.shape)
        off_tie = int(((diff != 0) & ~tie).sum())
        # A near-tie value that differs makes its consumers uncertified (their inputs differ); one that
        # agrees keeps them certified.
        exact[name] = identical == diff.size
        rows.append(LayerResult(name, int(diff.size), identical, int(diff.max(initial=0)), certified,
                                int(tie.sum()), off_tie))
    ours_top1 = float_logits(logits, graph).argmax(1)
    top1_equal = int((ours_top1 == io["logits"].argmax(1).numpy()).sum())
    return RunResult(path, model.arch, scheme, tuple(rows), top1_equal, len(ours_top1))


def format_result(r: RunResult, per_layer: bool = False) -> str:
    lines = []
    if per_layer:
        lines.append(f"{'layer':<34}{'values':>9}{'identical':>11}{'max|diff|':>10}{'certified':>10}")
        for L in r.layers:
            lines.append(f"{L.name:<34}{L.values:>9}{L.identical:>11}{L.max_abs_diff:>10}{'yes' if L.certified else '':>10}")
    lines.append(f"{r.arch} {r.scheme}: {r.identical}/{r.values} integers identical "
                 f"({100.0 * r.identical / max(r.values, 1):.3f} %), largest difference {r.max_abs_diff}, "
                 f"certified layers {sum(L.certified for L in r.layers)}/{len(r.layers)}, "
                 f"top-1 equal {r.top1_equal}/{r.images}")
    return "\n".join(lines)


if __name__ == "__main__":          # python -m hawq.conformance: the program is hawq.apps.conformance
    from hawq.apps.cli import run_main
    from hawq.apps.conformance import main
    run_main(main)
