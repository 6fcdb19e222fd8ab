"""A gradient gate in a pytest suite: fail the tests when a model's gradients grow too fast
per layer at initialisation, the same verdict as ``gradscope simulate --fail-if-rate-above``.

Run it: python -m pytest examples/test_gradient_gate.py

The verdict uses the lower end of the fitted rate's 95% CI, so noise alone never fails it; a
failure raises AssertionError with the per-layer table (gradient norm, its CI, growth).
"""

from pathlib import Path

import pytest
from torch import nn

from gradscope.testing import assert_gradient_growth

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("example", ["resnet.py", "plain_cnn.py"])
def test_example_gradients_do_not_explode(example: str) -> None:
    assert_gradient_growth(
        f"{HERE / example}:make_model",
        input_shape=(3, 32, 32),
        max_rate=1.15,
        repeats=8,
        batch=32,
        seed=0,
    )


def deep_batchnorm_mlp(depth: int = 8, width: int = 32) -> nn.Module:
    """Linear → BatchNorm → ReLU, repeated: BatchNorm makes gradients explode with depth."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def test_the_gate_catches_batchnorm_explosion() -> None:
    with pytest.raises(AssertionError, match="fitted rate"):
        assert_gradient_growth(
            deep_batchnorm_mlp, input_shape=(32,), max_rate=1.15, repeats=8, batch=64, seed=0
        )
