"""LQ-Net's learned quantizers (Zhang et al., "LQ-Nets", ECCV 2018) on an integer basis - pure functions.

A K-bit LQ-Net quantizer writes a value as ``v · b``: a learned basis ``v`` (float, [K]) and a code
``b`` in {0, 1}^K (activations after a ReLU, one basis per tensor) or {-1, +1}^K (weights, one
basis per output channel). The level of a value is the nearest of the 2^K values ``v · b``; the
basis is learned by quantization-error minimization (QEM, the paper's Algorithm 1): with the codes
of the current batch fixed, ``v`` solves the least-squares problem min ||B v - x||², and the stored
basis follows it by an exponential moving average.

Integer-exact form (the issue's "dyadic basis", docs/numerics.md §19): the basis used in the forward
pass is held on an integer grid, ``v = s · c`` with integer coefficients ``c >= 1`` and
``s = Σ v / (limit - K)``, so ``Σ c <= limit`` (limit 255 for activations: uint8; 127 for weights:
int8). Every level ``c · b`` is then an integer:

* an activation's integer is ``table[t]`` with ``t = clip(round(x / s), 0, 255)`` its uniform
  requantization (the usual dyadic :class:`hawq.ir.Requant`) and ``table`` the nearest level of each
  ``t`` (:func:`activation_table`, an :class:`hawq.ir.Lut`);
* a weight's integer is the level nearest to ``w / s`` (:func:`snap`).

The exported program is an ordinary integer program (uint8 activations, int8 weights, one table per
LQ-Net activation), so the reference, TVM and ONNX Runtime run it unchanged. With one weight basis
(K = 1) the coefficient is 1: the weights are the sign grid ±1 with scale ``v`` (XNOR-Net's α·sign(W),
α learned by QEM, which is mean|W| at its fixed point).
"""
from __future__ import annotations

import itertools

import torch

__all__ = ["MAX_BASES", "ACT_LIMIT", "WEIGHT_LIMIT", "QEM_MOMENTUM", "QEM_INIT_STEPS", "QEM_SAMPLES", "INIT_QUANTILE", "integer_basis", "codes",
           "levels", "snap", "activation_table", "qem_solve", "initial_basis", "fit_basis", "qem_step", "next_basis"]

#: Largest number of bases (bits) an LQ-Net quantizer takes; wider layers quantize as min/max.
MAX_BASES = 4
#: Integer ranges of the levels: uint8 activations [0, 255], int8 weights [-127, 127].
ACT_LIMIT, WEIGHT_LIMIT = 255, 127
#: Exponential average of the QEM solutions (the stored basis moves 10 % of the way each step).
QEM_MOMENTUM = 0.9
#: QEM iterations on the first batch, from the uniform start (Lloyd-style; converges in a few).
QEM_INIT_STEPS = 5
#: Values per row a QEM step fits (every n-th of a larger row): K <= 4 unknowns need no more, and
#: an activation batch of 2M values made QEM half of a resnet20 training step.
QEM_SAMPLES = 1 << 16


def integer_basis(basis: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The basis on the integer grid: ``(s float32 [...], c int64 [..., K])`` with ``basis ≈ s · c``.

    ``basis``: float [..., K] (> 0). K = 1: ``c = 1``, ``s = basis`` (the sign grid for weights).
    K > 1: ``s = Σ basis / (limit - K)``, ``c = max(1, round(basis / s))``; then ``Σ c <= limit``
    (each rounding adds at most 1/2, each clamp at most 1 to a term below 1/2)."""
    v = basis.detach().float().clamp(min=1e-12)
    k = v.shape[-1]
    if k == 1:
        return v[..., 0].clone(), torch.ones_like(v, dtype=torch.int64)
    s = v.sum(-1) / (limit - k)
    c = torch.round(v / s.unsqueeze(-1)).clamp(min=1).to(torch.int64)
    return s, c


def codes(k: int, signed: bool, device=None) -> torch.Tensor:
    """All 2^k codes, float32 [2^k, k]: entries {0, 1} (activations) or {-1, +1} (``signed``)."""
    b = torch.tensor(list(itertools.product((0, 1), repeat=k)), dtype=torch.float32, device=device)
    return 2 * b - 1 if signed else b


def levels(coeff: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values int64 [..., 2^K] ascending, code float32 [..., 2^K, K])``: the integer levels ``c · b``
    of every code ``b`` and those codes in the same order."""
    b = codes(coeff.shape[-1], signed, coeff.device)                       # [2^K, K]
    vals = (coeff.to(torch.float32).unsqueeze(-2) * b).sum(-1).round().to(torch.int64)   # [..., 2^K]
    vals, order = torch.sort(vals, dim=-1, stable=True)
    return vals, b[order]


def snap(u: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index of the level nearest to each of ``u`` (float or int, [..., N]) among ``values``
    (int64 [..., L] ascending, the same leading dims, or [L]): int64 [..., N]. A value halfway
    between two levels takes the upper one (half up, as every requantization of docs/numerics.md)."""
    mids = (values[..., 1:] + values[..., :-1]).to(torch.float64) / 2          # [..., L-1]
    x = u.to(torch.float64)
    if mids.dim() == 1:
        return torch.bucketize(x, mids, right=True)
    return torch.searchsorted(mids.contiguous(), x.contiguous(), right=True)


def activation_table(coeff: torch.Tensor, limit: int = ACT_LIMIT) -> tuple[torch.Tensor, torch.Tensor]:
    """For an activation basis ``c`` (int64 [K]): ``(table int64 [limit + 1], index int64 [limit + 1])``,
    the nearest level of every uniform integer ``t`` in [0, limit] and that level's code index."""
    vals, _ = levels(coeff, signed=False)
    t = torch.arange(limit + 1, device=coeff.device)
    idx = snap(t, vals)
    return vals[idx], idx


def qem_solve(x: torch.Tensor, b: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """One QEM basis step: ``argmin_v ||b v - x||² + λ ||v - old||²`` per row.

    ``x`` float [R, N] (the values), ``b`` float [R, N, K] (their codes), ``old`` float [R, K]. The small
    ridge toward ``old`` (λ = 1e-6·N) keeps a basis element no value used where it was instead of
    making the system singular. Returns float32 [R, K], each element > 0 (a non-positive solution
    keeps ``old``)."""
    x, b, old = x.double(), b.double(), old.double()
    lam = 1e-6 * x.shape[-1] + 1e-12
    eye = torch.eye(b.shape[-1], dtype=torch.float64, device=b.device)
    gram = torch.einsum("rnk,rnj->rkj", b, b) + lam * eye
    rhs = torch.einsum("rnk,rn->rk", b, x) + lam * old
    v = torch.linalg.solve(gram, rhs.unsqueeze(-1)).squeeze(-1)
    ok = torch.isfinite(v) & (v > 0)
    return torch.where(ok, v, old).float()


#: Quantile of |x| the first basis puts its top level at (the maximum is an outlier: with one basis
#: and codes {0, 1} a start at the maximum is a fixed point of QEM where every activation is 0).
INIT_QUANTILE = 0.99


def initial_basis(x: torch.Tensor, k: int, signed: bool) -> torch.Tensor:
    """The uniform start ``v_j = 2^j · s0`` per row of ``x`` (float [R, N]): float32 [R, k]. The levels
    then span [0, q] for codes {0, 1}, ±q for codes ±1, q the :data:`INIT_QUANTILE` of the row's |x|
    (of every n-th value of a long row, as :func:`fit_basis`)."""
    v = x.detach().float()[..., ::-(-x.shape[-1] // QEM_SAMPLES)]
    top = torch.quantile(v.abs() if signed else v.clamp(min=0), INIT_QUANTILE, dim=-1)
    s0 = top.clamp(min=1e-8) / ((1 << k) - 1)                # the top level Σ 2^j · s0 = q
    return s0.unsqueeze(-1) * (2.0 ** torch.arange(k, device=x.device, dtype=torch.float32))


def fit_basis(x: torch.Tensor, basis: torch.Tensor, signed: bool, steps: int = 1) -> torch.Tensor:
    """``steps`` QEM iterations on the float basis (no integer grid): codes of ``x`` (float [R, N]) for
    the current ``basis`` (float [R, K]), then :func:`qem_solve`. Rows longer than
    :data:`QEM_SAMPLES` are fitted on every n-th value (deterministic: no random numbers drawn).
    Returns float32 [R, K]."""
    stride = -(-x.shape[-1] // QEM_SAMPLES)
    x = x[..., ::stride]
    v = basis
    for _ in range(steps):
        b = codes(v.shape[-1], signed, x.device)                      # [2^K, K]
        vals = v.unsqueeze(-2) @ b.T                                   # [R, 1, 2^K]
        vals, order = torch.sort(vals.squeeze(-2), dim=-1)
        mids = (vals[..., 1:] + vals[..., :-1]) / 2
        idx = torch.searchsorted(mids.contiguous(), x.detach().float().contiguous(), right=True)
        bits = b[order.gather(-1, idx)]                                # [R, N, K]
        v = qem_solve(x.detach(), bits, v)
    return v


def qem_step(x: torch.Tensor, basis: torch.Tensor, signed: bool, momentum: float = QEM_MOMENTUM) -> torch.Tensor:
    """A training step's basis update: the moving average of the stored ``basis`` (float [R, K]) and
    one QEM solution on ``x`` (float [R, N]). Returns float32 [R, K]."""
    return momentum * basis + (1 - momentum) * fit_basis(x, basis, signed)


def next_basis(x: torch.Tensor, basis: torch.Tensor, signed: bool, moving: bool) -> torch.Tensor | None:
    """The basis after a training step on ``x`` (float [R, N]) from ``basis`` (float [R, K]): on the
    first batch (an element not yet > 0) the uniform start and :data:`QEM_INIT_STEPS` iterations,
    else one :func:`qem_step` when ``moving``; None when the basis stays (frozen)."""
    if not bool((basis > 0).all()):
        return fit_basis(x, initial_basis(x, basis.shape[-1], signed), signed, QEM_INIT_STEPS)
    return qem_step(x, basis, signed) if moving else None

