"""Quantized modules (HAWQ-V3 names and buffers) over the formulas of :mod:`hawq.numerics`.

Every module has two forward paths:

* training mode: fake quantization with straight-through gradients, in the float dtype of the
  input; activation ranges are updated (EMA / percentile) while ``running_stat`` is True.
* eval mode: the exact integer computation. Values are int64 tensors of centered integers,
  convolutions accumulate exactly (see :func:`exact_conv2d`), requantization is the dyadic
  multiply + rounding shift. This path is what the integer reference and TVM reproduce bit for bit;
  under :func:`hawq.quant.graph.recording` each module also records the integer op it performed.

Modules exchange :class:`~hawq.quant.graph.Q` tuples (value, scale), like HAWQ's (x, scaling_factor).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hawq import distributed, ir
from hawq import numerics as N
from hawq.errors import HawqError
from hawq.quant.config import QuantConfig
from hawq.quant import learned as L
from hawq.quant import lqnet as LQ
from hawq.quant.graph import Q, active

__all__ = ["exact_conv2d", "exact_linear", "QuantAct", "QuantBnConv2d", "QuantLinear", "QuantAveragePool2d",
           "QuantMaxPool2d", "QuantFlatten", "QuantReLU", "QuantReLU6", "QuantConcat", "QuantWindowAvgPool2d",
           "QuantChannelShuffle", "QuantSliceChannels", "QuantBatchNorm2d", "QuantLut", "QuantMul",
           "QuantAdaptiveAvgPool2d"]

#: float32 accumulates integers exactly while every partial sum stays below 2^24.
_F32_EXACT = 1 << 24


def _int_params(m, shift, like: torch.Tensor, ndim: int):
    """Dyadic (m, shift) NumPy arrays -> int64 tensors broadcastable over channel dim 1."""
    m_t = torch.as_tensor(m, dtype=torch.int64, device=like.device)
    s_t = torch.as_tensor(shift, dtype=torch.int64, device=like.device)
    return N.channel_view(m_t, ndim), N.channel_view(s_t, ndim)


def exact_conv2d(q: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups) -> torch.Tensor:
    """Integer conv (int64 in, int64 out) computed exactly with torch's float kernels.

    float32 is used on CPU when the proven bound max|q|·max_c Σ|w_c| < 2^24 (every partial sum is
    then an exactly representable integer whatever the summation order); otherwise float64, whose
    53-bit mantissa holds any int32 accumulator, and the final round() absorbs the rounding error of
    transform-based algorithms (cuDNN FFT/Winograd), which is far below 0.5 at these magnitudes.
    """
    dtype = _exact_dtype(q, w)
    y = F.conv2d(q.to(dtype), w.to(dtype), None, stride, padding, dilation, groups)
    return _to_int(y)


def _exact_dtype(q: torch.Tensor, w: torch.Tensor) -> torch.dtype:
    """float32 when max|q|·max_c Σ|w_c| < 2^24 on CPU, else float64."""
    if q.numel() == 0 or q.device.type != "cpu":
        return torch.float64
    lo, hi = q.aminmax()
    bound = max(-int(lo), int(hi)) * int(w.abs().reshape(w.shape[0], -1).sum(1).max())
    return torch.float32 if bound < _F32_EXACT else torch.float64


def _to_int(y: torch.Tensor) -> torch.Tensor:
    """Exact float accumulator -> int64; float64 results are rounded first (see exact_conv2d)."""
    if y.dtype == torch.float64:
        y = torch.round(y)
    return y.to(torch.int64)


def exact_linear(q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Integer matrix product [B, in] x [out, in]^T -> int64 [B, out], exact as in :func:`exact_conv2d`."""
    dtype = _exact_dtype(q, w)
    return _to_int(q.to(dtype) @ w.to(dtype).t())


def _emulate_requant(v: torch.Tensor, scale_in: torch.Tensor, scale_out: torch.Tensor,
                     rounding: str = "half_up") -> torch.Tensor:
    """Training-time emulation of the integer path's rounding points: round the accumulator to an
    integer, then rescale by S_in/S_out and round (half up, or half to even in profile hawq). The
    ratio is formed in the training dtype (float32), so values within float32 rounding of a tie may
    round differently from eval mode, which uses the exact dyadic m·2^-shift."""
    s_in = N.channel_view(scale_in.to(v.dtype), v.dim()) if scale_in.numel() > 1 else scale_in.to(v.dtype)
    acc = torch.div(v, s_in).round_()          # in place: these are activation-sized buffers
    acc.mul_(s_in / scale_out.to(v.dtype))
    return acc.round_() if rounding == "half_even" else acc.add_(0.5).floor_()


def _zero_int(zero: torch.Tensor) -> int:
    return int(zero.reshape(-1)[0])


class QuantAct(nn.Module):
    """Static per-tensor activation quantizer (HAWQ's ``QuantAct``).

    ``role`` (:data:`hawq.numerics.ACT_ROLES`): 'input' (the float->int boundary), 'relu' (after a
    ReLU), 'accumulator' (the wide signed residual requantizers, ``quant_act_int32``). The grid
    (:attr:`mode`) follows from the role, the bit width and the config's numeric profile.
    Called as ``act(x)`` (requantize / quantize a float input) or ``act(x, identity)`` for the
    residual add, which requantizes both terms to this layer's scale and adds them.

    Profile ``ort`` (ONNX Runtime's int8 arithmetic, docs/numerics.md §17) changes three things:
    requantization is the float32 step :func:`hawq.numerics.requant_float`; a quantizer reading an
    activation that is already on a quantizer's grid passes it through (ONNX Runtime keeps one uint8
    grid per tensor); a residual add puts each accumulator operand on an 8-bit grid of its own first
    (``quant_branch``, ``quant_identity_branch``: QLinearConv's output) and then adds two uint8 tensors
    as QLinearAdd does. ``relu_after``: a ReLU follows this quantizer (ResNet's adds), so in profile
    ``ort`` its grid is unsigned and the ReLU is its clamp, as ONNX Runtime fuses it.
    """

    def __init__(self, role: str, config: QuantConfig, activation_bit: int = 8, relu_after: bool = False):
        super().__init__()
        if role not in N.ACT_ROLES:
            raise ValueError(f"unknown activation role {role!r}")
        self.role = role
        self.relu_after = relu_after
        self.profile = config.profile
        self.activation_bit = activation_bit
        self.act_range_momentum = config.act_range_momentum
        self.act_percentile = config.act_percentile
        self.quantizer = config.quantizer
        self.lsq_init = config.lsq_init
        self.fixed_point_quantization = config.fixed_point_quantization
        self.running_stat = True
        self.stored_scale = False        # True: evaluate act_scaling_factor as stored (HAWQ quantized_checkpoint)
        self.layer_name = ""
        # Post-training quantization hooks (hawq.ptq), training path only, never saved:
        self.observer = None             # callable(float tensor): sees every value this quantizer would quantize
        self.fake_quant = True           # False: pass values through unquantized (the float model)
        self.drop_prob = 0.0             # QDrop: each element is left unquantized with this probability
        self.register_buffer("x_min", torch.zeros(1))
        self.register_buffer("x_max", torch.zeros(1))
        self.register_buffer("act_scaling_factor", torch.ones(1))
        self.register_buffer("act_zero_point", torch.zeros(1, dtype=torch.int64))
        # HAWQ-V3 carries these two constant buffers; kept so its checkpoints load key for key.
        self.register_buffer("pre_weight_scaling_factor", torch.ones(1))
        self.register_buffer("identity_weight_scaling_factor", torch.ones(1))
        # --quantizer lsq / pact: the learned step / clip (float32 [1]; 0 = not yet initialized, set
        # from the observed range at the first training step). Named by L.ACT_PARAM.
        self.learned_name = L.ACT_PARAM.get(self.quantizer)
        self._sync_learned()
        # --quantizer lqnet: the learned basis (float32 [MAX_BASES], the first activation_bit used;
        # 0 = not yet initialized, set from the first training batch). Updated by QEM, not by SGD.
        if self.quantizer == "lqnet":
            self.register_buffer("act_basis", torch.zeros(LQ.MAX_BASES))
        #: True for the operand grids of a residual add (profile ort): fixed at 8 bits, not in bit_config.
        self.is_branch = False
        self._add_table = (None, None)       # (key, table) cache of the QLinearAdd table in eval
        if self.profile.float_requant and role == "accumulator":
            self.quant_branch = QuantAct("signed", config)
            self.quant_identity_branch = QuantAct("signed", config)
            self.quant_branch.is_branch = self.quant_identity_branch.is_branch = True

    def set_activation_bit(self, bits: int) -> None:
        """Set the width (bit_config); adds or drops the learned parameter to match. Profile ort runs
        ONNX Runtime's uint8 tensors: an accumulator quantizer (16 bits in HAWQ's schemes) becomes
        8 bits there, any other width than 8 is a HawqError."""
        bits = int(bits)
        if self.profile.float_requant and self.role == "accumulator":
            bits = 8
        self.profile.check_bits(f"activation '{self.layer_name}'", bits)
        if bits == N.BINARY and not (self.quantizer == "lqnet" and self.role == "relu"):
            if self.role == "relu":
                raise HawqError(f"activation '{self.layer_name}' cannot be 1-bit under --quantizer {self.quantizer}: "
                                "after a ReLU every value is >= 0, so its sign is the constant +1 (LQ-Net's "
                                "{0, v} grid is: --quantizer lqnet)")
            L.check_binary(self.quantizer, f"activation '{self.layer_name}'")
            if self.role != "signed":
                why = {"input": "the image quantizer keeps at least 2 bits (the stem stays wide in every "
                                "binary network)",
                       "accumulator": "a residual accumulator stays 16-bit",
                       "relu": "after a ReLU every value is >= 0, so its sign is the constant +1"}[self.role]
                raise HawqError(f"activation '{self.layer_name}' cannot be 1-bit: {why}")
        self.activation_bit = bits
        self._sync_learned()

    def _sync_learned(self) -> None:
        """The learned parameter exists only where it is used (lsq/pact, <= MAX_LEARNED_ACT_BITS):
        an unused parameter would fail DDP's gradient reduction and sit in the optimizer."""
        # (none on the sign grid: its scale is 1 under every method)
        want = bool(self.learned_name) and N.BINARY < self.activation_bit <= L.MAX_LEARNED_ACT_BITS
        has = bool(self.learned_name) and self.learned_name in self._parameters
        if want and not has:
            self.register_parameter(self.learned_name, nn.Parameter(torch.zeros(1)))
        elif has and not want:
            del self._parameters[self.learned_name]

    def extra_repr(self) -> str:
        return (f"activation_bit={self.activation_bit}, mode={self.mode}, numerics={self.profile.name}, "
                f"momentum={self.act_range_momentum}, quantizer={self.quantizer}")

    @property
    def learned(self) -> torch.Tensor | None:
        """The learned step (lsq) or clip (pact) parameter, or None (minmax, dorefa, and quantizers
        wider than :data:`~hawq.quant.learned.MAX_LEARNED_ACT_BITS`, which keep min/max ranges)."""
        if not self.learned_name or not N.BINARY < self.activation_bit <= L.MAX_LEARNED_ACT_BITS:
            return None
        return self._parameters.get(self.learned_name)

    @property
    def lqnet(self) -> bool:
        """Whether this quantizer is LQ-Net's (--quantizer lqnet on a post-ReLU activation of at most
        :data:`~hawq.quant.lqnet.MAX_BASES` bits; other roles and widths quantize as min/max)."""
        return self.quantizer == "lqnet" and self.role == "relu" and self.activation_bit <= LQ.MAX_BASES

    def lq_grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        """LQ-Net: (scale float32 [1], coefficients int64 [K]) of the basis on its integer grid."""
        s, c = LQ.integer_basis(self.act_basis[:self.activation_bit].cpu(), LQ.ACT_LIMIT)
        return s.reshape(1), c

    @property
    def mode(self) -> str:
        """The activation grid (:data:`hawq.numerics.ACT_MODES`) for this role, width and profile."""
        if self.lqnet:
            return "unsigned"          # t in [0, 255], then the level table
        return self.profile.act_mode(self.role, self.activation_bit, self.relu_after)

    def residual_range(self, lo: int, hi: int) -> tuple[int, int]:
        """Saturation range of a residual add: the declared one, or int32 in profile hawq (unclamped there)."""
        return N.INT32 if self.profile.residual_int32 else (lo, hi)

    def fix(self):
        """Freeze the activation range (HAWQ's ``fix``)."""
        self.running_stat = False

    def unfix(self):
        self.running_stat = True

    @property
    def calibrated(self) -> bool:
        if self.stored_scale or self.mode == N.SIGN:
            return True
        if self.lqnet:
            return bool((self.act_basis[:self.activation_bit] > 0).all())
        if self.learned is not None:
            return bool((self.learned != 0).all())
        return bool((self.x_max != self.x_min).all())

    def use_stored_scale(self, scale: torch.Tensor) -> None:
        """Evaluate with this scale (float32 [1]) instead of one derived from the range; the grid's
        zero point is 0 (every grid of profile hawq). Eval only: training needs a range."""
        if self.mode == "asymmetric":
            raise HawqError(f"'{self.layer_name}': a stored scale needs a grid without zero point")
        self.act_scaling_factor.copy_(scale.reshape(-1)[:1].float())
        self.stored_scale = True

    def quant_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale float32 [1], zero point int64 [1]) from the current range (or the stored scale)."""
        if self.stored_scale:
            return self.act_scaling_factor.clone(), torch.zeros(1, dtype=torch.int64)
        if self.lqnet:
            return self.lq_grid()[0], torch.zeros(1, dtype=torch.int64)
        if self.quantizer == "lsq" and self.learned is not None:
            scale = self.act_step.detach().abs().float().clamp(min=N.MIN_RANGE).reshape(1).cpu()
            if self.mode != "asymmetric":
                return scale, torch.zeros(1, dtype=torch.int64)
            lo = torch.minimum(self.x_min.detach().float().cpu(), torch.zeros(1))
            return scale, torch.round(-lo / scale).clamp(0, (1 << self.activation_bit) - 1).to(torch.int64)
        if self.quantizer == "pact" and self.learned is not None:
            return N.activation_params(*L.pact_range(self.act_clip, self.x_min, self.mode), self.activation_bit,
                                       self.mode)
        return N.activation_params(self.x_min, self.x_max, self.activation_bit, self.mode)

    def _needs_range(self) -> bool:
        """min/max/EMA ranges define the scale (minmax, dorefa), start a learned step / clip, or give
        an asymmetric grid's zero point (and PACT's lower clip there); else they are not tracked."""
        if self.mode == N.SIGN or self.lqnet:
            return False
        return self.learned is None or self.mode == "asymmetric" or not bool((self.learned != 0).all())

    @torch.no_grad()
    def _init_learned(self, total: torch.Tensor) -> None:
        """First training step of lsq/pact: start the step (clip) at the min/max scale (range) of
        the batch ``total``; lsq with ``lsq_init`` ``mean`` at LSQ's 2·mean|total|/√Qp."""
        p = self.learned
        if p is None or bool((p != 0).all()):
            return
        if self.quantizer == "lsq" and self.lsq_init == "mean":
            p.copy_(L.lsq_initial_step(total, N.qrange(self.activation_bit, self.mode == "symmetric")[1]).to(p))
        elif self.quantizer == "lsq":
            p.copy_(N.activation_params(self.x_min, self.x_max, self.activation_bit, self.mode)[0].to(p))
        else:
            hi = self.x_max.abs() if self.mode != "symmetric" else torch.maximum(self.x_min.abs(), self.x_max.abs())
            p.copy_(hi.clamp(min=N.MIN_RANGE).to(p))

    def _with_gradient(self, total: torch.Tensor, q: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        """``q`` (the forward value) with the method's gradient (:mod:`hawq.quant.learned`): straight
        through to ``total`` (minmax, dorefa), LSQ's to ``total`` and the step, PACT's to ``total`` and the clip,
        LQ-Net's to ``total`` below the top of its uniform grid (255·s): values the grid clips get none,
        else they grow unchecked far above the top level (QEM fits the levels to the bulk of the values,
        not to their maximum as min/max does) and training diverged within 25 steps at lr 0.005."""
        if self.lqnet:
            top = float(LQ.ACT_LIMIT) * float(self.lq_grid()[0])
            return N.straight_through(total.clamp(max=top), q)
        if self.learned is None:
            return N.straight_through(total, q)
        if self.quantizer == "lsq":
            lo, hi = self.storage_range()
            z = int(zero.item())
            g = L.lsq_grad_factor(total[0].numel() if total.dim() > 1 else total.numel(), hi - z)
            return L.lsq_ste(total, self.act_step, q, lo - z, hi - z, g)
        if self.quantizer == "pact":
            lower = None if self.mode == "symmetric" else (          # None: −α, with its gradient
                0.0 if self.mode == "unsigned" else float(self.x_min.detach().reshape(-1)[0]))
            return L.pact_ste(total, self.act_clip, q, lower)

    def storage_range(self) -> tuple[int, int]:
        """Range of the stored integer q (before subtracting the zero point)."""
        if self.lqnet:
            return 0, LQ.ACT_LIMIT
        return N.qrange(self.activation_bit, signed=self.mode in ("symmetric", N.SIGN))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor):
        lo, hi = distributed.global_range(*N.batch_range(x, self.act_percentile))
        first = bool((self.x_max == self.x_min).all())
        new_min, new_max = N.ema_range(self.x_min, self.x_max, lo.to(self.x_min), hi.to(self.x_max),
                                       self.act_range_momentum, first)
        if bool((new_min == new_max).all()):
            # A constant input (a gate every image saturates, a channel of zeros): widen the range to
            # contain 0 (a grid needs a non-empty range; [0, 1] when the constant is 0), so the
            # quantizer counts as calibrated and the constant is exactly representable.
            new_min, new_max = torch.minimum(new_min, torch.zeros_like(new_min)), torch.maximum(new_max, torch.zeros_like(new_max))
            if bool((new_min == new_max).all()):
                new_max = torch.ones_like(new_max)
        self.x_min.copy_(new_min)
        self.x_max.copy_(new_max)

    def forward(self, x, identity: Q | None = None) -> Q:
        if self.training:
            return self._forward_train(x, identity)
        return self._forward_int(x, identity)

    # -- training: fake quantization ----------------------------------------------------------
    def _forward_train(self, x, identity: Q | None) -> Q:
        if self.stored_scale:
            raise HawqError("a model loaded from integers and scales only (HAWQ quantized_checkpoint) "
                            "cannot be trained; resume from HAWQ's checkpoint.pth.tar instead")
        if self.profile.float_requant and isinstance(x, Q):
            if identity is None and x.zero_point is not None:
                return self._pass_through(x, observe=True)
            if identity is not None:      # QLinearAdd: two uint8 operands, one rounding of their sum
                a, b = self._on_grid(x, "quant_branch"), self._on_grid(identity, "quant_identity_branch")
                x, identity = Q(a.value + b.value, None), None
        xv, s_x = (x.value, x.scale) if isinstance(x, Q) else (x, None)
        total = xv if identity is None else xv + identity.value
        if self.observer is not None:
            self.observer(total.detach())
        if not self.fake_quant:
            return Q(total, None)
        if self.mode == N.SIGN and identity is not None:
            raise HawqError(f"'{self.layer_name}': a residual add cannot produce a 1-bit value")
        if self.running_stat and self._needs_range():
            self._observe(total)
        self._init_learned(total)
        if self.lqnet:
            if identity is not None:
                raise HawqError(f"'{self.layer_name}': an LQ-Net activation quantizer cannot requantize a residual add")
            self._lq_update(total)
        scale, zero = self.quant_params()
        scale, zero = scale.to(xv.device), zero.to(xv.device)
        with torch.no_grad():
            self.act_scaling_factor.copy_(scale)
            self.act_zero_point.copy_(zero)
        if self.mode == N.SIGN:                 # scale 1, zero point 0 (activation_params)
            return Q(self._drop(total, L.sign_ste(total, N.binarize(total) * scale, self.quantizer)), scale, 0)
        lo, hi = self.storage_range()
        prof = self.profile
        no_grid = s_x is None or (identity is not None and identity.scale is None)
        if self.fixed_point_quantization or no_grid:
            with torch.no_grad():
                q = self._lq_levels(N.quantize(total, scale, zero, lo, hi, prof.reciprocal_quantize) - zero) * scale
            return Q(self._drop(total, self._with_gradient(total, q, zero)), scale, _zero_int(zero))
        with torch.no_grad():
            q = _emulate_requant(xv.detach(), s_x, scale, prof.rounding)
            if identity is not None:
                q.add_(_emulate_requant(identity.value.detach(), identity.scale, scale, prof.rounding))
                lo, hi = self.residual_range(lo, hi)
            if self.mode == "asymmetric":
                q.add_(zero).clamp_(lo, hi).sub_(zero)
            else:                                   # zero point is 0
                q.clamp_(lo, hi)
            q = self._lq_levels(q).mul_(scale)
        return Q(self._drop(total, self._with_gradient(total, q, zero)), scale, _zero_int(zero))

    @torch.no_grad()
    def _lq_update(self, total: torch.Tensor) -> None:
        """LQ-Net, each training step: QEM moves the basis toward the least-squares fit of this batch
        (the first batch: a uniform start, then :data:`~hawq.quant.lqnet.QEM_INIT_STEPS` iterations);
        frozen with the ranges (``fix``). Under DDP every rank's buffers follow rank 0's."""
        k = self.activation_bit
        new = LQ.next_basis(total.detach().float().reshape(1, -1), self.act_basis[:k].reshape(1, k), False,
                            self.running_stat)
        if new is not None:
            self.act_basis[:k].copy_(new.reshape(k).to(self.act_basis))

    def _lq_levels(self, t: torch.Tensor) -> torch.Tensor:
        """LQ-Net: the level of each uniform integer ``t`` (float or int, in [0, 255]); else ``t``."""
        if not self.lqnet:
            return t
        return self._lq_table().to(t.device)[t.long()].to(t.dtype)

    def _lq_table(self) -> torch.Tensor:
        """LQ-Net: the level of each uniform integer 0..255 (int64 [256]) for the current basis."""
        return LQ.activation_table(self.lq_grid()[1])[0]

    def _on_grid(self, x: Q, branch: str) -> Q:
        """Profile ort: an add operand as a uint8 activation; an accumulator goes through ``branch``."""
        if x.zero_point is not None:
            return x
        return getattr(self, branch)(x)

    def _pass_through(self, x: Q, observe: bool) -> Q:
        """Profile ort: an activation already on a grid keeps it (ONNX Runtime has one per tensor);
        the range is still tracked in training, so the quantizer counts as calibrated."""
        if observe and self.running_stat:
            self._observe(x.value)
        with torch.no_grad():
            self.act_scaling_factor.copy_(x.scale.reshape(-1)[:1].float())
            self.act_zero_point.fill_(int(x.zero_point))
        return x

    def _drop(self, total: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        """QDrop: keep each element's float value with probability ``drop_prob``."""
        if self.drop_prob <= 0:
            return quantized
        return torch.where(torch.rand_like(total) < self.drop_prob, total, quantized)

    # -- eval: integer-only ------------------------------------------------------------------
    def _check_calibrated(self):
        if not self.calibrated:
            raise HawqError(f"activation quantizer '{self.layer_name}' has no calibrated range; "
                            "train or calibrate first, or evaluate a quantized checkpoint (--resume PATH)")

    def _dyadic(self, scale_in, scale):
        """(m, shift) of S_in / S_out; a ratio no dyadic multiplier holds is a one-line error naming
        this quantizer (its calibrated range is degenerate next to its input's grid)."""
        try:
            return N.dyadic(N.requant_ratio(scale_in, scale))
        except ValueError as e:
            raise HawqError(f"activation quantizer '{self.layer_name}': {e} (its range, "
                            f"[{float(self.x_min.reshape(-1)[0]):.3g}, {float(self.x_max.reshape(-1)[0]):.3g}], "
                            "is degenerate next to its input's grid; calibrate on more representative data)") from None

    def _forward_int(self, x, identity: Q | None) -> Q:
        self._check_calibrated()
        scale, zero = self.quant_params()
        self.act_scaling_factor.copy_(scale)
        self.act_zero_point.copy_(zero)
        z = int(zero.item())
        lo, hi = self.storage_range()
        rec = active()
        prof = self.profile
        if prof.float_requant and isinstance(x, Q):
            return self._forward_ort(x, identity, scale, z, lo, hi, rec)
        if self.mode == N.SIGN:
            if not isinstance(x, Q) or identity is not None:
                raise HawqError(f"'{self.layer_name}': a 1-bit activation reads an integer tensor, not the image or an add")
            q = N.sign_int(x.value)
            if rec:
                rec.add(ir.Sign, self.layer_name, [x.value], q)
        elif not isinstance(x, Q):      # the float->int boundary (quant_input)
            q = (N.quantize(x.float(), scale.to(x.device), z, lo, hi, prof.reciprocal_quantize) - z).to(torch.int64)
            if rec:
                rec.add(ir.Quantize, self.layer_name, [x], q, scale=scale.clone(), zero_point=z,
                        qmin=lo, qmax=hi, bits=self.activation_bit, reciprocal=prof.reciprocal_quantize)
        elif identity is None:
            m, sh = self._dyadic(x.scale, scale)
            m_t, s_t = _int_params(m, sh, x.value, x.value.dim())
            q = N.saturate_(N.requantize(x.value, m_t, s_t, prof.rounding), lo - z, hi - z)
            if rec:
                rec.add(ir.Requant, self.layer_name, [x.value], q, multiplier=torch.from_numpy(m),
                        shift=torch.from_numpy(sh), qmin=lo - z, qmax=hi - z, zero_point=z,
                        bits=8 if self.lqnet else self.activation_bit, rounding=prof.rounding)
            if self.lqnet:
                q = self._record_levels(q, rec)
        else:
            if self.lqnet:
                raise HawqError(f"'{self.layer_name}': an LQ-Net activation quantizer cannot requantize a residual add")
            m1, s1 = self._dyadic(x.scale, scale)
            m2, s2 = self._dyadic(identity.scale, scale)
            nd = x.value.dim()
            r_lo, r_hi = self.residual_range(lo - z, hi - z)
            q = N.residual_add(x.value, *_int_params(m1, s1, x.value, nd),
                               identity.value, *_int_params(m2, s2, x.value, nd), r_lo, r_hi, prof.rounding)
            if rec:
                rec.add(ir.RequantAdd, self.layer_name, [x.value, identity.value], q,
                        multiplier=torch.from_numpy(m1), shift=torch.from_numpy(s1),
                        identity_multiplier=torch.from_numpy(m2), identity_shift=torch.from_numpy(s2),
                        qmin=r_lo, qmax=r_hi, zero_point=z, bits=self.activation_bit, rounding=prof.rounding)
        return Q(q, scale.double().to(q.device), z)

    def _record_levels(self, t: torch.Tensor, rec) -> torch.Tensor:
        """LQ-Net eval: the levels of the uniform integers ``t`` (int64), recorded as an ``lut`` node."""
        table = self._lq_table()
        q = table.to(t.device)[t]
        if rec:
            rec.add(ir.Lut, f"{self.layer_name}.levels", [t], q, function="lqnet", table=table.clone(), in_lo=0,
                    qmin=0, qmax=LQ.ACT_LIMIT, zero_point=0, bits=8)
        return q

    def _forward_ort(self, x: Q, identity: Q | None, scale: torch.Tensor, z: int, lo: int, hi: int, rec) -> Q:
        """Eval in profile ort: pass-through, QLinearAdd (a gather from its exact table), or the
        float32 requantization of an accumulator (QLinearConv / QGemm / QLinearGlobalAveragePool)."""
        if identity is None and x.zero_point is not None:
            return self._pass_through(x, observe=False)
        if identity is not None:
            a, b = self._on_grid(x, "quant_branch"), self._on_grid(identity, "quant_identity_branch")
            key = (float(a.scale.reshape(-1)[0]), a.zero_point, float(b.scale.reshape(-1)[0]), b.zero_point,
                   float(scale.reshape(-1)[0]), z, lo, hi)
            if self._add_table[0] != key:
                table = N.qlinear_add_table(a.scale, a.zero_point, b.scale, b.zero_point, scale, z, lo, hi)
                self._add_table = (key, torch.from_numpy(table))
            table = self._add_table[1]
            idx = (a.value + a.zero_point) * 256 + (b.value + b.zero_point)
            q = table.to(idx.device).reshape(-1)[idx].to(torch.int64)
            if rec:
                rec.add(ir.QLinearAdd, self.layer_name, [a.value, b.value], q, table=table.clone(),
                        a_scale=a.scale.float().cpu().reshape(-1)[:1].clone(), a_zero=a.zero_point,
                        b_scale=b.scale.float().cpu().reshape(-1)[:1].clone(), b_zero=b.zero_point,
                        scale=scale.clone(), qmin=lo - z, qmax=hi - z, zero_point=z, bits=self.activation_bit)
            return Q(q, scale.double().to(q.device), z)
        in_scale = (x.scale.double() * x.count).float().cpu()
        m = N.ort_multiplier(in_scale, scale, x.count)
        q = N.requant_float(x.value, N.channel_view(torch.from_numpy(m), x.value.dim()), lo - z, hi - z)
        if rec:
            rec.add(ir.RequantFloat, self.layer_name, [x.value], q, multiplier=torch.from_numpy(m), in_scale=in_scale,
                    scale=scale.clone(), count=int(x.count), qmin=lo - z, qmax=hi - z, zero_point=z,
                    bits=self.activation_bit)
        return Q(q, scale.double().to(q.device), z)


class _QuantWeightLayer(nn.Module):
    """Shared weight/bias quantization of conv and linear layers.

    Registers HAWQ's integer buffers: ``<scale_name>`` [C_out] (float32), ``weight_integer``
    (int8 container, weight shape) and ``bias_integer`` [C_out] (int32), filled by the eval path.
    """

    def __init__(self, weight_shape, scale_name: str, config: QuantConfig, weight_bit: int):
        super().__init__()
        self.weight_bit, self.bias_bit = weight_bit, config.bias_bit
        self.per_channel, self.weight_percentile = config.per_channel, config.weight_percentile
        self.profile = config.profile
        self.quantizer = config.quantizer
        self.lsq_init = config.lsq_init
        self.stored = False       # True: evaluate the integer buffers as stored (HAWQ quantized_checkpoint)
        self.layer_name = ""
        c = weight_shape[0]
        self.scale_name = scale_name
        self.register_buffer(scale_name, torch.zeros(c))
        self.register_buffer("weight_integer", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("bias_integer", torch.zeros(c, dtype=torch.int32))
        # A weight grid chosen once (post-training quantization's weight observers; 0 = not chosen):
        # float32 [C_out], the scale of the BN-folded weight. When set it replaces the min/max scale
        # in training and eval alike. Optional in checkpoints (hawq.checkpoint.OPTIONAL_KEYS).
        self.register_buffer("fixed_weight_scale", torch.zeros(c))
        # hawq.ptq hooks, training path only, never saved: ``fake_quant`` False runs float weights;
        # ``weight_rounding`` (callable(w, s_w) -> dequantized weight) replaces round-to-nearest.
        self.fake_quant = True
        self.weight_rounding = None
        # --quantizer lsq: the learned weight step of the layer's own (unfolded) weight, float32 [C_out]
        # (per channel) or [1]; 0 = not yet initialized (set to the min/max scale of that weight at
        # the first training step). A BN-folded conv quantizes W·γ/σ with step |weight_step|·|γ/σ|,
        # which gives the same integers as W with step |weight_step|: the step is learned where the
        # optimizer's weight lives, so its updates are on the weights' scale. (Learned in the folded
        # domain, steps of channels with a small |γ/σ| - down to ~1e-4 - took SGD updates 10²-10³
        # times their size at lr 0.01 and training collapsed.)
        if self.quantizer in L.WEIGHT_PARAM:
            self.weight_step = nn.Parameter(torch.zeros(c if self.per_channel else 1))
        # --quantizer lqnet: the learned basis of the layer's own (unfolded) weight, float32
        # [C_out or 1, MAX_BASES] (the first weight_bit columns used; 0 = not yet initialized). A
        # BN-folded conv quantizes W·k with basis |k|·basis: the same codes, learned where W lives.
        if self.quantizer == "lqnet":
            self.register_buffer("weight_basis", torch.zeros(c if self.per_channel else 1, LQ.MAX_BASES))

    def extra_repr(self) -> str:
        return (f"weight_bit={self.weight_bit}, bias_bit={self.bias_bit}, per_channel={self.per_channel}, "
                f"numerics={self.profile.name}, quantizer={self.quantizer}")

    def _transform(self, w: torch.Tensor) -> torch.Tensor:
        """The raw float weight as the quantizer sees it: DoReFa's tanh transform, else itself."""
        return L.dorefa_weight(w) if self.quantizer == "dorefa" else w

    @property
    def lqnet(self) -> bool:
        """Whether the weights quantize as LQ-Net's (--quantizer lqnet, at most MAX_BASES bits)."""
        return self.quantizer == "lqnet" and self.weight_bit <= LQ.MAX_BASES and not self.has_fixed_scale

    @property
    def ir_weight_bits(self) -> int:
        """The weights' width in the integer graph: LQ-Net's levels need int8 (K > 1 bases)."""
        return 8 if self.lqnet and self.weight_bit > 1 else self.weight_bit

    def _lq_rows(self, w: torch.Tensor) -> torch.Tensor:
        return w.reshape(w.shape[0], -1) if self.per_channel else w.reshape(1, -1)

    @torch.no_grad()
    def _lq_update(self) -> None:
        """LQ-Net: initialize the basis from the raw weight (uniform start + QEM iterations), then in
        training move it by one QEM step per forward (:func:`hawq.quant.lqnet.qem_step`)."""
        basis = self.weight_basis[:, :self.weight_bit]
        new = LQ.next_basis(self._lq_rows(self.raw_weight().detach().float()), basis, True, self.training)
        if new is not None:
            basis.copy_(new.to(basis))

    def _lq_scale(self, folded: bool) -> torch.Tensor:
        """LQ-Net's weight scale float32 [C_out or 1]: the integer grid's s of the raw basis, times
        |γ/σ| when ``folded``."""
        self._lq_update()
        s = LQ.integer_basis(self.weight_basis[:, :self.weight_bit], LQ.WEIGHT_LIMIT)[0]
        k = self.fold_factor() if folded else None
        if k is not None:
            s = s * k.abs().float().to(s)
        return s.clamp(min=N.MIN_RANGE)

    def quantize_integers(self, w: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
        """The integer weights (values as ``w``'s dtype, ``w``'s shape) of ``w`` on the grid ``s_w``:
        LQ-Net's nearest level of each channel's basis, else :func:`hawq.numerics.quantize_weight`."""
        if not self.lqnet:
            return N.quantize_weight(w, s_w, self.weight_bit, self.profile)
        coeff = LQ.integer_basis(self.weight_basis[:, :self.weight_bit], LQ.WEIGHT_LIMIT)[1]
        values = LQ.levels(coeff.to(w.device), signed=True)[0]                  # [rows, 2^K]
        u = self._lq_rows(w.detach().float() / N.channel_view(s_w.to(w.device), w.dim(), 0))
        q = values.gather(-1, LQ.snap(u, values))
        return q.reshape(w.shape).to(w.dtype)

    @property
    def has_fixed_scale(self) -> bool:
        return bool((self.fixed_weight_scale > 0).all())

    def weight_scale(self, w: torch.Tensor, folded: bool = True) -> torch.Tensor:
        """float32 [C_out] or [1]: the PTQ-fixed scale, else the learned LSQ step, else min/max of ``w``.

        ``w``: :meth:`float_weight` (``folded``; BN-folded for a conv), or the unfolded weight of a
        conv whose BN still trains (``folded=False``)."""
        if self.has_fixed_scale:
            return self.fixed_weight_scale.clone()
        if self.lqnet:
            return self._lq_scale(folded)
        if self.quantizer != "lsq" or (not self.step_initialized and not self.training):
            return self._minmax_scale(w)
        if not self.step_initialized:
            with torch.no_grad():
                raw = self.raw_weight().detach()
                if self.lsq_init == "mean" and self.weight_bit != N.BINARY:   # sign grid: mean|W| (XNOR's α) either way
                    qmax = N.qrange(self.weight_bit, signed=True)[1]
                    step = L.lsq_initial_step(raw, qmax, 0 if self.per_channel else None)
                else:
                    step = self._minmax_scale(raw)
                self.weight_step.copy_(step.to(self.weight_step))
        return self._lsq_step(folded).detach().abs().float().clamp(min=N.MIN_RANGE)

    def _minmax_scale(self, w: torch.Tensor) -> torch.Tensor:
        """float32 [C_out] or [1]: the min/max (or ``weight_percentile``) scale of ``w`` on this grid."""
        return N.weight_scale(w, self.weight_bit, self.per_channel, self.weight_percentile, self.profile)

    @property
    def step_initialized(self) -> bool:
        """LSQ: whether a training step has set the learned weight step."""
        return bool((self.weight_step != 0).all())

    def _lsq_step(self, folded: bool) -> torch.Tensor:
        """LSQ's step for the weight being quantized, differentiable in ``weight_step``: [C_out] or [1].
        Folded: |weight_step|·|γ/σ| (γ/σ detached: it is BN's, not the quantizer's)."""
        k = self.fold_factor() if folded else None
        return self.weight_step if k is None else self.weight_step * k.abs().to(self.weight_step)

    def _fake_weight(self, w: torch.Tensor, s_w: torch.Tensor, folded: bool = True) -> torch.Tensor:
        if not self.fake_quant:
            return w
        if self.weight_rounding is not None:
            return self.weight_rounding(w, s_w)
        deq = self.quantize_integers(w, s_w) * N.channel_view(s_w, w.dim(), 0)
        if self.lqnet:
            return N.straight_through(w, deq)
        if self.quantizer == "lsq" and not self.has_fixed_scale:
            lo, hi = N.qrange(self.weight_bit, signed=True)     # the sign grid: [-1, 1]
            g = L.lsq_grad_factor(w[0].numel(), hi)
            return L.lsq_ste(w, self._lsq_step(folded), deq, lo, hi, g, channel_dim=0,
                             binary=self.weight_bit == N.BINARY)
        if self.weight_bit == N.BINARY:
            return L.binary_weight_ste(w, deq, s_w, self.quantizer)
        return N.straight_through(w, deq)

    def _fake_bias(self, b: torch.Tensor | None, scale_in: torch.Tensor | None, s_w: torch.Tensor):
        if b is None or scale_in is None or not self.fake_quant:
            return b
        b_int = N.quantize_bias(b, scale_in, s_w, self.bias_bit, self.profile)
        return N.straight_through(b, (b_int.double() * N.bias_scale(scale_in, s_w, self.profile)).to(b.dtype))

    def _acc_scale(self, scale_in: torch.Tensor, s_w: torch.Tensor, dtype) -> torch.Tensor:
        return N.bias_scale(scale_in, s_w, self.profile).to(dtype)

    # -- the float weight the grid applies to, and writing chosen integers back into it ---------
    def float_weight(self) -> torch.Tensor:
        """The float weight the weight grid applies to ([C_out, ...]; BN-folded for a conv)."""
        raise NotImplementedError

    def raw_weight(self) -> torch.Tensor:
        """The layer's own trainable weight parameter (the conv's, before any BN fold)."""
        raise NotImplementedError

    def fold_factor(self) -> torch.Tensor | None:
        """Per-channel factor the raw weight is multiplied by to give :meth:`float_weight` (None: 1)."""
        return None

    @torch.no_grad()
    def set_integer_weights(self, q: torch.Tensor, scale: torch.Tensor) -> None:
        """Fix the grid to ``scale`` (float32 [C_out]) and set the float weights so that the model's
        own quantization gives exactly the integers ``q`` (weight shape, in the signed ``weight_bit``
        range), in training and eval: the raw weight becomes S·q/k for BN factor k (channels with
        k = 0 have a zero folded weight and keep q = 0). Post-training rounding (AdaRound) ends here."""
        qmin, qmax = N.qrange(self.weight_bit, signed=True)
        q = q.detach().float().clamp(qmin, qmax).round()
        s = scale.detach().float().reshape(-1).expand(q.shape[0]).clone()
        target = q * N.channel_view(s, q.dim(), 0)
        k = self.fold_factor()
        raw = self.raw_weight()
        if k is not None:
            kv = N.channel_view(k.float(), q.dim(), 0)
            dead = N.channel_view(k == 0, q.dim(), 0).expand_as(q)
            target = torch.where(dead, torch.zeros_like(target), target / torch.where(kv == 0, torch.ones_like(kv), kv))
            q = torch.where(dead, torch.zeros_like(q), q)
        raw.copy_(target.to(raw.dtype))
        self.fixed_weight_scale.copy_(s)
        got = N.quantize_weight(self.float_weight(), s, self.weight_bit, self.profile)
        if not torch.equal(got, q):
            raise HawqError(f"'{self.layer_name}': chosen integer weights do not survive BN folding "
                            f"({int((got != q).sum())} differ)")

    def use_stored_integers(self, w_int: torch.Tensor, b_int: torch.Tensor, s_w: torch.Tensor) -> None:
        """Evaluate these integers and weight scales (HAWQ stores floats; the bias clamp is exact here)."""
        qmin, qmax = N.qrange(self.weight_bit, signed=True)
        if w_int.shape != self.weight_integer.shape or s_w.numel() not in (1, w_int.shape[0]):
            raise HawqError(f"'{self.layer_name}': stored integers have shape {tuple(w_int.shape)}, "
                            f"model expects {tuple(self.weight_integer.shape)} - wrong arch or scheme?")
        if float(w_int.min()) < qmin or float(w_int.max()) > qmax:
            raise HawqError(f"'{self.layer_name}': stored weights exceed {self.weight_bit} bits - wrong scheme?")
        self.weight_integer.copy_(w_int.round().to(torch.int8))
        lo, hi = N.qrange(self.bias_bit, signed=True)
        self.bias_integer.copy_(b_int.double().round().clamp(lo, hi).to(torch.int32))
        getattr(self, self.scale_name).copy_(s_w.reshape(-1).float().expand_as(getattr(self, self.scale_name)))
        self.stored = True

    def _integer_weights(self, w: torch.Tensor, b: torch.Tensor | None, scale_in: torch.Tensor):
        """(w_int int64, b_int int64 [C_out], s_w float32 [C_out|1], acc scale float64 [C_out])."""
        if self.stored:
            s_w = getattr(self, self.scale_name).clone()
            acc_scale = N.bias_scale(scale_in, s_w, self.profile).to(w.device)
            return self.weight_integer.to(torch.int64), self.bias_integer.to(torch.int64), s_w, acc_scale
        s_w = self.weight_scale(w)
        w_int = self.quantize_integers(w.detach(), s_w).to(torch.int64)
        if b is None:
            b = torch.zeros(w.shape[0], device=w.device)
        b_int = N.quantize_bias(b, scale_in, s_w, self.bias_bit, self.profile)
        acc_scale = N.bias_scale(scale_in, s_w, self.profile).to(w.device)
        if acc_scale.numel() == 1:
            acc_scale = acc_scale.expand(w.shape[0]).clone()
        return w_int, b_int, s_w, acc_scale


class QuantBnConv2d(_QuantWeightLayer):
    """Conv + BatchNorm, BN folded into the conv (HAWQ's ``QuantBnConv2d``).

    BN is folded with the running statistics when ``fix_BN`` is set or once ``fold_step`` (training
    forwards so far) reaches ``fix_BN_threshold``; before that the conv runs with quantized unfolded
    weights followed by a regular BatchNorm on batch statistics. Eval always folds.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, config: QuantConfig, weight_bit: int = 8,
                 pad: tuple[int, int, int, int] | None = None):
        super().__init__(conv.weight.shape, "convbn_scaling_factor", config, weight_bit)
        self.conv, self.bn = conv, bn      # bn None: a conv with no BatchNorm after it (its own bias, if any)
        # Asymmetric zero padding (left, right, top, bottom), F.pad's order, applied before the conv
        # (whose own padding is then 0): TF-style "same" padding of captured models. None: the conv's.
        self.pad = tuple(int(p) for p in pad) if pad is not None and any(pad) else None
        self.fix_BN, self.fix_BN_threshold = config.fix_BN, config.fix_BN_threshold
        self.register_buffer("fold_step", torch.zeros((), dtype=torch.int64))

    @property
    def bn_folded(self) -> bool:
        if self.fix_BN or self.bn is None:
            return True
        return self.fix_BN_threshold is not None and int(self.fold_step) >= self.fix_BN_threshold

    def folded_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        bn = self.bn
        if bn is None:
            return self._transform(self.conv.weight), self.conv.bias
        return N.fold_bn(self._transform(self.conv.weight), self.conv.bias, bn.running_mean, bn.running_var,
                         bn.weight, bn.bias, bn.eps)

    def float_weight(self) -> torch.Tensor:
        return self.folded_weight_bias()[0]

    def raw_weight(self) -> torch.Tensor:
        return self.conv.weight

    def fold_factor(self) -> torch.Tensor:
        """γ/σ per output channel, exactly as :func:`hawq.numerics.fold_bn` forms it (None: no BN)."""
        bn = self.bn
        if bn is None:
            return None
        var_eps = bn.running_var + bn.eps
        return (bn.weight / torch.sqrt(var_eps.double()).to(var_eps.dtype)).detach()

    def _conv(self, x, w, b):
        c = self.conv
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)

    def _ir_padding(self) -> list[int]:
        """The IR's padding: [pad H, pad W], or [top, left, bottom, right] with an asymmetric pad."""
        if self.pad is None:
            return list(self.conv.padding)
        (ph, pw), (l, r, t, b) = self.conv.padding, self.pad
        return [t + ph, l + pw, b + ph, r + pw]

    def forward(self, x: Q) -> Q:
        if not self.training:
            return self._forward_int(x)
        folded = self.bn_folded
        self.fold_step += 1
        if folded:
            w, b = self.folded_weight_bias()
            s_w = self.weight_scale(w)
            y = self._conv(x.value, self._fake_weight(w, s_w), self._fake_bias(b, x.scale, s_w))
            scale = None if x.scale is None else self._acc_scale(x.scale, s_w, y.dtype)
            return Q(y, scale)
        w = self._transform(self.conv.weight)
        s_w = self.weight_scale(w, folded=False)
        y = self._conv(x.value, self._fake_weight(w, s_w, folded=False), self.conv.bias)
        return Q(self.bn(y), None)

    @torch.no_grad()
    def _forward_int(self, x: Q) -> Q:
        w, b = self.folded_weight_bias()
        w_int, b_int, s_w, acc_scale = self._integer_weights(w, b, x.scale)
        self.convbn_scaling_factor.copy_(s_w.expand_as(self.convbn_scaling_factor))
        self.weight_integer.copy_(w_int)
        self.bias_integer.copy_(b_int)
        c = self.conv
        q = x.value if self.pad is None else F.pad(x.value, self.pad)      # the centered zero
        acc = exact_conv2d(q, w_int, c.stride, c.padding, c.dilation, c.groups)
        acc += N.channel_view(b_int, 4)
        rec = active()
        if rec:
            rec.add(ir.Conv2d, self.layer_name, [x.value], acc, weight=w_int.to(torch.int8).cpu(),
                    bias=b_int.to(torch.int32).cpu(), stride=list(c.stride), padding=self._ir_padding(),
                    dilation=list(c.dilation), groups=c.groups, weight_bits=self.ir_weight_bits,
                    weight_scale=s_w.cpu().clone())
        return Q(acc, acc_scale)


class QuantLinear(_QuantWeightLayer):
    """Fully connected layer with per-output-row weight scales (HAWQ's ``QuantLinear``)."""

    def __init__(self, linear: nn.Linear, config: QuantConfig, weight_bit: int = 8):
        super().__init__(linear.weight.shape, "fc_scaling_factor", config, weight_bit)
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None

    def float_weight(self) -> torch.Tensor:
        return self._transform(self.weight)

    def raw_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: Q) -> Q:
        if not self.training:
            return self._forward_int(x)
        w = self.float_weight()
        s_w = self.weight_scale(w)
        y = F.linear(x.value, self._fake_weight(w, s_w), self._fake_bias(self.bias, x.scale, s_w))
        return Q(y, None if x.scale is None else self._acc_scale(x.scale, s_w, y.dtype))

    @torch.no_grad()
    def _forward_int(self, x: Q) -> Q:
        w_int, b_int, s_w, acc_scale = self._integer_weights(self.float_weight(), self.bias, x.scale)
        self.fc_scaling_factor.copy_(s_w.expand_as(self.fc_scaling_factor))
        self.weight_integer.copy_(w_int)
        self.bias_integer.copy_(b_int)
        acc = exact_linear(x.value, w_int) + b_int.reshape(1, -1)
        rec = active()
        if rec:
            rec.add(ir.Dense, self.layer_name, [x.value], acc, weight=w_int.to(torch.int8).cpu(),
                    bias=b_int.to(torch.int32).cpu(), weight_bits=self.ir_weight_bits,
                    weight_scale=s_w.cpu().clone())
        return Q(acc, acc_scale)


def _train_mean(mean: torch.Tensor, scale: torch.Tensor | None, n: int, trunc: bool) -> Q:
    """Training path of an average over ``n`` values (global or k×k): the float mean at scale S/n,
    or in profile hawq HAWQ's trunc(sum/n + 0.01) at scale S with a straight-through gradient."""
    if scale is None:
        return Q(mean, None)
    if not trunc:
        return Q(mean, scale / n)
    s = scale.to(mean.dtype)
    if s.numel() > 1:                    # a per-channel accumulator scale: along the channel axis
        s = N.channel_view(s, mean.dim())
    with torch.no_grad():
        value = torch.trunc(torch.round(mean.detach() * n / s) / n + 0.01) * s
    return Q(N.straight_through(mean, value), scale)


class QuantAdaptiveAvgPool2d(nn.Module):
    """Adaptive average pool to any size (AlexNet/VGG off 224, PyTorch's windows): the window sums,
    each times L/N (L the lcm of the window sizes N), exact at scale S/L; the next requantization
    folds the 1/L (IR op ``adaptive_avgpool2d``, docs/numerics.md §8). Training: the float mean at S/L."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = ir.pair(output_size)
        self.layer_name = ""

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"

    def forward(self, x: Q) -> Q:
        h, w = x.value.shape[2:]
        sizes = ir.adaptive_window_sizes(h, w, self.output_size)
        L = math.lcm(*sizes.reshape(-1).tolist())          # every L / N_ij an integer
        scale = None if x.scale is None else x.scale / L
        if self.training:
            return Q(F.adaptive_avg_pool2d(x.value, self.output_size), scale)
        f = torch.from_numpy(L // sizes).to(x.value.device)
        rows = [torch.stack([x.value[:, :, h0:h1, w0:w1].sum((2, 3)) for w0, w1 in ir.adaptive_windows(w, self.output_size[1])],
                            dim=-1) for h0, h1 in ir.adaptive_windows(h, self.output_size[0])]
        y = torch.stack(rows, dim=-2) * f
        rec = active()
        if rec:
            rec.add(ir.AdaptiveAvgPool2d, self.layer_name, [x.value], y, output_size=list(self.output_size), scale_up=L)
        return Q(y, scale)


class QuantAveragePool2d(nn.Module):
    """Global average pool in integers. Output: [B, C].

    Profile exact: the integer *sum* over H×W with scale S/(H·W). Folding 1/(H·W) into the next
    requantization's dyadic multiplier means the average is rounded once (half up, by that
    requantization) instead of twice. Profile hawq: HAWQ's trunc(sum/(H·W) + 0.01), scale S
    (:func:`hawq.numerics.avgpool_trunc`), then the next requantization rounds again.
    """

    def __init__(self, config: QuantConfig):
        super().__init__()
        self.profile = config.profile
        self.layer_name = ""

    def forward(self, x: Q) -> Q:
        n = x.value.shape[2] * x.value.shape[3]
        trunc = self.profile.avgpool == "trunc_mean"
        scale = None if x.scale is None or trunc else x.scale / n
        if self.training:
            return _train_mean(x.value.mean(dim=(2, 3)), x.scale, n, trunc)
        total = x.value.sum(dim=(2, 3))
        y = N.avgpool_trunc(total, n) if trunc else total
        rec = active()
        if rec:
            rec.add(ir.GlobalAvgPoolTrunc if trunc else ir.GlobalAvgPoolSum, self.layer_name, [x.value], y,
                    divisor=n)
        return Q(y, x.scale if trunc else scale, count=1 if trunc else n)


class QuantMaxPool2d(nn.Module):
    """Max pooling on the quantized grid (order-preserving, so integer and float agree)."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.kernel_size, self.stride, self.padding = pool.kernel_size, pool.stride, pool.padding
        self.ceil_mode = bool(pool.ceil_mode)
        self.layer_name = ""

    def _pool(self, v):
        return F.max_pool2d(v, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)

    def forward(self, x: Q) -> Q:
        if self.training:
            return x._replace(value=self._pool(x.value))
        # float64 holds every int32 exactly; max_pool2d pads with -inf, i.e. ignores padding.
        y = self._pool(x.value.double()).to(torch.int64)
        rec = active()
        if rec:
            k, s, p = (ir.pair(v) for v in (self.kernel_size, self.stride, self.padding))
            rec.add(ir.MaxPool2d, self.layer_name, [x.value], y, kernel=k, stride=s, padding=p, ceil_mode=self.ceil_mode)
        return x._replace(value=y)


class QuantFlatten(nn.Module):
    """``flatten(1)`` of a quantized feature map [B, C, H, W] -> [B, C·H·W] (per-tensor scale: the
    activation quantizer comes before it, so every feature keeps its grid)."""

    def __init__(self):
        super().__init__()
        self.layer_name = ""

    def forward(self, x: Q) -> Q:
        if x.scale is not None and x.scale.numel() != 1:
            raise HawqError(f"'{self.layer_name}': flatten needs one scale for the whole tensor")
        y = x.value.flatten(1)
        if not self.training:
            rec = active()
            if rec:
                rec.add(ir.Flatten, self.layer_name, [x.value], y)
        return x._replace(value=y)


class QuantReLU(nn.Module):
    """ReLU on either path; on integers it is max(q, 0) (zero point is 0 where it is used)."""

    def __init__(self):
        super().__init__()
        self.layer_name = ""

    def forward(self, x: Q) -> Q:
        if self.training:
            return x._replace(value=F.relu(x.value))
        y = x.value.clamp(min=0)
        rec = active()
        if rec:
            rec.add(ir.Relu, self.layer_name, [x.value], y)
        return x._replace(value=y)


class QuantReLU6(nn.Module):
    """ReLU6 on a conv accumulator (MobileNetV2). Training: ``relu6`` of the float value. Eval: the
    integer clamp ``clamp(acc, 0, floor(6 / S_c))`` per channel (:func:`hawq.numerics.relu6_bound`),
    recorded as an :class:`hawq.ir.Clamp`. Profile ort: max(acc, 0) only, recorded as a ReLU; the
    next quantizer's uint8 clamp is the upper bound (its range, observed after ReLU6, ends at or
    below 6), which is the ``Conv → Clip(0, 6) → QuantizeLinear`` ONNX Runtime fuses."""

    def __init__(self, config: QuantConfig | None = None):
        super().__init__()
        self.float_requant = config is not None and config.profile.float_requant
        self.layer_name = ""

    def forward(self, x: Q) -> Q:
        if self.training or x.scale is None:
            return Q(F.relu6(x.value), x.scale)
        if self.float_requant:
            y = x.value.clamp(min=0)
            rec = active()
            if rec:
                rec.add(ir.Relu, self.layer_name, [x.value], y)
            return x._replace(value=y)
        hi = torch.from_numpy(N.relu6_bound(x.scale))
        y = torch.minimum(x.value.clamp(min=0), N.channel_view(hi.to(x.value.device), x.value.dim()))
        rec = active()
        if rec:
            rec.add(ir.Clamp, self.layer_name, [x.value], y, qmin=0, qmax=hi)
        return Q(y, x.scale)


#: The torch function of each table function (training's forward and gradient).
_TORCH_FUNCTIONS = {"sigmoid": torch.sigmoid, "hardsigmoid": F.hardsigmoid, "silu": F.silu,
                    "hardswish": F.hardswish, "tanh": torch.tanh, "gelu": F.gelu}
#: Functions whose outputs are >= 0 (unsigned output grid).
_NONNEG_FUNCTIONS = ("sigmoid", "hardsigmoid")
#: Bounded functions: their output range starts as the function's own (then moves as observed), so a
#: squeeze-excitation gate that saturates on every calibration image still has a grid.
_NATURAL_RANGE = {"sigmoid": (0.0, 1.0), "hardsigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}


class QuantLut(nn.Module):
    """A pointwise nonlinearity (:data:`hawq.numerics.TABLE_FUNCTIONS`) of a <= 8-bit activation,
    as a table of output integers (IR op ``lut``, docs/numerics.md §8c). The output grid is the
    activation quantizer ``act`` (its range observed like any activation's; unsigned for sigmoid and
    hardsigmoid). Training: f of the fake-quantized input, fake-quantized by ``act`` (f's gradient,
    straight through the rounding); eval: the table the export records."""

    def __init__(self, function: str, config: QuantConfig):
        super().__init__()
        if function not in _TORCH_FUNCTIONS:
            raise HawqError(f"no table function {function!r}; expected one of {', '.join(_TORCH_FUNCTIONS)}")
        self.function = function
        self.act = QuantAct("relu" if function in _NONNEG_FUNCTIONS else "input", config)
        if function in _NATURAL_RANGE:
            self.act.x_min.fill_(_NATURAL_RANGE[function][0])
            self.act.x_max.fill_(_NATURAL_RANGE[function][1])
        self.layer_name = ""

    def extra_repr(self) -> str:
        return f"function={self.function}"

    def forward(self, x: Q) -> Q:
        if self.training:
            return self.act(_TORCH_FUNCTIONS[self.function](x.value))
        if x.scale is None or x.scale.numel() != 1:
            raise HawqError(f"'{self.layer_name}': a table needs an input on one activation grid")
        self.act._check_calibrated()
        scale, zero = self.act.quant_params()
        lo, hi = self.act.storage_range()
        z = int(zero.item())
        table = torch.from_numpy(N.function_table(self.function, x.scale, scale, z, lo, hi))
        start = N.TABLE_RANGE[0]
        if x.value.numel() and (int(x.value.min()) < start or int(x.value.max()) > N.TABLE_RANGE[1]):
            raise HawqError(f"'{self.layer_name}': a table needs a <= 8-bit input")
        y = table.to(x.value.device)[x.value - start]
        rec = active()
        if rec:
            rec.add(ir.Lut, self.layer_name, [x.value], y, function=self.function, table=table, in_lo=start,
                    qmin=lo - z, qmax=hi - z, zero_point=z, bits=self.act.activation_bit)
        return Q(y, scale.double().to(y.device))


class QuantMul(nn.Module):
    """Product of two quantized activations (squeeze-excitation's ``x · s``): exact integers at the
    product of their (per-tensor) scales; the next :class:`QuantAct` requantizes it (IR op ``mul``)."""

    def __init__(self):
        super().__init__()
        self.layer_name = ""

    def forward(self, a: Q, b: Q) -> Q:
        y = a.value * b.value
        scale = None if a.scale is None or b.scale is None else a.scale * b.scale
        if not self.training:
            rec = active()
            if rec:
                rec.add(ir.Mul, self.layer_name, [a.value, b.value], y)
        return Q(y, scale)


def _channel_scales(parts: list[Q]) -> torch.Tensor | None:
    """Per-channel scale [ΣC] of a channel concatenation: each part's scale repeated over its channels."""
    if any(p.scale is None for p in parts):
        return None
    return torch.cat([p.scale.reshape(-1).expand(p.value.shape[1]) if p.scale.numel() == 1
                      else p.scale.reshape(-1) for p in parts])


class QuantConcat(nn.Module):
    """Channel concatenation of branches on different grids (inception). The output carries a
    per-channel scale (each branch's); the next :class:`QuantAct` requantizes every channel to the
    common output scale, i.e. each branch by its own dyadic multiplier."""

    def __init__(self):
        super().__init__()
        self.layer_name = ""

    def forward(self, parts: list[Q]) -> Q:
        y = torch.cat([p.value for p in parts], dim=1)
        scale = _channel_scales(parts)
        if not self.training:
            rec = active()
            if rec:
                rec.add(ir.Concat, self.layer_name, [p.value for p in parts], y, axis=1)
        return Q(y, scale)


class QuantBatchNorm2d(nn.Module):
    """A BatchNorm that follows no convolution (DenseNet's BN on a concat), on a quantized input of
    per-channel (or per-tensor) scale S: with k = γ/σ and t = β − μ·k folded exactly as for a conv
    (:func:`hawq.numerics.fold_bn`), the output is the integer ``sign(k)·x + b`` at the per-channel
    accumulator scale |k|·S, ``b`` = t / (|k|·S) rounded like a conv bias (``bias_bit``); the next
    :class:`QuantAct` requantizes it (IR op ``channel_affine``).

    Training runs the BatchNorm on batch statistics until it is folded (``fix_BN``, or after
    ``fix_BN_threshold`` steps, as :class:`QuantBnConv2d`), then emulates the integer affine."""

    def __init__(self, bn: nn.BatchNorm2d, config: QuantConfig):
        super().__init__()
        self.bn = bn
        self.profile, self.bias_bit = config.profile, config.bias_bit
        self.fix_BN, self.fix_BN_threshold = config.fix_BN, config.fix_BN_threshold
        self.register_buffer("fold_step", torch.zeros((), dtype=torch.int64))
        self.layer_name = ""

    @property
    def bn_folded(self) -> bool:
        return self.fix_BN or (self.fix_BN_threshold is not None and int(self.fold_step) >= self.fix_BN_threshold)

    def _fold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, t) per channel, float32 [C], as a conv's BN folding forms them."""
        bn = self.bn
        k, t = N.fold_bn(torch.ones(bn.num_features, 1, device=bn.running_var.device), None, bn.running_mean,
                         bn.running_var, bn.weight, bn.bias, bn.eps)
        return k.reshape(-1), t

    def _grid(self, scale_in: torch.Tensor, k: torch.Tensor, t: torch.Tensor):
        """(integer bias int64 [C] at the accumulator grid, accumulator scale |k|·S float64 [C]),
        |k| floored at MIN_RANGE (a channel with γ = 0 is its bias alone)."""
        mag = k.detach().abs().clamp(min=N.MIN_RANGE)
        b_int = N.quantize_bias(t, scale_in, mag, self.bias_bit, self.profile)
        return b_int, N.bias_scale(scale_in, mag, self.profile)

    def forward(self, x: Q) -> Q:
        if self.training:
            self.fold_step += 1
            if not self.bn_folded:
                return Q(self.bn(x.value), None)
        k, t = self._fold()
        nd = x.value.dim()
        if x.scale is None:
            return Q(x.value * N.channel_view(k, nd) + N.channel_view(t, nd), None)
        b_int, acc_scale = self._grid(x.scale, k, t)
        if self.training:       # k·x + |k|·S·b: the integer affine's value, b's rounding straight through
            b = N.straight_through(t, (b_int.double() * acc_scale).to(t.dtype))
            y = x.value * N.channel_view(k, nd) + N.channel_view(b, nd)
            return Q(y, acc_scale.to(y.dtype))
        sign = torch.where(k < 0, -1, 1).to(torch.int64)
        with torch.no_grad():
            z = x.value * N.channel_view(sign, nd) + N.channel_view(b_int, nd)
        rec = active()
        if rec:
            rec.add(ir.ChannelAffine, self.layer_name, [x.value], z, sign=sign.cpu(), bias=b_int.cpu())
        return Q(z, acc_scale.to(z.device))


def _channel_scale(scale: torch.Tensor | None, index) -> torch.Tensor | None:
    """A per-channel scale moved with its channels (``index``: a slice or an index tensor); a
    per-tensor scale is unchanged."""
    return scale if scale is None or scale.numel() == 1 else scale.reshape(-1)[index]


class QuantChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle (view, transpose, view) of a quantized value: channels and their
    grids move together (IR op ``channel_shuffle``)."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = int(groups)
        self.layer_name = ""

    def extra_repr(self) -> str:
        return f"groups={self.groups}"

    def forward(self, x: Q) -> Q:
        perm = torch.from_numpy(ir.shuffle_perm(x.value.shape[1], self.groups)).to(x.value.device)
        y = x.value.index_select(1, perm)
        if not self.training:
            rec = active()
            if rec:
                rec.add(ir.ChannelShuffle, self.layer_name, [x.value], y, groups=self.groups)
        return Q(y, _channel_scale(x.scale, perm.to(x.scale.device) if x.scale is not None else None))


class QuantSliceChannels(nn.Module):
    """Channels ``start`` … ``stop − 1`` of a quantized value (``chunk``/``split``; IR op ``slice_channels``)."""

    def __init__(self, start: int, stop: int):
        super().__init__()
        self.start, self.stop = int(start), int(stop)
        self.layer_name = ""

    def extra_repr(self) -> str:
        return f"channels={self.start}:{self.stop}"

    def forward(self, x: Q) -> Q:
        y = x.value[:, self.start:self.stop]
        if not self.training:
            y = y.contiguous()
            rec = active()
            if rec:
                rec.add(ir.SliceChannels, self.layer_name, [x.value], y, start=self.start, stop=self.stop)
        return Q(y, _channel_scale(x.scale, slice(self.start, self.stop)))


class QuantWindowAvgPool2d(nn.Module):
    """k×k average pool with zero padding counted (PyTorch's default ``count_include_pad=True``).

    Profile exact: the integer window *sum* at scale S/k², the 1/k² folded into the next requantization
    (one rounding, half up). Profile hawq: ``trunc(sum/k² + 0.01)`` at scale S, as its global pool.
    """

    def __init__(self, pool: nn.AvgPool2d, config: QuantConfig):
        super().__init__()
        if not pool.count_include_pad or pool.ceil_mode or pool.divisor_override:
            raise HawqError("only AvgPool2d(count_include_pad=True, ceil_mode=False) is supported")
        self.kernel, self.stride, self.padding = ir.pair(pool.kernel_size), ir.pair(pool.stride), ir.pair(pool.padding)
        self.profile = config.profile
        self.layer_name = ""

    def _sum(self, v: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(v, self.kernel, self.stride, self.padding, divisor_override=1)

    def forward(self, x: Q) -> Q:
        n = self.kernel[0] * self.kernel[1]
        trunc = self.profile.avgpool == "trunc_mean"
        if self.training:
            return _train_mean(F.avg_pool2d(x.value, self.kernel, self.stride, self.padding), x.scale, n, trunc)
        total = torch.round(self._sum(x.value.double())).to(torch.int64)   # float64 sums of ints: exact
        y = N.avgpool_trunc(total, n) if trunc else total
        rec = active()
        if rec:
            rec.add(ir.AvgPool2d, self.layer_name, [x.value], y, kernel=list(self.kernel), stride=list(self.stride),
                    padding=list(self.padding), divisor=n, mode="trunc_mean" if trunc else "sum")
        return Q(y, x.scale if trunc else x.scale / n)
