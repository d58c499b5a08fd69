"""Integer graph → ONNX that ONNX Runtime runs bit-exactly: :func:`to_onnx`, :func:`save_onnx`, :class:`OnnxProgram`.

Two formats (:data:`FORMATS`), each a lowering of its own: ``integer`` (every profile; ONNX integer
operators, :mod:`hawq.onnx_integer`, docs/numerics.md §16) and ``qdq`` (profile ``ort``;
QuantizeLinear/DequantizeLinear groups ONNX Runtime fuses into its int8 kernels,
:mod:`hawq.export_qdq`, docs/numerics.md §17). The file passes ``onnx.checker.check_model(full_check=True)``;
the model's metadata records the format, the profile and the per-class logit scale (``output_scale``,
JSON), so float logits = int logits · scale.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import helper

from hawq import ir
from hawq.errors import HawqError
from hawq.export_qdq import lower_qdq
from hawq.fileio import atomic_write
from hawq.onnx_integer import LOWER, ONNX_DTYPE, OnnxBuilder

__all__ = ["FORMATS", "QDQ_WEIGHTS", "OPSET", "exact_format", "to_onnx", "save_onnx", "output_scale_of", "OnnxProgram"]

#: Export formats and the numeric profiles each one reproduces exactly (the first format listed for
#: a profile is its default: ``qdq`` for ``ort``, the one ONNX Runtime runs with its int8 kernels).
FORMATS = {"integer": ("exact", "hawq", "ort"), "qdq": ("ort",)}
_DEFAULT_FORMAT = {"exact": "integer", "hawq": "integer", "ort": "qdq"}
#: Weight container of the QDQ format: int8 (zero point 0, the standard) or uint8 (w + 128, zero point 128).
QDQ_WEIGHTS = ("s8", "u8")
OPSET = 18                     # BitwiseAnd
_IR_VERSION = 9                 # ONNX Runtime 1.32 reads up to 11; 9 keeps older runtimes able to load it


def exact_format(numerics: str) -> str:
    """The default export format that reproduces profile ``numerics`` exactly (:data:`FORMATS`)."""
    if numerics in _DEFAULT_FORMAT:
        return _DEFAULT_FORMAT[numerics]
    raise HawqError(f"no ONNX format reproduces numeric profile {numerics!r} exactly")


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _value_info(name: str, dtype, shape) -> onnx.ValueInfoProto:
    dims = ["batch", *shape[1:]]
    return helper.make_tensor_value_info(name, ONNX_DTYPE[np.dtype(dtype)], dims)


def to_onnx(graph: "ir.Graph | dict", input_shape, *, fmt: str = "integer", numerics: str = "exact",
            expose: bool = False, meta: dict | None = None, qdq_weights: str = "s8") -> onnx.ModelProto:
    """The ONNX model of an integer graph for float32 inputs [batch, C, H, W] (``input_shape`` is
    (C, H, W); the batch is symbolic). ``fmt`` must reproduce ``numerics`` exactly (:data:`FORMATS`),
    else a HawqError saying which formats do. ``expose``: every IR value is also a graph output
    (``--per-layer``). ``meta``: extra metadata (str values). ``qdq_weights``: :data:`QDQ_WEIGHTS`.
    Checked with ``full_check``."""
    if fmt not in FORMATS:
        raise HawqError(f"unknown ONNX format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if numerics not in FORMATS[fmt]:
        exact = [f for f, profiles in FORMATS.items() if numerics in profiles]
        raise HawqError(f"--format {fmt} is exact only for numeric profile {', '.join(FORMATS[fmt])}; a model of "
                        f"profile {numerics} is exported exactly as --format {' or '.join(exact) or '(none)'}")
    g = ir.as_graph(graph)
    chw = tuple(int(d) for d in input_shape)
    info = g.infer((1, *chw))
    b = OnnxBuilder(info)
    b.dtype[g.input] = np.dtype(np.float32)
    if fmt == "qdq":
        shown = lower_qdq(b, g, expose, qdq_weights)
    else:
        for node in g.nodes:
            LOWER.lookup(node)(b, node, *node.inputs)
        shown = [n.output for n in g.nodes] if expose else [g.output]
    outputs = [_value_info(g.output, b.dtype[g.output], info[g.output][0])]
    outputs += [_value_info(v, b.dtype[v], info[v][0]) for v in shown if v != g.output]
    onnx_graph = helper.make_graph(b.nodes, "hawq_integer", [_value_info(g.input, np.float32, (1, *chw))],
                                   outputs, b.inits)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hawq",
                              doc_string=f"hawq integer program ({fmt}, numerics {numerics})")
    model.ir_version = _IR_VERSION
    props = {"hawq.format": fmt, "hawq.numerics": numerics, **{k: str(v) for k, v in (meta or {}).items()}}
    if g.output_scale is not None:
        props["output_scale"] = json.dumps(np.asarray(_np(g.output_scale), dtype=np.float64).tolist())
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def output_scale_of(model: onnx.ModelProto) -> np.ndarray | None:
    """The per-class logit scale recorded by :func:`to_onnx` (float64 [classes]), or None."""
    for p in model.metadata_props:
        if p.key == "output_scale":
            return np.asarray(json.loads(p.value), dtype=np.float64)
    return None


def save_onnx(model: onnx.ModelProto, path: str) -> None:
    """Write ``model`` to ``path`` atomically (temp file, then rename); the directory must exist."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise HawqError(f"--out directory '{parent}' does not exist")
    atomic_write(path, lambda tmp: onnx.save_model(model, tmp), suffix=".onnx")


class OnnxProgram:
    """An ONNX model in an ONNX Runtime session: :meth:`__call__` maps a float32 batch [B, C, H, W] to
    int64 logits [B, classes]; :meth:`values` returns every exposed output by name."""

    def __init__(self, model: onnx.ModelProto, threads: int | None = None, optimize: bool = True):
        import onnxruntime as ort
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                       else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(self.names[:1], {self.input: np.asarray(x, dtype=np.float32)})[0].astype(np.int64)

    def values(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.names, {self.input: np.asarray(x, dtype=np.float32)})
        return dict(zip(self.names, outs))


if __name__ == "__main__":          # python -m hawq.export_onnx: the program is hawq.apps.export_onnx
    from hawq.apps.cli import run_main
    from hawq.apps.export_onnx import main
    run_main(main)
