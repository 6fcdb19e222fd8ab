"""Statistics of measurements (no torch): mergeable per-layer statistics over repeats, and
every growth-rate fit gradscope makes.

:class:`LayerStats` keeps sufficient statistics (count, sums, sums of squares) plus the
per-repeat gradient norms that the bootstrap needs (depth × repeats floats). Two partial
results merge exactly: :meth:`LayerStats.merge` concatenates and adds, in repeat order.

Fits: one least-squares core, :func:`_ols`, behind :func:`log_linear_rate` (simulate's rate
from the last layer to the first), :func:`fit_log_linear` (with a Student-t interval, for
checkpoints) and the vectorised slopes of :func:`bootstrap_rate_ci`. Student-t quantiles come
from :mod:`gradscope.theory.student_t`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gradscope.theory.student_t import student_t_quantile


@dataclass
class LayerStats:
    """Running statistics of one configuration; arrays have shape (depth,) per repeat."""

    depth: int
    count: int = 0
    grad_sum: np.ndarray = field(init=False)
    grad_sumsq: np.ndarray = field(init=False)
    forward_var_sum: np.ndarray = field(init=False)
    backward_var_sum: np.ndarray = field(init=False)
    # Conv nets: variance of the max-pool's input and of the derivative there (NaN: no pool).
    pool_input_var_sum: np.ndarray = field(init=False)
    pool_input_backward_var_sum: np.ndarray = field(init=False)
    # Per-repeat gradient norms, one (depth,) row per repeat, in repeat order.
    norms: list[np.ndarray] = field(default_factory=list)
    nonfinite_repeats: int = 0
    # First layer (in the order the computation reaches it) with an inf/NaN value, per pass.
    overflow_layer: int | None = None

    def __post_init__(self) -> None:
        zeros = np.zeros(self.depth, dtype=np.float64)
        self.grad_sum = zeros.copy()
        self.grad_sumsq = zeros.copy()
        self.forward_var_sum = zeros.copy()
        self.backward_var_sum = zeros.copy()
        self.pool_input_var_sum = zeros.copy()
        self.pool_input_backward_var_sum = zeros.copy()

    def add(
        self,
        grad_norm: np.ndarray,
        forward_var: np.ndarray,
        backward_var: np.ndarray,
        overflow_layer: int | None = None,
        pool_input_var: np.ndarray | None = None,
        pool_input_backward_var: np.ndarray | None = None,
    ) -> None:
        """Add one repeat (arrays of shape (depth,), layer 1 first; pool arrays NaN where no
        pool follows the layer, or None for none at all)."""
        g = np.asarray(grad_norm, dtype=np.float64)
        self.count += 1
        self.grad_sum += g
        self.grad_sumsq += g * g
        self.forward_var_sum += forward_var
        self.backward_var_sum += backward_var
        if pool_input_var is not None:
            self.pool_input_var_sum += pool_input_var
        if pool_input_backward_var is not None:
            self.pool_input_backward_var_sum += pool_input_backward_var
        self.norms.append(g)
        if overflow_layer is not None:
            self.nonfinite_repeats += 1
            self.overflow_layer = _first(self.overflow_layer, overflow_layer)

    def merge(self, other: LayerStats) -> LayerStats:
        """Statistics of both parts (``self``'s repeats first)."""
        out = LayerStats(self.depth)
        out.count = self.count + other.count
        out.grad_sum = self.grad_sum + other.grad_sum
        out.grad_sumsq = self.grad_sumsq + other.grad_sumsq
        out.forward_var_sum = self.forward_var_sum + other.forward_var_sum
        out.backward_var_sum = self.backward_var_sum + other.backward_var_sum
        out.pool_input_var_sum = self.pool_input_var_sum + other.pool_input_var_sum
        out.pool_input_backward_var_sum = (
            self.pool_input_backward_var_sum + other.pool_input_backward_var_sum
        )
        out.norms = [*self.norms, *other.norms]
        out.nonfinite_repeats = self.nonfinite_repeats + other.nonfinite_repeats
        out.overflow_layer = _first(self.overflow_layer, other.overflow_layer)
        return out

    def norm_matrix(self) -> np.ndarray:
        """(repeats, depth) per-repeat gradient norms."""
        if not self.norms:
            return np.empty((0, self.depth))
        return np.stack(self.norms)

    def summary(self, level: float = 0.95) -> LayerSummary:
        n = self.count
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            mean = self.grad_sum / n
            if n > 1:
                var = (self.grad_sumsq - n * mean * mean) / (n - 1)
                std = np.sqrt(np.maximum(var, 0.0))
                # Sums of squares lose digits when the spread is tiny: recompute exactly.
                mat = self.norm_matrix()
                if np.all(np.isfinite(mat)):
                    std = mat.std(axis=0, ddof=1)
                sem = std / math.sqrt(n)
                t = student_t_quantile(0.5 + level / 2, n - 1)
                # A norm is never negative: the interval is cut at 0 (few repeats, wide t).
                ci_low, ci_high = np.maximum(mean - t * sem, 0.0), mean + t * sem
            else:
                std = sem = ci_low = ci_high = np.full(self.depth, np.nan)
            return LayerSummary(
                mean=mean,
                std=std,
                sem=sem,
                ci_low=ci_low,
                ci_high=ci_high,
                forward_var=self.forward_var_sum / n,
                backward_var=self.backward_var_sum / n,
                pool_input_var=self.pool_input_var_sum / n,
                pool_input_backward_var=self.pool_input_backward_var_sum / n,
            )


def _first(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@dataclass(frozen=True)
class LayerSummary:
    mean: np.ndarray
    std: np.ndarray
    sem: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    forward_var: np.ndarray
    backward_var: np.ndarray
    pool_input_var: np.ndarray
    pool_input_backward_var: np.ndarray


def _ols(x: np.ndarray, logy: np.ndarray) -> tuple[float, float, float, float]:
    """Least squares of ``logy`` on ``x``: (slope, sxx, residual SS, total SS); ``x`` must
    take two distinct values."""
    dx = x - x.mean()
    sxx = float(dx @ dx)
    centred = logy - logy.mean()
    slope = float(dx @ centred) / sxx
    resid = centred - slope * dx
    return slope, sxx, float(resid @ resid), float((centred**2).sum())


def _r_squared(sse: float, sst: float) -> float:
    return 1.0 - sse / sst if sst > 0 else math.nan


def log_linear_rate(values: np.ndarray) -> tuple[float, float]:
    """Per-layer growth from the last layer to the first, and R² of the log-linear fit.

    ``values[i]`` belongs to layer i+1; the fit is log(values) = a + b·(L − l) over the finite
    positive values, rate = exp(b). NaN when fewer than two such values remain.
    """
    y = np.asarray(values, dtype=np.float64)
    steps = np.arange(y.size, 0, -1, dtype=np.float64) - 1.0  # L − l
    ok = np.isfinite(y) & (y > 0)
    if ok.sum() < 2:
        return math.nan, math.nan
    slope, _, sse, sst = _ols(steps[ok], np.log(y[ok]))
    return math.exp(slope), _r_squared(sse, sst)


def bootstrap_rate_ci(
    norms: np.ndarray, seed: int, resamples: int = 1000, level: float = 0.95, chunk: int = 250
) -> tuple[float, float]:
    """Percentile bootstrap CI of the fitted rate of the mean norms, resampling repeats.

    Args:
        norms: (repeats, depth) per-repeat gradient norms.
        seed: seeds the resampling (NumPy's generator), so the CI is reproducible.

    Returns:
        (low, high); NaN when fewer than two repeats or two usable layers.
    """
    n, depth = norms.shape
    cols = np.all(np.isfinite(norms), axis=0) & np.all(norms > 0, axis=0)
    if n < 2 or cols.sum() < 2:
        return math.nan, math.nan
    data = norms[:, cols]
    steps = (depth - 1.0 - np.arange(depth, dtype=np.float64))[cols]
    dx = steps - steps.mean()
    sxx = float(dx @ dx)
    rng = np.random.default_rng(seed)
    slopes = []
    done = 0
    while done < resamples:
        m = min(chunk, resamples - done)
        idx = rng.integers(0, n, size=(m, n))
        counts = np.bincount((idx + n * np.arange(m)[:, None]).ravel(), minlength=m * n)
        means = counts.reshape(m, n).astype(np.float64) @ data / n  # (m, usable layers)
        logm = np.log(means)
        slopes.append((logm - logm.mean(axis=1, keepdims=True)) @ dx / sxx)
        done += m
    s = np.concatenate(slopes)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(s, [alpha, 1.0 - alpha])
    return math.exp(float(low)), math.exp(float(high))


def half_rates(values: np.ndarray) -> tuple[float, float]:
    """Fitted rates over the half of the layers nearest the input and the half nearest the output.

    With depth L the first half is layers 1..⌈L/2⌉ and the last half ⌊L/2⌋+1..L.
    """
    y = np.asarray(values, dtype=np.float64)
    depth = y.size
    if depth < 4:
        return math.nan, math.nan
    first = log_linear_rate(y[: (depth + 1) // 2])[0]
    last = log_linear_rate(y[depth // 2 :])[0]
    return first, last


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
    if np.all(xs == xs[0]):
        raise ValueError("x must take at least two distinct values")
    logy = np.log(ys)
    slope, sxx, sse, sst = _ols(xs, logy)
    intercept = float(logy.mean() - slope * xs.mean())
    r_squared = _r_squared(sse, sst)
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
