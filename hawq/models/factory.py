"""Model construction: floating-point models (pytorchcv archs, captured specs; optionally pretrained)
and their quantized models (every one a capture, :func:`hawq.capture.capture`; the named archs in
HAWQ-V3's layout, :mod:`hawq.models.hawq_layout`).
Rebuilding a quantized model from a file is :mod:`hawq.models.restore`."""
from __future__ import annotations

import torch
import torch.nn as nn

from hawq import checkpoint as C
from hawq.errors import HawqError
from hawq.quant.config import QuantConfig
from hawq.models.archs import arch_info, build_fp_model, check_input_size, conv_of, input_size_of
from hawq.models.base import QuantModel

__all__ = ["GlobalAvgPool", "replace_head", "fp_model", "fp_model_pretrained", "zero_init_residual",
           "load_fp_weights", "fp_model_for_state", "check_arch", "resolve_input_size", "quant_model"]

class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """pytorchcv's final AvgPool2d(7|8) only fits the canonical input size; the global pool is the
    same function there and also works for other sizes (e.g. resnet18 on 32×32 Fashion-MNIST)."""

    def __init__(self):
        super().__init__(1)


def _pytorchcv_pretrained(arch: str, num_classes: int) -> nn.Module:
    """pytorchcv ImageNet weights (downloaded on first use), head replaced when classes differ."""
    info = arch_info(arch)
    try:
        model = build_fp_model(arch, num_classes=info.num_classes, pretrained=True)
    except Exception as e:  # offline: URLError, ConnectionError, HTTPError, ... from the downloader
        raise HawqError(f"cannot download pytorchcv's pretrained weights for '{arch}' ({type(e).__name__}); "
                        "this machine may be offline - pass --pretrained PATH to a floating-point checkpoint "
                        "(e.g. one from checkpoints/) instead") from None
    if num_classes != info.num_classes:
        replace_head(model, num_classes)
    return model


def replace_head(model: nn.Module, num_classes: int) -> None:
    """A fresh classifier with ``num_classes`` outputs in place of pytorchcv's (a Linear, a 1×1 conv
    or InceptionV3's Sequential(dropout, fc))."""
    out = model.output
    if isinstance(out, nn.Sequential):
        out.fc = nn.Linear(out.fc.in_features, num_classes)
    elif isinstance(out, nn.Conv2d):
        model.output = nn.Conv2d(out.in_channels, num_classes, 1, bias=out.bias is not None)
    else:
        model.output = nn.Linear(out.in_features, num_classes)


def fp_model(arch: str, num_classes: int, pretrained: bool = False, weights: C.ModelFile | None = None) -> nn.Module:
    """The floating-point model of ``arch`` with ``num_classes`` outputs.

    ``pretrained=True``: pytorchcv's ImageNet weights; ``weights``: a floating-point checkpoint of
    ours already read by :func:`hawq.checkpoint.read` (this function never opens files).
    """
    if pretrained is True and arch_info(arch).family == "captured":
        from hawq.models import zoo
        return zoo.build_pretrained(arch, num_classes)
    if pretrained is True:
        model = _pytorchcv_pretrained(arch, num_classes)
    else:
        model = build_fp_model(arch, num_classes=num_classes)
    if arch_info(arch).family == "captured":
        if weights is not None:
            C.load_into(model, weights.state_dict, weights.path)
        return model
    model.features.final_pool = GlobalAvgPool()
    if weights is not None:
        load_fp_weights(model, arch, weights)
    return model


def fp_model_pretrained(arch: str, num_classes: int, pretrained: bool | str | C.ModelFile | None) -> nn.Module:
    """The FP model for a ``--pretrained`` value: False/None random init, True pytorchcv's ImageNet
    weights, a path one of our FP checkpoints (read once by :func:`hawq.checkpoint.read`), or that
    file already read."""
    if isinstance(pretrained, str) and pretrained:
        pretrained = C.read(pretrained)
    if isinstance(pretrained, C.ModelFile):
        return fp_model(arch, num_classes, weights=pretrained)
    return fp_model(arch, num_classes, pretrained=pretrained is True)


def zero_init_residual(model: nn.Module) -> int:
    """Set γ = 0 in the last BatchNorm of every *bottleneck* residual unit (pytorchcv ``ResUnit``
    whose body is a 1×1-3×3-1×1 ``ResBottleneck``: resnet50/50b/101), so each unit starts as the
    identity (Goyal et al. 2017, torchvision's ``zero_init_residual``). Those deep nets need it when
    trained from random init on small inputs: without it resnet50's first gradients are ~25× larger
    and its loss diverges at any useful learning rate. Shallow units are left alone: on a short run
    zero-init delays their learning (resnet20_cifar10, the demo's 2 epochs: val top-1 55.8 with it,
    76.7 without). Returns the number of units changed."""
    n = 0
    for unit in model.modules():
        body = getattr(unit, "body", None)
        if type(unit).__name__ == "ResUnit" and type(body).__name__ == "ResBottleneck":
            bns = [b for b in body.modules() if isinstance(b, nn.BatchNorm2d)]
            nn.init.zeros_(bns[-1].weight)
            n += 1
    return n


def load_fp_weights(model: nn.Module, arch: str, f: C.ModelFile) -> None:
    """Load a floating-point checkpoint (read by :func:`hawq.checkpoint.read`) into ``model``."""
    check_arch(f, arch)
    if f.kind is not C.Kind.FP:
        raise HawqError(f"{f.describe()} is not a floating-point checkpoint; "
                        "use --resume PATH --resume-quantize for quantized ones")
    C.load_into(model, f.state_dict, f.path)


def _bottleneck(arch: str) -> bool:
    return arch_info(arch).init_conv == "quant_init_convbn"


def _stored_widths(arch: str, sd: dict) -> tuple[int, list[list[int]]] | None:
    """(init channels, per-stage unit output channels) of an ImageNet ResNet state, from its conv
    shapes; None when they cannot be read (e.g. a quantized_checkpoint without unit weights)."""
    init = arch_info(arch).init_conv
    key = f"{init}.conv.weight" if f"{init}.conv.weight" in sd else f"{init}.weight_integer"
    if key not in sd:
        return None
    last = "quant_convbn3" if _bottleneck(arch) else "quant_convbn2"
    stages: dict[int, dict[int, int]] = {}
    for k, v in sd.items():
        parts = k.split(".")
        if len(parts) >= 4 and parts[0].startswith("stage") and parts[2] == last and \
                parts[3] in ("conv", "weight_integer") and v.dim() == 4:
            stages.setdefault(int(parts[0][5:]), {})[int(parts[1][4:])] = int(v.shape[0])
    if not stages:
        return None
    return int(sd[key].shape[0]), [[units[u] for u in sorted(units)] for _, units in sorted(stages.items())]


def _model_widths(model: nn.Module, arch: str) -> tuple[int, list[list[int]]]:
    """The same widths read off a pytorchcv ResNet."""
    last = "conv3" if _bottleneck(arch) else "conv2"
    feats = model.features
    stages = [[conv_of(getattr(unit.body, last)).out_channels for unit in stage.children()]
              for name, stage in feats.named_children() if name.startswith("stage")]
    return conv_of(feats.init_block).out_channels, stages


def fp_model_for_state(arch: str, num_classes: int, sd: dict) -> nn.Module:
    """The FP model whose shapes fit ``sd``: the arch's own, or (HAWQ-V3 files of a thinner ResNet,
    e.g. make_ref.py --width-scale fixtures) a pytorchcv ResNet with the widths the state holds."""
    model = fp_model(arch, num_classes)
    widths = _stored_widths(arch, sd) if arch_info(arch).stem_maxpool else None
    if widths is None or widths == _model_widths(model, arch):
        return model
    from pytorchcv.models.resnet import ResNet
    model = ResNet(channels=widths[1], init_block_channels=widths[0], bottleneck=_bottleneck(arch),
                   conv1_stride=arch != "resnet50b", num_classes=num_classes)
    model.features.final_pool = GlobalAvgPool()
    return model


def check_arch(f: C.ModelFile, arch: str) -> None:
    if f.arch is not None and f.arch != arch:
        raise HawqError(f"checkpoint '{f.path}' is for arch '{f.arch}', not '{arch}'")


def resolve_input_size(input_size: int | None, dataset: str, arch: str | None, recorded: int | None = None) -> int:
    """The input side to use: ``--input-size`` when given, else ``recorded`` (a checkpoint's), else
    the dataset's default for ``arch`` (:func:`hawq.models.archs.input_size_of`); checked against the model
    (:func:`hawq.models.archs.check_input_size`) when it is not the default."""
    size = input_size_of(dataset, arch, input_size if input_size is not None else recorded)
    if arch is not None and size != input_size_of(dataset, arch):
        check_input_size(arch, size)
    return size


def quant_model(arch: str, bits: dict[str, int], num_classes: int, fp: nn.Module | None = None,
                config: QuantConfig | None = None, input_size: int | None = None) -> QuantModel:
    """The quantized model of ``arch`` with per-layer ``bits`` and ``config``, capturing ``fp`` (or a
    fresh FP model; its parameters are the ones QAT trains). ``input_size``: the square input side a
    captured model is traced at (default the arch's canonical one); a named arch is captured in
    HAWQ-V3's layout (:func:`hawq.models.hawq_layout.hawq_model`, ``fp`` edited in place to HAWQ's
    quantization points) and takes any size."""
    if fp is None:
        fp = fp_model(arch, num_classes)
    info = arch_info(arch)
    if info.family == "captured":
        from hawq.capture import capture
        size = input_size or info.input_size
        example = torch.zeros(2, 3, size, size)
        return capture(fp, example, config, bits, name=arch, copy_model=False)
    from hawq.models.hawq_layout import hawq_model      # imports torch.fx and torchvision: when used
    return hawq_model(arch, fp, bits, config)
