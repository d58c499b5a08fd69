"""Quantized MobileNetV2 over pytorchcv's ``mobilenetv2_w1``, with HAWQ-V3's ``q_mobilenetv2`` names.

    quant_input -> init_block -> ReLU6 -> quant_act_int32
    -> features.stageS.unitU (quant_act -> [conv1 -> ReLU6 -> quant_act1] -> conv2 (depthwise) -> ReLU6
       -> quant_act2 -> conv3 -> quant_act_int32(+identity where the unit is residual); no ReLU: linear bottleneck)
    -> quant_act_before_final_block -> features.final_block -> ReLU6 -> quant_act_int32_final
    -> features.final_pool -> quant_act_output -> output (pytorchcv's 1x1 conv head, as a linear layer)

A unit's input can be negative (the bottleneck is linear), so its ``quant_act`` is a signed grid
(role ``signed``); the ``quant_act_int32`` quantizers are the wide (16-bit) accumulators, as in the
ResNets. ReLU6 acts on the conv accumulator as an integer clamp (:class:`hawq.quant.modules.QuantReLU6`).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from hawq.models.base import Builder, QuantModel
from hawq.quant.config import QuantConfig
from hawq.quant.graph import Q


__all__ = ["QuantLinearBottleneck", "QuantMobileNetV2"]

class QuantLinearBottleneck(nn.Module):
    """One MobileNetV2 unit (HAWQ's ``Q_LinearBottleneck``)."""

    def __init__(self, unit: nn.Module, b: Builder):
        super().__init__()
        self.residual = bool(unit.residual)
        self.use_exp_conv = bool(unit.use_exp_conv)
        self.relu6 = b.relu6()
        self.quant_act = b.act("signed")
        if self.use_exp_conv:
            self.conv1 = b.convbn(unit.conv1)
            self.quant_act1 = b.act("relu")
        self.conv2 = b.convbn(unit.conv2)
        self.quant_act2 = b.act("relu")
        self.conv3 = b.convbn(unit.conv3)
        self.quant_act_int32 = b.act("accumulator")

    def forward(self, x: Q) -> Q:
        y = self.quant_act(x)
        if self.use_exp_conv:
            y = self.quant_act1(self.relu6(self.conv1(y)))
        y = self.quant_act2(self.relu6(self.conv2(y)))
        y = self.conv3(y)
        return self.quant_act_int32(y, x) if self.residual else self.quant_act_int32(y)


class QuantMobileNetV2(QuantModel):
    """Quantized MobileNetV2 (HAWQ's ``Q_MobileNetV2``)."""

    def __init__(self, fp_model: nn.Module, bit_config: dict[str, int], arch: str = "",
                 config: QuantConfig | None = None):
        super().__init__(arch, config)
        b = self.builder()
        feats = fp_model.features
        self.relu6 = b.relu6()
        self.quant_input = b.act("input")
        self.init_block = b.convbn(feats.init_block)
        self.quant_act_int32 = b.act("accumulator")
        self.features = nn.Module()
        self.stage_names = [n for n, _ in feats.named_children() if n.startswith("stage")]
        for s in self.stage_names:
            units = OrderedDict((u, QuantLinearBottleneck(unit, b)) for u, unit in getattr(feats, s).named_children())
            self.features.add_module(s, nn.Sequential(units))
        self.quant_act_before_final_block = b.act("signed")
        self.features.add_module("final_block", b.convbn(feats.final_block))
        self.quant_act_int32_final = b.act("accumulator")
        self.features.add_module("final_pool", b.avgpool())
        self.quant_act_output = b.act("relu")
        self.output = b.linear(fp_model.output)
        self.finish(bit_config)

    def forward_q(self, x: torch.Tensor) -> Q:
        q = self.quant_act_int32(self.relu6(self.init_block(self.quant_input(x))))
        for s in self.stage_names:
            q = getattr(self.features, s)(q)
        q = self.quant_act_before_final_block(q)
        q = self.quant_act_int32_final(self.relu6(self.features.final_block(q)))
        q = self.quant_act_output(self.features.final_pool(q))
        return self.output(q)
