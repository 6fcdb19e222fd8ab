"""One engine API shape: run(request, *, seed, progress, stop) -> Result, for all three runs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import gradscope
from gradscope.errors import SpecError
from gradscope.schema import Result
from gradscope.specs import (
    ModelRequest,
    ModelSpec,
    SimulateRequest,
    TrainRequest,
    build_specs,
    make_config,
)

ROOT = Path(__file__).resolve().parents[1]
SPECS = tuple(build_specs(depth=4, width=8, batch=8))


def _config():
    return make_config(
        task="teacher", optimizer="sgd", lr=0.05, weight_decay=0.0, clip_grad_norm=None,
        steps=3, record_every=1, classes=3, samples=32, momentum=0.9,
    )  # fmt: skip


def _requests() -> list[object]:
    model = ModelSpec(f"{ROOT / 'examples' / 'plain_cnn.py'}:make_model", {}, (3, 8, 8))
    return [
        SimulateRequest(SPECS, repeats=3),
        TrainRequest(SPECS, _config(), repeats=2),
        ModelRequest(model, batch=4, repeats=2),
    ]


@pytest.mark.parametrize("request_", _requests(), ids=["simulate", "train", "model"])
def test_every_run_has_one_shape(request_: object) -> None:
    calls: list[tuple[int, int]] = []
    result = gradscope.run(request_, seed=5, progress=lambda d, t: calls.append((d, t)))
    assert isinstance(result, Result)
    assert result.records and result.summary and not result.partial
    assert isinstance(result.notes, list)
    done, total = calls[-1]
    assert done == total and all(t == total for _, t in calls)
    again = gradscope.run(request_, seed=5)
    assert again.records == result.records  # same seed, same records


@pytest.mark.parametrize("request_", _requests()[:2], ids=["simulate", "train"])
def test_a_stop_before_the_start_gives_a_partial_result(request_: object) -> None:
    stop = threading.Event()
    stop.set()
    result = gradscope.run(request_, seed=0, stop=stop)
    assert result.partial and result.records == []


def test_requests_validate_once_and_name_parameters() -> None:
    with pytest.raises(SpecError) as info:
        SimulateRequest(SPECS, repeats=0)
    assert str(info.value) == "repeats must be at least 1, got 0"
    assert info.value.cli_message() == "--repeats must be at least 1, got 0"
    with pytest.raises(SpecError, match="seed must be a whole number"):
        gradscope.run(SimulateRequest(SPECS, repeats=1), seed=-1)
    with pytest.raises(TypeError):
        gradscope.run("simulate")  # type: ignore[arg-type]
