"""Forward and backward variance-scaling ratios of activations and other operators (no torch).

For an operator y = π(x) with input x ~ N(0, s²) (paper, Definition B.1):

* forward ratio  R_f = Var[y] / Var[x]
* backward ratio R_b = Var[∂ℓ/∂x] / Var[∂ℓ/∂y]   (= E[g'(X)²] for an element-wise g)
* ratio r = R_b / R_f, and the gradient norm grows by sqrt(r) per layer behind BatchNorm.

The paper's Equation (1) prints the numerator as E[g'(X)]²; its own numbers (and this code)
use E[g'(X)²].
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gradscope.activations import COMMON, ActivationSpec, norm_cdf, parse_activation
from gradscope.errors import SpecError, UsageError
from gradscope.options import LinearInit, Method
from gradscope.schema import RatioRecord
from gradscope.theory.gaussian import integrate, piecewise_linear_moments

_EPS = float(np.finfo(float).eps)


@dataclass(frozen=True)
class Moments:
    """E[g], E[g²], E[g'²] under N(0, s²), with absolute error estimates."""

    mean: float
    second: float
    grad_second: float
    errors: tuple[float, float, float]
    method: Method
    # Var[g] with its error, when computed without cancellation (see activation_moments).
    variance: tuple[float, float] | None = None


def activation_moments(
    g: Callable[[np.ndarray], np.ndarray],
    dg: Callable[[np.ndarray], np.ndarray],
    input_std: float,
    kinks: Sequence[float] = (),
    pieces: Sequence[tuple[float, float, float, float]] | None = None,
) -> Moments:
    """The three Gaussian moments a ratio needs, closed form when ``pieces`` are given."""
    if pieces is not None:
        mean, second, grad_second = piecewise_linear_moments(pieces, input_std)
        errors = tuple(8 * _EPS * abs(v) for v in (mean, second, grad_second))
        return Moments(mean, second, grad_second, errors, Method.closed_form)  # type: ignore[arg-type]
    # Var[g] as E[h²] − E[h]² with h = g − g(0): for a narrow input (sigmoid at std 1e-6,
    # Var ~ 1e-13 against E[g²] ~ 0.25) E[g²] − E[g]² would cancel every digit.
    with np.errstate(all="ignore"):
        centre = float(np.asarray(g(np.zeros(1)), dtype=float)[0])
    if not math.isfinite(centre):
        centre = 0.0
    q = integrate(
        [
            g,
            lambda x: g(x) ** 2,
            lambda x: dg(x) ** 2,
            lambda x: g(x) - centre,
            lambda x: (g(x) - centre) ** 2,
        ],
        std=input_std,
        kinks=kinks,
    )
    mean, second, grad_second, shifted, shifted_second = q.values
    variance = shifted_second - shifted * shifted
    # g(x) is evaluated with an absolute error of a few ulps of |g(x)| ~ |g(0)| + |h|, which
    # h = g − g(0) inherits: that bounds how well E[h²] can be known, whatever the quadrature.
    rounding = 8 * _EPS * (abs(centre) + math.sqrt(shifted_second)) * math.sqrt(shifted_second)
    var_error = q.errors[4] + 2 * abs(shifted) * q.errors[3] + 4 * _EPS * shifted_second + rounding
    errors = (q.errors[0], q.errors[1], q.errors[2])
    return Moments(mean, second, grad_second, errors, Method.quadrature, (variance, var_error))


def depth_to(factor: float, rate: float) -> int | None:
    """Layers until the gradient norm has grown by ``factor``; None when it never does."""
    if not rate > 1.0 or not math.isfinite(rate):
        return None
    return math.ceil(math.log(factor) / math.log(rate) - 1e-9)


def _record(
    label: str,
    input_std: float,
    mean: float | None,
    second: float | None,
    forward: float,
    backward: float,
    depth: int,
    gain: float | None,
    method: Method,
    ratio_error: float,
) -> RatioRecord:
    if not (forward > 0 and math.isfinite(forward) and math.isfinite(backward)):
        raise SpecError(
            f"{label} at input std {input_std:g}: the ratios are not representable in double "
            "precision (the input std is too extreme)"
        )
    ratio = backward / forward
    rate = math.sqrt(ratio)
    try:
        amplification = rate**depth
    except OverflowError:
        amplification = math.inf
    return RatioRecord(
        activation=label,
        input_std=input_std,
        mean_out=mean,
        second_moment_out=second,
        forward_ratio=forward,
        backward_ratio=backward,
        ratio=ratio,
        rate_per_layer=rate,
        amplification=amplification,
        depth_to_10x=depth_to(10.0, rate),
        depth_to_1000x=depth_to(1000.0, rate),
        forward_gain=gain,
        method=method.value,
        abs_error=ratio_error,
    )


def moments_record(label: str, m: Moments, input_std: float, depth: int) -> RatioRecord:
    """A row from the moments of an element-wise activation."""
    var_in = input_std * input_std
    e_mean, e_second, e_grad = m.errors
    if m.variance is not None:
        variance, var_error = m.variance
    else:
        variance = m.second - m.mean * m.mean
        var_error = e_second + 2 * abs(m.mean) * e_mean + 4 * _EPS * m.second
    if not variance > 0:
        raise SpecError(
            f"{label} has zero output variance at input std {input_std:g}: "
            "a constant activation (or an input std too small for double precision) has no "
            "forward signal"
        )
    if not m.grad_second > 0:
        raise SpecError(
            f"{label} has a zero derivative almost everywhere at input std "
            f"{input_std:g}: no gradient flows back"
        )
    ratio = m.grad_second * var_in / variance  # backward / forward
    ratio_error = ratio * (e_grad / m.grad_second + var_error / variance)
    return _record(
        label,
        input_std,
        m.mean,
        m.second,
        variance / var_in,
        m.grad_second,
        depth,
        input_std / math.sqrt(m.second),
        m.method,
        ratio_error,
    )


def activation_ratios(spec: ActivationSpec, input_std: float = 1.0, depth: int = 20) -> RatioRecord:
    """The ratios of a built-in activation (``parse_activation`` gives the spec)."""
    pieces = spec.pieces()
    raw = None if pieces is None else [(p.lo, p.hi, p.slope, p.intercept) for p in pieces]
    m = activation_moments(spec.g, spec.dg, input_std, spec.kinks(), raw)
    return moments_record(spec.label, m, input_std, depth)


def expression_ratios(text: str, input_std: float = 1.0, depth: int = 20) -> RatioRecord:
    """The ratios of a user activation given as an expression in x (needs SymPy)."""
    from gradscope.theory.expr import parse_expression

    e = parse_expression(text)
    m = activation_moments(e.g, e.dg, input_std, e.kinks)
    return moments_record(f"expr:{e.text}", m, input_std, depth)


def max_moments(k: int) -> tuple[float, float, float]:
    """(E[M], E[M²], abs error of Var) for M the max of k iid N(0, 1), by quadrature."""

    def density_factor(x: np.ndarray) -> np.ndarray:
        return k * norm_cdf(x) ** (k - 1)

    q = integrate([lambda x: x * density_factor(x), lambda x: x * x * density_factor(x)])
    mean, second = q.values
    return mean, second, q.errors[1] + 2 * abs(mean) * q.errors[0] + 4 * _EPS * second


def maxpool_ratios(k: int, input_std: float = 1.0, depth: int = 20) -> RatioRecord:
    """Max over k iid inputs: R_f = Var[max]/Var[x], R_b = 1/k (one input gets the gradient)."""
    if k < 1:
        raise SpecError(f"maxpool needs at least one input per window, got {k}")
    mean, second, var_error = max_moments(k)
    variance = second - mean * mean
    backward = 1.0 / k
    if k == 1:
        return _record(
            f"maxpool:{k}",
            input_std,
            0.0,
            input_std**2,
            1.0,
            1.0,
            depth,
            None,
            Method.closed_form,
            0.0,
        )
    ratio = backward / variance
    return _record(
        f"maxpool:{k}",
        input_std,
        mean * input_std,
        second * input_std**2,
        variance,
        backward,
        depth,
        None,
        Method.quadrature,
        ratio * var_error / variance,
    )


def batchnorm_ratios(batch: int, input_std: float = 1.0, depth: int = 20) -> RatioRecord:
    """BatchNorm in training mode over a batch of B: R_f = 1/σ², R_b = (1 − 2/B)/σ².

    The backward pass projects the output derivative off the two batch directions that
    normalisation removed (the mean, and the normalised input itself), so of B i.i.d.
    derivative components B − 2 survive on average: E[R_b] = (1 − 2/B)/σ² exactly, for an
    output derivative independent of the input. The paper writes (1 − z/B)/σ² with E z = 1
    because it measures the output derivative's variance about its batch mean, which already
    removes one direction.
    """
    if batch < 3:
        raise SpecError(f"BatchNorm needs a batch of at least 3 for a backward signal, got {batch}")
    var_in = input_std * input_std
    forward = 1.0 / var_in
    backward = (1.0 - 2.0 / batch) / var_in
    return _record(
        f"batchnorm:{batch}",
        input_std,
        0.0,
        1.0,
        forward,
        backward,
        depth,
        None,
        Method.closed_form,
        4 * _EPS,
    )


def linear_ratios(
    fan_out: int,
    fan_in: int,
    init: LinearInit = LinearInit.he,
    input_std: float = 1.0,
    depth: int = 20,
) -> RatioRecord:
    """y = Wx, W ∈ R^{D×d}: R_f = ‖W‖²/D, R_b = ‖W‖²/d at the expected ‖W‖² = D·d·σ_w²."""
    if fan_out < 1 or fan_in < 1:
        raise SpecError(f"linear dimensions must be positive, got {fan_out}x{fan_in}")
    weight_var = {
        LinearInit.he: 2.0 / fan_in,
        LinearInit.lecun: 1.0 / fan_in,
        LinearInit.glorot: 2.0 / (fan_in + fan_out),
    }[init]
    forward = fan_in * weight_var
    backward = fan_out * weight_var
    return _record(
        f"linear:{fan_out}x{fan_in}/{init.value}",
        input_std,
        0.0,
        forward * input_std**2,
        forward,
        backward,
        depth,
        None,
        Method.closed_form,
        4 * _EPS * backward / forward,
    )


_LINEAR = re.compile(r"^linear:(\d+)x(\d+)$")


@dataclass(frozen=True)
class Operator:
    """An operator ``ratios`` accepts besides the activations, as ``name:parameter``."""

    name: str
    parameter: str
    closed_form: bool
    definition: str


OPERATORS = (
    Operator(
        "maxpool",
        "K (window size)",
        False,
        "max of K iid inputs (4: a 2×2 window); R_b = 1/K",
    ),
    Operator(
        "batchnorm",
        "B (batch size)",
        True,
        "training-mode BatchNorm over B: R_f = 1/σ², R_b = (1 − 2/B)/σ²",
    ),
    Operator(
        "linear",
        "DOUTxDIN (shape)",
        True,
        "y = Wx, DOUT×DIN W from --init: R_f = DIN·σ_w², R_b = DOUT·σ_w²",
    ),
)


def operator_ratios(
    name: str, input_std: float = 1.0, depth: int = 20, init: LinearInit = LinearInit.he
) -> RatioRecord:
    """One row for an activation (``relu``, ``leaky_relu:0.2``) or an operator
    (``maxpool:4``, ``batchnorm:128``, ``linear:512x256``)."""
    text = name.strip().lower()
    if text.startswith("maxpool:"):
        return maxpool_ratios(_int_param(text, "maxpool", "window size K"), input_std, depth)
    if text.startswith("batchnorm:"):
        return batchnorm_ratios(_int_param(text, "batchnorm", "batch size B"), input_std, depth)
    if text.startswith("linear:"):
        match = _LINEAR.match(text)
        if not match:
            raise UsageError(
                f"write a linear layer as linear:DOUTxDIN (e.g. linear:512x256), got {name!r}"
            )
        return linear_ratios(int(match[1]), int(match[2]), init, input_std, depth)
    if text in ("maxpool", "batchnorm"):
        raise SpecError(
            f"{text} needs a size: {text}:K (e.g. maxpool:4 for a 2x2 window)"
            if text == "maxpool"
            else "batchnorm needs a batch size: batchnorm:B"
        )
    return activation_ratios(parse_activation(name), input_std, depth)


def _int_param(text: str, what: str, meaning: str) -> int:
    value = text.split(":", 1)[1].strip()
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"the {meaning} of {what} must be an integer, got {value!r}") from None


# Input stds per activation: each is a quadrature (a few ms), so a grid of a thousand is
# seconds per activation, and ten million would be hours.
MAX_INPUT_STDS = 1000


def parse_input_std(text: str) -> list[float]:
    """``1``, a list ``0.5,1,2`` or a log-spaced range ``start:stop:count`` (``0.25:4:16``)."""
    text = text.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
            if not 1 <= count <= MAX_INPUT_STDS or start <= 0 or stop <= 0:
                raise SpecError(
                    f"an input-std range start:stop:count needs positive ends and a count "
                    f"from 1 to {MAX_INPUT_STDS}, got {text!r}"
                )
            values = (
                [float(f"{v:.15g}") for v in np.geomspace(start, stop, count)]
                if count > 1
                else [start]
            )  # 15 digits: 0.25:4:5 gives 2.0, not 1.9999999999999998
        else:
            values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(
            "{option} takes a number, a list like 0.5,1,2 or a log range like "
            f"0.25:4:16, got {text!r}",
            option="input_std",
        ) from None
    if len(values) > MAX_INPUT_STDS:
        raise SpecError(
            f"{{option}} takes at most {MAX_INPUT_STDS} values, got {len(values)}",
            option="input_std",
        )
    for v in values:
        if not (v > 0 and math.isfinite(v)):
            raise SpecError(f"input std must be positive and finite, got {v:g}")
    return [float(v) for v in values]


def ratios(
    names: Sequence[str] = (),
    *,
    expressions: Sequence[str] = (),
    input_std: Sequence[float] = (1.0,),
    depth: int = 20,
    init: LinearInit = LinearInit.he,
) -> list[RatioRecord]:
    """Rows for each (operator, input std). With no names and no expressions, the common
    activations sorted by rate per layer, fastest-exploding first.

    Raises:
        SpecError: an unknown activation or operator, a bad parameter or a bad expression.
    """
    if depth < 1:
        raise SpecError(f"depth must be at least 1, got {depth}")
    default = not names and not expressions
    rows: list[RatioRecord] = []
    for name in COMMON if default else names:
        for std in input_std:
            rows.append(operator_ratios(name, std, depth, init))
    for text in expressions:
        for std in input_std:
            rows.append(expression_ratios(text, std, depth))
    if default:
        rows.sort(key=lambda r: (-r.rate_per_layer, r.activation, r.input_std))
    return rows
