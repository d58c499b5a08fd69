"""One owner for quantization settings: :class:`QuantConfig`.

Built once (from quant_train.py's flags, a checkpoint, or code), passed to the quantized model and
from there to every quantized module, saved in every checkpoint (``ckpt["quant_config"]``) and
restored from it. Nothing else restates these defaults.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from hawq import numerics as N
from hawq.errors import HawqError
from hawq.quant.learned import BINARY_METHODS, LSQ_INITS, check_method


__all__ = ["QuantConfig", "HAWQ_README"]

@dataclass(frozen=True)
class QuantConfig:
    """Quantization settings of one model.

    Fields (quant_train.py flag in brackets):
        numerics: numeric profile, ``exact`` (this project's spec) or ``hawq`` (HAWQ-V3's
            arithmetic, docs/numerics.md §15) [--numerics].
        per_channel: one weight scale per output channel, else one per tensor [--channel-wise].
        bias_bit: bias integer width, 8..32 [--bias-bit].
        act_range_momentum: EMA momentum of activation ranges; < 0 = running min/max [--act-range-momentum].
        act_percentile: percentile of activation ranges, 0 = min/max [--act-percentile].
        weight_percentile: percentile of |weights| for weight scales, 0 = max [--weight-percentile].
        fix_BN: fold BN with running statistics from the start [--fix-BN].
        fix_BN_threshold: fold after this many training forwards (None: never, unless fix_BN) [--fix-BN-threshold].
        fixed_point_quantization: train with plain fake quantization [--fixed-point-quantization].
        quantizer: how scales are found, one of :data:`hawq.quant.learned.METHODS`: ``minmax``
            (ranges), ``lsq`` (learned steps), ``pact`` (learned activation clips), ``dorefa``
            (tanh weight transform), ``xnor``/``bireal`` (1-bit sign grids), ``lqnet`` (LQ-Net's
            learned bases on an integer grid, :mod:`hawq.quant.lqnet`) [--quantizer].
        lsq_init: where ``lsq`` starts its steps: ``minmax`` (the min/max scale of the first batch's
            range and of the weights) or ``mean`` (LSQ's paper: 2·mean|v|/√Qp of the first batch,
            per output channel for weights; at 2 bits the min/max step puts most weights and
            activations on 0) [--lsq-init].
    """

    numerics: str = "exact"
    per_channel: bool = True
    bias_bit: int = 32
    act_range_momentum: float = 0.99
    act_percentile: float = 0.0
    weight_percentile: float = 0.0
    fix_BN: bool = False
    fix_BN_threshold: int | None = None
    fixed_point_quantization: bool = False
    quantizer: str = "minmax"
    lsq_init: str = "minmax"

    def __post_init__(self):
        check_method(self.quantizer)
        if self.lsq_init not in LSQ_INITS:
            raise HawqError(f"unknown --lsq-init {self.lsq_init!r}; expected one of {', '.join(LSQ_INITS)}")
        if self.numerics not in N.PROFILES:
            raise HawqError(f"unknown numeric profile {self.numerics!r}; expected one of {', '.join(N.PROFILES)}")
        if self.quantizer == "lqnet" and self.numerics != "exact":
            raise HawqError(f"--quantizer lqnet needs --numerics exact (its level tables are not part of "
                            f"profile {self.numerics})")
        if not 8 <= int(self.bias_bit) <= 32:
            raise HawqError(f"--bias-bit must be between 8 and 32, got {self.bias_bit}")
        if self.act_range_momentum >= 1:
            raise HawqError("--act-range-momentum must be < 1 (or -1 for a running min/max)")
        for name in ("act_percentile", "weight_percentile"):
            v = getattr(self, name)
            if not 0.0 <= v <= 100.0:
                raise HawqError(f"--{name.replace('_', '-')} must be in [0, 100], got {v}")
        if self.fix_BN_threshold is not None and self.fix_BN_threshold < 0:
            raise HawqError(f"--fix-BN-threshold must be >= 0, got {self.fix_BN_threshold}")

    @property
    def profile(self) -> N.Profile:
        return N.profile(self.numerics)

    def replace(self, **changes) -> "QuantConfig":
        return dataclasses.replace(self, **changes)

    def for_bits(self, bits: Mapping[str, int]) -> "QuantConfig":
        """This config, with ``quantizer`` a binary method when ``bits`` has 1-bit layers and the
        quantizer has no 1-bit form: for models that are only calibrated and run (benchmarks), where
        the methods, which differ in gradients only, give the same integers."""
        if 1 in bits.values() and self.quantizer not in BINARY_METHODS + ("lqnet",):
            return self.replace(quantizer=BINARY_METHODS[0])
        return self

    def to_dict(self) -> dict:
        """Plain dict (str/int/float/bool/None): loads with ``torch.load(weights_only=True)``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "checkpoint") -> "QuantConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise HawqError(f"{where}: unknown quantization setting '{unknown[0]}'")
        return cls(**d)

    @classmethod
    def from_args(cls, args, numerics: str | None = None) -> "QuantConfig":
        """From quant_train.py's parsed flags (``--channel-wise`` is ``args.channel_wise``); ``numerics``
        replaces ``args.numerics`` (the flag's default, None, is resolved by the caller)."""
        return cls(numerics=numerics or args.numerics, per_channel=args.channel_wise, bias_bit=args.bias_bit,
                   act_range_momentum=args.act_range_momentum, act_percentile=args.act_percentile,
                   weight_percentile=args.weight_percentile, fix_BN=args.fix_BN,
                   fix_BN_threshold=args.fix_BN_threshold, fixed_point_quantization=args.fixed_point_quantization,
                   quantizer=getattr(args, "quantizer", None) or "minmax",
                   lsq_init=getattr(args, "lsq_init", None) or "minmax")

    @classmethod
    def from_legacy_args(cls, saved: dict | None, numerics: str = "exact") -> "QuantConfig":
        """Checkpoints written before ``quant_config`` existed record quant_train.py's ``args``."""
        a = saved or {}
        pick = {"act_range_momentum": "act_range_momentum", "act_percentile": "act_percentile",
                "weight_percentile": "weight_percentile", "per_channel": "channel_wise", "bias_bit": "bias_bit",
                "fix_BN": "fix_BN", "fix_BN_threshold": "fix_BN_threshold",
                "fixed_point_quantization": "fixed_point_quantization"}
        return cls(numerics=numerics, **{k: a[v] for k, v in pick.items() if v in a})


#: HAWQ-V3's README command (``--fix-BN --act-range-momentum=0.99``, defaults otherwise), in profile hawq:
#: what a HAWQ-layout checkpoint was trained with.
HAWQ_README = QuantConfig(numerics="hawq", fix_BN=True)
