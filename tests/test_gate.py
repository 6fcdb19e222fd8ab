"""The CI gate: ``simulate --fail-if-rate-above`` / ``--fail-if-amplification-above`` exit codes
(0 pass, 1 user error, 2 usage error, 3 gate failed), ``gradscope.testing``, the example pytest
gate, and the ``--model`` engine's workers (bit-identical whatever runs the repeats)."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.errors import SpecError
from gradscope.testing import assert_gradient_growth, gate_failures

ROOT = Path(__file__).resolve().parents[1]
# relu + BatchNorm grows ≈1.21 per layer (CI [1.17, 1.22] at this size); without a norm ≈1.
SMALL = ["simulate", "--depth", "6", "--width", "16", "--repeats", "8", "-f", "csv"]

MODELS = """
from torch import nn


def mlp(batchnorm: bool = True, depth: int = 6, width: int = 16):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False)]
        layers += [nn.BatchNorm1d(width)] if batchnorm else []
        layers += [nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 4))
"""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def gate_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("Gate:")]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODELS)
    return path


@pytest.mark.parametrize(
    ("gate", "code"),
    [
        (["--fail-if-rate-above", "5"], 0),
        (["--fail-if-rate-above", "1.1"], 3),
        (["--fail-if-amplification-above", "100"], 0),
        (["--fail-if-amplification-above", "1.5"], 3),
        (["--fail-if-rate-above", "1.1", "--fail-if-amplification-above", "1.5"], 3),
    ],
)
def test_synthetic_gate_passes_or_exits_3_after_writing_the_records(
    gate: list[str], code: int
) -> None:
    status, out, err = run(*SMALL, *gate)
    assert status == code, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 6  # the records come first, whatever the verdict
    if code == 3:
        (line,) = gate_lines(err)  # one line, with both reasons when both thresholds fail
        assert line.startswith("Gate: plain relu batchnorm he L=6 width=16 batch=128: ")
        assert "grows most into layer " in line
        if "--fail-if-rate-above" in gate:
            assert "fitted rate 1.1947 [95% CI 1.1721, 1.2182]: its lower end is above 1.1" in line
        if "--fail-if-amplification-above" in gate:
            assert "amplification 2.397 (at least 2.02: the first layer's CI low" in line
    else:
        assert gate_lines(err) == []
        assert "Gate passed: 1 configuration; highest" in err


def test_one_gate_line_per_failing_configuration() -> None:
    status, _, err = run(*SMALL, "--norm", "batchnorm,none", "--activation", "relu,tanh",
                         "--fail-if-rate-above", "1.15")  # fmt: skip
    assert status == 3
    # Only relu + BatchNorm grows faster than 1.15 per layer at the CI's lower end.
    assert [line.split(":")[1] for line in gate_lines(err)] == [
        " plain relu batchnorm he L=6 width=16 batch=128"
    ]


def test_the_decision_uses_the_ci_low_end_not_the_estimate() -> None:
    # The fitted rate (1.1947) is above 1.18, the lower end of its CI (1.1721) is not.
    status, _, err = run(*SMALL, "--fail-if-rate-above", "1.18")
    assert status == 0, err
    assert "Gate passed: 1 configuration; highest fitted-rate CI low 1.1721 ≤ 1.18" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail-if-rate-above", "0"], "--fail-if-rate-above must be a positive finite number"),
        (["--fail-if-rate-above", "-2"], "must be a positive finite number, got -2.0"),
        (["--fail-if-rate-above", "inf"], "must be a positive finite number, got inf"),
        (["--fail-if-amplification-above", "nan"], "--fail-if-amplification-above must be"),
        (["--fail-if-rate-above", "1.1", "--repeats", "1"], "needs --repeats 2 or more"),
        (["--fail-if-rate-above", "1.1", "--train-steps", "2"], "not used by --train-steps"),
    ],
)
def test_bad_thresholds_are_one_line_and_exit_1(args: list[str], message: str) -> None:
    status, out, err = run(*SMALL, *args)
    assert status == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("Error: ") and message in line
    assert out == ""


def test_a_threshold_that_is_not_a_number_is_a_usage_error() -> None:
    status, _, err = run(*SMALL, "--fail-if-rate-above", "fast")
    assert status == 2
    assert "--fail-if-rate-above" in err


def test_model_gate_exit_codes(models: Path) -> None:
    model = ["simulate", "--model", f"{models}:mlp", "--input-shape", "16", "--batch", "32",
             "--repeats", "8", "-f", "csv"]  # fmt: skip
    status, out, err = run(*model, "--fail-if-rate-above", "1.1")
    assert status == 3, err
    assert out.startswith("model,batch,repeats,layer,module")
    (line,) = gate_lines(err)
    assert line.startswith(f"Gate: {models}:mlp: fitted rate ")
    assert "grows most into " in line
    status, _, err = run(*model, "--model-arg", "batchnorm=False", "--fail-if-rate-above", "1.1")
    assert status == 0, err
    assert "Gate passed: 1 configuration" in err
    status, _, err = run(*model, "--fail-if-rate-above", "-1")
    assert status == 1 and err.startswith("Error: --fail-if-rate-above must be")
    status, _, err = run(*model, "--fail-if-rate-above", "1.1", "--depth", "3")
    assert status == 1 and "--depth only applies to the built-in nets" in err


def test_gate_help_says_noise_never_fails() -> None:
    status, out, _ = run("simulate", "--help")
    assert status == 0
    text = " ".join(out.replace("│", " ").split())
    assert "judged by the lower end of its 95% CI, so that noise alone never fails" in text
    assert "the first layer's 95% CI low over the last layer's CI high" in text


def test_assert_gradient_growth_passes_and_fails(models: Path) -> None:
    spec = importlib.util.spec_from_file_location("gate_models", models)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    small = dict(input_shape=(16,), repeats=8, batch=32, seed=0)
    result = assert_gradient_growth(
        module.mlp, max_rate=1.1, model_args={"batchnorm": False}, **small
    )
    assert result.summary[0].fitted_rate < 1.1
    with pytest.raises(AssertionError) as failed:
        assert_gradient_growth(f"{models}:mlp", max_rate=1.1, **small)
    message = str(failed.value)
    assert message.startswith(f"Gate: {models}:mlp: fitted rate ")
    for column in ("layer", "module", "grad_norm_mean", "grad_norm_ci_low", "growth"):
        assert column in message  # the per-layer table
    with pytest.raises(AssertionError, match="amplification"):
        assert_gradient_growth(module.mlp, max_amplification=1.2, **small)
    with pytest.raises(SpecError, match="max_rate must be a positive finite number"):
        assert_gradient_growth(module.mlp, max_rate=math.inf, **small)
    with pytest.raises(SpecError, match="give max_rate, max_amplification or both"):
        assert_gradient_growth(module.mlp, **small)


def test_gate_failures_judge_the_whole_model_not_its_paths() -> None:
    import gradscope

    spec = gradscope.ModelSpec(f"{ROOT / 'examples' / 'resnet.py'}:make_model", {"width": 4},
                               (3, 8, 8))  # fmt: skip
    from gradscope.engine.user_model import run as run_model
    from gradscope.specs import ModelRequest

    result = run_model(ModelRequest(spec, 8, repeats=4, device="cpu"), seed=0)
    assert {s.path for s in result.summary} == {"all", "branch", "main+skip"}
    whole = next(s for s in result.summary if s.path == "all")
    failures = gate_failures(result, max_rate=whole.fitted_rate_ci_low * 0.99)
    assert len(failures) == 1 and failures[0].label == spec.target + "(width=4)"
    assert gate_failures(result, max_rate=whole.fitted_rate_ci_low * 1.01) == []


def test_the_examples_pytest_gate_runs() -> None:
    """examples/test_gradient_gate.py, as a user's suite would run it."""
    path = ROOT / "examples" / "test_gradient_gate.py"
    spec = importlib.util.spec_from_file_location("example_gradient_gate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for example in ("resnet.py", "plain_cnn.py"):
        module.test_example_gradients_do_not_explode(example)
    module.test_the_gate_catches_batchnorm_explosion()


def test_model_workers_give_bit_identical_numbers(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repeats forked to worker processes (forced here: a tiny model would stay in-process)
    give the same bits as one process, and progress counts every repeat once."""
    from gradscope.engine import user_model
    from gradscope.specs import ModelRequest, ModelSpec

    request = ModelRequest(ModelSpec(f"{models}:mlp", {}, (16,)), 32, repeats=7, device="cpu")
    serial = user_model.measure_model(request, 3, workers=1)
    monkeypatch.setattr(user_model, "PARALLEL_MIN_SECONDS", 0.0)
    seen: list[int] = []
    pooled = user_model.measure_model(
        request, 3, workers=2, progress=lambda done, total: seen.append(done)
    )
    assert np.array_equal(serial.grad_norms, pooled.grad_norms)
    assert np.array_equal(serial.backward_var, pooled.backward_var)
    assert seen == list(range(1, 8))
