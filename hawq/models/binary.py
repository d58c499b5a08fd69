"""This project's own binary-network float models, built as ``hawq:NAME`` arch specs.

Bi-Real Net's ResNets (Liu et al., ECCV 2018, "Bi-Real Net: Enhancing the Performance of 1-bit CNNs
with Improved Representational Capability and Advanced Training Algorithm"): every 3×3 convolution
has its own real-valued shortcut, ``out = BN(conv(sign(x))) + shortcut(x)``, and there is no ReLU (a
1-bit activation after a ReLU would be the constant +1); a downsampling shortcut is a 2×2 average
pool, a 1×1 convolution and BN, kept real-valued (8-bit). The stem conv + BN (no ReLU) and the
classifier stay 8-bit too. In float the sign is a clip to [−1, 1] (:class:`SignPoint`): real-valued
networks with hardtanh activations, the FP start of the two-step recipe. Captured like any model
(:mod:`hawq.capture`), each :class:`SignPoint` is a signed activation quantizer, so the ``binary``
scheme (:func:`hawq.bit_config.binary_bits`) makes it and the convs it feeds 1-bit.

``bireal_resnet20``: CIFAR's ResNet-20 layout (16/32/64 channels, 3 blocks of two convs per stage,
32×32 inputs). ``groupnet_resnet20``: the same with every binary conv a sum of 3 binary bases
(Group-Net). ``bireal_resnet18``: ResNet-18's (64-512 channels, 2 blocks per stage) with the CIFAR
stem (a 3×3 conv, no max pool) for 32×32 inputs, or ImageNet's (7×7/2 conv and 3×3/2 max pool) with
``imagenet_stem=True`` (``bireal_resnet18_imagenet``, 224×224, 1000 classes).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hawq.capture import QuantPoint

__all__ = ["SignPoint", "BiRealConv", "BiRealResNet", "MODELS", "bireal_resnet20", "bireal_resnet18", "bireal_resnet18_imagenet",
           "groupnet_resnet20", "INPUT_SIZES"]


class SignPoint(QuantPoint):
    """Where a binary conv's 1-bit activation goes. In float it is ``hardtanh(x)`` (clip to [−1, 1]):
    Bi-Real's real-valued pretraining activation, the FP network the binary one starts from (with no
    nonlinearity at all the FP network would be linear). Captured, it is a signed activation quantizer
    (:class:`hawq.capture.QuantPoint`) reading ``x``: at 1 bit ``sign(x) = sign(hardtanh(x))``, and the
    sign's clipped gradient is hardtanh's; at 2-8 bits the quantizer's calibrated range clips instead."""

    def __init__(self):
        super().__init__("signed")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x)


class BiRealConv(nn.Module):
    """``BN(conv3x3(act(x))) + shortcut(x)``, ``act`` a :class:`SignPoint`: the shortcut is the identity, or (stride or width change)
    AvgPool 2×2 → conv 1×1 → BN. With ``bases`` > 1 (Group-Net's layer-wise decomposition) the
    3×3 conv is a sum of that many binary bases reading the same 1-bit input, ``Σ_k BN_k(conv_k(x))``:
    each base's learned scale λ_k is its BN's γ, folded into that base's weights."""

    def __init__(self, cin: int, cout: int, stride: int = 1, bases: int = 1):
        super().__init__()
        self.act = SignPoint()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.bases = nn.ModuleList(nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
                                   for _ in range(bases - 1))
        self.shortcut = None
        if stride != 1 or cin != cout:
            layers = [nn.AvgPool2d(2, 2)] if stride != 1 else []
            self.shortcut = nn.Sequential(*layers, nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(x)
        y = self.bn(self.conv(a))
        for base in self.bases:
            y = y + base(a)
        return y + (x if self.shortcut is None else self.shortcut(x))


class BiRealResNet(nn.Module):
    """Stem conv + BN, stages of :class:`BiRealConv` pairs, global average pool, linear classifier.
    Input float32 [B, 3, H, W]; output logits [B, num_classes]."""

    def __init__(self, widths: tuple[int, ...], blocks: int, num_classes: int = 10, imagenet_stem: bool = False,
                 bases: int = 1):
        super().__init__()
        w0 = widths[0]
        if imagenet_stem:
            self.stem = nn.Sequential(nn.Conv2d(3, w0, 7, 2, 3, bias=False), nn.BatchNorm2d(w0),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0))
        layers, cin = [], w0
        for i, width in enumerate(widths):
            for b in range(blocks):
                stride = 2 if i > 0 and b == 0 else 1
                layers += [BiRealConv(cin, width, stride, bases), BiRealConv(width, width, bases=bases)]
                cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(self.stem(x))), 1))


def bireal_resnet20(num_classes: int = 10) -> BiRealResNet:
    """Bi-Real ResNet-20 for 32×32 inputs (0.27 M parameters)."""
    return BiRealResNet((16, 32, 64), 3, num_classes)


def bireal_resnet18(num_classes: int = 10, imagenet_stem: bool = False) -> BiRealResNet:
    """Bi-Real ResNet-18 (11.2 M parameters): CIFAR stem for 32×32 inputs, or ImageNet's."""
    return BiRealResNet((64, 128, 256, 512), 2, num_classes, imagenet_stem)


def bireal_resnet18_imagenet(num_classes: int = 1000) -> BiRealResNet:
    """Bi-Real ResNet-18 as published: ImageNet stem, 224×224 inputs, 1000 classes."""
    return bireal_resnet18(num_classes, imagenet_stem=True)


def groupnet_resnet20(num_classes: int = 10, bases: int = 3) -> BiRealResNet:
    """Group-Net ResNet-20 (Zhuang et al., CVPR 2019, layer-wise form): Bi-Real ResNet-20 with every
    binary conv a sum of ``bases`` binary bases (3: about 3× the binary operations of Bi-Real)."""
    return BiRealResNet((16, 32, 64), 3, num_classes, bases=bases)


#: ``hawq:NAME`` -> builder.
MODELS = {"bireal_resnet20": bireal_resnet20, "bireal_resnet18": bireal_resnet18,
          "bireal_resnet18_imagenet": bireal_resnet18_imagenet, "groupnet_resnet20": groupnet_resnet20}
#: Canonical input side of each model whose side is not 32.
INPUT_SIZES = {"bireal_resnet18_imagenet": 224}
