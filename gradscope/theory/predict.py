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
- plain-conv (and the plain MLP, as its 1×1, one-position case) with BatchNorm or LayerNorm:
  the per-element recursion of :func:`_normalised_recursion`. A norm makes the weight
  gradient scale-free, E‖∂W_l‖² ≈ C_l · B · P_l · D_l / Var[w_l], where D_l is the second
  moment of the derivative at layer l's norm output and P_l the positions the conv sums over;
  D_l = A_l · E_l with A = E[g'(Z)²] and E_l = (C_{l+1}/C_l) · D_{l+1} / V_l the derivative at
  layer l+1's input, V the variance (BatchNorm) or second moment (LayerNorm) of g(Z). A 2×2
  max-pool after layer l replaces Z by M, the max of 4 iid N(0, 1), and routes the derivative
  to one input in four: A = E[g'(M)²]/4, V = Var[g(M)] (for a non-decreasing g, for which
  max and g commute). Zero padding changes forward and backward alike and cancels to first
  order. ``backward_relative`` is E_{l−1} relative to the last layer.
- resnet-conv: none, as resnet (exact zeros with zero-γ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradscope.options import Init, Norm, ResidualScale
from gradscope.specs import NetSpec
from gradscope.theory.ratios import activation_moments
from gradscope.theory.stats import log_linear_rate


@dataclass(frozen=True)
class Prediction:
    """Per-layer ``relative`` norms (layer 1 first), or None with ``basis`` saying why."""

    relative: tuple[float, ...] | None
    rate: float | None
    basis: str
    # Derivative variance at each layer's input relative to the last layer's, when derived.
    backward_relative: tuple[float, ...] | None = None
    # (forward, backward) ratio of a 2×2 max-pool after the activation, when derived.
    pool_ratios: tuple[float, float] | None = None


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
    if spec.arch.is_resnet:
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
    if spec.arch.is_conv:
        if spec.norm is Norm.none:
            return Prediction(None, None, "none: no closed form for conv nets without a norm")
        return _normalised_recursion(spec)
    if spec.norm is not Norm.none:
        base = _predict_mlp(spec, steps)
        rec = _normalised_recursion(spec)
        return Prediction(base.relative, base.rate, base.basis, rec.backward_relative)
    return _mean_field(spec)


def _predict_mlp(spec: NetSpec, steps: np.ndarray) -> Prediction:
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


def _is_non_decreasing(spec: NetSpec) -> bool:
    grid = np.linspace(-12.0, 12.0, 24001)
    values = np.asarray(spec.activation.g(grid), dtype=np.float64)
    return bool(np.all(np.diff(values) >= -1e-12 * np.maximum(1.0, np.abs(values[1:]))))


def max_activation_moments(spec: NetSpec, k: int = 4) -> tuple[float, float, float]:
    """(E[g(M)], E[g(M)²], E[g'(M)²]) for M the max of k iid N(0, 1), by quadrature."""
    from gradscope.activations import norm_cdf
    from gradscope.theory.gaussian import integrate

    act = spec.activation

    def dens(x: np.ndarray) -> np.ndarray:
        return k * norm_cdf(x) ** (k - 1)

    q = integrate(
        [
            lambda x: act.g(x) * dens(x),
            lambda x: act.g(x) ** 2 * dens(x),
            lambda x: act.dg(x) ** 2 * dens(x),
        ],
        kinks=act.kinks(),
    )
    mean, second, grad_second = q.values
    return float(mean), float(second), float(grad_second)


def _normalised_recursion(spec: NetSpec) -> Prediction:
    """Per-element variances through conv (or linear) → norm → activation [→ 2×2 max-pool]."""
    from gradscope.specs import conv_weight_std

    act = spec.activation
    pieces = act.pieces()
    raw = None if pieces is None else [(p.lo, p.hi, p.slope, p.intercept) for p in pieces]
    m = activation_moments(act.g, act.dg, 1.0, act.kinks(), raw)
    centred = spec.norm is Norm.batchnorm
    v_plain = m.second - m.mean**2 if centred else m.second
    a_plain = m.grad_second
    pools = set(spec.pools_after)
    pool_ratios = None
    v_pool = a_pool = math.nan
    if pools:
        if not _is_non_decreasing(spec):
            return Prediction(
                None,
                None,
                f"none: max-pool theory needs a non-decreasing activation, not {act.label}",
            )
        mean_m, second_m, grad_second_m = max_activation_moments(spec)
        v_pool = second_m - mean_m**2 if centred else second_m
        a_pool = grad_second_m / 4.0
        if centred:
            pool_ratios = ((second_m - mean_m**2) / (m.second - m.mean**2), 0.25)
    if not (v_plain > 0 and a_plain > 0):
        return Prediction(None, None, "none: activation passes no signal")
    depth, ch, pos = spec.depth, spec.channels, spec.spatial
    # Per layer l = 1..L (index l−1): V_l of its output, A_l of its activation(+pool).
    log_v = [math.log(v_pool if (i + 1) in pools else v_plain) for i in range(depth)]
    log_a = [math.log(a_pool if (i + 1) in pools else a_plain) for i in range(depth)]
    log_d = [0.0] * depth  # log D_l, D_L = 1
    log_e = [0.0] * depth  # log E_{l−1}: derivative at layer l's input
    for i in range(depth - 1, -1, -1):
        if i < depth - 1:
            log_d[i] = log_a[i] + log_e[i + 1]
        v_in = 0.0 if i == 0 else log_v[i - 1]  # the N(0, 1) input has V = 1
        log_e[i] = math.log(ch[i + 1] / ch[i]) + log_d[i] - v_in
    log_g2 = []
    for i in range(depth):
        if spec.arch.is_conv:
            var_w = conv_weight_std(spec, ch[i], ch[i + 1]) ** 2
        else:
            var_w = spec.weight_std**2
        log_g2.append(math.log(ch[i + 1] * pos[i] / var_w) + log_d[i])
    grad = _from_log_relative(
        0.5 * np.array(log_g2),
        f"per-element recursion: {spec.norm.value}" + (", 2x2 max-pools" if pools else ""),
    )
    back = np.exp(np.array(log_e) - log_e[-1])
    backward = tuple(float(v) for v in back) if np.all(np.isfinite(back)) else None
    return Prediction(grad.relative, grad.rate, grad.basis, backward, pool_ratios)


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
