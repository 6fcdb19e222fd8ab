"""Growth-rate fits with confidence intervals (pure numpy, no torch).

``fit_log_linear`` fits ``log(y) = a + b·x`` by least squares and reports the growth factor
``rate = exp(b)`` per unit of ``x`` with a Student-t confidence interval and R². The t
quantile is computed here (regularised incomplete beta + bisection) so that scipy stays an
optional test dependency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LogLinearFit:
    """Least-squares fit of ``log(y) = intercept + slope·x``.

    ``rate = exp(slope)`` is the factor by which ``y`` grows per unit of ``x``;
    ``ci_low``/``ci_high`` bound it at confidence ``level`` (NaN when ``n < 3``);
    ``r_squared`` is computed on the log scale (NaN when ``log y`` is constant).
    """

    rate: float
    ci_low: float
    ci_high: float
    r_squared: float
    n: int
    slope: float
    slope_se: float
    intercept: float
    level: float = 0.95


def fit_log_linear(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, level: float = 0.95
) -> LogLinearFit:
    """Fit ``log(y)`` against ``x`` by ordinary least squares.

    Args:
        x: positions (e.g. layer index), at least two distinct values.
        y: positive values, same length as ``x``.
        level: confidence level of the interval on the rate, in (0, 1).

    Returns:
        The fit; the interval is ``exp(slope ± t·se)`` with ``n - 2`` degrees of freedom.

    Raises:
        ValueError: lengths differ, fewer than two points, ``x`` constant, or ``y`` not
            all positive and finite.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-d of equal length, got {xs.shape} and {ys.shape}")
    n = int(xs.size)
    if n < 2:
        raise ValueError(f"a fit needs at least 2 points, got {n}")
    if not (np.all(np.isfinite(ys)) and np.all(ys > 0)):
        raise ValueError("y must be positive and finite for a log-linear fit")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    logy = np.log(ys)
    xm = xs.mean()
    dx = xs - xm
    sxx = float(dx @ dx)
    if sxx == 0:
        raise ValueError("x must take at least two distinct values")
    slope = float(dx @ (logy - logy.mean())) / sxx
    intercept = float(logy.mean() - slope * xm)
    resid = logy - (intercept + slope * xs)
    sse = float(resid @ resid)
    sst = float(((logy - logy.mean()) ** 2).sum())
    r_squared = 1.0 - sse / sst if sst > 0 else math.nan
    if n > 2:
        se = math.sqrt(sse / (n - 2) / sxx)
        t = student_t_quantile(0.5 + level / 2, n - 2)
        ci_low, ci_high = math.exp(slope - t * se), math.exp(slope + t * se)
    else:
        se, ci_low, ci_high = math.nan, math.nan, math.nan
    return LogLinearFit(
        rate=math.exp(slope),
        ci_low=ci_low,
        ci_high=ci_high,
        r_squared=r_squared,
        n=n,
        slope=slope,
        slope_se=se,
        intercept=intercept,
        level=level,
    )


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution (bisection on the CDF, ~1e-12 absolute)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if df <= 0:
        raise ValueError(f"df must be positive, got {df}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)
