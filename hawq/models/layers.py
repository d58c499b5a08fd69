"""The quantized-layer inventory of an arch (the registry itself is :mod:`hawq.models.archs`).

:func:`quant_layers` walks
the real pytorchcv model of an arch and returns, in graph order, every quantizer HAWQ-V3
names in its ``bit_config`` dictionaries (``quant_input``, ``stage1.unit1.quant_convbn1``,
...), with each conv/linear layer's weight count and multiply-accumulates per image at the
arch's canonical input size. ``hawq.bit_config`` validates bit assignments and counts model
size and BOPS from this inventory.

Layer order: stem (``quant_input``, init conv, ``quant_act_int32``), then per unit
``quant_act``, ``quant_convbn1``, [``quant_act1``, ``quant_convbn2``, [``quant_act2``,
``quant_convbn3``]], [``quant_identity_convbn``], ``quant_act_int32``, then head
(``quant_act_output``, ``quant_output``) -- the order of HAWQ-V3's own bit_config dicts.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from hawq.models.archs import ARCHS, ArchInfo, arch_info, build_fp_model, conv_of

# The registry's names are re-exported: listing an arch's layers starts from them.
__all__ = ["LAYER_KINDS", "WEIGHT_KINDS", "LayerSpec", "quant_layers", "model_layers", "resnet_layer_plan",
           "ARCHS", "ArchInfo", "arch_info", "build_fp_model"]

#: Kinds of quantized layer: activation quantizer, 16-bit residual accumulator
#: requantizer, convolution (+ folded BN), fully-connected output layer.
LAYER_KINDS = ("act", "act_int32", "conv", "linear")
#: Kinds that own a weight tensor (and so weight bits, size and MACs).
WEIGHT_KINDS = ("conv", "linear")


@dataclass(frozen=True)
class LayerSpec:
    """One HAWQ quantizer.

    ``weight_numel``: weight elements (bias excluded), 0 for activations.
    ``macs``: multiply-accumulates per image at the arch's canonical input size, 0 for
    activations. ``input_act``: HAWQ name of the activation quantizer feeding this
    conv/linear (its bits are the operand width in BOPS), ``None`` for activations.
    ``role``: an activation quantizer's role (:data:`hawq.numerics.ACT_ROLES`) and ``kernel``: a
    conv's kh·kw, where the inventory was read off a captured model (None / 0 otherwise).
    """

    name: str
    kind: str
    weight_numel: int = 0
    macs: int = 0
    input_act: str | None = None
    role: str | None = None
    kernel: int = 0


def _unit_plan(prefix: str, unit: nn.Module) -> list[tuple[str, str, nn.Module | None, str | None]]:
    """Plan entries ``(name, kind, module, input_act)`` of one ResUnit, names prefixed."""
    quant_act = prefix + "quant_act"
    plan = [(quant_act, "act", None, None)]
    blocks = [block for name, block in unit.body.named_children() if name.startswith("conv")]
    feeding = quant_act
    for k, block in enumerate(blocks, start=1):
        if k > 1:
            feeding = f"{prefix}quant_act{k - 1}"
            plan.append((feeding, "act", None, None))
        plan.append((f"{prefix}quant_convbn{k}", "conv", conv_of(block), feeding))
    if unit.resize_identity:
        plan.append((prefix + "quant_identity_convbn", "conv", conv_of(unit.identity_conv), quant_act))
    plan.append((prefix + "quant_act_int32", "act_int32", None, None))
    return plan


def resnet_layer_plan(model: nn.Module, info: ArchInfo) -> list[tuple[str, str, nn.Module | None, str | None]]:
    """All plan entries ``(name, kind, module, input_act)`` of a pytorchcv ResNet, graph order."""
    plan = [
        ("quant_input", "act", None, None),
        (info.init_conv, "conv", conv_of(model.features.init_block), "quant_input"),
        ("quant_act_int32", "act_int32", None, None),
    ]
    for stage_name, stage in model.features.named_children():
        if stage_name.startswith("stage"):
            for unit_name, unit in stage.named_children():
                plan += _unit_plan(f"{stage_name}.{unit_name}.", unit)
    plan += [
        ("quant_act_output", "act", None, None),
        ("quant_output", "linear", model.output, "quant_act_output"),
    ]
    return plan


def _macs_per_image(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one conv/linear call per image: output elements x (C_in/groups * kh * kw)."""
    return output.shape[1:].numel() * module.weight.shape[1:].numel()


def _traced_layers(arch: str) -> tuple[LayerSpec, ...]:
    """The inventory of a non-ResNet arch, read off its quantized model at the canonical input size
    (:func:`model_layers`)."""
    from hawq.models.factory import fp_model, quant_model

    info = arch_info(arch)
    torch.manual_seed(0)
    model = quant_model(arch, {}, info.num_classes, fp=fp_model(arch, info.num_classes))
    return model_layers(model, info.input_size)


def model_layers(model: nn.Module, input_size: int) -> tuple[LayerSpec, ...]:
    """The inventory of a quantized model, read off it running one training-mode batch of two
    ``input_size``-pixel images (it changes the model's activation ranges: pass a throwaway
    model): quantizers in execution order; a conv/linear's ``input_act`` is the quantizer whose
    grid (the scale object it emitted) reaches the layer's input."""
    from hawq.quant.modules import QuantAct, QuantBnConv2d, QuantLinear

    model.train()
    order: list[LayerSpec] = []
    emitted: dict[int, str] = {}
    seen: set[str] = set()

    def after(module, inputs, output):
        name = module.layer_name
        if isinstance(module, QuantAct):
            emitted[id(output.scale)] = name
            if name not in seen:
                order.append(LayerSpec(name, "act_int32" if module.role == "accumulator" else "act",
                                       role=module.role))
        else:
            feeding = emitted.get(id(inputs[0].scale))
            if feeding is None:
                raise RuntimeError(f"{getattr(model, 'arch', '')}: cannot tell which quantizer feeds {name}")
            w = module.weight_integer
            macs = output.value.shape[1:].numel() * w.shape[1:].numel()
            order.append(LayerSpec(name, "conv" if isinstance(module, QuantBnConv2d) else "linear",
                                   w.numel(), macs, feeding, kernel=w.shape[2:].numel()))
        seen.add(name)

    hooks = [m.register_forward_hook(after) for m in model.modules() if isinstance(m, (QuantAct, QuantBnConv2d, QuantLinear))]
    with torch.no_grad():
        model(torch.randn(2, 3, input_size, input_size))
    for h in hooks:
        h.remove()
    return tuple(order)


@functools.lru_cache(maxsize=None)
def _quant_layers_cached(arch: str) -> tuple[LayerSpec, ...]:
    info = arch_info(arch)
    if info.family != "resnet":
        return _traced_layers(arch)
    with torch.device("meta"):  # shapes only: no weights allocated, no arithmetic done
        model = build_fp_model(arch).eval()
        plan = resnet_layer_plan(model, info)
        macs: dict[nn.Module, int] = {}

        def record(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            macs[module] = _macs_per_image(module, output)

        hooks = [module.register_forward_hook(record) for _n, _k, module, _f in plan if module is not None]
        model(torch.zeros(1, 3, info.input_size, info.input_size))
    for hook in hooks:
        hook.remove()
    return tuple(
        LayerSpec(name, kind)
        if module is None
        else LayerSpec(name, kind, module.weight.numel(), macs[module], feeding)
        for name, kind, module, feeding in plan
    )


def quant_layers(arch: str) -> list[LayerSpec]:
    """Every HAWQ quantizer of ``arch`` in graph order (cached per arch; a fresh list each call)."""
    return list(_quant_layers_cached(arch))
