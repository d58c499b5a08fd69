"""Quantized ResNets built from pytorchcv ResNets, with HAWQ-V3's module names.

``QuantResNet(fp_model, bit_config)`` takes the conv/BN/linear modules of a pytorchcv ResNet
(``resnet18``, ``resnet50``, ``resnet50b``, ``resnet101``, ``resnet20_cifar10``, …) and arranges
them as HAWQ-V3's ``Q_ResNet18``/``Q_ResNet50`` do, so bit_config keys and HAWQ checkpoints map
one to one:

    quant_input -> quant_init_block_convbn | quant_init_convbn -> [pool] -> quant_act_int32 -> ReLU
    -> stageS.unitU (quant_act -> [quant_identity_convbn] -> quant_convbn1 -> ReLU -> quant_act1
       -> quant_convbn2 [-> ReLU -> quant_act2 -> quant_convbn3] -> quant_act_int32(+identity) -> ReLU)
    -> final_pool -> quant_act_output -> quant_output
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from hawq.errors import HawqError
from hawq.quant.config import QuantConfig
from hawq.quant.graph import Q
from hawq.quant.modules import (QuantAct, QuantAveragePool2d, QuantBnConv2d, QuantLinear, QuantMaxPool2d,
                                QuantReLU)

QUANT_TYPES = (QuantAct, QuantBnConv2d, QuantLinear)


class _Builder:
    """Creates quant modules with the run's :class:`QuantConfig`; bit widths are set afterwards."""

    def __init__(self, config: QuantConfig):
        self.config = config

    def act(self, role: str) -> QuantAct:
        return QuantAct(role, self.config)

    def convbn(self, block: nn.Module) -> QuantBnConv2d:
        return QuantBnConv2d(block.conv, block.bn, self.config)

    def linear(self, fc: nn.Linear) -> QuantLinear:
        return QuantLinear(fc, self.config)

    def avgpool(self) -> QuantAveragePool2d:
        return QuantAveragePool2d(self.config)


class QuantResUnit(nn.Module):
    """One residual unit (basic or bottleneck) of a quantized ResNet."""

    def __init__(self, unit: nn.Module, b: _Builder):
        super().__init__()
        body = unit.body
        self.bottleneck = hasattr(body, "conv3")
        self.quant_act = b.act("relu")
        self.quant_convbn1 = b.convbn(body.conv1)
        self.quant_act1 = b.act("relu")
        self.quant_convbn2 = b.convbn(body.conv2)
        if self.bottleneck:
            self.quant_act2 = b.act("relu")
            self.quant_convbn3 = b.convbn(body.conv3)
        self.resize_identity = hasattr(unit, "identity_conv")
        if self.resize_identity:
            self.quant_identity_convbn = b.convbn(unit.identity_conv)
        self.quant_act_int32 = b.act("accumulator")
        self.relu = QuantReLU()

    def forward(self, x: Q) -> Q:
        a = self.quant_act(x)
        identity = self.quant_identity_convbn(a) if self.resize_identity else x
        y = self.quant_act1(self.relu(self.quant_convbn1(a)))
        y = self.quant_convbn2(y)
        if self.bottleneck:
            y = self.quant_convbn3(self.quant_act2(self.relu(y)))
        return self.relu(self.quant_act_int32(y, identity))


class QuantResNet(nn.Module):
    """Integer-only quantized ResNet. ``forward`` returns float logits [B, classes] (in eval mode
    exactly the integer logits times their scale); :meth:`forward_int` returns the int64 logits."""

    def __init__(self, fp_model: nn.Module, bit_config: dict[str, int], arch: str = "",
                 config: QuantConfig | None = None):
        super().__init__()
        self.config = config if config is not None else QuantConfig()
        b = _Builder(self.config)
        self.arch = arch
        feats = fp_model.features
        init = feats.init_block
        conv_block = init.conv if hasattr(init, "pool") else init
        bottleneck = hasattr(feats.stage1.unit1.body, "conv3")
        self.init_name = "quant_init_convbn" if bottleneck else "quant_init_block_convbn"

        self.quant_input = b.act("input")
        setattr(self, self.init_name, b.convbn(conv_block))
        self.pool = QuantMaxPool2d(init.pool) if hasattr(init, "pool") else None
        self.quant_act_int32 = b.act("accumulator")
        self.relu = QuantReLU()
        stage_names = [n for n, _ in feats.named_children() if n.startswith("stage")]
        for s in stage_names:
            units = OrderedDict((u, QuantResUnit(unit, b)) for u, unit in getattr(feats, s).named_children())
            setattr(self, s, nn.Sequential(units))
        self.stage_names = stage_names
        self.final_pool = b.avgpool()
        self.quant_act_output = b.act("relu")
        self.quant_output = self._head(fp_model, b)
        for name, m in self.named_modules():
            if hasattr(m, "layer_name"):
                m.layer_name = name
        self.apply_bit_config(bit_config)

    @staticmethod
    def _head(fp_model: nn.Module, b: _Builder) -> QuantLinear:
        fc = fp_model.output
        if not isinstance(fc, nn.Linear):
            raise HawqError(f"unsupported head {type(fc).__name__}; expected a Linear output layer")
        return b.linear(fc)

    def quant_layer_names(self) -> list[str]:
        """Names of every module that carries a bit width, in definition order."""
        return [n for n, m in self.named_modules() if isinstance(m, QUANT_TYPES)]

    def apply_bit_config(self, bit_config: dict[str, int]) -> None:
        """Set every quant module's bit width; every quantized layer must be in ``bit_config``."""
        modules = dict(self.named_modules())
        names = self.quant_layer_names()
        missing = [n for n in names if n not in bit_config]
        if missing:
            raise HawqError(f"bit_config{' for ' + self.arch if self.arch else ''}: layer '{missing[0]}' is missing")
        unknown = [n for n in bit_config if n not in modules or not isinstance(modules[n], QUANT_TYPES)]
        if unknown:
            raise HawqError(f"bit_config{' for ' + self.arch if self.arch else ''}: unknown layer '{unknown[0]}'")
        for n in names:
            m = modules[n]
            if isinstance(m, QuantAct):
                m.activation_bit = int(bit_config[n])
            else:
                m.weight_bit = int(bit_config[n])

    def bit_config(self) -> dict[str, int]:
        return {n: (m.activation_bit if isinstance(m, QuantAct) else m.weight_bit)
                for n, m in self.named_modules() if isinstance(m, QUANT_TYPES)}

    def load_stored_integers(self, sd: dict, path: str) -> None:
        """Evaluate HAWQ-V3's quantized_checkpoint: per conv/linear its ``weight_integer``,
        ``bias_integer`` and ``convbn_scaling_factor``/``fc_scaling_factor``, per QuantAct its
        ``act_scaling_factor`` (``sd``: the union of the five dicts, prefix stripped). Eval only."""
        for name, m in self.named_modules():
            keys = ([f"{name}.act_scaling_factor"] if isinstance(m, QuantAct) else
                    [f"{name}.weight_integer", f"{name}.bias_integer", f"{name}.{m.scale_name}"]
                    if isinstance(m, (QuantBnConv2d, QuantLinear)) else [])
            missing = [k for k in keys if k not in sd]
            if missing:
                raise HawqError(f"'{path}' has no '{missing[0]}' - wrong arch or scheme?")
            if isinstance(m, QuantAct):
                m.use_stored_scale(sd[keys[0]])
            elif keys:
                m.use_stored_integers(sd[keys[0]], sd[keys[1]], sd[keys[2]])
        own = {f"{n}.{k.rsplit('.', 1)[-1]}" for n, m in self.named_modules() for k in
               (("act_scaling_factor",) if isinstance(m, QuantAct) else ("weight_integer", "bias_integer",
                getattr(m, "scale_name", "")) if isinstance(m, (QuantBnConv2d, QuantLinear)) else ())}
        unexpected = sorted(set(sd) - own)
        if unexpected:
            raise HawqError(f"'{path}' has '{unexpected[0]}', which this model lacks - wrong arch or scheme?")

    def act_quantizers(self) -> list[QuantAct]:
        return [m for m in self.modules() if isinstance(m, QuantAct)]

    def freeze_act_ranges(self):
        for m in self.act_quantizers():
            m.fix()

    def unfreeze_act_ranges(self):
        for m in self.act_quantizers():
            m.unfix()

    def forward_q(self, x: torch.Tensor) -> Q:
        q = self.quant_input(x)
        q = getattr(self, self.init_name)(q)
        if self.pool is not None:
            q = self.pool(q)
        q = self.relu(self.quant_act_int32(q))
        for s in self.stage_names:
            q = getattr(self, s)(q)
        q = self.quant_act_output(self.final_pool(q))
        return self.quant_output(q)

    #: The integer path is memory-bound on int64 tensors; batches of this size keep them in cache
    #: (measured on 2 cores: 17 ms/image at batch 200, 2-3 ms/image in chunks of 32).
    eval_chunk = 32

    def _forward_int_chunked(self, x: torch.Tensor) -> Q:
        if x.shape[0] <= self.eval_chunk:
            return self.forward_q(x)      # the very tensor, so graph recording can name it
        outs = [self.forward_q(c) for c in x.split(self.eval_chunk)]
        return Q(torch.cat([o.value for o in outs]), outs[0].scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.forward_q(x).value
        q = self._forward_int_chunked(x)
        return (q.value.double() * q.scale.reshape(1, -1)).float()

    @torch.no_grad()
    def forward_int(self, x: torch.Tensor) -> torch.Tensor:
        """Integer logits (int64 [B, classes]); requires eval mode."""
        return self.forward_int_q(x).value

    @torch.no_grad()
    def forward_int_q(self, x: torch.Tensor) -> Q:
        """Integer logits with their per-class scale (``Q(value int64 [B, classes], scale [classes])``)."""
        if self.training:
            raise RuntimeError("forward_int needs eval mode (model.eval())")
        return self._forward_int_chunked(x)
