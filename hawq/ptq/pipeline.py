"""Post-training quantization of a wrapped model: bit widths, weight grids, activation
calibration, rounding reconstruction. The command line is :mod:`hawq.ptq.cli`."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from hawq.bit_config import bits_of_layers, validate_scheme
from hawq.errors import HawqError
from hawq.models.layers import quant_layers
from hawq.ptq.observers import ACT_OBSERVERS, Observer
from hawq.ptq.recon import RECON_METHODS, WEIGHTED, ReconSettings, quant_mode, reconstruct
from hawq.ptq.weights import BN_FOLD, WEIGHT_QUANTIZERS, layer_scale
from hawq.quant.modules import QuantAct

__all__ = ["BITS", "WIDE_BITS", "PTQSettings", "scheme_bits", "scheme_label", "set_weight_grids",
           "calibrate_acts", "PTQReport", "quantize"]

BITS = range(2, 9)
#: Quantizers this wide (the residual accumulators) are calibrated with min/max whatever the
#: observer: their grid is fine enough that clipping only loses.
WIDE_BITS = 16


@dataclass(frozen=True)
class PTQSettings:
    """How to quantize: weight quantizer, activation observer, per-channel weights, where BN is
    folded (:data:`hawq.ptq.weights.BN_FOLD`), reconstruction, calibration batch size."""
    w_observer: str = "minmax"
    a_observer: str = "emaminmax"
    per_channel: bool = True
    bn_fold: str = "before"
    recon: ReconSettings = field(default_factory=lambda: ReconSettings(method="none"))
    calib_batch: int = 64

    def __post_init__(self):
        if self.w_observer not in WEIGHT_QUANTIZERS:
            raise HawqError(f"unknown --w-observer {self.w_observer!r}; expected one of {', '.join(WEIGHT_QUANTIZERS)}")
        if self.a_observer not in ACT_OBSERVERS:
            raise HawqError(f"unknown --a-observer {self.a_observer!r}; expected one of {', '.join(ACT_OBSERVERS)}")
        if self.bn_fold not in BN_FOLD:
            raise HawqError(f"unknown --bn-fold {self.bn_fold!r}; expected one of {', '.join(BN_FOLD)}")
        if self.recon.method not in RECON_METHODS:
            raise HawqError(f"unknown --recon {self.recon.method!r}; expected one of {', '.join(RECON_METHODS)}")


def scheme_bits(arch: str, w_bits: int, a_bits: int, first_last_8bit: bool) -> dict[str, int]:
    """{layer: bits} with every conv/linear at ``w_bits`` and every activation quantizer at ``a_bits``
    (residual accumulators at 16); ``first_last_8bit`` keeps the first conv, the last linear, the
    model input and the quantizer feeding the last linear (pooled features) at 8."""
    for name, b in (("--w-bits", w_bits), ("--a-bits", a_bits)):
        if b not in BITS:
            raise HawqError(f"{name} must be between 2 and 8, got {b}")
    bits = bits_of_layers(quant_layers(arch), w_bits, a_bits, first_last_8bit)
    return validate_scheme(arch, bits)


def scheme_label(w_bits: int, a_bits: int, first_last_8bit: bool) -> str:
    return f"w{w_bits}a{a_bits}" + ("_fl8" if first_last_8bit else "")


def set_weight_grids(model, s: PTQSettings) -> None:
    """Choose every weighted layer's grid (``fixed_weight_scale``); the weights keep their values."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WEIGHTED):
                m.fixed_weight_scale.copy_(layer_scale(m, s.w_observer, s.per_channel, s.bn_fold))


@torch.no_grad()
def calibrate_acts(model, images: torch.Tensor, s: PTQSettings, progress: bool = True) -> None:
    """Activation ranges from the float model (every quantizer off, MQBench's calibration), one
    observer per activation quantizer; then the ranges are frozen."""
    acts = [m for m in model.modules() if isinstance(m, QuantAct)]
    for m in acts:
        m.observer = Observer("minmax" if m.activation_bit >= WIDE_BITS else s.a_observer, m.activation_bit, m.mode)
    try:
        with quant_mode(model, weights=False, acts=False):
            model.train()
            for xb in tqdm(images.split(s.calib_batch), desc=f"calibrate ({s.a_observer})",
                           disable=not progress, dynamic_ncols=True, leave=False):
                model(xb)
        for m in acts:
            if m.is_branch and not m.observer.seen:
                continue            # profile ort: an add operand grid this model never uses (no add)
            lo, hi = m.observer.range
            m.x_min.copy_(lo)
            m.x_max.copy_(hi)
            m.fix()
    finally:
        for m in acts:
            m.observer = None
    model.eval()


@dataclass
class PTQReport:
    """Seconds spent calibrating and reconstructing, and the final loss of every reconstruction unit."""
    calib_seconds: float
    recon_seconds: float
    units: list[tuple[str, float]]


def quantize(model, images: torch.Tensor, s: PTQSettings, seed: int = 0, progress: bool = True) -> PTQReport:
    """Quantize ``model`` (a QuantModel with BN folded, ``fix_BN``) in place from calibration
    ``images`` float32 [N, 3, H, W]: weight grids, activation ranges, then the rounding."""
    t0 = time.perf_counter()
    set_weight_grids(model, s)
    calibrate_acts(model, images, s, progress)
    t1 = time.perf_counter()
    report = []
    if s.recon.method != "none":
        report = reconstruct(model, images, s.recon, seed=seed, progress=progress)
    model.eval()
    return PTQReport(t1 - t0, time.perf_counter() - t1, report)
