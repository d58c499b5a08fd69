"""Any arch × scheme as an integer model without training: build it, calibrate its activation
ranges on a few batches, and it is ready to export and verify.

Used by ``python -m hawq.verify -a ARCH --quant-scheme S [--random]`` and
``python -m tvm_benchmark.verify -a ARCH --quant-scheme S`` so a user can check that an arch and
scheme are bit-exact end to end before spending hours training them. The weights are random (or
``--pretrained``), so accuracy means nothing here; the integer program's structure, bounds and
rounding are exactly those of a trained model.
"""
from __future__ import annotations

import itertools

import torch

from hawq.bit_config import load_scheme
from hawq.data import FMNIST_CLASSES, build_loaders
from hawq.models.archs import input_size_of
from hawq.engine import calibrate, calibrate_random
from hawq.models.base import QuantModel
from hawq.models.factory import fp_model_pretrained, quant_model
from hawq.quant.config import QuantConfig


__all__ = ["calibrated_model", "random_batches"]

def calibrated_model(arch: str, scheme: str, *, pretrained: str | None = None, random: bool = False,
                     batches: int = 4, batch_size: int = 16, numerics: str = "exact", seed: int = 0,
                     data: str | None = None, input_size: int | None = None) -> tuple[QuantModel, int]:
    """(model in eval mode, input side in px) of ``arch`` under ``scheme`` with Fashion-MNIST's 10
    classes, activation ranges calibrated on ``batches`` batches of the embedded training images
    (``data``: their directory) or, with ``random``, of standard-normal images, all ``input_size``
    pixels square (default :func:`hawq.models.archs.input_size_of`). BN stays as built (``fix_BN``):
    calibration changes activation ranges only."""
    torch.manual_seed(seed)
    size = input_size_of("fashion-mnist", arch, input_size)
    fp = fp_model_pretrained(arch, FMNIST_CLASSES, pretrained)
    bits = load_scheme(arch, scheme)
    model = quant_model(arch, bits, FMNIST_CLASSES, fp=fp,
                        config=QuantConfig(numerics=numerics, fix_BN=True).for_bits(bits), input_size=size)
    if random:
        calibrate_random(model, (batch_size, 3, size, size), batches=batches, seed=seed)
    else:
        loaders = build_loaders("fashion-mnist", data, batch_size, 0, 1.0, seed, input_size=size)
        loaders.train.set_epoch(0)
        calibrate(model, (x for x, _ in itertools.islice(iter(loaders.train), batches)))
    return model.eval(), size


def random_batches(size: int, images: int, batch_size: int, seed: int = 1):
    """Standard-normal float32 image batches ``(x [B,3,size,size], None)`` for ``--random`` checks."""
    g = torch.Generator().manual_seed(seed)
    for start in range(0, images, batch_size):
        n = min(batch_size, images - start)
        yield torch.randn(n, 3, size, size, generator=g), torch.zeros(n, dtype=torch.int64)
