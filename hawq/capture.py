"""Capture any traceable CNN: its torch.fx graph mapped onto the quant modules, as a :class:`QuantModel`.

Why torch.fx and not ``torch.export``: fx tracing keeps the model's own modules and their paths
(``layer1.0.conv1``), which become the layer names of the bit_config, the checkpoint keys and the
integer graph's node names, and the quantized model holds (and QAT trains) those very conv/BN/linear
modules, of a copy unless ``copy_model=False``. ``torch.export`` lowers to aten ops, and those module boundaries survive only as metadata.

The float graph is traced in eval mode (the inference topology: no auxiliary heads), then walked
once in topological order. Every value carries what the integer program knows of it:

``float``   the image (only the model input),
``acc``     a conv/linear accumulator or a pool of one: int32-range integers, per-channel scale,
``act``     the output of an activation quantizer (b <= 8 bits): what a conv or linear may read,
``wide``    the output of a residual add: both sides requantized to a 16-bit grid (``requant_add``).

Rules: Conv2d (+ the BatchNorm2d that is its only user, folded) -> :class:`QuantBnConv2d`; Linear ->
:class:`QuantLinear`; their input, when not an ``act``, goes through one :class:`QuantAct` per value
(shared by every consumer; unsigned after ReLU/ReLU6, signed otherwise; the image's is
``quant_input``); ReLU/ReLU6 clamp whatever they get; max pools are order-preserving; ``a + b`` is
one 16-bit accumulator quantizer with an identity (:class:`QuantAct` role ``accumulator``); channel
``cat`` keeps per-channel scales (:class:`QuantConcat`); a global average pool (adaptive to 1,
``mean((2, 3))``, or a window the size of the input) sums, ``flatten``/``view`` after it is nothing;
dropout and identity vanish. Anything else stops with one line naming the op, the module path and
the model's source line.
"""
from __future__ import annotations

import copy
import operator
import re
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from hawq.errors import HawqError
from hawq.models.base import QuantModel
from hawq.quant.config import QuantConfig
from hawq.quant.modules import (QuantAct, QuantAveragePool2d, QuantBnConv2d, QuantConcat, QuantFlatten,
                                QuantLinear, QuantMaxPool2d, QuantReLU, QuantReLU6, QuantWindowAvgPool2d)

__all__ = ["capture", "QuantGraphModel", "trace"]

_RELU_FN = (F.relu, torch.relu, torch.relu_)
_ADD_FN = (operator.add, operator.iadd, torch.add)
_CAT_FN = (torch.cat, torch.concat)
_FLATTEN_FN = (torch.flatten,)
_FLATTEN_METHODS = ("flatten", "view", "reshape")
_PASS_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)
_PASS_FN = (F.dropout,)
_SUPPORTED_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool2d,
                      nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten, *_PASS_MODULES)


@dataclass
class _Val:
    """A value of the quantized program: the new graph's node producing it and what it holds."""
    node: fx.Node
    kind: str                 # float | acc | act | wide
    nonneg: bool = False
    flat: bool = False        # [B, C]: after a global pool


def trace(model: nn.Module, name: str = "model") -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` of ``model`` in eval mode, with one-line errors."""
    model.eval()
    tracer = fx.Tracer()
    tracer.record_stack_traces = True            # error messages name the model's source line
    try:
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as e:  # noqa: BLE001 - tracing user code can raise anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HawqError(f"{name}: torch.fx cannot trace it ({type(e).__name__}: {first}); "
                        "data-dependent control flow is not supported") from None


def _source_line(node: fx.Node) -> str:
    """`` (FILE:LINE)`` of the model's source line that created ``node`` (FX records the stack)."""
    st = node.meta.get("stack_trace") or ""
    frames = [f for f in re.findall(r'File "([^"]+)", line (\d+)', st)
              if not re.search(r"/torch/(fx|nn/modules)/", f[0])]
    return f" ({frames[-1][0]}:{frames[-1][1]})" if frames else ""


def _scope(node: fx.Node) -> str:
    """Module path a call_function node runs in (``layer1.0``), '' at the top level."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1]
    return path[0] if isinstance(path, tuple) else str(path)


class _Mapper:
    """Walks the traced float graph and builds the quantized program (modules + an fx graph on Q)."""

    def __init__(self, gm: fx.GraphModule, config: QuantConfig, name: str):
        self.gm, self.config, self.name = gm, config, name
        self.graph = fx.Graph()
        self.modules: dict[str, nn.Module] = {}
        self.vals: dict[fx.Node, _Val] = {}
        self.act_of: dict[fx.Node, _Val] = {}          # the <=8-bit quantizer of a value, shared
        self.fused_bn: dict[fx.Node, fx.Node] = {}     # bn node -> its conv node
        self.used: set[str] = set()
        self.relu = QuantReLU()
        self.relu6 = QuantReLU6()

    # -- helpers --------------------------------------------------------------------------------
    def fail(self, node: fx.Node, what: str, why: str = "has no integer-only implementation") -> HawqError:
        where = node.target if node.op == "call_module" else (_scope(node) or node.name)
        return HawqError(f"{self.name}: {where} ({what}) {why}{_source_line(node)}")

    def unique(self, name: str) -> str:
        base, n = name, 1
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name

    def add_module(self, name: str, module: nn.Module) -> str:
        name = self.unique(name)
        self.modules[name] = module
        return name

    def call(self, target: str, *args) -> fx.Node:
        return self.graph.call_module(target, tuple(args))

    def shared(self, key: str, module: nn.Module) -> str:
        """A stateless module (ReLU, ReLU6) registered once under ``key``."""
        if key not in self.modules:
            self.modules[key] = module
            self.used.add(key)
        return key

    def arg(self, node: fx.Node, a) -> _Val:
        if not isinstance(a, fx.Node) or a not in self.vals:
            raise self.fail(node, f"argument {a!r}", "is not a tensor the integer program holds")
        return self.vals[a]

    def quantized(self, src: fx.Node, consumer: str) -> _Val:
        """``src``'s value on a <=8-bit activation grid: itself when it is one, else one quantizer
        (named after its first consumer) shared by every consumer."""
        v = self.vals[src]
        if v.kind == "act":
            return v
        if src not in self.act_of:
            role = "input" if v.kind == "float" else ("relu" if v.nonneg else "signed")
            name = "quant_input" if v.kind == "float" else f"{consumer}_act"
            name = self.add_module(name, QuantAct(role, self.config))
            self.act_of[src] = _Val(self.call(name, v.node), "act", v.nonneg, v.flat)
        return self.act_of[src]

    def spatial(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None else ()

    # -- the walk -------------------------------------------------------------------------------
    def run(self) -> fx.Graph:
        nodes = list(self.gm.graph.nodes)
        inputs = [n for n in nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise HawqError(f"{self.name}: forward takes {len(inputs)} inputs; an image classifier takes one")
        for n in nodes:                  # name the first layer with no integer form before anything else
            if n.op == "call_module" and not isinstance(self.gm.get_submodule(n.target), _SUPPORTED_MODULES):
                raise self.fail(n, type(self.gm.get_submodule(n.target)).__name__)
        for n in nodes:
            if n.op == "call_module" and isinstance(self.gm.get_submodule(n.target), nn.BatchNorm2d):
                src = n.args[0]
                if (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                        and isinstance(self.gm.get_submodule(src.target), nn.Conv2d)):
                    self.fused_bn[n] = src
        for n in nodes:
            self.visit(n)
        return self.graph

    def visit(self, n: fx.Node) -> None:
        if n.op == "placeholder":
            self.vals[n] = _Val(self.graph.placeholder("x"), "float")
        elif n.op == "output":
            out = n.args[0]
            if not isinstance(out, fx.Node):
                raise self.fail(n, "output", "is not one tensor (a classifier returns its logits)")
            v = self.arg(n, out)
            if v.kind not in ("acc", "act", "wide") or not v.flat:
                raise self.fail(n, "output", "is not [batch, classes] logits of a linear layer or a pooled conv")
            self.graph.output(v.node)
        elif n.op == "call_module":
            self.visit_module(n, self.gm.get_submodule(n.target))
        elif n.op == "call_function":
            self.visit_function(n)
        elif n.op == "call_method":
            self.visit_method(n)
        elif n.op == "get_attr":
            raise self.fail(n, f"tensor attribute {n.target}", "is used as a value; only module parameters are supported")

    def visit_module(self, n: fx.Node, m: nn.Module) -> None:
        path = str(n.target)
        if isinstance(m, nn.Conv2d):
            self.conv(n, m, path)
        elif isinstance(m, nn.BatchNorm2d):
            if n not in self.fused_bn:
                raise self.fail(n, "BatchNorm2d", "does not follow a convolution it can be folded into "
                                "(a standalone BatchNorm has no integer implementation yet)")
            self.vals[n] = self.vals[self.fused_bn[n]]
        elif isinstance(m, nn.Linear):
            self.linear(n, m, path)
        elif isinstance(m, nn.ReLU):
            self.relu_of(n, self.arg(n, n.args[0]))
        elif isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0)):
            self.relu6_of(n, self.arg(n, n.args[0]))
        elif isinstance(m, nn.MaxPool2d):
            self.maxpool(n, m, path)
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
            self.avgpool(n, m, path)
        elif isinstance(m, nn.Flatten):
            self.flatten(n, self.arg(n, n.args[0]))
        elif isinstance(m, _PASS_MODULES):
            self.vals[n] = self.arg(n, n.args[0])
        else:
            raise self.fail(n, type(m).__name__)

    def visit_function(self, n: fx.Node) -> None:
        f = n.target
        if f in _RELU_FN:
            self.relu_of(n, self.arg(n, n.args[0]))
        elif f is F.relu6 or (f is F.hardtanh and tuple(n.args[1:3]) == (0.0, 6.0)):
            self.relu6_of(n, self.arg(n, n.args[0]))
        elif f in _ADD_FN:
            self.add(n)
        elif f in _CAT_FN:
            self.cat(n)
        elif f in _FLATTEN_FN:
            self.flatten(n, self.arg(n, n.args[0]))
        elif f in _PASS_FN:
            self.vals[n] = self.arg(n, n.args[0])
        elif f in (F.avg_pool2d, F.max_pool2d, F.max_pool2d_with_indices) or getattr(f, "__name__", "") == "_max_pool2d":
            # the functional pools as their modules (same arguments), named after the calling module
            is_max = f is not F.avg_pool2d
            pool = (nn.MaxPool2d if is_max else nn.AvgPool2d)(*n.args[1:], **n.kwargs)
            scope = _scope(n)
            name = f"{scope}.{'max' if is_max else 'avg'}pool" if scope else ("maxpool" if is_max else "avgpool")
            if is_max:
                self.maxpool(n, pool, name)
            else:
                self.avgpool(n, pool, name)
        elif f is F.adaptive_avg_pool2d:
            self.global_pool(n, self.arg(n, n.args[0]), _scope(n) or "pool")
        elif f is operator.getitem and n.args[0] not in self.vals:
            return                                   # shape arithmetic (x.size(0)): not a tensor
        else:
            raise self.fail(n, getattr(f, "__name__", str(f)))

    def visit_method(self, n: fx.Node) -> None:
        m = n.target
        if m in ("size", "dim"):
            return                                   # shape queries feed view(): no tensor
        if m in _FLATTEN_METHODS:
            self.flatten(n, self.arg(n, n.args[0]))
        elif m == "mean" and self._is_global_mean(n):
            self.global_pool(n, self.arg(n, n.args[0]), _scope(n) or "pool")
        elif m in ("relu", "relu_"):
            self.relu_of(n, self.arg(n, n.args[0]))
        elif m == "contiguous":
            self.vals[n] = self.arg(n, n.args[0])
        else:
            raise self.fail(n, f"Tensor.{m}")

    # -- ops ------------------------------------------------------------------------------------
    def conv(self, n: fx.Node, m: nn.Conv2d, path: str) -> None:
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise self.fail(n, "Conv2d", f"with padding {m.padding!r} ({m.padding_mode}) is not supported; "
                            "use explicit zero padding")
        bn_node = next(iter(n.users), None)
        bn = self.gm.get_submodule(bn_node.target) if bn_node in self.fused_bn else None
        x = self.quantized(n.args[0], path)
        if x.flat:
            raise self.fail(n, "Conv2d", "reads a pooled [batch, channels] tensor")
        name = self.add_module(path, QuantBnConv2d(m, bn, self.config))
        self.vals[n] = _Val(self.call(name, x.node), "acc")

    def linear(self, n: fx.Node, m: nn.Linear, path: str) -> None:
        x = self.quantized(n.args[0], path)
        if not x.flat:
            raise self.fail(n, "Linear", "reads a tensor that is not [batch, features] after a global pool")
        name = self.add_module(path, QuantLinear(m, self.config))
        self.vals[n] = _Val(self.call(name, x.node), "acc", flat=True)

    def relu_of(self, n: fx.Node, v: _Val) -> None:
        if v.kind == "float":
            raise self.fail(n, "ReLU", "of the raw input is not supported")
        self.vals[n] = _Val(self.call(self.shared("relu", self.relu), v.node), v.kind, True, v.flat)

    def relu6_of(self, n: fx.Node, v: _Val) -> None:
        if v.kind == "float":
            raise self.fail(n, "ReLU6", "of the raw input is not supported")
        self.vals[n] = _Val(self.call(self.shared("relu6", self.relu6), v.node), v.kind, True, v.flat)

    def maxpool(self, n: fx.Node, m: nn.MaxPool2d, path: str) -> None:
        if m.dilation not in (1, (1, 1)) or m.return_indices:
            raise self.fail(n, "MaxPool2d", "with dilation or indices is not supported")
        v = self.arg(n, n.args[0])
        name = self.add_module(path, QuantMaxPool2d(m))
        self.vals[n] = _Val(self.call(name, v.node), v.kind, v.nonneg, v.flat)

    def avgpool(self, n: fx.Node, m: nn.Module, path: str) -> None:
        v = self.arg(n, n.args[0])
        shape_in, shape_out = self.spatial(n.args[0]), self.spatial(n)
        if len(shape_out) == 4 and shape_out[2:] == (1, 1):
            return self.global_pool(n, v, path)
        if len(shape_in) == 4 and shape_in[2:] == shape_out[2:]:
            self.vals[n] = v                          # adaptive pool to the size it already has
            return
        if isinstance(m, nn.AvgPool2d):
            if v.kind == "float":
                raise self.fail(n, "AvgPool2d", "of the raw input is not supported")
            name = self.add_module(path, QuantWindowAvgPool2d(m, self.config))
            self.vals[n] = _Val(self.call(name, v.node), "acc", v.nonneg)
            return
        raise self.fail(n, type(m).__name__, f"from {shape_in[2:]} to {shape_out[2:]} is not supported "
                        "(only to 1x1, or to the size it already has)")

    def global_pool(self, n: fx.Node, v: _Val, path: str) -> None:
        if v.kind == "float" or v.flat:
            raise self.fail(n, "global average pool", "of this tensor is not supported")
        name = self.add_module(path, QuantAveragePool2d(self.config))
        self.vals[n] = _Val(self.call(name, v.node), "acc", v.nonneg, flat=True)

    def _is_global_mean(self, n: fx.Node) -> bool:
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
        return sorted(dims if isinstance(dims, (list, tuple)) else [dims]) in ([2, 3], [-2, -1]) and not keep

    def flatten(self, n: fx.Node, v: _Val) -> None:
        shape, src = self.spatial(n), n.args[0]
        if len(shape) != 2:
            raise self.fail(n, "flatten/view", f"to {list(shape)} is not supported (only to [batch, features])")
        if v.flat:
            self.vals[n] = v                           # [B, C] already: the pool produced it
            return
        if v.kind == "float":
            raise self.fail(n, "flatten/view", "of the raw input is not supported")
        # a classifier reading a whole feature map (VGG, AlexNet): quantize the map, then flatten it
        users = [u for u in n.users if u.op == "call_module"]
        x = self.quantized(src, str(users[0].target) if users else (_scope(n) or n.name))
        name = (str(n.target) if n.op == "call_module" else f"{_scope(n)}.flatten" if _scope(n) else "flatten")
        name = self.add_module(name, QuantFlatten())
        self.vals[n] = _Val(self.call(name, x.node), "act", x.nonneg, flat=True)

    def add(self, n: fx.Node) -> None:
        a, b = (self.arg(n, x) for x in n.args[:2])
        if n.kwargs.get("alpha", 1) != 1 or a.kind == "float" or b.kind == "float" or a.flat or b.flat:
            raise self.fail(n, "add", "of these tensors is not supported (a residual add of two feature maps is)")
        # the branch that is an accumulator goes first: its requantization is the unit's main one
        main, identity = (a, b) if a.kind == "acc" or b.kind != "acc" else (b, a)
        scope = _scope(n)
        name = self.add_module(f"{scope}.add" if scope else "add", QuantAct("accumulator", self.config))
        self.vals[n] = _Val(self.graph.call_module(name, (main.node,), {"identity": identity.node}), "wide")

    def cat(self, n: fx.Node) -> None:
        parts = n.args[0]
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        if dim not in (1, -3):
            raise self.fail(n, "cat", f"along dim {dim} is not supported (channels only)")
        vals = [self.arg(n, p) for p in parts]
        if any(v.kind == "float" or v.flat for v in vals):
            raise self.fail(n, "cat", "of these tensors is not supported")
        scope = _scope(n)
        name = self.add_module(f"{scope}.cat" if scope else "cat", QuantConcat())
        self.vals[n] = _Val(self.call(name, [v.node for v in vals]), "acc", all(v.nonneg for v in vals))


class QuantGraphModel(QuantModel):
    """A captured model: the quant modules under the float model's own module paths, run by the
    fx program :attr:`program` (``print(model.program.code)`` shows it). ``forward_q``: float image
    [B, 3, H, W] -> :class:`~hawq.quant.graph.Q` logits."""

    def __init__(self, modules: dict[str, nn.Module], graph: fx.Graph, arch: str, config: QuantConfig,
                 bit_config: dict[str, int] | None = None):
        super().__init__(arch, config)
        for path, module in modules.items():
            _set_submodule(self, path, module)
        # not registered as a child: it holds the very modules above, under the same paths
        object.__setattr__(self, "program", fx.GraphModule(self, graph, class_name="QuantProgram"))
        self.finish(bit_config or {})

    def forward_q(self, x: torch.Tensor):
        return self.program(x)

    def __deepcopy__(self, memo):
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k != "program":
                object.__setattr__(new, k, copy.deepcopy(v, memo))
        object.__setattr__(new, "program", fx.GraphModule(new, self.program.graph, class_name="QuantProgram"))
        return new


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parts = path.split(".")
    parent = root
    for p in parts[:-1]:
        if not hasattr(parent, p):
            parent.add_module(p, nn.Module())
        parent = getattr(parent, p)
    parent.add_module(parts[-1], module)


def capture(model: nn.Module, example: torch.Tensor, config: QuantConfig | None = None,
            bit_config: dict[str, int] | None = None, name: str = "model", copy_model: bool = True) -> QuantGraphModel:
    """Quantize ``model`` (a float ``nn.Module``, BN not yet folded) for inputs like ``example``
    (float32 [B, 3, H, W]; used once to propagate shapes). ``bit_config``: bits per layer name (the
    model's module paths; None: 8 bits, residual accumulators 16). ``copy_model``: work on a deep
    copy (False: the quant modules train ``model``'s own parameters). Returns the model in train mode."""
    config = config if config is not None else QuantConfig()
    src = copy.deepcopy(model) if copy_model else model
    gm = trace(src, name)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as e:  # noqa: BLE001 - user code
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HawqError(f"{name}: does not run on an input of shape {list(example.shape)} ({line})") from None
    mapper = _Mapper(gm, config, name)
    graph = mapper.run()
    graph.lint()
    return QuantGraphModel(mapper.modules, graph, name, config, bit_config).train()
