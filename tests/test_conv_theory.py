"""Conv nets against theory: the 2×2 max-pool ratios (1/4 backward, 0.4917 forward for Gaussian
input), the per-element recursion for gradient norms and derivative variances, and pre-norm
resnets. Seeded, so every number here is fixed; tolerances are the 99% CI over repeats."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradscope.api import simulate
from gradscope.engine.conv import conv_forward_backward
from gradscope.engine.draws import draw_conv_repeat
from gradscope.engine.layers import activation_backward, activation_forward
from gradscope.specs import build_specs
from gradscope.theory.predict import max_activation_moments, predict
from gradscope.theory.ratios import maxpool_ratios

MAX4_VAR = 0.49171523687474176  # NOTES.md: Var[max of 4 iid N(0, 1)]
Z99 = 2.576


def pool_ratios_per_repeat(activation: str, image_size: int, repeats: int) -> np.ndarray:
    """(repeats, 2): forward and backward ratio of the single pool of a 2-layer conv net."""
    spec = build_specs(
        arch="plain-conv",
        activation=activation,
        depth=2,
        width=4,
        batch=4,
        image_size=image_size,
        pool_every=1,
    )[0]
    act = (activation_forward(spec.activation), activation_backward(spec.activation))
    out, draw = [], None
    for k in range(repeats):
        draw = draw_conv_repeat(spec, 0, k, out=draw)
        o = conv_forward_backward(spec, draw.weights, draw.x, draw.dy, *act)
        out.append(
            [
                float(o.forward_var[0] / o.pool_input_var[0]),
                float(o.pool_input_backward_var[0] / o.backward_var[1]),
            ]
        )
    return np.array(out)


def within_ci(values: np.ndarray, expected: float) -> tuple[float, float]:
    mean = float(values.mean())
    half = Z99 * float(values.std(ddof=1)) / math.sqrt(values.size)
    assert abs(mean - expected) <= half, (mean, half, expected)
    return mean, half


def test_pool_drop_on_gaussian_input_matches_quarter_and_0_4917() -> None:
    # Identity activation: the pool sees BatchNorm's unit-variance output, as in the paper.
    r = pool_ratios_per_repeat("identity", image_size=128, repeats=48)
    assert maxpool_ratios(4).forward_ratio == pytest.approx(MAX4_VAR, rel=1e-12)
    within_ci(r[:, 0], MAX4_VAR)
    # Each output's derivative goes to exactly one of its 4 inputs: 1/4 up to the mean.
    assert r[:, 1].mean() == pytest.approx(0.25, rel=1e-3)
    # So the backward signal drops relative to the forward one by 0.25 / 0.4917.
    assert r[:, 1].mean() / r[:, 0].mean() < 0.52


def test_pool_after_relu_matches_max_through_the_activation() -> None:
    # max and ReLU commute: R_f = Var[relu(M)] / Var[relu(Z)] = 1.3208, above 1.
    spec = build_specs(arch="plain-conv", depth=2, image_size=8, pool_every=1)[0]
    mean, second, _ = max_activation_moments(spec)
    relu_var = 0.5 - 1.0 / (2.0 * math.pi)
    expected = (second - mean * mean) / relu_var
    assert predict(spec).pool_ratios == pytest.approx((expected, 0.25))
    r = pool_ratios_per_repeat("relu", image_size=128, repeats=48)
    within_ci(r[:, 0], expected)
    assert r[:, 1].mean() == pytest.approx(0.25, rel=1e-3)


def test_max_activation_moments_against_monte_carlo() -> None:
    spec = build_specs(arch="plain-conv", activation="tanh", depth=2, pool_every=1)[0]
    mean, second, grad_second = max_activation_moments(spec)
    m = np.random.default_rng(0).standard_normal((400_000, 4)).max(axis=1)
    g = np.tanh(m)
    se = g.std() / math.sqrt(m.size)
    assert abs(g.mean() - mean) < 5 * se
    assert abs((g * g).mean() - second) < 5 * (g * g).std() / math.sqrt(m.size)
    dg2 = (1 - g * g) ** 2
    assert abs(dg2.mean() - grad_second) < 5 * dg2.std() / math.sqrt(m.size)


def test_grad_norm_rises_across_a_pool_while_backward_var_falls() -> None:
    # Identity activation, 64×64 images: before the pool a conv sums over 4× the positions.
    res = simulate(
        arch="plain-conv",
        activation="identity",
        depth=4,
        width=8,
        batch=8,
        image_size=64,
        pool_every=2,
        repeats=24,
        seed=0,
        workers=1,
    )
    rows = res.records
    assert [r.spatial for r in rows] == [4096, 4096, 1024, 1024]
    assert [r.channels for r in rows] == [8, 8, 8, 8]
    assert rows[1].pool_input_var is not None and rows[0].pool_input_var is None
    # Theory, from layer 3 back to layer 2: the derivative variance at the conv's input falls
    # to 1/4 (the pool's R_b; the forward 0.4917 enters on both sides), while the
    # weight-gradient norm rises by sqrt(4 positions × 1/4 ÷ 0.4917) = 1.426: BatchNorm makes
    # the gradient scale-free, so the smaller pooled input (0.4917) raises the next one.
    grad_step = rows[1].grad_norm_mean / rows[2].grad_norm_mean
    back_step = rows[1].backward_var / rows[2].backward_var
    pred_grad = rows[1].predicted_grad_norm / rows[2].predicted_grad_norm
    pred_back = rows[1].predicted_backward_var / rows[2].predicted_backward_var
    assert pred_grad == pytest.approx(1.0 / math.sqrt(MAX4_VAR), rel=1e-9)
    assert pred_back == pytest.approx(0.25, rel=1e-9)
    assert back_step == pytest.approx(pred_back, rel=0.03)  # measured 0.2529
    # Measured 1.373 (1.32–1.37 for images of 32–256): the per-element theory neglects that
    # the pool routes the derivative to where the input patch aligns with the filter, a
    # direction BatchNorm's backward removes. Documented in the README; not fitted.
    assert 1.25 < grad_step < pred_grad
    s = res.summary[0]
    assert s.pool_backward_ratio == pytest.approx(0.25, rel=1e-3)
    assert s.predicted_pool_forward_ratio == pytest.approx(MAX4_VAR)


def test_conv_without_pools_explodes_at_the_mlp_rate() -> None:
    # Same sqrt(r) per layer as the MLP; tanh (mean zero) keeps zero padding out of the way.
    res = simulate(
        arch="plain-conv",
        activation="tanh",
        depth=6,
        width=8,
        batch=8,
        image_size=32,
        repeats=24,
        seed=0,
        workers=1,
    )
    s = res.summary[0]
    assert s.predicted_rate == pytest.approx(math.sqrt(1.1778072323041796), rel=1e-9)
    assert s.fitted_rate == pytest.approx(s.predicted_rate, rel=0.01)


def test_double_channels_doubles_at_each_pool_and_enters_the_theory() -> None:
    spec = build_specs(
        arch="plain-conv", depth=6, width=4, image_size=16, pool_every=2, double_channels=True
    )[0]
    assert spec.channels == (4, 4, 4, 8, 8, 16, 16)
    assert spec.spatial == (256, 256, 64, 64, 16, 16)
    assert predict(spec).relative is not None


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
def test_prenorm_and_postnorm_resnets_stay_flat_and_zero_gamma_is_exact(norm: str) -> None:
    kw = dict(arch="resnet", norm=norm, depth=12, width=32, batch=32, repeats=16, seed=0)
    for position in ("post", "pre"):
        s = simulate(norm_position=position, **kw).summary[0]
        assert s.norm_position == position
        assert s.predicted_rate is None
        assert 0.9 < s.fitted_rate < 1.15  # vs 1.21 for the plain ReLU net
    zero = simulate(norm_position="pre", residual_scale="zero-gamma", **kw)
    assert all(r.grad_norm_mean == 0.0 for r in zero.records)
