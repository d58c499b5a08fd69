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
from collections import Counter
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from torchvision.ops import stochastic_depth as _stochastic_depth

from hawq import numerics as N
from hawq.distributed import SyncBatchNorm2d
from hawq.errors import HawqError
from hawq.ir import pair
from hawq.models.base import QuantModel
from hawq.quant.config import QuantConfig
from hawq.quant.modules import (QuantAct, QuantAdaptiveAvgPool2d, QuantAveragePool2d, QuantBatchNorm2d, QuantBnConv2d, QuantChannelShuffle,
                                QuantConcat, QuantFlatten, QuantLinear, QuantLut, QuantMaxPool2d, QuantMul, QuantReLU,
                                QuantReLU6, QuantSliceChannels, QuantWindowAvgPool2d)

__all__ = ["capture", "QuantPoint", "QuantGraphModel", "GraphUnit", "trace", "weighted_layers", "same_padding"]

_RELU_FN = (F.relu, torch.relu, torch.relu_)
_ADD_FN = (operator.add, operator.iadd, torch.add)
_CAT_FN = (torch.cat, torch.concat)
_FLATTEN_FN = (torch.flatten,)
_FLATTEN_METHODS = ("flatten", "view", "reshape")
_PASS_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity)
_PASS_FN = (F.dropout, _stochastic_depth)
#: Pointwise nonlinearities computed as tables (QuantLut): modules, functions and tensor methods.
_TABLE_MODULES = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid", nn.SiLU: "silu", nn.Hardswish: "hardswish",
                  nn.Tanh: "tanh", nn.GELU: "gelu"}
_TABLE_FN = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardsigmoid: "hardsigmoid", F.silu: "silu",
             F.hardswish: "hardswish", torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu"}
_TABLE_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh"}
_MUL_FN = (operator.mul, torch.mul)
#: Python arithmetic that, on shapes (``x.size(1) // groups``), is not part of the integer program.
_SHAPE_ARITHMETIC = (operator.floordiv, operator.mul, operator.add, operator.sub, operator.truediv)
_CHUNK_FN = (torch.chunk, torch.split)
_TRANSPOSE_FN = (torch.transpose,)
_PAD_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d)


class QuantPoint(nn.Module):
    """An explicit activation quantizer in a float model: the identity in float; :func:`capture`
    puts a :class:`~hawq.quant.modules.QuantAct` of this ``role`` (:data:`hawq.numerics.ACT_ROLES`)
    exactly here, named by this module's path (as torch.ao's ``QuantStub`` or Brevitas's
    ``QuantIdentity``). Readers of its output take that grid as it is; ``role="accumulator"`` is a
    16-bit requantization (HAWQ's ``quant_act_int32`` without an identity), ``relu_after`` says a
    ReLU follows it. HAWQ-V3's layouts of the named archs are float models with these points
    (:mod:`hawq.models.hawq_layout`)."""

    def __init__(self, role: str, relu_after: bool = False):
        super().__init__()
        if role not in N.ACT_ROLES:
            raise HawqError(f"QuantPoint: unknown role {role!r}; one of {', '.join(N.ACT_ROLES)}")
        self.role, self.relu_after = role, relu_after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return f"role={self.role!r}" + (", relu_after=True" if self.relu_after else "")


_SUPPORTED_MODULES = (QuantPoint, *_TABLE_MODULES, nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool2d,
                      nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten, *_PAD_MODULES, *_PASS_MODULES)
_PAD_FN = tuple({F.pad, getattr(torch._C._nn, "pad", F.pad)})


@dataclass
class _Val:
    """A value of the quantized program: the new graph's node producing it and what it holds."""
    node: fx.Node
    kind: str                 # float | acc | act | wide
    nonneg: bool = False
    flat: bool = False        # [B, C]: after a global pool


def _is_relu6(m: nn.Module) -> bool:
    """ReLU6, or the Hardtanh(0, 6) some models spell it as."""
    return isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0))


def _is_bn_act(m: nn.Module) -> bool:
    """timm's ``BatchNormAct2d`` (and look-alikes): a BatchNorm2d subclass whose forward is batch norm,
    then its ``drop`` and ``act`` submodules."""
    return (isinstance(m, nn.BatchNorm2d) and type(m).forward is not nn.BatchNorm2d.forward
            and type(m).__name__ == "BatchNormAct2d" and hasattr(m, "act") and hasattr(m, "drop"))


def _is_conv_same(m: nn.Module) -> bool:
    """timm's ``Conv2dSame``: a Conv2d that pads its input in ``forward`` as TensorFlow's "SAME"
    (from the input's size, the extra pixel at the bottom/right), then convolves with padding 0."""
    return isinstance(m, nn.Conv2d) and type(m).__name__ == "Conv2dSame" and type(m).forward is not nn.Conv2d.forward


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's "SAME" padding of one axis of ``size`` pixels: (before, after), the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _is_plain_linear(m: nn.Module) -> bool:
    """timm's ``Linear``: an nn.Linear whose forward only adds TorchScript/AMP casts, kept whole."""
    return isinstance(m, nn.Linear) and type(m).__name__ == "Linear" and type(m).__module__.startswith("timm.")


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with our own points (:class:`QuantPoint`) and the cross-rank batch norm of
    distributed QAT (:class:`hawq.distributed.SyncBatchNorm2d`, batch norm in eval) kept whole, and
    BatchNorm + activation modules (timm's ``BatchNormAct2d``) too (traced through, their
    hand-copied batch norm would be loose arithmetic on buffers), and timm's
    ``Conv2dSame`` too (its padding depends on the input size: the capture computes it from the
    propagated shape), and timm's ``Linear``."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (QuantPoint, SyncBatchNorm2d)) or _is_bn_act(m) or _is_conv_same(m)
                or _is_plain_linear(m) or super().is_leaf_module(m, qualname))


def trace(model: nn.Module, name: str = "model") -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` of ``model`` in eval mode, with one-line errors."""
    model.eval()
    tracer = _Tracer()
    tracer.record_stack_traces = True            # error messages name the model's source line
    try:
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as e:  # noqa: BLE001 - tracing user code can raise anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HawqError(f"{name}: torch.fx cannot trace it ({type(e).__name__}: {first}); "
                        "data-dependent control flow is not supported") from None


def _folded_bn(gm: fx.GraphModule, n: fx.Node) -> fx.Node | None:
    """The BatchNorm2d node folded into conv node ``n``: its only user, when that is a BatchNorm2d."""
    if len(n.users) != 1:
        return None
    bn = next(iter(n.users))
    return bn if bn.op == "call_module" and isinstance(gm.get_submodule(bn.target), nn.BatchNorm2d) else None


def weighted_layers(model: nn.Module, name: str = "model") -> list[tuple[str, nn.Module, nn.BatchNorm2d | None]]:
    """(layer name, Conv2d / Linear module, the BatchNorm2d folded into it or None) of a float
    ``model``, in graph order: the names :func:`capture` gives these layers (the module paths)."""
    gm = trace(model, name)
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.Conv2d, nn.Linear)):
            m = gm.get_submodule(n.target)
            bn = _folded_bn(gm, n) if isinstance(m, nn.Conv2d) else None
            out.append((str(n.target), m, gm.get_submodule(bn.target) if bn is not None else None))
    return out


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
        self.pad_of: dict[fx.Node, tuple[fx.Node, tuple[int, int, int, int]]] = {}  # pad -> (source, l r t b)
        # a channel shuffle on its way (view to groups, transpose): node -> (stage, 4-D source, groups)
        self.shuffling: dict[fx.Node, tuple[str, fx.Node, int]] = {}
        self.pieces: dict[fx.Node, tuple[fx.Node, list[tuple[int, int]]]] = {}   # chunk/split -> (source, ranges)
        self.used: set[str] = set()
        self.relu = QuantReLU()
        self.relu6 = QuantReLU6(self.config)

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
            if n.op == "call_module" and isinstance(self.gm.get_submodule(n.target), nn.Conv2d):
                bn = _folded_bn(self.gm, n)
                if bn is not None:
                    self.fused_bn[bn] = n
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
        if isinstance(m, QuantPoint):
            self.quant_point(n, m, path)
        elif isinstance(m, nn.Conv2d):
            self.conv(n, m, path)
        elif isinstance(m, nn.BatchNorm2d):
            if n in self.fused_bn:
                self.vals[n] = self.vals[self.fused_bn[n]]
            else:
                self.standalone_bn(n, m, path)
            if _is_bn_act(m):
                self.bn_act(n, m, path)
        elif isinstance(m, nn.Linear):
            self.linear(n, m, path)
        elif type(m) in _TABLE_MODULES:
            if isinstance(m, nn.GELU) and m.approximate != "none":
                raise self.fail(n, "GELU", f"with approximate={m.approximate!r} is not supported (the exact erf form is)")
            self.table(n, _TABLE_MODULES[type(m)], path)
        elif isinstance(m, nn.ReLU):
            self.relu_of(n, self.arg(n, n.args[0]))
        elif _is_relu6(m):
            self.relu6_of(n, self.arg(n, n.args[0]))
        elif isinstance(m, nn.MaxPool2d):
            self.maxpool(n, m, path)
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
            self.avgpool(n, m, path)
        elif isinstance(m, nn.Flatten):
            self.flatten(n, self.arg(n, n.args[0]))
        elif isinstance(m, _PAD_MODULES):
            self.pad(n, tuple(m.padding), getattr(m, "value", 0.0))
        elif isinstance(m, _PASS_MODULES):
            self.vals[n] = self.arg(n, n.args[0])
        else:
            raise self.fail(n, type(m).__name__)

    def _holds_tensor(self, n: fx.Node) -> bool:
        """Whether ``n`` reads a value of the integer program (else it is shape arithmetic)."""
        return any(a in self.vals or a in self.shuffling or a in self.pieces for a in n.all_input_nodes)

    def visit_function(self, n: fx.Node) -> None:
        f = n.target
        if f in _SHAPE_ARITHMETIC and not self._holds_tensor(n):
            return                                   # shape arithmetic (C // groups): no tensor
        if f in _TABLE_FN:
            if f is F.gelu and n.kwargs.get("approximate", "none") != "none":
                raise self.fail(n, "gelu", "with approximate='tanh' is not supported (the exact erf form is)")
            scope = _scope(n)
            return self.table(n, _TABLE_FN[f], f"{scope}.{_TABLE_FN[f]}" if scope else _TABLE_FN[f])
        if f in _MUL_FN:
            return self.mul(n)
        if f in _TRANSPOSE_FN:
            return self.transpose(n, *n.args[1:3])
        if f in _CHUNK_FN:
            return self.chunk(n, f.__name__, n.args[1], n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0))
        if f is operator.getitem and n.args[0] in self.pieces:
            return self.piece(n)
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
        elif f in _PAD_FN:
            args = dict(zip(("input", "pad", "mode", "value"), n.args), **n.kwargs)
            if args.get("mode", "constant") != "constant":
                raise self.fail(n, "pad", f"mode {args['mode']!r} is not supported (zero padding is)")
            self.pad(n, tuple(args["pad"]), args.get("value") or 0.0)
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
            self.avgpool(n, nn.AdaptiveAvgPool2d(n.args[1] if len(n.args) > 1 else n.kwargs["output_size"]),
                         f"{_scope(n)}.pool" if _scope(n) else "pool")
        elif f is operator.getitem and n.args[0] not in self.vals:
            return                                   # shape arithmetic (x.size(0)): not a tensor
        else:
            raise self.fail(n, getattr(f, "__name__", str(f)))

    def visit_method(self, n: fx.Node) -> None:
        m = n.target
        if m in ("size", "dim"):
            return                                   # shape queries feed view(): no tensor
        if m in ("view", "reshape") and (n.args[0] in self.shuffling or len(self.spatial(n)) == 5):
            return self.shuffle_view(n)
        if m == "transpose":
            return self.transpose(n, *n.args[1:3])
        if m in ("chunk", "split"):
            return self.chunk(n, m, n.args[1], n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0))
        if m in _TABLE_METHODS:
            scope = _scope(n)
            return self.table(n, _TABLE_METHODS[m], f"{scope}.{m}" if scope else m)
        if m == "mul":
            return self.mul(n)
        if m == "contiguous" and n.args[0] in self.shuffling:
            self.shuffling[n] = self.shuffling[n.args[0]]
            return
        if m in _FLATTEN_METHODS:
            self.flatten(n, self.arg(n, n.args[0]))
        elif m == "mean" and self._is_global_mean(n):
            self.global_pool(n, self.arg(n, n.args[0]), _scope(n) or "pool")
        elif m == "mean" and self._is_global_mean(n, keepdim=True):
            self.avgpool(n, nn.AdaptiveAvgPool2d(1), f"{_scope(n)}.pool" if _scope(n) else "pool")
        elif m in ("relu", "relu_"):
            self.relu_of(n, self.arg(n, n.args[0]))
        elif m == "contiguous":
            self.vals[n] = self.arg(n, n.args[0])
        else:
            raise self.fail(n, f"Tensor.{m}")

    # -- ops ------------------------------------------------------------------------------------
    def pad(self, n: fx.Node, pad: tuple[int, ...], value) -> None:
        """Explicit zero padding (``nn.ZeroPad2d``, ``F.pad``): folded into the convolution(s) that
        read it, so it must feed convolutions only."""
        if value != 0 or len(pad) not in (2, 4) or min(pad) < 0:
            raise self.fail(n, "pad", f"{pad} with value {value} is not supported (zero padding of H, W is)")
        if not n.users or any(u.op != "call_module" or not isinstance(self.gm.get_submodule(u.target), nn.Conv2d)
                              for u in n.users):
            raise self.fail(n, "pad", "is supported before a convolution only (folded into its padding)")
        src, l, r, t, b = n.args[0], *pad, *((0, 0) if len(pad) == 2 else ())
        if src in self.pad_of:                       # padding of padding: one padding
            src, (l0, r0, t0, b0) = self.pad_of[src]
            l, r, t, b = l + l0, r + r0, t + t0, b + b0
        self.arg(n, src)
        self.pad_of[n] = (src, (l, r, t, b))

    def conv_padding(self, n: fx.Node, m: nn.Conv2d) -> tuple[fx.Node, tuple[int, int, int, int]]:
        """(the node the conv reads, its zero padding (top, left, bottom, right)) with explicit padding
        before it folded in, ``padding="same"`` resolved as PyTorch does (the odd pixel at the
        bottom/right) and timm's ``Conv2dSame`` padding computed from the input's propagated size."""
        if m.padding_mode != "zeros":
            raise self.fail(n, "Conv2d", f"with padding_mode {m.padding_mode!r} is not supported (zeros is)")
        if _is_conv_same(m):
            meta = n.args[0].meta.get("tensor_meta")
            (t, b), (l, r) = (same_padding(int(size), k, st, d) for size, k, st, d in
                              zip(meta.shape[2:], m.kernel_size, m.stride, m.dilation))
            own = (t, l, b, r)
        elif m.padding == "valid":
            own = (0, 0, 0, 0)
        elif m.padding == "same":                     # stride 1: total dilation·(k-1) per axis
            th, tw = (d * (k - 1) for d, k in zip(m.dilation, m.kernel_size))
            own = (th // 2, tw // 2, th - th // 2, tw - tw // 2)
        else:
            own = (*m.padding, *m.padding)
        src, (l, r, t, b) = self.pad_of.get(n.args[0], (n.args[0], (0, 0, 0, 0)))
        return src, (own[0] + t, own[1] + l, own[2] + b, own[3] + r)

    def conv(self, n: fx.Node, m: nn.Conv2d, path: str) -> None:
        src, (t, l, b, r) = self.conv_padding(n, m)
        symmetric = (t, l) == (b, r)
        if (t, l) != tuple(m.padding) or not symmetric or _is_conv_same(m):
            # the same parameters (QAT trains them) in a plain Conv2d: its own padding, or 0 and an explicit pad
            conv = nn.Conv2d.__new__(nn.Conv2d)
            conv.__dict__.update(m.__dict__)
            conv.padding = (t, l) if symmetric else (0, 0)
            conv._reversed_padding_repeated_twice = [l, l, t, t] if symmetric else [0, 0, 0, 0]
            m = conv
        bn_node = next(iter(n.users), None)
        bn = self.gm.get_submodule(bn_node.target) if bn_node in self.fused_bn else None
        x = self.quantized(src, path)
        if x.flat:
            raise self.fail(n, "Conv2d", "reads a pooled [batch, channels] tensor")
        name = self.add_module(path, QuantBnConv2d(m, bn, self.config, pad=None if symmetric else (l, r, t, b)))
        self.vals[n] = _Val(self.call(name, x.node), "acc")

    def linear(self, n: fx.Node, m: nn.Linear, path: str) -> None:
        x = self.quantized(n.args[0], path)
        if not x.flat:
            raise self.fail(n, "Linear", "reads a tensor that is not [batch, features] after a global pool")
        name = self.add_module(path, QuantLinear(m, self.config))
        self.vals[n] = _Val(self.call(name, x.node), "acc", flat=True)

    def bn_act(self, n: fx.Node, m: nn.Module, path: str) -> None:
        """The ``drop`` and ``act`` of a BatchNormAct2d after its folded batch norm."""
        if not isinstance(m.drop, _PASS_MODULES):
            raise HawqError(f"{self.name}: {path}.drop ({type(m.drop).__name__}) has no integer-only "
                            f"implementation{_source_line(n)}")
        act = m.act
        if isinstance(act, nn.ReLU):
            self.relu_of(n, self.vals[n])
        elif _is_relu6(act):
            self.relu6_of(n, self.vals[n])
        elif not isinstance(act, nn.Identity):
            raise HawqError(f"{self.name}: {path}.act ({type(act).__name__}) has no integer-only "
                            f"implementation{_source_line(n)}")

    def quant_point(self, n: fx.Node, m: QuantPoint, path: str) -> None:
        """An explicit quantizer: a QuantAct of the point's role on whatever arrives (an accumulator
        role gives a ``wide`` value; the others an ``act`` that readers take as it is)."""
        v = self.arg(n, n.args[0])
        if (m.role == "input") != (v.kind == "float"):
            raise self.fail(n, "QuantPoint", f"of role {m.role!r} reads {'the image' if v.kind == 'float' else 'a feature'}"
                            "; role 'input' quantizes the image and only it")
        name = self.add_module(path, QuantAct(m.role, self.config, relu_after=m.relu_after))
        kind = "wide" if m.role == "accumulator" else "act"
        nonneg = m.role == "relu" or (m.role == "accumulator" and v.nonneg)
        self.vals[n] = _Val(self.call(name, v.node), kind, nonneg, v.flat)

    def table(self, n: fx.Node, function: str, path: str) -> None:
        """A pointwise nonlinearity: a table over its input's <= 8-bit grid (QuantLut)."""
        v = self.arg(n, n.args[0])
        if v.kind == "float":
            raise self.fail(n, function, "of the raw input is not supported")
        x = self.quantized(n.args[0], path)
        name = self.add_module(path, QuantLut(function, self.config))
        self.vals[n] = _Val(self.call(name, x.node), "act", function in ("sigmoid", "hardsigmoid"), x.flat)

    def mul(self, n: fx.Node) -> None:
        """``a * b`` of two feature values (squeeze-excitation): both on <= 8-bit grids, an exact product."""
        a, b = n.args[:2]
        if not all(isinstance(t, fx.Node) and t in self.vals for t in (a, b)):
            raise self.fail(n, "mul", "by a constant is not supported (a product of two feature values is)")
        va, vb = self.vals[a], self.vals[b]
        if "float" in (va.kind, vb.kind) or va.flat != vb.flat:
            raise self.fail(n, "mul", "of these tensors is not supported")
        scope = _scope(n)
        path = f"{scope}.mul" if scope else "mul"
        xa, xb = self.quantized(a, path), self.quantized(b, path)
        name = self.add_module(path, QuantMul())
        self.vals[n] = _Val(self.call(name, xa.node, xb.node), "acc", va.nonneg and vb.nonneg, va.flat)

    def standalone_bn(self, n: fx.Node, m: nn.BatchNorm2d, path: str) -> None:
        """A BatchNorm that follows no convolution (DenseNet's, on a concat): its own integer affine."""
        v = self.arg(n, n.args[0])
        if v.kind == "float" or v.flat:
            raise self.fail(n, type(m).__name__, "of the raw input or of pooled features is not supported")
        name = self.add_module(path, QuantBatchNorm2d(m, self.config))
        self.vals[n] = _Val(self.call(name, v.node), "acc")

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

    def _flattened(self, n: fx.Node) -> bool:
        """Whether every user of ``n`` flattens it to [batch, features] (or is the linear layer /
        output that reads it so): then a pool to 1×1 is the global pool of a classifier head."""
        def flat(u: fx.Node) -> bool:
            if u.op == "call_method":       # x.view(x.size(0), -1): the size query reads no values
                return u.target in ("size", "dim") or (u.target in _FLATTEN_METHODS and len(self.spatial(u)) == 2)
            if u.op == "call_function":
                return u.target in _FLATTEN_FN
            if u.op == "call_module":
                return isinstance(self.gm.get_submodule(u.target), (nn.Flatten, nn.Linear))
            return u.op == "output"
        return all(flat(u) for u in n.users)

    def avgpool(self, n: fx.Node, m: nn.Module, path: str) -> None:
        v = self.arg(n, n.args[0])
        shape_in, shape_out = self.spatial(n.args[0]), self.spatial(n)
        # a pool to 1x1 is the global pool when it is adaptive or one unpadded window over the whole map
        # (not a padded 3x3 window that happens to meet a 1x1 map: that one divides by 9)
        whole = isinstance(m, nn.AdaptiveAvgPool2d) or (
            len(shape_in) == 4 and pair(m.kernel_size) == list(shape_in[2:]) and pair(m.padding) == [0, 0])
        if len(shape_out) == 4 and shape_out[2:] == (1, 1) and whole:
            if self._flattened(n):
                return self.global_pool(n, v, path)
            # pooled features that stay [B, C, 1, 1] for a conv (squeeze-excitation, MobileNetV3's head):
            # the window pool over the whole map (also of a 1x1 map: the program, and so the layer
            # names of a bit_config, do not depend on the input size)
            m = nn.AvgPool2d(tuple(shape_in[2:]), tuple(shape_in[2:]))
        elif isinstance(m, nn.AdaptiveAvgPool2d) and len(shape_in) == 4 and shape_in[2:] == shape_out[2:]:
            self.vals[n] = v                          # adaptive pool to the size it already has
            return
        if isinstance(m, nn.AvgPool2d):
            if v.kind == "float":
                raise self.fail(n, "AvgPool2d", "of the raw input is not supported")
            if m.ceil_mode or not m.count_include_pad:
                raise self.fail(n, "AvgPool2d", f"with ceil_mode={m.ceil_mode}, count_include_pad={m.count_include_pad} "
                                "is not supported (only the window sum over zero padding)")
            name = self.add_module(path, QuantWindowAvgPool2d(m, self.config))
            self.vals[n] = _Val(self.call(name, v.node), "acc", v.nonneg)
            return
        if v.kind == "float" or v.flat:
            raise self.fail(n, type(m).__name__, "of the raw input or of pooled features is not supported")
        name = self.add_module(path, QuantAdaptiveAvgPool2d(tuple(shape_out[2:])))
        self.vals[n] = _Val(self.call(name, v.node), "acc", v.nonneg)

    def global_pool(self, n: fx.Node, v: _Val, path: str) -> None:
        if v.kind == "float" or v.flat:
            raise self.fail(n, "global average pool", "of this tensor is not supported")
        name = self.add_module(path, QuantAveragePool2d(self.config))
        self.vals[n] = _Val(self.call(name, v.node), "acc", v.nonneg, flat=True)

    def _is_global_mean(self, n: fx.Node, keepdim: bool = False) -> bool:
        """``x.mean((2, 3))`` (``keepdim``: ``x.mean((2, 3), keepdim=True)``)."""
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
        return sorted(dims if isinstance(dims, (list, tuple)) else [dims]) in ([2, 3], [-2, -1]) and bool(keep) == keepdim

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

    def _is_relu(self, n: fx.Node) -> bool:
        """Whether node ``n`` is a plain ReLU (module, function or method)."""
        if n.op == "call_module":
            return isinstance(self.gm.get_submodule(n.target), nn.ReLU)
        if n.op == "call_function":
            return n.target in _RELU_FN
        return n.op == "call_method" and n.target in ("relu", "relu_")

    def add(self, n: fx.Node) -> None:
        a, b = (self.arg(n, x) for x in n.args[:2])
        if n.kwargs.get("alpha", 1) != 1 or a.kind == "float" or b.kind == "float" or a.flat or b.flat:
            raise self.fail(n, "add", "of these tensors is not supported (a residual add of two feature maps is)")
        # the branch that is an accumulator goes first: its requantization is the unit's main one
        main, identity = (a, b) if a.kind == "acc" or b.kind != "acc" else (b, a)
        scope = _scope(n)
        # every reader a ReLU (torchvision's ResNet): profile ort gives the add an unsigned grid, whose
        # clamp at 0 is that ReLU, as ONNX Runtime fuses Add -> Relu -> QuantizeLinear
        relu_after = bool(n.users) and all(self._is_relu(u) for u in n.users)
        name = self.add_module(f"{scope}.add" if scope else "add",
                               QuantAct("accumulator", self.config, relu_after=relu_after))
        self.vals[n] = _Val(self.graph.call_module(name, (main.node,), {"identity": identity.node}), "wide")

    # -- layout ops (ShuffleNet): index moves on channels ------------------------------------------
    def shuffle_view(self, n: fx.Node) -> None:
        """``view``/``reshape`` [B, C, H, W] -> [B, g, C/g, H, W] starts a channel shuffle; the view
        back to [B, C, H, W] after ``transpose(1, 2)`` ends it as one ``channel_shuffle``."""
        src, out = n.args[0], self.spatial(n)
        if src in self.shuffling:
            stage, origin, groups = self.shuffling[src]
            if stage != "transposed" or out != self.spatial(origin):
                raise self.fail(n, "view", f"to {list(out)} is not supported (a channel shuffle views back to "
                                "[B, C, H, W] after transpose(1, 2))")
            v = self.arg(n, origin)
            if v.kind == "float" or v.flat:
                raise self.fail(n, "channel shuffle", "of this tensor is not supported")
            scope = _scope(n)
            name = self.add_module(f"{scope}.shuffle" if scope else "shuffle", QuantChannelShuffle(groups))
            self.vals[n] = _Val(self.call(name, v.node), v.kind, v.nonneg)
            return
        shape = self.spatial(src)
        if not (len(shape) == 4 and len(out) == 5 and out[0] == shape[0] and out[1] * out[2] == shape[1]
                and tuple(out[3:]) == tuple(shape[2:])):
            raise self.fail(n, "view", f"from {list(shape)} to {list(out)} is not supported (only [batch, features] "
                            "or a channel shuffle)")
        self.arg(n, src)
        self.shuffling[n] = ("grouped", src, int(out[1]))

    def transpose(self, n: fx.Node, d0, d1) -> None:
        src = n.args[0]
        if src not in self.shuffling or self.shuffling[src][0] != "grouped" or sorted((d0, d1)) != [1, 2]:
            raise self.fail(n, "transpose", "is supported only as the middle of a channel shuffle "
                            "(view to [B, g, C/g, H, W], transpose(1, 2), view back)")
        self.shuffling[n] = ("transposed", *self.shuffling[src][1:])

    def chunk(self, n: fx.Node, how: str, arg, dim) -> None:
        """``chunk``/``split`` along channels: the pieces are channel slices (see :meth:`piece`)."""
        src, shape = n.args[0], self.spatial(n.args[0])
        v = self.arg(n, src)
        if dim not in (1, -3) or len(shape) != 4 or v.kind == "float" or v.flat:
            raise self.fail(n, how, f"along dim {dim} of this tensor is not supported (channels of a feature map are)")
        c = shape[1]
        if how == "chunk":
            size = -(-c // int(arg))
            sizes = [min(size, c - i) for i in range(0, c, size)]
        else:
            sizes = [int(arg)] * (c // int(arg)) + ([c % int(arg)] if c % int(arg) else []) \
                if isinstance(arg, int) else [int(s) for s in arg]
        edges = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        self.pieces[n] = (src, list(zip(edges[:-1], edges[1:])))

    def piece(self, n: fx.Node) -> None:
        src, ranges = self.pieces[n.args[0]]
        start, stop = ranges[n.args[1]]
        v = self.vals[src]
        scope = _scope(n)
        name = self.add_module(f"{scope}.slice" if scope else "slice", QuantSliceChannels(start, stop))
        self.vals[n] = _Val(self.call(name, v.node), v.kind, v.nonneg)

    def cat(self, n: fx.Node) -> None:
        parts = n.args[0]
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        if dim not in (1, -3):
            raise self.fail(n, "cat", f"along dim {dim} is not supported (channels only)")
        vals = [self.arg(n, p) for p in parts]
        if any(v.kind == "float" or v.flat for v in vals):
            raise self.fail(n, "cat", "of these tensors is not supported")
        if len(vals) == 1:                            # DenseNet's first layer: cat([x]) is x
            self.vals[n] = vals[0]
            return
        scope = _scope(n)
        name = self.add_module(f"{scope}.cat" if scope else "cat", QuantConcat())
        self.vals[n] = _Val(self.call(name, [v.node for v in vals]), "acc", all(v.nonneg for v in vals))


class QuantGraphModel(QuantModel):
    """A captured model: the quant modules under the float model's own module paths, run by the
    fx program :attr:`program` (``print(model.program.code)`` shows it). ``forward_q``: float image
    [B, 3, H, W] -> :class:`~hawq.quant.graph.Q` logits."""

    def __init__(self, modules: dict[str, nn.Module], graph: fx.Graph, arch: str, config: QuantConfig,
                 bit_config: dict[str, int] | None = None, blocks: Sequence[str] | None = None):
        super().__init__(arch, config)
        #: module-path scopes of the reconstruction blocks (:meth:`graph_blocks`); None: the residual units
        self.block_scopes = tuple(blocks) if blocks is not None else None
        for path, module in modules.items():
            _set_submodule(self, path, module)
        # not registered as a child: it holds the very modules above, under the same paths
        object.__setattr__(self, "program", fx.GraphModule(self, graph, class_name="QuantProgram"))
        self.finish(bit_config or {})

    def forward_q(self, x: torch.Tensor):
        return self.program(x)

    def graph_blocks(self) -> list["GraphUnit"]:
        """The blocks of the program (BRECQ's / QDrop's): by default its residual units, found from the
        graph: for each residual add (an accumulator quantizer with an identity) under ``<scope>.``, the
        contiguous run of program nodes from the first module under ``<scope>.`` to the add and the ReLU
        that follows it; with declared :attr:`block_scopes`, the run from the first to the last module
        under each scope (and a ReLU after it). A run is a block when it reads one value from before it
        and only its last value is read after it (otherwise its layers stay units of their own)."""
        nodes = list(self.program.graph.nodes)
        index = {n: i for i, n in enumerate(nodes)}
        under = lambda scope: [i for i, m in enumerate(nodes)  # noqa: E731
                               if m.op == "call_module" and str(m.target).startswith(scope + ".")]
        if self.block_scopes is None:          # (scope, the add's index)
            ends = [(str(n.target).rsplit(".", 1)[0], index[n]) for n in nodes
                    if n.op == "call_module" and "identity" in n.kwargs and "." in str(n.target)]
        else:                                  # (scope, None: its last module)
            ends = [(scope, None) for scope in self.block_scopes]
        out = []
        for scope, end in ends:
            inside_scope = under(scope)
            if not inside_scope:
                continue
            first, last = inside_scope[0], inside_scope[-1] if end is None else end
            while (last + 1 < len(nodes) and nodes[last + 1].op == "call_module"
                   and nodes[last + 1].target in ("relu", "relu6") and nodes[last + 1].args[0] is nodes[last]):
                last += 1
            run = nodes[first:last + 1]
            inside = set(run)
            if any(u not in inside for m in run[:-1] for u in m.users):
                continue
            inputs = {a for m in run for a in m.all_input_nodes if a not in inside}
            if len(inputs) == 1 and not (out and index[out[-1].nodes[-1]] >= first):
                out.append(GraphUnit(self, scope, run, inputs.pop()))
        return out

    def recon_units(self, blockwise: bool) -> list[tuple[str, nn.Module]]:
        """Reconstruction units in forward order: with ``blockwise`` each of :meth:`graph_blocks` and every
        weighted layer outside them; else every weighted layer (what the program calls)."""
        blocks = {b.nodes[0]: b for b in self.graph_blocks()} if blockwise else {}
        units, skip = [], set()
        for n in self.program.graph.nodes:
            if n in blocks:
                units.append((blocks[n].name, blocks[n]))
                skip.update(blocks[n].nodes)
            elif n not in skip and n.op == "call_module":
                m = self.get_submodule(str(n.target))
                if isinstance(m, (QuantBnConv2d, QuantLinear)):
                    units.append((str(n.target), m))
        return units

    def __deepcopy__(self, memo):
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            if k != "program":
                object.__setattr__(new, k, copy.deepcopy(v, memo))
        object.__setattr__(new, "program", fx.GraphModule(new, self.program.graph, class_name="QuantProgram"))
        return new


class _Found(Exception):
    """Stops an interpreted run at a node; carries its value (fx.Interpreter rewrites ``args``)."""

    def __init__(self, value):
        super().__init__()
        self.value = value


class GraphUnit(nn.Module):
    """A contiguous run of a captured program's nodes (a residual block), runnable on its own:
    ``unit(q)`` evaluates the nodes on the :class:`~hawq.quant.graph.Q` value ``q`` entering it and
    returns the value leaving it. Its modules are the model's own (shared, not copies); the unit is
    not registered in the model, so the model's state dict is unchanged."""

    def __init__(self, owner: QuantGraphModel, name: str, nodes: list[fx.Node], input_node: fx.Node):
        super().__init__()
        self.name, self.nodes, self.input_node = name, nodes, input_node
        object.__setattr__(self, "owner", owner)       # not a child: the owner holds this unit's modules
        targets = dict.fromkeys(str(n.target) for n in nodes if n.op == "call_module")
        self.parts = nn.ModuleDict({t.replace(".", "__"): owner.get_submodule(t) for t in targets})

    def forward(self, x):
        env = {self.input_node: x}
        for n in self.nodes:
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: env[a])
            fn = self.owner.get_submodule(str(n.target)) if n.op == "call_module" else n.target
            env[n] = fn(*args, **kwargs) if n.op in ("call_module", "call_function") else getattr(args[0], n.target)(
                *args[1:], **kwargs)
        return env[self.nodes[-1]]

    def value_at(self, x: torch.Tensor, output: bool):
        """The :class:`~hawq.quant.graph.Q` entering (or, with ``output``, leaving) this unit when the
        owner's program runs on ``x``; the program is interpreted up to that node only."""
        target = self.nodes[-1] if output else self.input_node

        class Upto(fx.Interpreter):
            def run_node(self, n):
                r = super().run_node(n)
                if n is target:
                    raise _Found(r)
                return r

        try:
            Upto(self.owner.program).run(x)
        except _Found as f:
            return f.value
        raise HawqError(f"{self.name}: the program never reached {target.name}")


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, name = path.split(".")
    parent = root
    for depth, p in enumerate([*parents, name], start=1):
        if p not in parent._modules and hasattr(parent, p):   # a method or attribute of that name
            raise HawqError(f"{root.arch}: module path {'.'.join((parents + [name])[:depth])!r} clashes with an "
                            f"attribute of {type(parent).__name__}; rename that submodule")
        if depth <= len(parents):
            if p not in parent._modules:
                parent.add_module(p, nn.Module())
            parent = parent._modules[p]
    parent.add_module(name, module)


def capture(model: nn.Module, example: torch.Tensor, config: QuantConfig | None = None,
            bit_config: dict[str, int] | None = None, name: str = "model", copy_model: bool = True,
            names: Callable[[str], str] | None = None, blocks: Sequence[str] | None = None,
            order: Callable[[list[str]], list[str]] | None = None) -> QuantGraphModel:
    """Quantize ``model`` (a float ``nn.Module``, BN not yet folded) for inputs like ``example``
    (float32 [B, 3, H, W]; used once to propagate shapes). ``bit_config``: bits per layer name (the
    model's module paths; None: 8 bits, residual accumulators 16). ``copy_model``: work on a deep
    copy (False: the quant modules train ``model``'s own parameters). ``names``: the name of each
    quant module given its captured path (one to one; a layout's own names, e.g. HAWQ-V3's);
    ``blocks``: the module scopes of the reconstruction blocks (default: the residual units);
    ``order``: the order the (named) modules are registered in, given the program's (it is the order
    of :meth:`~hawq.models.base.QuantModel.quant_layer_names` and of a bit_config).
    Returns the model in train mode."""
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
    modules = mapper.modules
    if names is not None:
        new = {path: names(path) for path in modules}
        twice = [v for v, k in Counter(new.values()).items() if k > 1]
        if twice:
            raise HawqError(f"{name}: two modules are both named {twice[0]!r}")
        modules = {new[p]: m for p, m in modules.items()}
        for n in graph.nodes:
            if n.op == "call_module":
                n.target = new[str(n.target)]
    if order is not None:
        ordered = order(list(modules))
        if sorted(ordered) != sorted(modules):
            raise HawqError(f"{name}: the module order is not a permutation of the modules")
        modules = {k: modules[k] for k in ordered}
    graph.lint()
    return QuantGraphModel(modules, graph, name, config, bit_config, blocks).train()
