"""Adding an activation is one entry in one place: ratios, simulate and theory all pick it up."""

from __future__ import annotations

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from gradscope import activations
from gradscope.activations import Activation, register
from gradscope.api import simulate
from gradscope.cli import app
from gradscope.errors import SpecError
from gradscope.theory.ratios import ratios

# g(x) = |x|: E[g'(X)²] = 1 and Var[|X|] = 1 − 2/π for X ~ N(0, 1), so the backward/forward
# ratio is π/(π − 2) and the per-layer gradient growth behind BatchNorm its square root.
ABS_RATIO = math.pi / (math.pi - 2.0)
ABS_RATE = math.sqrt(ABS_RATIO)


@pytest.fixture
def abs_activation(monkeypatch: pytest.MonkeyPatch) -> Activation:
    monkeypatch.setattr(activations, "ACTIVATIONS", dict(activations.ACTIVATIONS))
    monkeypatch.setattr(activations, "ALIASES", dict(activations.ALIASES))
    entry = Activation(
        "abs",
        lambda x, p: np.abs(x),
        lambda x, p: np.sign(x),
        "|x|",
        kinks=lambda p: (0.0,),
        forward=lambda F, x, p: x.abs(),
        backward=lambda aten, g, u, y, p: g * u.sign(),
        aliases=("absolute",),
    )
    register(entry)
    return entry


def test_ratios_know_a_registered_activation(abs_activation: Activation) -> None:
    (row,) = ratios(["absolute"], input_std=[1.0])
    assert row.activation == "abs"
    assert row.ratio == pytest.approx(ABS_RATIO, rel=1e-10)
    assert row.rate_per_layer == pytest.approx(ABS_RATE, rel=1e-10)
    result = CliRunner().invoke(app, ["ratios", "abs", "-f", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith("abs,1.0,")


def test_simulate_and_theory_know_a_registered_activation(abs_activation: Activation) -> None:
    result = simulate(activation="abs", depth=8, width=64, batch=64, repeats=48, seed=3)
    (summary,) = result.summary
    assert summary.activation == "abs"
    # theory's column: the closed form above, computed independently of the engine
    assert summary.predicted_rate == pytest.approx(ABS_RATE, rel=1e-6)
    # the engine ran the torch pair of the entry: the measured growth is the predicted one
    assert summary.fitted_rate == pytest.approx(ABS_RATE, rel=0.05)
    assert {r.activation for r in result.records} == {"abs"}


def test_names_are_unique(abs_activation: Activation) -> None:
    with pytest.raises(SpecError, match="exists already"):
        register(abs_activation)
