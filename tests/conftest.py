"""Shared fixtures: small calibrated quantized models and the released checkpoints."""
from __future__ import annotations

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(2)


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine parameters and running stats (seeded)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.rand(c, generator=g) * 0.8 + 0.4
            m.bias.data = torch.randn(c, generator=g) * 0.2
            m.running_mean = torch.randn(c, generator=g) * 0.2
            m.running_var = torch.rand(c, generator=g) + 0.5


@torch.no_grad()
def calibrate(model: torch.nn.Module, shape, batches: int = 2, seed: int = 0) -> torch.Tensor:
    """Run training-mode forwards (activation ranges update, no gradient) and return a probe batch."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(batches):
        model(torch.randn(*shape, generator=g))
    model.eval()
    return torch.randn(*shape, generator=g) * 1.5


def build_calibrated(arch: str, scheme: str, num_classes: int, shape, **quant_args):
    from hawq.bit_config import load_scheme
    from hawq.models.factory import fp_model, quant_model
    from hawq.quant.config import QuantConfig
    torch.manual_seed(0)
    fp = fp_model(arch, num_classes)
    randomize_bn(fp)
    model = quant_model(arch, load_scheme(arch, scheme), num_classes, fp=fp,
                        config=QuantConfig(**{"fix_BN": True, **quant_args}))
    probe = calibrate(model, shape)
    return model, probe


@pytest.fixture(scope="session")
def small_model():
    """resnet20_cifar10 uniform8, calibrated on random data, plus a probe batch [4,3,32,32]."""
    return build_calibrated("resnet20_cifar10", "uniform8", 10, (4, 3, 32, 32))
