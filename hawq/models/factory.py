"""Model construction: floating-point pytorchcv models (optionally pretrained) and their quantized wraps."""
from __future__ import annotations

import os

import torch.nn as nn

from hawq import checkpoint as C
from hawq.errors import HawqError
from hawq.models.layers import arch_info, build_fp_model
from hawq.models.resnet import QuantResNet


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
        model.output = nn.Linear(model.output.in_features, num_classes)
    return model


def fp_model(arch: str, num_classes: int, pretrained: bool | str | None = None) -> nn.Module:
    """The floating-point model of ``arch`` with ``num_classes`` outputs.

    ``pretrained``: falsy for random init, True for pytorchcv's ImageNet weights, or a path to a
    floating-point checkpoint of ours (``checkpoint.pth.tar`` of a ``--quant-scheme fp32`` run).
    """
    if pretrained is True:
        model = _pytorchcv_pretrained(arch, num_classes)
    else:
        model = build_fp_model(arch, num_classes=num_classes)
    model.features.final_pool = GlobalAvgPool()
    if isinstance(pretrained, str) and pretrained:
        load_fp_checkpoint(model, arch, pretrained)
    return model


def load_fp_checkpoint(model: nn.Module, arch: str, path: str) -> dict:
    """Load a floating-point checkpoint into ``model``; returns the checkpoint dict."""
    if not os.path.isfile(path):
        raise HawqError(f"pretrained checkpoint '{path}' does not exist")
    ckpt = C.load_file(path)
    check_arch(ckpt, arch, path)
    sd = C.state_dict_of(ckpt, path)
    if C.is_quantized_state(sd):
        raise HawqError(f"'{path}' is a quantized checkpoint; use --resume PATH --resume-quantize for it")
    C.load_into(model, sd, path)
    return ckpt


def check_arch(ckpt: dict, arch: str, path: str) -> None:
    got = ckpt.get("arch")
    if got is not None and got != arch:
        raise HawqError(f"checkpoint '{path}' is for arch '{got}', not '{arch}'")


def quant_model(arch: str, bits: dict[str, int], num_classes: int, fp: nn.Module | None = None,
                **quant_args) -> QuantResNet:
    """The quantized model of ``arch`` with per-layer ``bits``, wrapping ``fp`` (or a fresh FP model)."""
    if fp is None:
        fp = fp_model(arch, num_classes)
    return QuantResNet(fp, bits, arch=arch, **quant_args)


def quant_args_from(saved_args: dict | None) -> dict:
    """Quantization settings recorded in a checkpoint's ``args`` (quant_train.py flags), with defaults.

    Only what changes the integer program matters for eval: per-channel scales, bias width, weight
    percentile; the rest is kept so a resumed run trains as the original did.
    """
    a = saved_args or {}
    pick = {"act_range_momentum": "act_range_momentum", "act_percentile": "act_percentile",
            "weight_percentile": "weight_percentile", "per_channel": "channel_wise", "bias_bit": "bias_bit",
            "fix_BN": "fix_BN", "fix_BN_threshold": "fix_BN_threshold",
            "fixed_point_quantization": "fixed_point_quantization"}
    return {k: a[v] for k, v in pick.items() if v in a}


def load_quant_checkpoint(path: str, device="cpu"):
    """Rebuild the quantized model stored in one of our QAT checkpoints.

    Returns (model in eval mode, checkpoint dict). HawqError for FP, foreign or broken files.
    """
    return quant_model_of(C.load_file(path), path, device)


def quant_model_of(ckpt: dict, path: str, device="cpu"):
    """:func:`load_quant_checkpoint` for a checkpoint dict already loaded from ``path``."""
    sd = C.state_dict_of(ckpt, path)
    if not C.is_quantized_state(sd):
        raise HawqError(f"'{path}' is a floating-point checkpoint; integer verification needs a quantized one")
    arch, bits = ckpt.get("arch"), ckpt.get("bit_config")
    if not isinstance(arch, str) or not isinstance(bits, dict) or "num_classes" not in ckpt:
        raise HawqError(f"'{path}' lacks arch/bit_config/num_classes; it was not written by quant_train.py")
    model = quant_model(arch, bits, int(ckpt["num_classes"]), **quant_args_from(ckpt.get("args")))
    C.load_into(model, sd, path, optional_suffixes=("act_zero_point", "fold_step"))
    return model.to(device).eval(), ckpt
