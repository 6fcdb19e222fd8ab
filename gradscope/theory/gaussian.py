"""Gaussian expectations E[f(X)], X ~ N(0, s²): closed forms and quadrature with an error estimate.

Quadrature: composite Gauss–Legendre in z = x/s on [-Z, Z], with panel edges at every kink of
f (where f or f' is not smooth), so each panel integrates an analytic function and converges
geometrically. Panels are halved until two successive estimates agree to 1e-15 relative; the
difference of the last two, plus a rounding bound, is the reported error. The Gaussian tail
beyond |z| = 38 weighs less than 1e-300 and is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gradscope.errors import SpecError

Z_MAX = 38.0
_ORDER = 24
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(_ORDER)
_EPS = float(np.finfo(float).eps)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Quadrature:
    """Values of several integrals sharing one set of nodes, with their error estimates."""

    values: tuple[float, ...]
    errors: tuple[float, ...]


# Activations do their bending within a few units of x = 0, whatever the input std. Edges at
# x = ±2^j (j = -10..8) grade the mesh toward that region, so a wide input (std 1e4: the bend
# of tanh is a sliver |z| < 0.002 of the Gaussian) is resolved as well as a narrow one.
_GRADED_X = tuple(2.0**j for j in range(-10, 9))


def _panels(kinks_z: Sequence[float], width: float, std: float = 1.0) -> np.ndarray:
    edges = set(np.arange(-Z_MAX, Z_MAX + width / 2, width).tolist())
    edges.update(float(k) for k in kinks_z if -Z_MAX < k < Z_MAX)
    if std > 2.0:  # narrower inputs: the unit panels already resolve the bend
        for x in _GRADED_X:
            z = x / std
            if z < Z_MAX:
                edges.update((z, -z))
    return np.array(sorted(edges))


def _nodes(
    kinks_z: Sequence[float], width: float, std: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z and weights w (Gaussian density folded in) for the composite rule."""
    edges = _panels(kinks_z, width, std)
    lo, hi = edges[:-1, None], edges[1:, None]
    half = (hi - lo) / 2.0
    z = (lo + hi) / 2.0 + half * _NODES[None, :]
    w = half * _WEIGHTS[None, :] * INV_SQRT_2PI * np.exp(-0.5 * z * z)
    return z.ravel(), w.ravel()


def integrate(
    funcs: Sequence[Callable[[np.ndarray], np.ndarray]],
    std: float = 1.0,
    kinks: Sequence[float] = (),
    rtol: float = 1e-15,
) -> Quadrature:
    """E[f(X)] for each f, X ~ N(0, std²), by composite Gauss–Legendre with panel halving.

    Args:
        funcs: NumPy-vectorised functions of x.
        std: the standard deviation of X (positive).
        kinks: points in x where some f or its derivative is not smooth.
        rtol: stop halving when successive estimates agree to this relative tolerance.

    Raises:
        SpecError: a function is not finite where the Gaussian has weight (E[f] does not exist).
    """
    if not std > 0 or not math.isfinite(std):
        raise SpecError(f"the input std must be positive and finite, got {std!r}")
    kinks_z = [k / std for k in kinks]
    width = 1.0
    previous: list[float] | None = None
    estimates: list[float] = []
    scales: list[float] = []
    for _ in range(8):
        z, w = _nodes(kinks_z, width, std)
        x = z * std
        estimates, scales = [], []
        with np.errstate(all="ignore"):
            for f in funcs:
                values = np.broadcast_to(np.asarray(f(x), dtype=float), x.shape)
                weighted = w * values
                live = w > 0
                if not np.all(np.isfinite(weighted[live])):
                    bad = float(x[live][~np.isfinite(weighted[live])][0])
                    raise SpecError(
                        f"the function is not finite at x = {bad:.6g} under N(0, {std:g}²), "
                        "so its Gaussian expectation does not exist"
                    )
                estimates.append(float(np.sum(weighted[live])))
                scales.append(float(np.sum(np.abs(weighted[live]))))
        if previous is not None and all(
            abs(a - b) <= rtol * max(abs(a), s * 1e-3)
            for a, b, s in zip(estimates, previous, scales, strict=True)
        ):
            break
        previous = estimates
        width /= 2.0
    assert previous is not None
    errors = tuple(
        abs(a - b) + 8.0 * _EPS * s for a, b, s in zip(estimates, previous, scales, strict=True)
    )
    return Quadrature(tuple(estimates), errors)


# Closed forms -------------------------------------------------------------------------------


def _phi(z: float) -> float:
    return 0.0 if math.isinf(z) else INV_SQRT_2PI * math.exp(-0.5 * z * z)


def _mass(a: float, b: float) -> float:
    """P(a < Z < b) for Z ~ N(0, 1), without cancellation in the tails."""
    if a >= 0:
        return 0.5 * (math.erfc(a / math.sqrt(2)) - math.erfc(b / math.sqrt(2)))
    if b <= 0:
        return 0.5 * (math.erfc(-b / math.sqrt(2)) - math.erfc(-a / math.sqrt(2)))
    return 1.0 - 0.5 * math.erfc(b / math.sqrt(2)) - 0.5 * math.erfc(-a / math.sqrt(2))


def _zphi(z: float) -> float:
    return 0.0 if math.isinf(z) else z * _phi(z)


def partial_moments(a: float, b: float, std: float) -> tuple[float, float, float]:
    """E[X^k; a < X < b] for k = 0, 1, 2 and X ~ N(0, std²), in closed form."""
    alpha, beta = a / std, b / std
    m0 = _mass(alpha, beta)
    m1 = std * (_phi(alpha) - _phi(beta))
    m2 = std * std * (m0 + _zphi(alpha) - _zphi(beta))
    return m0, m1, m2


def piecewise_linear_moments(
    pieces: Sequence[tuple[float, float, float, float]], std: float
) -> tuple[float, float, float]:
    """(E[g], E[g²], E[g'²]) for g = slope·x + intercept on each [lo, hi), in closed form."""
    mean = second = dsecond = 0.0
    for lo, hi, slope, intercept in pieces:
        m0, m1, m2 = partial_moments(lo, hi, std)
        mean += slope * m1 + intercept * m0
        second += slope * slope * m2 + 2 * slope * intercept * m1 + intercept * intercept * m0
        dsecond += slope * slope * m0
    return mean, second, dsecond
