"""simulate's statistics and theory: measured rates against constants computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, stats

from gradscope.activations import SELU_ALPHA, SELU_SCALE, parse_activation
from gradscope.api import simulate
from gradscope.options import Arch, Init, Norm
from gradscope.specs import NetSpec
from gradscope.theory.predict import predict
from gradscope.theory.stats import LayerStats, bootstrap_rate_ci, half_rates, log_linear_rate

RELU_RATE = math.sqrt(math.pi / (math.pi - 1))  # 1.2112, computed here, not by gradscope


def spec(activation: str, norm: str, init: str = "he", arch: str = "plain", depth: int = 20):
    return NetSpec(
        arch=Arch(arch),
        activation=parse_activation(activation),
        norm=Norm(norm),
        init=Init(init),
        gain=1.0,
        depth=depth,
        width=256,
        batch=128,
    )


def gauss(f, std: float = 1.0) -> float:
    return integrate.quad(lambda z: f(std * z) * stats.norm.pdf(z), -12, 12, limit=200)[0]


def test_batchnorm_prediction_is_sqrt_r() -> None:
    p = predict(spec("relu", "batchnorm"))
    assert p.rate == pytest.approx(RELU_RATE, rel=1e-12)
    assert p.relative is not None
    assert p.relative[0] == pytest.approx(RELU_RATE**19, rel=1e-12)
    tanh_r = gauss(lambda x: (1 - np.tanh(x) ** 2) ** 2) / gauss(lambda x: np.tanh(x) ** 2)
    assert predict(spec("tanh", "batchnorm")).rate == pytest.approx(math.sqrt(tanh_r), rel=1e-8)


def test_mean_field_without_norm() -> None:
    # ReLU with He: every q is a fixed point and χ = 1: flat.
    relu = predict(spec("relu", "none"))
    assert relu.relative is not None
    np.testing.assert_allclose(relu.relative, 1.0, rtol=1e-12)

    # SELU with LeCun: q* = 1, χ = E[selu'(Z)²].
    def dselu(x):
        return SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))

    chi = gauss(lambda x: dselu(x) ** 2)
    selu = predict(spec("selu", "none", init="lecun"))
    assert selu.rate == pytest.approx(math.sqrt(chi), rel=1e-6)

    # tanh with He: iterate q ← 2 E[tanh(√q Z)²] independently, χ = 2 E[tanh'(√q* Z)²].
    q = 1.0
    for _ in range(200):
        q = 2 * gauss(lambda x: np.tanh(x) ** 2, math.sqrt(q))
    chi_tanh = 2 * gauss(lambda x: (1 - np.tanh(x) ** 2) ** 2, math.sqrt(q))
    assert q == pytest.approx(0.618, abs=2e-3)
    tanh = predict(spec("tanh", "none", depth=200))
    assert tanh.relative is not None
    deep_rate = tanh.relative[197] / tanh.relative[198]  # far from the input, at q*
    assert deep_rate == pytest.approx(math.sqrt(chi_tanh), rel=1e-6)
    # Near the input q starts at 2, off the fixed point: the first layers grow faster.
    assert tanh.relative[0] / tanh.relative[1] > deep_rate + 0.05


def test_predictions_left_empty_say_why() -> None:
    res = predict(spec("relu", "batchnorm", arch="resnet"))
    assert res.relative is None and "resnet" in res.basis
    ident = predict(spec("relu", "none", init="identity"))
    assert ident.relative is None and "identity" in ident.basis


def test_relu_batchnorm_rate_within_one_percent_at_paper_size() -> None:
    """Width 256, batch 128: the paper's setting, 64 repeats (CI ≈ ±0.05%)."""
    res = simulate(repeats=64, seed=1)
    (s,) = res.summary
    assert s.fitted_rate == pytest.approx(RELU_RATE, rel=0.01)
    assert s.fitted_rate_ci_low < s.fitted_rate < s.fitted_rate_ci_high
    assert s.fitted_rate_ci_high - s.fitted_rate_ci_low < 0.005
    assert s.r_squared > 0.999
    assert s.predicted_rate == pytest.approx(RELU_RATE, rel=1e-12)
    # The deviation is reported, not hidden: the record says whether theory is in the CI.
    assert s.rate_deviation == pytest.approx(s.fitted_rate / RELU_RATE - 1)
    assert s.prediction_in_ci == (s.fitted_rate_ci_low <= RELU_RATE <= s.fitted_rate_ci_high)
    rows = res.records
    assert [r.layer for r in rows] == list(range(1, 21))
    assert rows[-1].predicted_grad_norm == rows[-1].grad_norm_mean
    assert rows[0].predicted_grad_norm == pytest.approx(rows[-1].grad_norm_mean * RELU_RATE**19)
    assert s.amplification == pytest.approx(rows[0].grad_norm_mean / rows[-1].grad_norm_mean)
    # BatchNorm keeps each layer's output variance at Var[relu(Z)] = (1 − 1/π)/2.
    for r in rows:
        assert r.forward_var == pytest.approx(0.5 * (1 - 1 / math.pi), rel=0.03)


def test_resnet_grows_slower_and_not_at_a_constant_rate() -> None:
    res = simulate(arch=["plain", "resnet"], repeats=24, seed=2)
    plain, resnet = res.summary
    assert plain.fitted_rate == pytest.approx(RELU_RATE, rel=0.01)
    assert resnet.fitted_rate == pytest.approx(1.10, abs=0.02)
    # The local rate falls with depth: faster near the input than near the output.
    assert resnet.rate_first_half > resnet.rate_last_half + 0.03
    assert resnet.predicted_rate is None  # no closed form: left empty, not fitted
    scaled = simulate(arch="resnet", residual_scale="invsqrt-depth", repeats=24, seed=2)
    assert scaled.summary[0].fitted_rate < resnet.fitted_rate - 0.03


def test_zero_gamma_blocks_branch_gradients_exactly() -> None:
    res = simulate(
        arch="resnet", residual_scale="zero-gamma", depth=4, width=32, batch=16, repeats=3
    )
    assert all(r.grad_norm_mean == 0.0 and r.predicted_grad_norm == 0.0 for r in res.records)
    assert res.summary[0].fitted_rate is None


def test_same_seed_same_numbers_different_seed_different() -> None:
    kw = dict(depth=4, width=32, batch=16, repeats=5)
    a, b = simulate(seed=3, **kw), simulate(seed=3, **kw)
    c = simulate(seed=4, **kw)
    assert a.records == b.records and a.summary == b.summary
    assert a.records != c.records


def test_layer_stats_merge_exactly() -> None:
    rng = np.random.default_rng(0)
    rows = rng.lognormal(size=(9, 5))
    whole, first, second = LayerStats(5), LayerStats(5), LayerStats(5)
    for i, r in enumerate(rows):
        whole.add(r, r, r)
        (first if i < 4 else second).add(r, r, r)
    merged = first.merge(second)
    assert merged.count == 9
    np.testing.assert_array_equal(merged.norm_matrix(), whole.norm_matrix())
    np.testing.assert_allclose(merged.grad_sum, whole.grad_sum, rtol=1e-15)
    np.testing.assert_allclose(merged.summary().std, rows.std(axis=0, ddof=1), rtol=1e-12)


def test_log_linear_rate_and_bootstrap() -> None:
    values = 3.0 * 1.25 ** np.arange(9, -1, -1)  # layer 1 largest: rate 1.25 toward the input
    rate, r2 = log_linear_rate(values)
    assert rate == pytest.approx(1.25, rel=1e-12) and r2 == pytest.approx(1.0)
    assert half_rates(values) == pytest.approx((1.25, 1.25), rel=1e-12)
    rng = np.random.default_rng(0)
    norms = values * rng.lognormal(0, 0.05, size=(400, 10))
    low, high = bootstrap_rate_ci(norms, seed=0)
    assert low < 1.25 < high and high - low < 0.01
    assert bootstrap_rate_ci(norms, seed=0) == (low, high)


def test_mean_field_and_layernorm_predictions_match_measurement() -> None:
    """Paper size, 16 repeats: the mean-field rates are within half a percent of measurement."""
    res = simulate(activation=["tanh", "relu"], norm=["none", "layernorm"], repeats=16, seed=5)
    by_config = {(s.activation, s.norm): s for s in res.summary}
    for key, tol in [
        (("tanh", "none"), 0.005),
        (("relu", "none"), 0.01),
        (("tanh", "layernorm"), 0.01),
        (("relu", "layernorm"), 0.01),
    ]:
        s = by_config[key]
        assert s.predicted_rate is not None
        assert s.fitted_rate == pytest.approx(s.predicted_rate, rel=tol), key
    # LayerNorm keeps the mean of ReLU, so unlike BatchNorm it predicts no growth at all.
    assert by_config[("relu", "layernorm")].predicted_rate == pytest.approx(1.0, abs=1e-12)
