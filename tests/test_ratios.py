"""`ratios` against independent computations: mpmath at 30 digits, closed forms, Monte Carlo."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest

from gradscope.activations import ACTIVATIONS, parse_activation
from gradscope.errors import ExpressionError, SpecError
from gradscope.options import LinearInit
from gradscope.theory.ratios import (
    activation_ratios,
    batchnorm_ratios,
    expression_ratios,
    linear_ratios,
    maxpool_ratios,
    operator_ratios,
    parse_input_std,
    ratios,
)

mp.mp.dps = 30

SELU_A = mp.mpf("1.6732632423543772848170429916717")
SELU_L = mp.mpf("1.0507009873554804934193349852946")


def _sig(x):
    return 1 / (1 + mp.exp(-x))


def _sp(x, b=1):
    return x if b * x > 20 else mp.log(1 + mp.exp(b * x)) / b


def _ncdf(x):
    return mp.ncdf(x)


# Written independently of gradscope.activations: (g, g', kinks) with mpmath functions.
MP = {
    "relu": (lambda x, p: max(x, 0), lambda x, p: 1 if x > 0 else 0, [0]),
    "leaky_relu": (lambda x, p: x if x > 0 else p * x, lambda x, p: 1 if x > 0 else p, [0]),
    "elu": (
        lambda x, p: x if x > 0 else p * (mp.exp(x) - 1),
        lambda x, p: 1 if x > 0 else p * mp.exp(x),
        [0],
    ),
    "selu": (
        lambda x, p: SELU_L * (x if x > 0 else SELU_A * (mp.exp(x) - 1)),
        lambda x, p: SELU_L * (1 if x > 0 else SELU_A * mp.exp(x)),
        [0],
    ),
    "celu": (
        lambda x, p: x if x > 0 else p * (mp.exp(x / p) - 1),
        lambda x, p: 1 if x > 0 else mp.exp(x / p),
        [0],
    ),
    "gelu": (lambda x, p: x * _ncdf(x), lambda x, p: _ncdf(x) + x * mp.npdf(x), []),
    "gelu_tanh": (
        lambda x, p: x / 2 * (1 + mp.tanh(mp.sqrt(2 / mp.pi) * (x + mp.mpf("0.044715") * x**3))),
        None,
        [],
    ),
    "silu": (lambda x, p: x * _sig(x), None, []),
    "mish": (lambda x, p: x * mp.tanh(mp.log(1 + mp.exp(x))), None, []),
    "softplus": (lambda x, p: _sp(x, p), lambda x, p: 1 if p * x > 20 else _sig(p * x), None),
    "tanh": (lambda x, p: mp.tanh(x), lambda x, p: 1 - mp.tanh(x) ** 2, []),
    "sigmoid": (lambda x, p: _sig(x), lambda x, p: _sig(x) * (1 - _sig(x)), []),
    "hardtanh": (lambda x, p: min(max(x, -p), p), lambda x, p: 1 if -p < x < p else 0, None),
    "hardswish": (
        lambda x, p: x * min(max(x + 3, 0), 6) / 6,
        lambda x, p: 0 if x < -3 else (1 if x > 3 else (2 * x + 3) / 6),
        [-3, 3],
    ),
    "relu6": (lambda x, p: min(max(x, 0), 6), lambda x, p: 1 if 0 < x < 6 else 0, [0, 6]),
    "softsign": (lambda x, p: x / (1 + abs(x)), lambda x, p: 1 / (1 + abs(x)) ** 2, [0]),
    "identity": (lambda x, p: x, lambda x, p: 1, []),
}


def mp_ratio(name: str, param: float, std: float) -> mp.mpf:
    g, dg, kinks = MP[name]
    param = mp.mpf(param)
    if dg is None:  # numerical derivative at 30 digits

        def dg(x, p, g=g):
            return mp.diff(lambda t: g(t, p), x)

    if kinks is None:
        kinks = {"softplus": [20 / param], "hardtanh": [-param, param]}[name]
    # tanh-sinh needs the bulk of the Gaussian split into finite pieces, and the kinks
    edges = {mp.mpf(k) / std for k in kinks} | {mp.mpf(v) for v in (-10, -3, 0, 3, 10)}
    pts = [-mp.inf, *sorted(edges), mp.inf]

    def e(f):
        return mp.quad(lambda z: f(std * z) * mp.npdf(z), pts)

    m1 = e(lambda x: g(x, param))
    m2 = e(lambda x: g(x, param) ** 2)
    d2 = e(lambda x: dg(x, param) ** 2)
    return d2 / ((m2 - m1**2) / std**2)  # ratio R_b / R_f


PARAMS = {"leaky_relu": 0.2, "elu": 0.7, "celu": 1.5, "softplus": 2.0, "hardtanh": 1.5}


@pytest.mark.parametrize("name", sorted(MP))
@pytest.mark.parametrize("std", [1.0, 0.5, 2.0])
def test_every_activation_matches_mpmath(name: str, std: float) -> None:
    spec = parse_activation(name if name not in PARAMS else f"{name}:{PARAMS[name]}")
    row = activation_ratios(spec, input_std=std)
    expected = mp_ratio(name, spec.param, std)
    assert row.ratio == pytest.approx(float(expected), rel=1e-10)
    # the reported error estimate is honest: the true error is within it (plus rounding)
    assert abs(row.ratio - float(expected)) <= row.abs_error + 1e-15 * row.ratio


def test_every_builtin_is_checked() -> None:
    assert set(MP) == set(ACTIVATIONS)


def test_reference_numbers_from_notes() -> None:
    rows = {r.activation: r for r in ratios(["relu", "tanh", "selu"])}
    assert rows["relu"].forward_ratio == pytest.approx(0.34084505690810466, rel=1e-13)
    assert rows["relu"].backward_ratio == 0.5
    assert rows["relu"].ratio == pytest.approx(math.pi / (math.pi - 1), rel=1e-13)
    assert rows["relu"].rate_per_layer == pytest.approx(1.2111738962363166, rel=1e-13)
    assert rows["relu"].forward_gain == pytest.approx(math.sqrt(2), rel=1e-13)
    assert rows["tanh"].ratio == pytest.approx(1.1778072323041796, rel=1e-12)
    assert rows["selu"].ratio == pytest.approx(1.0715749924557993, rel=1e-12)
    assert rows["relu"].method == "closed-form"
    assert rows["tanh"].method == "quadrature"


def test_tanh_rate_depends_on_scale() -> None:
    rows = ratios(["tanh"], input_std=[0.5, 1.0])
    assert [round(r.ratio, 3) for r in rows] == [1.034, 1.178]


def test_monte_carlo_agrees_within_its_error_bar() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(2_000_000)
    for name in ["relu", "gelu", "tanh", "selu", "mish"]:
        spec = parse_activation(name)
        row = activation_ratios(spec)
        g, dg = spec.g(x), spec.dg(x)
        var_mc = g.var()
        grad_mc = np.mean(dg**2)
        # delta-method standard error of the ratio estimate
        ratio_mc = grad_mc / var_mc
        se = ratio_mc * math.sqrt(
            np.var(dg**2) / grad_mc**2 / x.size + np.var((g - g.mean()) ** 2) / var_mc**2 / x.size
        )
        assert abs(ratio_mc - row.ratio) < 5 * se, name


@pytest.mark.parametrize(
    ("spec", "default"),
    [
        ("leaky_relu:0.2", "leaky_relu"),
        ("elu:0.5", "elu"),
        ("celu:2", "celu"),
        ("softplus:3", "softplus"),
        ("hardtanh:2", "hardtanh"),
    ],
)
def test_parameters_change_the_numbers(spec: str, default: str) -> None:
    assert (
        activation_ratios(parse_activation(spec)).ratio
        != activation_ratios(parse_activation(default)).ratio
    )


def test_leaky_relu_slope_follows_closed_form() -> None:
    # g = x (x>0), a x (x<0): E[g'^2] = (1+a^2)/2, Var = (1+a^2)/2 - (1-a)^2/(2 pi)
    for a in [0.0, 0.01, 0.2, 0.5, 1.0]:
        row = activation_ratios(parse_activation(f"leaky_relu:{a}"))
        expected = ((1 + a * a) / 2) / ((1 + a * a) / 2 - (1 - a) ** 2 / (2 * math.pi))
        assert row.ratio == pytest.approx(expected, rel=1e-13)
    # a = 1 is the identity: no growth
    assert activation_ratios(parse_activation("leaky_relu:1")).ratio == pytest.approx(1, rel=1e-14)


def test_softplus_beta_approaches_relu() -> None:
    relu = activation_ratios(parse_activation("relu")).ratio
    gaps = [
        abs(activation_ratios(parse_activation(f"softplus:{b}")).ratio - relu) for b in (1, 4, 16)
    ]
    assert gaps[0] > gaps[1] > gaps[2]


def test_elu_alpha_zero_is_relu() -> None:
    assert activation_ratios(parse_activation("elu:0")).ratio == pytest.approx(
        math.pi / (math.pi - 1), rel=1e-12
    )


def test_hardtanh_wider_window_is_more_linear() -> None:
    narrow = activation_ratios(parse_activation("hardtanh:0.5")).ratio
    wide = activation_ratios(parse_activation("hardtanh:3")).ratio
    assert narrow > wide > 1.0
    assert wide == pytest.approx(1.0, abs=0.02)


def test_relu_is_scale_invariant() -> None:
    rows = ratios(["relu"], input_std=[0.1, 1.0, 10.0])
    assert all(r.ratio == pytest.approx(rows[0].ratio, rel=1e-13) for r in rows)


def test_nonlinear_backward_exceeds_forward() -> None:
    # Prop. B.12 (Chernoff): R_f <= R_b with equality only for affine g
    for row in ratios(input_std=[0.5, 1.0, 2.0]):
        if row.activation == "identity":
            assert row.ratio == pytest.approx(1.0, rel=1e-14)
        else:
            assert row.ratio > 1.0


def test_maxpool_matches_reference_and_closed_forms() -> None:
    assert maxpool_ratios(4).forward_ratio == pytest.approx(0.49171523687474176, rel=1e-12)
    assert maxpool_ratios(4).backward_ratio == 0.25
    assert maxpool_ratios(2).forward_ratio == pytest.approx(1 - 1 / math.pi, rel=1e-13)
    e3 = 3 / (2 * math.sqrt(math.pi))
    assert maxpool_ratios(3).forward_ratio == pytest.approx(
        1 + math.sqrt(3) / (2 * math.pi) - e3**2, rel=1e-12
    )
    assert maxpool_ratios(9).ratio < 1  # the backward signal drops at a pool


def test_batchnorm_backward_ratio_by_monte_carlo() -> None:
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    batch, width, s = 16, 512, 2.0
    x = (s * torch.randn(batch, width, generator=gen, dtype=torch.float64)).requires_grad_()
    y = torch.nn.functional.batch_norm(x, None, None, training=True, eps=1e-12)
    dy = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, dy)
    sigma2 = x.detach().var(dim=0, unbiased=False)
    measured = float(((dx**2).mean(0) * sigma2).mean() / (dy**2).mean())
    row = batchnorm_ratios(batch, input_std=1.0)
    assert measured == pytest.approx(row.backward_ratio, rel=0.02)
    assert batchnorm_ratios(batch, input_std=s).forward_ratio == pytest.approx(1 / s**2)


def test_linear_ratios_by_init() -> None:
    he = linear_ratios(512, 256, LinearInit.he)
    assert (he.forward_ratio, he.backward_ratio, he.ratio) == (2.0, 4.0, 2.0)
    lecun = linear_ratios(512, 256, LinearInit.lecun)
    assert (lecun.forward_ratio, lecun.backward_ratio) == (1.0, 2.0)
    glorot = linear_ratios(512, 256, LinearInit.glorot)
    assert glorot.forward_ratio == pytest.approx(2 * 256 / 768)
    assert glorot.ratio == pytest.approx(2.0)


def test_linear_ratio_matches_a_drawn_matrix() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(0, math.sqrt(2 / 256), size=(512, 256))
    fro2 = float((w**2).sum())
    row = operator_ratios("linear:512x256")
    assert fro2 / 512 == pytest.approx(row.forward_ratio, rel=0.01)
    assert fro2 / 256 == pytest.approx(row.backward_ratio, rel=0.01)


def test_depth_columns() -> None:
    (row,) = ratios(["relu"], depth=10)
    assert row.amplification == pytest.approx(row.rate_per_layer**10)
    assert row.rate_per_layer ** (row.depth_to_10x - 1) < 10 <= row.rate_per_layer**row.depth_to_10x
    assert row.depth_to_1000x == 37
    (ident,) = ratios(["identity"])
    assert ident.depth_to_10x is None and ident.depth_to_1000x is None


def test_default_table_is_sorted_by_rate() -> None:
    rows = ratios()
    rates = [r.rate_per_layer for r in rows]
    assert rates == sorted(rates, reverse=True)
    assert {"relu", "tanh", "selu", "gelu"} <= {r.activation for r in rows}


def test_expression_matches_builtin_mish() -> None:
    row = expression_ratios("x*tanh(log(1+exp(x)))")
    assert row.ratio == pytest.approx(activation_ratios(parse_activation("mish")).ratio, rel=1e-10)
    kinked = expression_ratios("max(x, 0)")
    assert kinked.ratio == pytest.approx(math.pi / (math.pi - 1), rel=1e-10)
    absval = expression_ratios("abs(x)")
    # |x|: E g'^2 = 1, Var = 1 - 2/pi
    assert absval.ratio == pytest.approx(1 / (1 - 2 / math.pi), rel=1e-10)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x*tanh(", "cannot parse"),
        ("y+1", "unknown name 'y'"),
        ("3", "does not use x"),
        ("x.real", "may only use"),
        ("__import__('os')", "unknown name"),
        ("log(x)", "not real and finite"),
        ("", "empty"),
    ],
)
def test_bad_expressions(text: str, fragment: str) -> None:
    with pytest.raises(ExpressionError, match=fragment):
        expression_ratios(text)


def test_expression_without_gaussian_expectation() -> None:
    with pytest.raises(SpecError, match="expectation does not exist"):
        expression_ratios("exp(x**2)")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("swishy", "unknown activation"),
        ("relu:2", "takes no parameter"),
        ("leaky_relu:abc", "must be a number"),
        ("softplus:0", "must be positive"),
        ("maxpool", "needs a size"),
        ("maxpool:x", "must be an integer"),
        ("maxpool:0", "at least"),
        ("batchnorm:2", "at least 3"),
        ("linear:3by4", "linear:DOUTxDIN"),
    ],
)
def test_bad_operator_specs(spec: str, fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        operator_ratios(spec)


def test_input_std_forms() -> None:
    assert parse_input_std("1") == [1.0]
    assert parse_input_std("0.5,1,2") == [0.5, 1.0, 2.0]
    values = parse_input_std("0.25:4:5")
    assert values == pytest.approx([0.25, 0.5, 1, 2, 4])
    for bad in ["0", "-1", "a", "1:2", "0:1:3", "1,,2", "nan"]:
        with pytest.raises(SpecError):
            parse_input_std(bad)


def test_linear_alone_is_the_identity_activation_and_linear_with_shape_an_operator() -> None:
    alias = operator_ratios("linear")
    assert alias.activation == "identity" and alias.ratio == 1.0
    assert operator_ratios("linear:4x8").activation.startswith("linear:4x8")


@pytest.mark.parametrize("name", ["tanh", "sigmoid", "gelu", "softplus", "elu", "mish"])
@pytest.mark.parametrize("std", [1e-6, 1e-3, 1e3, 1e4])
def test_extreme_input_stds_match_mpmath_and_the_error_is_honest(name: str, std: float) -> None:
    # Wide inputs put the activation's bend in a sliver of the Gaussian, narrow ones make
    # Var[g] tiny against E[g]^2: both used to defeat the quadrature or cancel every digit.
    spec = parse_activation(name)
    row = activation_ratios(spec, input_std=std)
    g, dg, kinks = MP[name]
    p = mp.mpf(spec.param) if spec.param is not None else None
    if kinks is None:
        kinks = [20 / p]  # softplus: PyTorch's threshold
    if dg is None:

        def dg(x, p, g=g):
            return mp.diff(lambda t: g(t, p), x)

    s = mp.mpf(std)
    bends = [mp.mpf(k) for k in (0.01, 0.1, 1, 4, 10, 40)]
    edges = {mp.mpf(0)} | {sign * b / s for b in bends for sign in (-1, 1)}
    edges |= {mp.mpf(v) for v in (-10, -3, 3, 10)} | {mp.mpf(k) / s for k in kinks}
    pts = [-mp.inf, *sorted(e for e in edges if abs(e) < 12), mp.inf]
    centre = g(mp.mpf(0), p)

    def e(f):
        return mp.quad(lambda z: f(s * z) * mp.npdf(z), pts)

    m1 = e(lambda x: g(x, p) - centre)
    m2 = e(lambda x: (g(x, p) - centre) ** 2)
    d2 = e(lambda x: dg(x, p) ** 2)
    expected = float(d2 / ((m2 - m1**2) / s**2))
    assert row.ratio == pytest.approx(expected, rel=1e-8)
    assert abs(row.ratio - expected) <= row.abs_error + 1e-15 * row.ratio


def test_extreme_values_are_inf_or_one_line_errors_not_crashes() -> None:
    row = operator_ratios("relu", depth=5000)
    assert row.amplification == math.inf
    with pytest.raises(SpecError, match="not representable in double precision"):
        operator_ratios("tanh", input_std=1e200)
