"""Quantized InceptionV3 over pytorchcv's ``inceptionv3``, with HAWQ-V3's ``q_inceptionv3`` names.

    features.q_init_block (q_input_activ -> q_conv1..q_conv3 -> q_pool1 -> q_conv4, q_conv5 -> q_pool2)
    -> features.stageS.unitU: branches.branchK (each: q_input_act -> its convs / pool) concatenated
       -> q_rescaling_activ
    -> features.q_final_pool -> features.q_concat_activ -> output.q_fc

Every conv block is conv+BN folded -> ReLU -> ``q_activ`` (HAWQ's ``Q_InceptConv``). A concatenation
joins branches on different grids; ``q_rescaling_activ`` requantizes each branch's channels to the
common output scale (:class:`hawq.quant.modules.QuantConcat`). The average-pool branch sums 3×3
windows (zero padding counted) and folds the 1/9 into ``q_pool_act``'s requantization.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from hawq.errors import HawqError
from hawq.models.base import Builder, QuantModel
from hawq.quant.config import QuantConfig
from hawq.quant.graph import Q


__all__ = ["QuantInceptConv", "QuantBranch", "QuantInceptionUnit", "QuantInceptInitBlock", "QuantInceptionV3"]

class QuantInceptConv(nn.Module):
    """conv+BN -> ReLU -> activation quantizer (HAWQ's ``Q_InceptConv``)."""

    def __init__(self, block: nn.Module, b: Builder):
        super().__init__()
        self.q_convbn = b.convbn(block)
        self.relu = b.relu()
        self.q_activ = b.act("relu")

    def forward(self, x: Q) -> Q:
        return self.q_activ(self.relu(self.q_convbn(x)))


class QuantBranch(nn.Module):
    """One branch of an inception unit: ``q_input_act`` then, by pytorchcv's branch type, a 1×1 conv
    (``q_conv``), a conv sequence (``q_conv_list``), a conv sequence split into 1×3 and 3×1 convs
    (``q_conv1x3``, ``q_conv3x1``, joined by ``q_rescaling_activ``), a 3×3 average pool and a 1×1 conv
    (``q_pool``, ``q_pool_act``, ``q_conv``) or a max pool (``q_pool``)."""

    def __init__(self, branch: nn.Module, b: Builder):
        super().__init__()
        kind = type(branch).__name__
        self.kind = kind
        self.q_input_act = b.act("relu")
        if kind in ("ConvSeqBranch", "ConvSeq3x3Branch"):
            self.q_conv_list = nn.Sequential(OrderedDict(
                (f"q_{n}", QuantInceptConv(c, b)) for n, c in branch.conv_list.named_children()))
        if kind == "ConvSeq3x3Branch":
            self.q_conv1x3 = QuantInceptConv(branch.conv1x3, b)
            self.q_conv3x1 = QuantInceptConv(branch.conv3x1, b)
            self.concat = b.concat()
            self.q_rescaling_activ = b.act("relu")
        elif kind == "Conv1x1Branch":
            self.q_conv = QuantInceptConv(branch.conv, b)
        elif kind == "AvgPoolBranch":
            self.q_pool = b.window_avgpool(branch.pool)
            self.q_pool_act = b.act("relu")
            self.q_conv = QuantInceptConv(branch.conv, b)
        elif kind == "MaxPoolBranch":
            self.q_pool = b.maxpool(branch.pool)
        elif kind != "ConvSeqBranch":
            raise HawqError(f"unsupported inception branch {kind}")

    def forward(self, x: Q) -> Q:
        x = self.q_input_act(x)
        kind = self.kind
        if kind in ("ConvSeqBranch", "ConvSeq3x3Branch"):
            x = self.q_conv_list(x)
        if kind == "ConvSeq3x3Branch":
            return self.q_rescaling_activ(self.concat([self.q_conv1x3(x), self.q_conv3x1(x)]))
        if kind == "Conv1x1Branch":
            return self.q_conv(x)
        if kind == "AvgPoolBranch":
            return self.q_conv(self.q_pool_act(self.q_pool(x)))
        if kind == "MaxPoolBranch":
            return self.q_pool(x)
        return x


class QuantInceptionUnit(nn.Module):
    """Inception A/B/C or reduction A/B unit: branches concatenated, then ``q_rescaling_activ``."""

    def __init__(self, unit: nn.Module, b: Builder):
        super().__init__()
        self.branches = nn.Module()
        self.branch_names = [n for n, _ in unit.branches.named_children()]
        for n, br in unit.branches.named_children():
            self.branches.add_module(n, QuantBranch(br, b))
        self.concat = b.concat()
        self.q_rescaling_activ = b.act("relu")

    def forward(self, x: Q) -> Q:
        return self.q_rescaling_activ(self.concat([getattr(self.branches, n)(x) for n in self.branch_names]))


class QuantInceptInitBlock(nn.Module):
    """The stem (HAWQ's ``Q_InceptInitBlock``)."""

    def __init__(self, init: nn.Module, b: Builder):
        super().__init__()
        self.q_input_activ = b.act("input")
        for k in range(1, 6):
            setattr(self, f"q_conv{k}", QuantInceptConv(getattr(init, f"conv{k}"), b))
        self.q_pool1 = b.maxpool(init.pool1)
        self.q_pool2 = b.maxpool(init.pool2)

    def forward(self, x: torch.Tensor) -> Q:
        q = self.q_conv3(self.q_conv2(self.q_conv1(self.q_input_activ(x))))
        q = self.q_conv5(self.q_conv4(self.q_pool1(q)))
        return self.q_pool2(q)


class QuantInceptionV3(QuantModel):
    """Quantized InceptionV3 (HAWQ's ``Q_InceptionV3``; dropout is the identity at eval and omitted)."""

    def __init__(self, fp_model: nn.Module, bit_config: dict[str, int], arch: str = "",
                 config: QuantConfig | None = None):
        super().__init__(arch, config)
        b = self.builder()
        feats = fp_model.features
        self.features = nn.Module()
        self.features.add_module("q_init_block", QuantInceptInitBlock(feats.init_block, b))
        self.stage_names = [n for n, _ in feats.named_children() if n.startswith("stage")]
        for s in self.stage_names:
            stage = nn.Sequential()
            for u, unit in getattr(feats, s).named_children():
                stage.add_module(u, QuantInceptionUnit(unit, b))
            self.features.add_module(s, stage)
        self.features.add_module("q_final_pool", b.avgpool())
        self.features.add_module("q_concat_activ", b.act("relu"))
        fc = fp_model.output.fc if isinstance(fp_model.output, nn.Sequential) else fp_model.output
        self.output = nn.Module()
        self.output.add_module("q_fc", b.linear(fc))
        self.finish(bit_config)

    def forward_q(self, x: torch.Tensor) -> Q:
        q = self.features.q_init_block(x)
        for s in self.stage_names:
            q = getattr(self.features, s)(q)
        q = self.features.q_concat_activ(self.features.q_final_pool(q))
        return self.output.q_fc(q)
