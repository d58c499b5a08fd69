"""HAWQ-V3's quantized models of the named pytorchcv archs, as captures: one path for every model.

A named arch is captured (:func:`hawq.capture.capture`) like any user model. What HAWQ-V3 adds is
its *layout*: where it quantizes and what it calls each quantizer. A layout here is two small things:

``place``  edits the float model so its quantization points are HAWQ's: a
           :class:`~hawq.capture.QuantPoint` wherever HAWQ quantizes and the capture's rule (one
           quantizer per value, before the layer that reads it) would not, e.g. ResNet's stem
           ``quant_act_int32`` between the max pool and the ReLU, MobileNetV2's 16-bit unit outputs,
           InceptionV3's per-branch ``q_input_act``. The float function is unchanged (a point is the
           identity in float; ReLU and max pool commute; a 1×1 conv head on pooled features is the
           same Linear);
``names``  maps each captured module path onto HAWQ's name (``features.stage1.unit1.body.conv1.conv``
           -> ``stage1.unit1.quant_convbn1``): a table of patterns, total (a path no pattern names is
           a one-line error, never a silently different name).

So bit_config keys, HAWQ checkpoints (``quant_act_int32``, ``quant_init_block_convbn``, ...), the
released checkpoints and HAWQ's own integers (tests/hawq/test_hawq_conformance.py) are unchanged,
while the program, its blocks for BRECQ/QDrop, export and every check are the capture's.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from hawq.capture import QuantGraphModel, QuantPoint, capture
from hawq.errors import HawqError
from hawq.models.archs import ArchInfo, arch_info
from hawq.quant.config import QuantConfig

__all__ = ["Layout", "LAYOUTS", "hawq_model", "head_as_linear"]

_UNIT = r"(stage\d+\.unit\d+)"


@dataclass(frozen=True)
class Layout:
    """HAWQ's layout of one arch family: ``place(fp, info)`` puts its quantization points into the
    float model (in place) and returns the module scopes of its reconstruction blocks (None: the
    residual units the capture finds); ``names(info)`` is the (pattern, replacement) table mapping a
    captured path onto HAWQ's name (``re.fullmatch``, first match wins); ``order`` puts the named
    modules in the order of HAWQ's bit_config dictionaries (None: the program's order is HAWQ's)."""

    place: Callable[[nn.Module, ArchInfo], list[str] | None]
    names: Callable[[ArchInfo], list[tuple[str, str]]]
    order: Callable[[list[str]], list[str]] | None = None


def _seq(**parts: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(parts))


def head_as_linear(fc: nn.Module) -> nn.Linear:
    """A Linear head as it is; a 1×1 Conv2d head (pytorchcv MobileNetV2's ``output``, reading the
    pooled [B, C, 1, 1] map) as the same Linear (a copy of its weights)."""
    if isinstance(fc, nn.Conv2d):
        if fc.kernel_size != (1, 1) or fc.groups != 1:
            raise HawqError(f"unsupported conv head {fc}; expected a 1x1 convolution")
        lin = nn.Linear(fc.in_channels, fc.out_channels, bias=fc.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(fc.weight.reshape(fc.out_channels, -1))
            if fc.bias is not None:
                lin.bias.copy_(fc.bias)
        fc = lin
    if not isinstance(fc, nn.Linear):
        raise HawqError(f"unsupported head {type(fc).__name__}; expected a Linear output layer")
    return fc


def _units(fp: nn.Module) -> list[tuple[str, nn.Module]]:
    """(``stageS.unitU``, unit) of a pytorchcv model, in order."""
    return [(f"{s}.{u}", unit) for s, stage in fp.features.named_children() if s.startswith("stage")
            for u, unit in stage.named_children()]


# -- ResNet (and RegNetX, whose units are ResNet bottlenecks with a grouped 3x3 conv) ----------------
def _resnet_place(fp: nn.Module, info: ArchInfo) -> None:
    # HAWQ: stem conv -> [max pool] -> quant_act_int32 (16 bits) -> ReLU; the units then quantize
    # their input (quant_act, shared by the identity conv) as the capture does
    init = fp.features.init_block
    point = QuantPoint("accumulator", relu_after=True)
    if hasattr(init, "pool"):
        relu, init.conv.activ = init.conv.activ, nn.Identity()
        init.pool = _seq(pool=init.pool, quant_act_int32=point, relu=relu)
    else:
        init.activ = _seq(quant_act_int32=point, relu=init.activ)
    return None


def _resnet_names(info: ArchInfo) -> list[tuple[str, str]]:
    u = rf"features\.{_UNIT}"
    return [
        (r"quant_input|relu", r"\g<0>"),
        (r"features\.init_block(\.conv)?\.conv", info.init_conv),
        (r"features\.init_block\.(pool|activ)\.quant_act_int32", "quant_act_int32"),
        (r"features\.init_block\.pool\.pool", "pool"),
        (rf"{u}\.(body\.conv1|identity_conv)\.conv_act", r"\1.quant_act"),
        (rf"{u}\.body\.conv2\.conv_act", r"\1.quant_act1"),
        (rf"{u}\.body\.conv3\.conv_act", r"\1.quant_act2"),
        (rf"{u}\.body\.conv(\d)\.conv", r"\1.quant_convbn\2"),
        (rf"{u}\.identity_conv\.conv", r"\1.quant_identity_convbn"),
        (rf"{u}\.add", r"\1.quant_act_int32"),
        (r"features\.final_pool(\.pool)?", "final_pool"),
        (r"output_act", "quant_act_output"),
        (r"output", "quant_output"),
    ]


def _resnet_order(names: list[str]) -> list[str]:
    # the program runs a unit's identity conv first; HAWQ lists it after the body, before quant_act_int32
    identity = [n for n in names if n.endswith(".quant_identity_convbn")]
    out = [n for n in names if n not in identity]
    for n in identity:
        out.insert(out.index(n.replace("quant_identity_convbn", "quant_act_int32")), n)
    return out


# -- MobileNetV2 -------------------------------------------------------------------------------------
def _mobilenetv2_place(fp: nn.Module, info: ArchInfo) -> list[str]:
    # HAWQ: every unit requantizes its input on a signed grid (quant_act) and its output to 16 bits
    # (quant_act_int32, with the identity where residual); so do the stem and the final block
    f = fp.features
    f.init_block.activ = _seq(relu6=f.init_block.activ, quant_act_int32=QuantPoint("accumulator"))
    for _, unit in _units(fp):
        first = "conv1" if unit.use_exp_conv else "conv2"
        setattr(unit, first, _seq(quant_act=QuantPoint("signed"), m=getattr(unit, first)))
        if not unit.residual:
            unit.conv3 = _seq(m=unit.conv3, quant_act_int32=QuantPoint("accumulator"))
    block = f.final_block
    block.activ = _seq(relu6=block.activ, quant_act_int32_final=QuantPoint("accumulator"))
    f.final_block = _seq(quant_act=QuantPoint("signed"), m=block)
    fp.output = _seq(flatten=nn.Flatten(), quant_act_output=QuantPoint("relu"), fc=head_as_linear(fp.output))
    return [f"features.{name}" for name, _ in _units(fp)]


def _mobilenetv2_names(info: ArchInfo) -> list[tuple[str, str]]:
    u = rf"features\.{_UNIT}"
    return [
        (r"quant_input|relu6", r"\g<0>"),
        (r"features\.init_block\.conv", "init_block"),
        (r"features\.init_block\.activ\.quant_act_int32", "quant_act_int32"),
        (rf"{u}\.conv[12]\.quant_act", r"features.\1.quant_act"),
        (rf"{u}\.conv(\d)(\.m)?\.conv", r"features.\1.conv\2"),
        (rf"{u}\.conv2(\.m)?\.conv_act", r"features.\1.quant_act1"),
        (rf"{u}\.conv3(\.m)?\.conv_act", r"features.\1.quant_act2"),
        (rf"{u}\.(conv3\.quant_act_int32|add)", r"features.\1.quant_act_int32"),
        (r"features\.final_block\.quant_act", "quant_act_before_final_block"),
        (r"features\.final_block\.m\.conv", "features.final_block"),
        (r"features\.final_block\.m\.activ\.quant_act_int32_final", "quant_act_int32_final"),
        (r"features\.final_pool(\.pool)?", "features.final_pool"),
        (r"output\.quant_act_output", "quant_act_output"),
        (r"output\.fc", "output"),
    ]


# -- InceptionV3 -------------------------------------------------------------------------------------
_BRANCHES = ("ConvSeqBranch", "ConvSeq3x3Branch", "Conv1x1Branch", "AvgPoolBranch", "MaxPoolBranch")


def _inception_place(fp: nn.Module, info: ArchInfo) -> list[str]:
    # HAWQ: every conv block quantizes its ReLU's output (q_activ); every branch requantizes the unit
    # input (q_input_act); every concat is requantized to one grid (q_rescaling_activ)
    blocks = [m for m in fp.features.modules() if all(hasattr(m, a) for a in ("conv", "bn", "activ"))]
    for block in blocks:
        block.activ = _seq(relu=block.activ, q_activ=QuantPoint("relu"))
    for _, unit in _units(fp):
        for name, branch in list(unit.branches.named_children()):
            kind = type(branch).__name__
            if kind not in _BRANCHES:
                raise HawqError(f"unsupported inception branch {kind}")
            if kind == "AvgPoolBranch":
                branch.pool = _seq(pool=branch.pool, q_pool_act=QuantPoint("relu"))
            parts = {"q_input_act": QuantPoint("relu"), "m": branch}
            if kind == "ConvSeq3x3Branch":
                parts["q_rescaling_activ"] = QuantPoint("relu")
            setattr(unit.branches, name, _seq(**parts))
        unit.branches = _seq(m=unit.branches, q_rescaling_activ=QuantPoint("relu"))
    fp.output = _seq(q_concat_activ=QuantPoint("relu"), **dict(fp.output.named_children()))
    return [f"features.{name}" for name, _ in _units(fp)]


def _inception_names(info: ArchInfo) -> list[tuple[str, str]]:
    b = rf"features\.{_UNIT}\.branches\.m\.(branch\d+)"
    conv = r"(?:\.conv_list\.(conv\d)|\.(conv|conv1x3|conv3x1))"
    return [
        (r"relu", "relu"),
        (r"quant_input", "features.q_init_block.q_input_activ"),
        (r"features\.init_block\.(conv\d)\.conv", r"features.q_init_block.q_\1.q_convbn"),
        (r"features\.init_block\.(conv\d)\.activ\.q_activ", r"features.q_init_block.q_\1.q_activ"),
        (r"features\.init_block\.(pool\d)", r"features.q_init_block.q_\1"),
        (rf"{b}\.(q_input_act|q_rescaling_activ)", r"features.\1.branches.\2.\3"),
        (rf"{b}\.m\.cat", r"features.\1.branches.\2.concat"),
        (rf"{b}\.m\.pool(\.pool)?", r"features.\1.branches.\2.q_pool"),
        (rf"{b}\.m\.pool\.q_pool_act", r"features.\1.branches.\2.q_pool_act"),
        (rf"{b}\.m\.conv_list\.(conv\d)\.conv", r"features.\1.branches.\2.q_conv_list.q_\3.q_convbn"),
        (rf"{b}\.m\.conv_list\.(conv\d)\.activ\.q_activ", r"features.\1.branches.\2.q_conv_list.q_\3.q_activ"),
        (rf"{b}\.m\.(conv|conv1x3|conv3x1)\.conv", r"features.\1.branches.\2.q_\3.q_convbn"),
        (rf"{b}\.m\.(conv|conv1x3|conv3x1)\.activ\.q_activ", r"features.\1.branches.\2.q_\3.q_activ"),
        (rf"features\.{_UNIT}\.branches\.m\.cat", r"features.\1.concat"),
        (rf"features\.{_UNIT}\.branches\.q_rescaling_activ", r"features.\1.q_rescaling_activ"),
        (r"features\.final_pool(\.pool)?", "features.q_final_pool"),
        (r"output\.q_concat_activ", "features.q_concat_activ"),
        (r"output\.fc", "output.q_fc"),
    ]


#: HAWQ-V3's layout of each :attr:`hawq.models.archs.ArchInfo.family` of named archs.
LAYOUTS: dict[str, Layout] = {
    "resnet": Layout(_resnet_place, _resnet_names, _resnet_order),
    "mobilenetv2": Layout(_mobilenetv2_place, _mobilenetv2_names),
    "inception": Layout(_inception_place, _inception_names),
}


#: The attribute that marks a float model placed in HAWQ's layout (its value: the layout's blocks).
_PLACED, _UNPLACED = "hawq_layout_blocks", object()


def _namer(arch: str, table: list[tuple[str, str]]) -> Callable[[str], str]:
    compiled = [(re.compile(p), r) for p, r in table]

    def name(path: str) -> str:
        for pattern, replacement in compiled:
            m = pattern.fullmatch(path)
            if m:
                return m.expand(replacement)
        raise HawqError(f"{arch}: HAWQ's layout has no name for the captured module {path!r}")
    return name


def hawq_model(arch: str, fp: nn.Module, bits: dict[str, int], config: QuantConfig | None = None,
               input_size: int | None = None) -> QuantGraphModel:
    """The quantized model of named arch ``arch`` in HAWQ-V3's layout: ``fp`` (its pytorchcv model,
    edited in place to HAWQ's quantization points, its function unchanged) captured with HAWQ's
    names and ``bits`` (empty: 8 bits, accumulators 16). The program does not depend on the input
    side; it is traced at ``input_size`` (default the smallest the arch takes)."""
    info = arch_info(arch)
    layout = LAYOUTS[info.family]
    # a float model placed once (a second quantized model sharing its parameters) is not placed again
    blocks = getattr(fp, _PLACED, _UNPLACED)
    if blocks is _UNPLACED:
        if any(isinstance(m, QuantPoint) for m in fp.modules()):
            raise HawqError(f"{arch}: the float model already holds QuantPoints of another layout")
        blocks = layout.place(fp, info)
        setattr(fp, _PLACED, blocks)
    size = input_size or info.min_input
    return capture(fp, torch.zeros(1, 3, size, size), config, bits, name=arch, copy_model=False,
                   names=_namer(arch, layout.names(info)), blocks=blocks, order=layout.order)
