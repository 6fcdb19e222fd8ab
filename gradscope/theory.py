"""What theory predicts for the per-layer gradient norms of a ``simulate`` configuration (no torch).

Every prediction is the gradient norm at layer l relative to the last layer,
``relative[l] = predicted[l] / predicted[L]``, anchored on the measured last layer by the engine.
Nothing here is fitted to a measurement.

- plain + BatchNorm: each layer multiplies the backward/forward ratio by
  r(g) = E[g'(X)²] / Var[g(X)] (the paper's Equation (1), with its typo E[g']² corrected), so
  relative[l] = sqrt(r)^(L−l). BatchNorm makes the weight gradient scale-free, so the first
  layer (raw N(0, I) input) sits on the same line.
- plain + LayerNorm: LayerNorm divides each sample by its RMS over units, which, unlike
  BatchNorm, keeps the mean of g: the mean-field rate is sqrt(E[g'(X)²] / E[g(X)²]).
- plain, no normalisation: the mean-field recursion of Poole et al. (2016):
  q_l = σ_w² m_{l−1}, m_l = E[g(√q_l Z)²], m_0 = 1, χ_l = σ_w² E[g'(√q_l Z)²]; the derivative
  variance grows by χ_l per layer and the weight gradient of layer l scales with the input's
  second moment, so relative[l]² = (Π_{k=l}^{L−1} χ_k) · m_{l−1} / m_{L−1}. At the fixed
  point q* this is √χ per layer; the recursion also covers the first layers, off it.
- resnet: no closed form. The activation after the addition makes the block's input
  non-Gaussian, so the per-operator ratios do not compose; the prediction is left empty.
  With zero-γ the branch weights get exactly zero gradient, which is predicted exactly.
- identity init with a non-linear activation: the units are never mixed, so the Gaussian
  theory does not apply; left empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradscope.nets import Arch, Init, NetSpec, Norm, ResidualScale
from gradscope.ratios import activation_moments
from gradscope.stats import log_linear_rate


@dataclass(frozen=True)
class Prediction:
    """Per-layer ``relative`` norms (layer 1 first), or None with ``basis`` saying why."""

    relative: tuple[float, ...] | None
    rate: float | None
    basis: str


def _moments(spec: NetSpec, std: float) -> tuple[float, float]:
    """(E[g(std·Z)²], E[g'(std·Z)²])."""
    act = spec.activation
    pieces = act.pieces()
    raw = None if pieces is None else [(p.lo, p.hi, p.slope, p.intercept) for p in pieces]
    m = activation_moments(act.g, act.dg, std, act.kinks(), raw)
    return m.second, m.grad_second


def _from_log_relative(log_rel: np.ndarray, basis: str) -> Prediction:
    rel = np.exp(log_rel - log_rel[-1])
    rate, _ = log_linear_rate(rel)
    if not np.all(np.isfinite(rel)):
        return Prediction(None, None, "none: overflows float64 at this depth")
    return Prediction(tuple(float(v) for v in rel), rate, basis)


def predict(spec: NetSpec) -> Prediction:
    """The theory's per-layer gradient norms relative to the last layer, or why there is none."""
    depth = spec.depth
    steps = np.arange(depth - 1, -1, -1, dtype=np.float64)  # L − l for l = 1..L
    if spec.arch is Arch.resnet:
        if spec.residual_scale is ResidualScale.zero_gamma:
            return Prediction(
                tuple(0.0 for _ in range(depth)),
                None,
                "exact zero: γ = 0 blocks the branch gradients",
            )
        return Prediction(
            None,
            None,
            "none: no closed form for resnet",
        )
    if spec.init is Init.identity and spec.activation.name != "identity":
        return Prediction(None, None, "none: identity init does not mix units")
    if spec.norm is Norm.batchnorm:
        second, grad_second = _moments(spec, 1.0)
        act = spec.activation
        pieces = act.pieces()
        raw = None if pieces is None else [(p.lo, p.hi, p.slope, p.intercept) for p in pieces]
        mean = activation_moments(act.g, act.dg, 1.0, act.kinks(), raw).mean
        variance = second - mean * mean
        if not (variance > 0 and grad_second > 0):
            return Prediction(None, None, "none: activation passes no signal")
        r = grad_second / variance
        return _from_log_relative(0.5 * math.log(r) * steps, "sqrt(r): batchnorm")
    if spec.norm is Norm.layernorm:
        second, grad_second = _moments(spec, 1.0)
        if not (second > 0 and grad_second > 0):
            return Prediction(None, None, "none: activation passes no signal")
        rate = math.sqrt(grad_second / second)
        return _from_log_relative(math.log(rate) * steps, "mean field: layernorm")
    return _mean_field(spec)


def _mean_field(spec: NetSpec) -> Prediction:
    depth, s2 = spec.depth, spec.sigma_w2
    cache: dict[float, tuple[float, float]] = {}
    m_prev = 1.0  # second moment of the N(0, I) input
    log_m = [0.0]  # log m_0 .. log m_{L−1}
    log_chi = []  # log χ_1 .. log χ_L
    for _ in range(depth):
        q = s2 * m_prev
        if not (math.isfinite(q) and q > 0):
            return Prediction(None, None, "none: mean-field variance overflows")
        key = float(f"{q:.15g}")
        if key not in cache:
            cache[key] = _moments(spec, math.sqrt(q))
        m, gs = cache[key]
        if not (m > 0 and gs > 0 and math.isfinite(m)):
            return Prediction(None, None, "none: mean-field variance vanishes or overflows")
        log_chi.append(math.log(s2 * gs))
        log_m.append(math.log(m))
        m_prev = m
    # log relative²[l] = Σ_{k=l}^{L−1} log χ_k + log m_{l−1} − log m_{L−1}
    chi = np.array(log_chi)
    tail = np.concatenate([np.cumsum(chi[:-1][::-1])[::-1], [0.0]])  # Σ_{k=l}^{L−1}
    lm = np.array(log_m[:depth])
    log_rel = 0.5 * (tail + lm - lm[-1])
    return _from_log_relative(
        log_rel,
        "mean field: no norm",
    )
