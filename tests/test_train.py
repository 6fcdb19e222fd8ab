"""The training engine against independent computations: a plain nn.Sequential + autograd loop
on the same weights and batches, an independent accumulation of the weight-norm identity, and
``inspect_checkpoint`` on the saved state dict. Small nets, float64 where identities are exact."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradscope.api import train
from gradscope.checkpoint import inspect_checkpoint
from gradscope.engine.draws import draw_repeat
from gradscope.engine.layers import activation_forward
from gradscope.engine.train import make_task_data
from gradscope.errors import RecordsError, SpecError
from gradscope.options import Dtype, Task
from gradscope.plot.training import is_training_rows, plot_training, training_figure
from gradscope.schema import TrainRecord
from gradscope.specs import NORM_EPS, build_specs, make_config

SEED = 7


def _spec(**kw: Any) -> Any:
    base: dict[str, Any] = {"activation": "relu", "depth": 4, "width": 16, "batch": 32}
    base.update(kw)
    return build_specs(**base)[0]


def _config(**kw: Any) -> Any:
    base: dict[str, Any] = {
        "task": "gaussian-classes",
        "optimizer": "sgd",
        "lr": 0.1,
        "weight_decay": 0.0,
        "clip_grad_norm": None,
        "steps": 1,
        "record_every": 1,
        "classes": 10,
        "samples": 256,
        "momentum": 0.9,
    }
    base.update(kw)
    return make_config(**base)


class Reference(nn.Module):
    """The same net written independently: Linear → BatchNorm1d → activation, resnet skips."""

    def __init__(self, spec: Any, classes: int) -> None:
        super().__init__()
        self.spec = spec
        self.linears = nn.ModuleList(
            nn.Linear(spec.width, spec.width, bias=False) for _ in range(spec.depth)
        )
        self.bns = nn.ModuleList(
            nn.BatchNorm1d(spec.width, eps=NORM_EPS, affine=False)
            if spec.norm.value == "batchnorm"
            else nn.LayerNorm(spec.width, eps=NORM_EPS, elementwise_affine=False)
            for _ in range(spec.depth)
        )
        self.head = nn.Linear(spec.width, classes)
        self.act = activation_forward(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [x]
        for i in range(self.spec.depth):
            u = self.bns[i](self.linears[i](xs[-1]))
            if self.spec.arch.value == "resnet" and i % 2 == 1:
                u = u * self.spec.branch_scale + xs[-2]
            xs.append(self.act(u))
        return self.head(xs[-1])


def _reference(spec: Any, config: Any, repeat: int = 0) -> tuple[Reference, Any]:
    ref = Reference(spec, config.classes).double()
    data = make_task_data(config, spec.width, spec.batch, SEED, repeat, dtype=Dtype.float64)
    draw = draw_repeat(spec, SEED, repeat, dtype=Dtype.float64)
    with torch.no_grad():
        for i, lin in enumerate(ref.linears):
            lin.weight.copy_(draw.weights[i])
        ref.head.weight.copy_(data.head_weight)
        ref.head.bias.copy_(data.head_bias)
    return ref, data


def _loss(config: Any, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y) if config.task is Task.teacher else F.cross_entropy(out, y)


def _at(records: list[TrainRecord], step: int) -> list[TrainRecord]:
    return sorted((r for r in records if r.step == step), key=lambda r: r.layer)


@pytest.mark.parametrize(
    ("spec_kw", "task"),
    [
        ({}, "gaussian-classes"),
        ({"arch": "resnet"}, "teacher"),
        ({"arch": "resnet", "residual_scale": "invsqrt-depth"}, "random-labels"),
        ({"activation": "tanh"}, "random-labels"),
        ({"activation": "selu", "norm": "layernorm"}, "teacher"),
    ],
)
def test_step0_matches_plain_autograd(spec_kw: dict[str, Any], task: str) -> None:
    spec = _spec(**spec_kw)
    config = _config(task=task)
    res = train(spec, task=task, steps=1, repeats=1, seed=SEED, samples=256, dtype="float64")
    ref, data = _reference(spec, config)
    idx = data.order[: spec.batch]
    loss = _loss(config, ref(data.x[idx]), data.y[idx])
    loss.backward()
    rows = _at(res.records, 0)
    grads = [float(lin.weight.grad.norm()) for lin in ref.linears]
    weights = [float(lin.weight.detach().norm()) for lin in ref.linears]
    np.testing.assert_allclose([r.grad_norm_mean for r in rows], grads, rtol=1e-10)
    np.testing.assert_allclose([r.weight_norm for r in rows], weights, rtol=1e-12)
    np.testing.assert_allclose([r.trust_ratio for r in rows], np.divide(weights, grads), rtol=1e-10)
    # one SGD step without momentum moves each weight by lr·∇W
    np.testing.assert_allclose(
        [r.update_size for r in rows], 0.1 * np.divide(grads, weights), rtol=1e-10
    )
    assert rows[0].loss == pytest.approx(loss.item(), rel=1e-12)
    if spec.norm.value == "batchnorm":
        sig = [math.sqrt(float(bn.running_var.mean())) for bn in ref.bns]
        np.testing.assert_allclose([r.sigma for r in rows], sig, rtol=1e-12)
    else:
        assert all(r.sigma is None for r in rows)


def test_start_weights_are_simulates_draw() -> None:
    spec = _spec()
    res = train(spec, steps=1, repeats=2, seed=SEED, samples=64)
    draws = [draw_repeat(spec, SEED, r).weights.double().norm(dim=(1, 2)) for r in range(2)]
    expected = torch.stack(draws).mean(0).numpy()
    np.testing.assert_allclose([r.weight_norm for r in _at(res.records, 0)], expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("weight_decay", "clip"),
    [(0.0, None), (0.01, None), (0.0, 0.5)],
)
def test_weight_growth_identity_vs_independent_accumulation(
    weight_decay: float, clip: float | None
) -> None:
    """‖W_T‖² = Π(1−lr·λ)²… + Σ lr²c²‖∇W‖², accumulated here by an independent plain loop."""
    spec = _spec(depth=3, width=12, batch=24)
    steps, lr = 40, 0.5
    config = _config(steps=steps, lr=lr, weight_decay=weight_decay, clip_grad_norm=clip)
    res = train(
        spec,
        steps=steps,
        lr=lr,
        weight_decay=weight_decay,
        clip_grad_norm=clip,
        repeats=1,
        seed=SEED,
        samples=256,
        task="gaussian-classes",
        dtype="float64",
        record_every=steps,
    )
    ref, data = _reference(spec, config)
    opt = torch.optim.SGD(ref.parameters(), lr=lr, weight_decay=weight_decay)
    start = np.array([float(lin.weight.detach().pow(2).sum()) for lin in ref.linears])
    acc = start.copy()
    for t in range(steps):
        idx = data.order[t * spec.batch : (t + 1) * spec.batch]
        opt.zero_grad()
        _loss(config, ref(data.x[idx]), data.y[idx]).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        # after clipping, the stored gradient is already c·∇W
        g2 = np.array([float(lin.weight.grad.pow(2).sum()) for lin in ref.linears])
        acc = (1 - lr * weight_decay) ** 2 * acc + lr**2 * g2
        opt.step()
    end = np.array([float(lin.weight.detach().pow(2).sum()) for lin in ref.linears])
    # The identity itself (BatchNorm's ε breaks scale invariance by ~ε/Var, far below 1e-4).
    np.testing.assert_allclose(end, acc, rtol=1e-4)
    # The engine's measured and predicted values equal the independent ones.
    rows = sorted(res.weight_growth, key=lambda r: r.layer)
    np.testing.assert_allclose([r.measured_growth for r in rows], end - start, rtol=1e-8)
    np.testing.assert_allclose([r.predicted_growth for r in rows], acc - start, rtol=1e-8)
    assert all(abs(r.relative_error) < 1e-4 for r in rows)
    assert all(r.max_relative_error < 1e-4 for r in rows)
    assert all(r.prediction_basis.startswith("sgd") for r in rows)
    np.testing.assert_allclose([r.weight_norm_end for r in rows], np.sqrt(end), rtol=1e-10)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_no_growth_prediction_for_other_optimizers(optimizer: str) -> None:
    res = train(_spec(), optimizer=optimizer, lr=0.01, steps=3, repeats=1, samples=64)
    assert all(r.predicted_growth is None for r in res.weight_growth)
    assert all(r.prediction_basis.startswith("not predicted") for r in res.weight_growth)
    assert all(math.isfinite(s.loss) for s in res.summary)


def test_no_growth_prediction_without_norm() -> None:
    res = train(_spec(norm="none"), steps=2, repeats=1, samples=64, lr=0.01)
    assert all(r.predicted_growth is None for r in res.weight_growth)
    assert "scale invariant" in res.weight_growth[0].prediction_basis


def test_checkpoint_sigma_matches_last_step(tmp_path: Any) -> None:
    spec = _spec(depth=5)
    path = tmp_path / "trained.pt"
    res = train(
        spec, steps=12, record_every=5, repeats=1, seed=SEED, samples=128, save_checkpoint=path
    )
    assert res.checkpoint == path
    assert [s.step for s in res.summary] == [0, 5, 10, 11]
    ck = inspect_checkpoint(path)
    assert [r.name for r in ck.records] == [f"blocks.{i}.bn" for i in range(5)]
    last = _at(res.records, 11)
    np.testing.assert_allclose([r.sigma for r in ck.records], [r.sigma for r in last], rtol=1e-6)
    state = torch.load(path, weights_only=True)
    np.testing.assert_allclose(
        [float(state[f"blocks.{i}.fc.weight"].double().norm()) for i in range(5)],
        [g.weight_norm_end for g in sorted(res.weight_growth, key=lambda g: g.layer)],
        rtol=1e-6,
    )


def test_deterministic_and_independent_of_workers() -> None:
    spec = _spec()
    kw: dict[str, Any] = {"steps": 4, "repeats": 3, "seed": SEED, "samples": 64, "resamples": 50}
    a = train(spec, workers=1, **kw)
    b = train(spec, workers=2, **kw)
    assert a.records == b.records
    assert a.summary == b.summary
    assert a.weight_growth == b.weight_growth


def test_summary_rates_and_progress() -> None:
    calls: list[tuple[int, int]] = []
    specs = [_spec(), _spec(activation="tanh")]
    res = train(
        specs,
        steps=25,
        record_every=10,
        repeats=2,
        samples=64,
        resamples=50,
        task="gaussian-classes",
        progress=lambda d, t: calls.append((d, t)),
    )
    assert calls[-1] == (100, 100)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert [s.step for s in res.summary] == [0, 10, 20, 24] * 2
    assert len(res.records) == 2 * 4 * 4
    for s in res.summary:
        assert s.fitted_rate is not None and s.fitted_rate_ci_low is not None
        assert s.fitted_rate_ci_low <= s.fitted_rate <= s.fitted_rate_ci_high
        assert s.predicted_rate is not None
        assert 0.0 <= s.accuracy <= 1.0


@pytest.mark.parametrize(
    ("kw", "word"),
    [
        ({"steps": 0}, "--train-steps"),
        ({"record_every": 0}, "--record-every"),
        ({"lr": -1.0}, "--lr"),
        ({"lr": math.nan}, "--lr"),
        ({"weight_decay": -0.1}, "--weight-decay"),
        ({"clip_grad_norm": 0.0}, "--clip-grad-norm"),
        ({"task": "mnist"}, "mnist"),
        ({"optimizer": "lbfgs"}, "lbfgs"),
        ({"repeats": 0}, "repeats"),
        ({"classes": 1}, "--classes"),
        ({"samples": 0}, "--samples"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_input(kw: dict[str, Any], word: str) -> None:
    """The CLI message names the flag; the Python message names the parameter instead."""
    with pytest.raises(SpecError) as info:
        train(_spec(), **kw)
    assert word in info.value.cli_message({"steps": "--train-steps"})
    if word.startswith("--"):
        assert "--" not in str(info.value)
        assert next(iter(kw)) in str(info.value)


def test_zero_gamma_refused() -> None:
    with pytest.raises(SpecError, match="zero-gamma"):
        train(_spec(arch="resnet", residual_scale="zero-gamma"), steps=1)


# --- plots ------------------------------------------------------------------------------


def test_training_plot_from_records_and_dicts(tmp_path: Any) -> None:
    specs = [_spec(), _spec(arch="resnet")]
    res = train(specs, steps=6, record_every=2, repeats=1, samples=64)
    assert is_training_rows(TrainRecord.__dataclass_fields__)
    fig = training_figure(res.records)
    heat = [ax for ax in fig.axes if ax.collections and ax.get_label() != "<colorbar>"]
    assert len(heat) == 2  # one heatmap per configuration
    assert any("arch=resnet" in ax.get_title() for ax in fig.axes)
    sigma_ax = [ax for ax in fig.axes if "σ at the last" in ax.get_title()]
    assert len(sigma_ax) == 1 and len(sigma_ax[0].lines) == 2
    # the heatmap holds log10 of the records' values
    arr = heat[0].collections[0].get_array()
    first = sorted((r for r in res.records if r.arch == "plain"), key=lambda r: (r.layer, r.step))
    np.testing.assert_allclose(
        np.sort(np.ravel(arr)), np.sort(np.log10([r.grad_norm_mean for r in first]))
    )
    out = tmp_path / "heat.png"
    rows = [{k: ("" if v is None else str(v)) for k, v in vars(r).items()} for r in res.records]
    plot_training(rows, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_plot_bad_input() -> None:
    with pytest.raises(RecordsError):
        training_figure([])
    with pytest.raises(RecordsError, match="step"):
        training_figure([{"layer": 1, "grad_norm_mean": 1.0}])
    with pytest.raises(SpecError, match="nope"):
        training_figure([{"step": 0, "layer": 1, "grad_norm_mean": 1.0}], value="nope")


# --- conv nets with pools ------------------------------------------------------------------


def _conv_spec(**kw: Any) -> Any:
    base: dict[str, Any] = {
        "arch": "plain-conv", "activation": "relu", "depth": 6, "width": 3, "batch": 8,
        "image_size": 8, "pool_every": 2, "double_channels": True,
    }  # fmt: skip
    base.update(kw)
    return build_specs(**base)[0]


def test_conv_step0_matches_plain_autograd() -> None:
    """Conv → BatchNorm2d → ReLU (→ max-pool), global average, head: written independently."""
    from gradscope.engine.draws import draw_conv_repeat

    spec, config = _conv_spec(), _config(samples=64)
    res = train(
        spec, steps=1, repeats=1, seed=SEED, samples=64, dtype="float64", task="gaussian-classes"
    )
    draw = draw_conv_repeat(spec, SEED, 0, Dtype.float64)
    data = make_task_data(
        config, spec.width, spec.batch, SEED, 0, Dtype.float64,
        sample_shape=(spec.width, spec.image_size, spec.image_size), head_inputs=spec.channels[-1],
    )  # fmt: skip
    convs, layers = [], []
    for layer, w in enumerate(draw.weights, start=1):
        conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, bias=False).double()
        conv.weight.data.copy_(w)
        convs.append(conv)
        layers += [conv, nn.BatchNorm2d(w.shape[0], eps=NORM_EPS, affine=False).double(), nn.ReLU()]
        if layer in spec.pools_after:
            layers.append(nn.MaxPool2d(2))
    body = nn.Sequential(*layers)
    head = nn.Linear(spec.channels[-1], 10).double()
    head.weight.data.copy_(data.head_weight)
    head.bias.data.copy_(data.head_bias)
    idx = data.order[: spec.batch]
    loss = F.cross_entropy(head(body(data.x[idx]).mean(dim=(2, 3))), data.y[idx])
    loss.backward()
    rows = _at(res.records, 0)
    np.testing.assert_allclose(
        [r.grad_norm_mean for r in rows], [float(c.weight.grad.norm()) for c in convs], rtol=1e-10
    )
    assert rows[0].loss == pytest.approx(loss.item(), rel=1e-12)


def test_conv_training_checkpoint_end_to_end(tmp_path: Any) -> None:
    """simulate --train-steps on plain-conv, --save-checkpoint, inspect-checkpoint: the pools
    are read from the layout, sigma is the records' last step, and the headline fit and
    verdict are those of the records' own sigma."""
    import csv

    from ckpt_factory import run_cli

    from gradscope.checkpoint import fit_within_groups
    from gradscope.checkpoint.verdict import verdict_of

    ck, rec = tmp_path / "conv.pt", tmp_path / "records.csv"
    code, _, err = run_cli(
        "simulate", "--arch", "plain-conv", "--depth", "9", "--width", "4", "--image-size", "16",
        "--pool-every", "3", "--batch", "16", "--train-steps", "25", "--record-every", "12",
        "--repeats", "1", "--samples", "128", "--task", "gaussian-classes",
        "--save-checkpoint", str(ck), "-o", str(rec),
    )  # fmt: skip
    assert code == 0, err
    last = [r for r in csv.DictReader(rec.open()) if r["step"] == "24"]
    sigma = [float(r["sigma"]) for r in last]
    result = inspect_checkpoint(ck)
    rows = result.records
    assert [r.name for r in rows] == [f"features.{i}" for i in (1, 4, 7, 11, 14, 17, 21, 24, 27)]
    assert [r.index - 1 for r in rows if r.after_downsample] == [3, 6]  # --pool-every 3
    np.testing.assert_allclose([r.sigma for r in rows], sigma, rtol=1e-6)
    # The records' own sigma, fitted here: layers 2..9, one intercept per segment.
    segment = [1 + (layer > 3) + (layer > 6) for layer in range(2, 10)]
    fit = fit_within_groups([-float(i) for i in range(2, 10)], sigma[1:], segment)
    head = result.summary[0]
    assert head.rate_per_layer == pytest.approx(fit.rate, rel=1e-5)
    assert head.verdict == verdict_of(fit)
    assert f"Verdict: {ck}" not in err  # the verdict is inspect-checkpoint's, not simulate's


def test_resnet_conv_training_refused() -> None:
    with pytest.raises(SpecError, match="resnet-conv"):
        train(_conv_spec(arch="resnet-conv", double_channels=False), steps=1)
