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

from hawq.models.base import QUANT_TYPES, Builder, QuantModel  # noqa: F401  (QUANT_TYPES re-exported)
from hawq.quant.config import QuantConfig
from hawq.quant.graph import Q


__all__ = ["QuantResUnit", "QuantResNet"]

class QuantResUnit(nn.Module):
    """One residual unit (basic or bottleneck) of a quantized ResNet."""

    def __init__(self, unit: nn.Module, b: Builder):
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
        self.quant_act_int32 = b.act("accumulator", relu_after=True)
        self.relu = b.relu()

    def forward(self, x: Q) -> Q:
        a = self.quant_act(x)
        identity = self.quant_identity_convbn(a) if self.resize_identity else x
        y = self.quant_act1(self.relu(self.quant_convbn1(a)))
        y = self.quant_convbn2(y)
        if self.bottleneck:
            y = self.quant_convbn3(self.quant_act2(self.relu(y)))
        return self.relu(self.quant_act_int32(y, identity))


class QuantResNet(QuantModel):
    """Quantized ResNet (and RegNetX, whose units are ResNet bottlenecks with a grouped 3x3 conv)."""

    def __init__(self, fp_model: nn.Module, bit_config: dict[str, int], arch: str = "",
                 config: QuantConfig | None = None):
        super().__init__(arch, config)
        b = self.builder()
        feats = fp_model.features
        init = feats.init_block
        conv_block = init.conv if hasattr(init, "pool") else init
        bottleneck = hasattr(feats.stage1.unit1.body, "conv3")
        self.init_name = "quant_init_convbn" if bottleneck else "quant_init_block_convbn"

        self.quant_input = b.act("input")
        setattr(self, self.init_name, b.convbn(conv_block))
        self.pool = b.maxpool(init.pool) if hasattr(init, "pool") else None
        self.quant_act_int32 = b.act("accumulator", relu_after=True)
        self.relu = b.relu()
        stage_names = [n for n, _ in feats.named_children() if n.startswith("stage")]
        for s in stage_names:
            units = OrderedDict((u, QuantResUnit(unit, b)) for u, unit in getattr(feats, s).named_children())
            setattr(self, s, nn.Sequential(units))
        self.stage_names = stage_names
        self.final_pool = b.avgpool()
        self.quant_act_output = b.act("relu")
        self.quant_output = self._head(fp_model, b)
        self.finish(bit_config)

    @staticmethod
    def _head(fp_model: nn.Module, b: Builder):
        return b.linear(fp_model.output)

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
