"""What every quantized model shares: bit widths by layer name, HAWQ quantized_checkpoint loading,
activation-range freezing, and the eval-mode integer forward (chunked).

The one implementation is the captured model (:class:`hawq.capture.QuantGraphModel`: the named
archs too, in HAWQ-V3's layout, :mod:`hawq.models.hawq_layout`); it registers its quant modules,
calls :meth:`QuantModel.finish` with its ``bit_config`` and implements :meth:`QuantModel.forward_q`
(float image -> :class:`~hawq.quant.graph.Q` logits).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from hawq import numerics as N
from hawq.errors import HawqError
from hawq.quant.learned import check_binary
from hawq.quant.config import QuantConfig
from hawq.quant.graph import Q
from hawq.quant.modules import QuantAct, QuantBnConv2d, QuantLinear

__all__ = ["QUANT_TYPES", "QuantModel"]

QUANT_TYPES = (QuantAct, QuantBnConv2d, QuantLinear)


class QuantModel(nn.Module):
    """Integer-only quantized model. ``forward`` returns float logits [B, classes] (in eval mode
    exactly the integer logits times their scale); :meth:`forward_int` returns the int64 logits."""

    def __init__(self, arch: str = "", config: QuantConfig | None = None):
        super().__init__()
        self.config = config if config is not None else QuantConfig()
        self.arch = arch

    def finish(self, bit_config: dict[str, int]) -> None:
        """Name every module for graph recording and error messages, then set the bit widths
        (an empty ``bit_config``: every layer at its default, 8 bits, accumulators 16)."""
        for name, m in self.named_modules():
            if hasattr(m, "layer_name"):
                m.layer_name = name
        if not bit_config:
            bit_config = {n: 16 if getattr(m, "role", "") == "accumulator" else 8
                          for n, m in self._quant_modules()}
        self.apply_bit_config(bit_config)

    def forward_q(self, x: torch.Tensor) -> Q:
        raise NotImplementedError

    def _quant_modules(self):
        """(name, module) of every module that carries a bit width from bit_config, in definition
        order (profile ort's residual operand grids are fixed at 8 bits and not among them)."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, QUANT_TYPES) and not getattr(m, "is_branch", False)]

    def quant_layer_names(self) -> list[str]:
        """Names of every module that carries a bit width, in definition order."""
        return [n for n, _ in self._quant_modules()]

    def apply_bit_config(self, bit_config: dict[str, int]) -> None:
        """Set every quant module's bit width; every quantized layer must be in ``bit_config``."""
        modules = dict(self.named_modules())
        names = self.quant_layer_names()
        missing = [n for n in names if n not in bit_config]
        if missing:
            raise HawqError(f"bit_config{' for ' + self.arch if self.arch else ''}: layer '{missing[0]}' is missing")
        unknown = [n for n in bit_config if n not in modules or not isinstance(modules[n], QUANT_TYPES)]
        if unknown:
            raise HawqError(f"bit_config{' for ' + self.arch if self.arch else ''}: unknown layer '{unknown[0]}'")
        for n in names:
            m = modules[n]
            if isinstance(m, QuantAct):
                m.set_activation_bit(bit_config[n])
            else:
                what = f"the weights of '{n}'"
                self.config.profile.check_bits(what, bit_config[n])
                if int(bit_config[n]) == N.BINARY and self.config.quantizer != "lqnet":    # lqnet: ±v weights
                    check_binary(self.config.quantizer, what)
                m.weight_bit = int(bit_config[n])

    def bit_config(self) -> dict[str, int]:
        return {n: (m.activation_bit if isinstance(m, QuantAct) else m.weight_bit) for n, m in self._quant_modules()}

    def load_stored_integers(self, sd: dict, path: str) -> None:
        """Evaluate HAWQ-V3's quantized_checkpoint: per conv/linear its ``weight_integer``,
        ``bias_integer`` and ``convbn_scaling_factor``/``fc_scaling_factor``, per QuantAct its
        ``act_scaling_factor`` (``sd``: the union of the five dicts, prefix stripped). Eval only."""
        for name, m in self.named_modules():
            keys = ([f"{name}.act_scaling_factor"] if isinstance(m, QuantAct) else
                    [f"{name}.weight_integer", f"{name}.bias_integer", f"{name}.{m.scale_name}"]
                    if isinstance(m, (QuantBnConv2d, QuantLinear)) else [])
            missing = [k for k in keys if k not in sd]
            if missing:
                raise HawqError(f"'{path}' has no '{missing[0]}' - wrong arch or scheme?")
            if isinstance(m, QuantAct):
                m.use_stored_scale(sd[keys[0]])
            elif keys:
                m.use_stored_integers(sd[keys[0]], sd[keys[1]], sd[keys[2]])
        own = {f"{n}.{k.rsplit('.', 1)[-1]}" for n, m in self.named_modules() for k in
               (("act_scaling_factor",) if isinstance(m, QuantAct) else ("weight_integer", "bias_integer",
                getattr(m, "scale_name", "")) if isinstance(m, (QuantBnConv2d, QuantLinear)) else ())}
        unexpected = sorted(set(sd) - own)
        if unexpected:
            raise HawqError(f"'{path}' has '{unexpected[0]}', which this model lacks - wrong arch or scheme?")

    def act_quantizers(self) -> list[QuantAct]:
        return [m for m in self.modules() if isinstance(m, QuantAct)]

    def freeze_act_ranges(self):
        for m in self.act_quantizers():
            m.fix()

    def unfreeze_act_ranges(self):
        for m in self.act_quantizers():
            m.unfix()

    #: The integer path is memory-bound on int64 tensors; batches of this size keep them in cache
    #: (measured on 2 cores: 17 ms/image at batch 200, 2-3 ms/image in chunks of 32).
    eval_chunk = 32

    def _forward_int_chunked(self, x: torch.Tensor) -> Q:
        if x.shape[0] <= self.eval_chunk:
            return self.forward_q(x)      # the very tensor, so graph recording can name it
        outs = [self.forward_q(c) for c in x.split(self.eval_chunk)]
        return Q(torch.cat([o.value for o in outs]), outs[0].scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.forward_q(x).value
        q = self._forward_int_chunked(x)
        return (q.value.double() * q.scale.reshape(1, -1)).float()

    @torch.no_grad()
    def forward_int(self, x: torch.Tensor) -> torch.Tensor:
        """Integer logits (int64 [B, classes]); requires eval mode."""
        return self.forward_int_q(x).value

    @torch.no_grad()
    def forward_int_q(self, x: torch.Tensor) -> Q:
        """Integer logits with their per-class scale (``Q(value int64 [B, classes], scale [classes])``)."""
        if self.training:
            raise RuntimeError("forward_int needs eval mode (model.eval())")
        return self._forward_int_chunked(x)
