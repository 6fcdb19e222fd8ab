"""gradscope.theory.stats.fit_log_linear (inspect-checkpoint's fits) against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gradscope.theory.stats import fit_log_linear
from gradscope.theory.student_t import student_t_cdf, student_t_quantile


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 14, 30, 100, 1000])
@pytest.mark.parametrize("p", [0.5, 0.6, 0.9, 0.975, 0.995])
def test_t_quantile_matches_scipy(df: int, p: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-10, abs=1e-12)
    assert student_t_quantile(1 - p, df) == pytest.approx(stats.t.ppf(1 - p, df), abs=1e-10)
    assert student_t_cdf(1.7, df) == pytest.approx(stats.t.cdf(1.7, df), rel=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(3, 40),
    slope=st.floats(-1.0, 1.0),
    noise=st.floats(0.01, 0.5),
    seed=st.integers(0, 2**16),
)
def test_fit_matches_linregress(n: int, slope: float, noise: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.arange(n, dtype=float) + rng.normal(0, 0.1, n)
    y = np.exp(0.3 + slope * x + noise * rng.normal(size=n))
    fit = fit_log_linear(x, y)
    ref = stats.linregress(x, np.log(y))
    t = stats.t.ppf(0.975, n - 2)
    assert fit.n == n
    assert math.log(fit.rate) == pytest.approx(ref.slope, rel=1e-9, abs=1e-12)
    assert fit.intercept == pytest.approx(ref.intercept, rel=1e-9, abs=1e-9)
    assert math.log(fit.ci_low) == pytest.approx(ref.slope - t * ref.stderr, rel=1e-7, abs=1e-9)
    assert math.log(fit.ci_high) == pytest.approx(ref.slope + t * ref.stderr, rel=1e-7, abs=1e-9)
    assert fit.r_squared == pytest.approx(ref.rvalue**2, rel=1e-9, abs=1e-12)


def test_exact_growth_and_two_points() -> None:
    fit = fit_log_linear([1, 2, 3, 4], [2, 4, 8, 16])
    assert fit.rate == pytest.approx(2.0, rel=1e-14)
    assert fit.r_squared == pytest.approx(1.0)
    assert fit.ci_low == pytest.approx(2.0) and fit.ci_high == pytest.approx(2.0)
    two = fit_log_linear([0, 1], [1.0, 3.0])
    assert two.rate == pytest.approx(3.0) and math.isnan(two.ci_low) and math.isnan(two.ci_high)


@pytest.mark.parametrize(
    "x, y",
    [([1], [1.0]), ([1, 2], [1.0, -1.0]), ([1, 1, 1], [1.0, 2.0, 3.0]), ([1, 2], [1.0])],
)
def test_invalid_input(x: list, y: list) -> None:
    with pytest.raises(ValueError):
        fit_log_linear(x, y)
