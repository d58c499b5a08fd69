"""The archs this project knows: the registry of named pytorchcv architectures (:data:`ARCHS`), model
specs of any CNN (``torchvision:NAME``, ``timm:NAME``, ``file.py:FUNCTION``, :mod:`hawq.models.zoo`),
their float models, and the input sizes they take.

The lowest layer of :mod:`hawq.models`: it imports no quantized model, so the data pipeline, the
layer inventory (:mod:`hawq.models.layers`) and the model factory can all depend on it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from torch import nn

from hawq.data import dataset_input_size
from hawq.errors import HawqError

__all__ = ["ArchInfo", "ARCHS", "arch_info", "check_input_size", "build_fp_model", "conv_of",
           "default_input_size", "input_size_of"]


@dataclass(frozen=True)
class ArchInfo:
    """One supported architecture.

    ``input_size`` is the canonical square input side in pixels (MACs are counted there),
    ``stem_maxpool`` says whether the stem ends with a max pool (ImageNet ResNets),
    ``init_conv`` is the HAWQ name of the stem convolution (ResNet family; None otherwise),
    ``family`` selects HAWQ-V3's layout (:mod:`hawq.models.hawq_layout`; ``resnet`` — RegNetX's units are ResNet bottlenecks —
    ``mobilenetv2`` or ``inception``) and ``min_input`` is the smallest input side the network
    takes (InceptionV3's stem and reductions need 75 px; on 32×32 Fashion-MNIST the images are
    upscaled, :func:`default_input_size`).
    """

    model_name: str
    input_size: int
    num_classes: int
    stem_maxpool: bool
    init_conv: str | None
    family: str = "resnet"
    min_input: int = 32


def _imagenet(model_name: str, init_conv: str | None, family: str = "resnet", stem_maxpool: bool = True,
              input_size: int = 224, min_input: int = 32) -> ArchInfo:
    return ArchInfo(model_name, input_size, 1000, stem_maxpool, init_conv, family, min_input)


#: Supported archs, keyed by the ``-a/--arch`` name.
ARCHS: dict[str, ArchInfo] = {
    "resnet18": _imagenet("resnet18", "quant_init_block_convbn"),
    "resnet50": _imagenet("resnet50", "quant_init_convbn"),
    "resnet50b": _imagenet("resnet50b", "quant_init_convbn"),
    "resnet101": _imagenet("resnet101", "quant_init_convbn"),
    "resnet20_cifar10": ArchInfo("resnet20_cifar10", 32, 10, False, "quant_init_block_convbn"),
    "regnetx006": _imagenet("regnetx006", "quant_init_convbn", stem_maxpool=False),
    "mobilenetv2_w1": _imagenet("mobilenetv2_w1", None, family="mobilenetv2", stem_maxpool=False),
    "inceptionv3": _imagenet("inceptionv3", None, family="inception", stem_maxpool=False, input_size=299,
                             min_input=75),
}


def arch_info(arch: str) -> ArchInfo:
    """The :class:`ArchInfo` of ``arch`` (a name of :data:`ARCHS` or a model spec of
    :mod:`hawq.models.zoo`, family ``captured``); an unknown name raises :class:`HawqError`."""
    try:
        return ARCHS[arch]
    except KeyError:
        pass
    from hawq.models import zoo
    if zoo.is_spec(arch):
        return _spec_info(arch)
    raise HawqError(f"unknown arch {arch!r}; supported: {', '.join(ARCHS)}, torchvision:NAME, timm:NAME, "
                    "path/to/file.py:FUNCTION") from None


def check_input_size(arch: str, size: int) -> None:
    """One-line HawqError unless ``arch``'s model takes ``size``×``size`` inputs: an arch of
    :data:`ARCHS` needs at least its ``min_input``; a captured model must run on such an image."""
    info = arch_info(arch)
    if info.family != "captured":
        if size < info.min_input:
            raise HawqError(f"--input-size {size}: {arch} takes inputs of at least {info.min_input} pixels")
        return
    from hawq.models import zoo
    zoo.output_classes(arch, size)


@functools.lru_cache(maxsize=None)
def _spec_info(arch: str) -> ArchInfo:
    from hawq.models import zoo
    zoo.spec_builder(arch)                      # a bad spec fails here, in one line
    size = zoo.spec_input_size(arch)
    classes = 1000
    if not arch.startswith(("torchvision:", "timm:")):
        classes = zoo.output_classes(arch, size, 224)     # a user's model: its own class count
    return ArchInfo(arch, size, classes, False, None, family="captured")


def build_fp_model(arch: str, num_classes: int | None = None, pretrained: bool = False) -> nn.Module:
    """The floating-point pytorchcv model of ``arch`` (``num_classes`` defaults to the arch's)."""
    info = arch_info(arch)
    if info.family == "captured":
        from hawq.models import zoo
        return zoo.build(arch, num_classes)
    from pytorchcv.model_provider import get_model  # slow import: only when a model is built

    if num_classes is None:
        num_classes = info.num_classes
    # pytorchcv's CIFAR ResNets assert num_classes in [10, 100] (pytorchcv/models/resnet_cifar.py)
    if "_cifar" in info.model_name and num_classes not in (10, 100):
        raise HawqError(f"arch {arch} takes 10 or 100 classes, the dataset has {num_classes}; "
                        "use an ImageNet arch (e.g. -a resnet18) for other class counts")
    return get_model(info.model_name, pretrained=pretrained, num_classes=num_classes)


def conv_of(block: nn.Module) -> nn.Conv2d:
    """The Conv2d inside a pytorchcv ConvBlock (or a ResInitBlock wrapping one)."""
    while not isinstance(block, nn.Conv2d):
        block = block.conv
    return block


def default_input_size(dataset: str, arch: str | None = None) -> int:
    """The input side for ``arch`` on ``dataset``: 224 on ImageNet; on Fashion-MNIST 32 (the padded
    image), times the smallest integer that reaches the arch's :attr:`ArchInfo.min_input` (96 for
    InceptionV3)."""
    base = dataset_input_size(dataset)
    if dataset != "fashion-mnist" or arch is None:
        return base
    return base * -(-arch_info(arch).min_input // base)


def input_size_of(dataset: str, arch: str | None = None, input_size: int | None = None) -> int:
    """Model input side S (images are [3, S, S]): ``input_size`` when given (``--input-size``; a
    positive integer, else a one-line HawqError), else :func:`default_input_size`."""
    if input_size is None:
        return default_input_size(dataset, arch)
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size < 1:
        raise HawqError(f"--input-size must be a positive integer, got {input_size!r}")
    return int(input_size)
