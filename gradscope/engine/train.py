"""The training engine behind ``simulate --train-steps``: does training fix an exploding gradient?

Each repeat builds the synthetic net of a :class:`~gradscope.engine.mlp.NetSpec` with the very
weights
``simulate`` measures at initialisation (:func:`gradscope.engine.mlp.draw_repeat`), adds a trained
linear read-out head, and trains it on a synthetic task that needs no download:

- ``teacher``: regression (mean squared error) on the outputs of a fixed random two-layer tanh
  teacher, normalised to unit variance;
- ``gaussian-classes``: cross-entropy classification of ``classes`` Gaussian clusters;
- ``random-labels``: cross-entropy memorisation of uniformly random labels.

Every task is a fixed data set of ``samples`` points x ~ N(0, I) (the clusters shift them), drawn
with the head's initial weights and the minibatch order from a generator seeded by (seed, task,
width, classes, samples, repeat): different nets train on the same data. Minibatches follow a
fresh permutation per epoch.

At each recorded step t (0, K, 2K, …, and the last step ``steps − 1``) the engine keeps, per
layer: the Frobenius norm of the weight gradient of the real loss at W_t (before clipping),
‖W_t‖, the BatchNorm σ = sqrt(mean running_var) after step t's forward (as ``inspect-checkpoint``
defines it), the effective update ‖W_{t+1} − W_t‖ / ‖W_t‖, the LARS trust ratio ‖W_t‖ / ‖∇W_t‖,
and the minibatch loss. Values stay on the device until training ends: no ``.item()`` per step.

Weight-norm growth check: a weight followed directly by BatchNorm (or LayerNorm) is scale
invariant, so ∇W ⊥ W and plain SGD gives ‖W_{t+1}‖² = (1 − lr·λ)²‖W_t‖² + lr²c_t²‖∇W_t‖²
(λ the weight decay, c_t ≤ 1 the clipping factor). The engine accumulates the right-hand side
per layer and step on the device (one fused norm over the layer gradients) and reports it
against the measured ‖W_T‖². The identity is exact up to float rounding and BatchNorm's
ε = 1e-5 in the denominator, which breaks scale invariance by about ε / Var[Wx].

The engine returns records and never prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradscope.engine.mlp import NORM_EPS, NetSpec, draw_repeat, resolve_device, torch_dtype
from gradscope.engine.simulate import default_workers
from gradscope.errors import SpecError
from gradscope.options import Arch, Device, Dtype, Norm, Optimizer, ResidualScale, Task
from gradscope.schema import TrainRecord, TrainSummary, WeightGrowthRecord
from gradscope.theory.stats import LayerStats, bootstrap_rate_ci, log_linear_rate

if TYPE_CHECKING:
    import torch

ProgressFn = Callable[[int, int], None]

BN_MOMENTUM = 0.1  # PyTorch's BatchNorm1d default: running_var ← 0.9·running_var + 0.1·var
CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_
PROGRESS_EVERY = 10  # steps between progress callbacks


# --------------------------------------------------------------------------------------------
# Records


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    records: list[TrainRecord]
    summary: list[TrainSummary]
    weight_growth: list[WeightGrowthRecord]
    checkpoint: Path | None = None
    steps_per_second: float = math.nan


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TrainConfig:
    """The training options shared by every configuration of one :func:`train` call."""

    task: Task
    optimizer: Optimizer
    lr: float
    weight_decay: float
    clip_grad_norm: float | None
    steps: int
    record_every: int
    classes: int
    samples: int
    momentum: float

    def record_steps(self) -> list[int]:
        """0, K, 2K, … and the last step."""
        steps = list(range(0, self.steps, self.record_every))
        if steps[-1] != self.steps - 1:
            steps.append(self.steps - 1)
        return steps

    def growth_basis(self, spec: NetSpec) -> str | None:
        """Why ‖W‖² growth is predicted exactly, or None when it is not."""
        if spec.norm is Norm.none:
            return None
        if self.optimizer is not Optimizer.sgd:
            return None
        if self.weight_decay:
            return "sgd + weight decay: |W|^2 <- (1 - lr*wd)^2 |W|^2 + lr^2 |grad W|^2"
        return "sgd: |W|^2 grows by lr^2 |grad W|^2 per step"


def _no_growth_basis(spec: NetSpec, config: TrainConfig) -> str:
    if spec.norm is Norm.none:
        return "not predicted: without a norm layer the weight is not scale invariant"
    return f"not predicted: {config.optimizer.value} has no exact norm identity"


def _parse(kind: Any, value: Any, what: str) -> Any:
    try:
        return kind(value.value if isinstance(value, kind) else str(value).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise SpecError(f"unknown --{what} {value!r}; choose from {choices}") from None


def _finite_positive(value: float, what: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise SpecError(f"{what} must be a positive number, got {value!r}")


def make_config(
    *,
    task: Task | str,
    optimizer: Optimizer | str,
    lr: float,
    weight_decay: float,
    clip_grad_norm: float | None,
    steps: int,
    record_every: int,
    classes: int,
    samples: int,
    momentum: float,
) -> TrainConfig:
    """Validate the training options (SpecError with one sentence naming the bad value)."""
    if not isinstance(steps, int) or steps < 1:
        raise SpecError(f"--train-steps must be at least 1, got {steps!r}")
    if not isinstance(record_every, int) or record_every < 1:
        raise SpecError(f"--record-every must be at least 1, got {record_every!r}")
    _finite_positive(lr, "--lr")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise SpecError(f"--weight-decay must be zero or positive, got {weight_decay!r}")
    if clip_grad_norm is not None:
        _finite_positive(clip_grad_norm, "--clip-grad-norm")
    if not isinstance(classes, int) or classes < 2:
        raise SpecError(f"--classes must be at least 2, got {classes!r}")
    if not isinstance(samples, int) or samples < 1:
        raise SpecError(f"--samples must be at least 1, got {samples!r}")
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise SpecError(f"momentum must be in [0, 1), got {momentum!r}")
    return TrainConfig(
        task=_parse(Task, task, "task"),
        optimizer=_parse(Optimizer, optimizer, "optimizer"),
        lr=float(lr),
        weight_decay=float(weight_decay),
        clip_grad_norm=None if clip_grad_norm is None else float(clip_grad_norm),
        steps=steps,
        record_every=record_every,
        classes=classes,
        samples=samples,
        momentum=float(momentum),
    )


def task_seed(seed: int, config: TrainConfig, width: int, repeat: int) -> int:
    """Seed of a repeat's task generator: (seed, task, width, classes, samples, repeat)."""
    text = (
        f"gradscope-train-task|{seed}|{config.task.value}|{width}|{config.classes}|"
        f"{config.samples}|{repeat}"
    ).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


# --------------------------------------------------------------------------------------------
# Task data and the model


@dataclass
class TaskData:
    """One repeat's data set, the head's initial weights and the minibatch order.

    Shapes: ``x`` (samples, width); ``y`` (samples, classes) targets for ``teacher``, else
    (samples,) int64 labels; ``head_weight`` (classes, width), ``head_bias`` (classes,);
    ``order`` (steps · batch,) int64 indices into the data set.
    """

    x: torch.Tensor
    y: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    order: torch.Tensor


def make_task_data(
    config: TrainConfig,
    width: int,
    batch: int,
    seed: int,
    repeat: int,
    dtype: Dtype = Dtype.float32,
    device: str = "cpu",
) -> TaskData:
    """Draw one repeat's task (data, head, minibatch order) from its own generator.

    Draws are made in float64 on the CPU and then cast, so float32 and float64 runs train on
    the same numbers (rounded).
    """
    import torch

    dtype = _parse(Dtype, dtype, "dtype")
    gen = torch.Generator()
    gen.manual_seed(task_seed(seed, config, width, repeat))
    n, k = config.samples, config.classes
    f64 = torch.float64
    x = torch.randn(n, width, generator=gen, dtype=f64)
    if config.task is Task.teacher:
        a = torch.randn(width, width, generator=gen, dtype=f64) / math.sqrt(width)
        b = torch.randn(k, width, generator=gen, dtype=f64) / math.sqrt(width)
        y: torch.Tensor = torch.tanh(x @ a.T) @ b.T
        y = y / y.std()
    elif config.task is Task.gaussian_classes:
        # Cluster means ~ N(0, 4/width · I): neighbouring means are about 2√2 apart, against
        # unit noise, so the classes overlap a little and the task takes some training.
        means = torch.randn(k, width, generator=gen, dtype=f64) * (2.0 / math.sqrt(width))
        y = torch.randint(0, k, (n,), generator=gen)
        x = x + means[y]
    else:
        y = torch.randint(0, k, (n,), generator=gen)
    head_weight = torch.randn(k, width, generator=gen, dtype=f64) / math.sqrt(width)
    head_bias = torch.zeros(k, dtype=f64)
    need = config.steps * batch
    perms = [torch.randperm(n, generator=gen) for _ in range(-(-need // n))]
    order = torch.cat(perms)[:need]
    tdt = torch_dtype(dtype)
    y = y.to(device=device, dtype=tdt) if config.task is Task.teacher else y.to(device)
    return TaskData(
        x=x.to(device=device, dtype=tdt),
        y=y,
        head_weight=head_weight.to(device=device, dtype=tdt),
        head_bias=head_bias.to(device=device, dtype=tdt),
        order=order.to(device),
    )


def build_model(spec: NetSpec, classes: int) -> Any:
    """The trainable net: blocks of Linear (no bias) → norm → activation, and a head.

    State-dict keys: ``blocks.{i}.fc.weight``, ``blocks.{i}.bn.running_mean|running_var|
    num_batches_tracked`` (BatchNorm1d without affine parameters, γ = 1, β = 0, as
    ``simulate``), ``head.weight``, ``head.bias``. A resnet adds the skip every two layers as
    ``simulate`` does: x_{k+2} = g(norm(W x_{k+1}) · branch_scale + x_k).
    """
    from torch import nn

    act = spec.activation.torch_fn()

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(spec.width, spec.width, bias=False)
            if spec.norm is Norm.batchnorm:
                self.bn: nn.Module = nn.BatchNorm1d(
                    spec.width, eps=NORM_EPS, momentum=BN_MOMENTUM, affine=False
                )
            elif spec.norm is Norm.layernorm:
                self.bn = nn.LayerNorm(spec.width, eps=NORM_EPS, elementwise_affine=False)
            else:
                self.bn = nn.Identity()

    class TrainNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList(Block() for _ in range(spec.depth))
            self.head = nn.Linear(spec.width, classes)
            self.resnet = spec.arch is Arch.resnet
            self.scale = spec.branch_scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            prev, cur = x, x
            block: Any
            for i, block in enumerate(self.blocks):
                u = block.bn(block.fc(cur))
                if self.resnet and i % 2 == 1:
                    u = u * self.scale + prev if self.scale != 1.0 else u + prev
                prev, cur = cur, act(u)
            return self.head(cur)

    return TrainNet()


def _optimizer(config: TrainConfig, params: list[Any]) -> Any:
    import torch

    if config.optimizer is Optimizer.adam:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    momentum = config.momentum if config.optimizer is Optimizer.momentum else 0.0
    return torch.optim.SGD(
        params, lr=config.lr, momentum=momentum, weight_decay=config.weight_decay
    )


# --------------------------------------------------------------------------------------------
# One repeat


N_LAYER_STATS = 5  # grad_norm, weight_norm, sigma, update_size, trust_ratio


@dataclass
class RepeatTrace:
    """One repeat's recorded values (NumPy, float64).

    ``layers`` (n_recorded, 5, depth): grad norm, weight norm, sigma, update size, trust
    ratio; ``loss``, ``accuracy`` (n_recorded,); ``start_sq``, ``end_sq``, ``predicted_sq``
    (depth,) ‖W‖² before and after training and the predicted ‖W_T‖² (NaN when not predicted).
    """

    layers: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    start_sq: np.ndarray
    end_sq: np.ndarray
    predicted_sq: np.ndarray


def train_repeat(
    spec: NetSpec,
    config: TrainConfig,
    seed: int,
    repeat: int,
    *,
    dtype: Dtype = Dtype.float32,
    device: str = "cpu",
    tick: Callable[[int], None] | None = None,
) -> tuple[RepeatTrace, Any]:
    """Train one repeat's net; returns its trace and the trained model."""
    import torch
    import torch.nn.functional as F

    tdt = torch_dtype(dtype)
    model = build_model(spec, config.classes).to(device=device, dtype=tdt)
    weights = [block.fc.weight for block in model.blocks]
    norms = [block.bn for block in model.blocks] if spec.norm is Norm.batchnorm else []
    data = make_task_data(config, spec.width, spec.batch, seed, repeat, dtype, device)
    with torch.no_grad():
        draw = draw_repeat(spec, seed, repeat, dtype, device)
        for i, w in enumerate(weights):
            w.copy_(draw.weights[i])
        model.head.weight.copy_(data.head_weight)
        model.head.bias.copy_(data.head_bias)
    del draw
    model.train()
    params = list(model.parameters())
    head_params = [model.head.weight, model.head.bias]
    opt = _optimizer(config, params)

    classify = config.task is not Task.teacher
    loss_fn = F.cross_entropy if classify else F.mse_loss
    recorded = config.record_steps()
    slot = dict(zip(recorded, range(len(recorded)), strict=True))
    n_rec, depth, batch = len(recorded), spec.depth, spec.batch
    buf = torch.full((n_rec, N_LAYER_STATS, depth), math.nan, dtype=tdt, device=device)
    loss_buf = torch.full((n_rec,), math.nan, dtype=tdt, device=device)
    acc_buf = torch.full((n_rec,), math.nan, dtype=tdt, device=device)

    f64 = torch.float64
    with torch.no_grad():
        start_sq = torch.stack(torch._foreach_norm(weights)).to(f64).square()
    basis = config.growth_basis(spec)
    predicted = start_sq.clone() if basis is not None else None
    decay2 = (1.0 - config.lr * config.weight_decay) ** 2
    lr2 = config.lr**2
    clip = config.clip_grad_norm

    for t in range(config.steps):
        idx = data.order[t * batch : (t + 1) * batch]
        xb, yb = data.x[idx], data.y[idx]
        out = model(xb)
        loss = loss_fn(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        k = slot.get(t)
        with torch.no_grad():
            gsq = None
            coef = None
            if predicted is not None or clip is not None or k is not None:
                grads = [w.grad for w in weights]
                gsq = torch.stack(torch._foreach_norm(grads)).square()  # (depth,)
            if clip is not None:
                assert gsq is not None
                hsq = torch.stack(torch._foreach_norm([p.grad for p in head_params])).square()
                total = (gsq.sum() + hsq.sum()).sqrt()
                coef = torch.clamp(clip / (total + CLIP_EPS), max=1.0)
                torch._foreach_mul_([p.grad for p in params], coef)
            if predicted is not None:
                assert gsq is not None
                if decay2 != 1.0:
                    predicted.mul_(decay2)
                if coef is None:
                    predicted.add_(gsq, alpha=lr2)
                else:
                    predicted.add_(gsq * coef.square(), alpha=lr2)
            if k is not None:
                assert gsq is not None
                before = torch._foreach_mul(weights, 1.0)  # copies of W_t
                gnorm = gsq.sqrt()
                wnorm = torch.stack(torch._foreach_norm(before))
                sigma = (
                    torch.stack([bn.running_var for bn in norms]).mean(dim=1).sqrt()
                    if norms
                    else torch.full_like(gnorm, math.nan)
                )
                buf[k] = torch.stack([gnorm, wnorm, sigma, gnorm, wnorm / gnorm])
                loss_buf[k] = loss.detach()
                if classify:
                    acc_buf[k] = (out.detach().argmax(dim=1) == yb).to(tdt).mean()
        opt.step()
        if k is not None:
            with torch.no_grad():
                # the update size overwrites the placeholder in row 3
                torch._foreach_sub_(before, weights)  # W_t − W_{t+1}
                buf[k, 3] = torch.stack(torch._foreach_norm(before)) / wnorm
        if tick is not None and (t % PROGRESS_EVERY == PROGRESS_EVERY - 1 or t == config.steps - 1):
            tick(t % PROGRESS_EVERY + 1)

    with torch.no_grad():
        end_sq = torch.stack(torch._foreach_norm(weights)).to(f64).square()
    nan = np.full(depth, math.nan)
    trace = RepeatTrace(
        layers=buf.double().cpu().numpy(),
        loss=loss_buf.double().cpu().numpy(),
        accuracy=acc_buf.double().cpu().numpy(),
        start_sq=start_sq.cpu().numpy(),
        end_sq=end_sq.cpu().numpy(),
        predicted_sq=predicted.cpu().numpy() if predicted is not None else nan,
    )
    return trace, model


# --------------------------------------------------------------------------------------------
# Records from traces


def _num(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _config_columns(spec: NetSpec, config: TrainConfig, repeats: int) -> dict[str, Any]:
    return {
        "arch": spec.arch.value,
        "residual_scale": spec.residual_scale.value,
        "activation": spec.activation.label,
        "norm": spec.norm.value,
        "init": spec.init.value,
        "gain": float(spec.gain),
        "depth": spec.depth,
        "width": spec.width,
        "batch": spec.batch,
        "repeats": repeats,
        "task": config.task.value,
        "optimizer": config.optimizer.value,
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "clip_grad_norm": config.clip_grad_norm,
    }


def _first_nonfinite(values: np.ndarray) -> int | None:
    bad = np.flatnonzero(~np.isfinite(values))
    return int(bad[-1]) + 1 if bad.size else None


def _mean_sem(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the first axis (NaN sem for one repeat)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean = values.mean(axis=0)
        n = values.shape[0]
        sem = values.std(axis=0, ddof=1) / math.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    return mean, sem


def build_train_records(
    spec: NetSpec,
    config: TrainConfig,
    traces: Sequence[RepeatTrace],
    seed: int,
    resamples: int = 1000,
) -> tuple[list[TrainRecord], list[TrainSummary], list[WeightGrowthRecord]]:
    """Per-layer records and per-step summaries over repeats, and the weight-growth check."""
    from gradscope.theory.predict import predict

    repeats = len(traces)
    cols = _config_columns(spec, config, repeats)
    layers = np.stack([t.layers for t in traces])  # (repeats, n_rec, 5, depth)
    losses = np.stack([t.loss for t in traces])  # (repeats, n_rec)
    accs = np.stack([t.accuracy for t in traces])
    prediction = predict(spec)
    predicted_rate = prediction.rate if prediction.relative is not None else None
    has_sigma = spec.norm is Norm.batchnorm
    classify = config.task is not Task.teacher
    records: list[TrainRecord] = []
    summary: list[TrainSummary] = []
    boot_seed = int.from_bytes(spec.key().encode()[:8].ljust(8, b"\0"), "little") ^ seed
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for k, step in enumerate(config.record_steps()):
            stats = LayerStats(spec.depth)
            zeros = np.zeros(spec.depth)
            for r in range(repeats):
                g = layers[r, k, 0]
                stats.add(g, zeros, zeros, overflow_layer=_first_nonfinite(g))
            s = stats.summary()
            others = layers[:, k, 1:].mean(axis=0)  # (4, depth)
            wnorm, sigma, update, trust = others
            loss_mean, loss_sem = _mean_sem(losses[:, k])
            for i in range(spec.depth):
                records.append(
                    TrainRecord(
                        **cols,
                        step=step,
                        layer=i + 1,
                        grad_norm_mean=float(s.mean[i]),
                        grad_norm_std=_num(s.std[i]),
                        grad_norm_sem=_num(s.sem[i]),
                        grad_norm_ci_low=_num(s.ci_low[i]),
                        grad_norm_ci_high=_num(s.ci_high[i]),
                        weight_norm=float(wnorm[i]),
                        sigma=_num(sigma[i]) if has_sigma else None,
                        update_size=float(update[i]),
                        trust_ratio=_num(trust[i]),
                        loss=float(loss_mean),
                    )
                )
            rate, r2 = log_linear_rate(s.mean)
            ci_low, ci_high = bootstrap_rate_ci(stats.norm_matrix(), boot_seed + step, resamples)
            amp = s.mean[0] / s.mean[-1] if s.mean[-1] != 0 else math.nan
            srate, sr2 = log_linear_rate(sigma) if has_sigma else (math.nan, math.nan)
            wrate, _ = log_linear_rate(wnorm)
            summary.append(
                TrainSummary(
                    **cols,
                    step=step,
                    loss=float(loss_mean),
                    loss_sem=_num(loss_sem),
                    accuracy=_num(accs[:, k].mean()) if classify else None,
                    fitted_rate=_num(rate),
                    fitted_rate_ci_low=_num(ci_low),
                    fitted_rate_ci_high=_num(ci_high),
                    predicted_rate=predicted_rate,
                    r_squared=_num(r2),
                    amplification=_num(amp),
                    sigma_rate=_num(srate),
                    sigma_r_squared=_num(sr2),
                    weight_norm_rate=_num(wrate),
                    overflow_repeats=stats.nonfinite_repeats,
                )
            )
    growth = _growth_records(spec, config, traces, cols)
    return records, summary, growth


def _growth_records(
    spec: NetSpec, config: TrainConfig, traces: Sequence[RepeatTrace], cols: dict[str, Any]
) -> list[WeightGrowthRecord]:
    start = np.stack([t.start_sq for t in traces])  # (repeats, depth)
    end = np.stack([t.end_sq for t in traces])
    pred = np.stack([t.predicted_sq for t in traces])
    basis = config.growth_basis(spec)
    rows = []
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        measured = end - start
        predicted_growth = pred - start
        per_repeat = np.abs(measured / predicted_growth - 1.0)
        for i in range(spec.depth):
            m = float(measured[:, i].mean())
            p = float(predicted_growth[:, i].mean()) if basis is not None else None
            rel = None if p is None or p == 0 else m / p - 1.0
            rows.append(
                WeightGrowthRecord(
                    **cols,
                    steps=config.steps,
                    layer=i + 1,
                    weight_norm_start=float(np.sqrt(start[:, i]).mean()),
                    weight_norm_end=float(np.sqrt(end[:, i]).mean()),
                    measured_growth=m,
                    predicted_growth=p,
                    relative_error=_num(rel),
                    max_relative_error=_num(per_repeat[:, i].max()) if basis else None,
                    prediction_basis=basis or _no_growth_basis(spec, config),
                )
            )
    return rows


# --------------------------------------------------------------------------------------------
# The public API


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def save_state_dict(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write the model's plain state dict (tensors only) with ``torch.save``, atomically."""
    import io

    import torch

    from gradscope.output import write_atomic

    out = Path(path)
    buffer = io.BytesIO()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch.save(state, buffer)
    write_atomic(out, buffer.getvalue())
    return out


def train(
    specs: NetSpec | Sequence[NetSpec],
    *,
    task: Task | str = Task.teacher,
    optimizer: Optimizer | str = Optimizer.sgd,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    clip_grad_norm: float | None = None,
    steps: int = 100,
    record_every: int = 1,
    repeats: int = 4,
    seed: int = 0,
    classes: int = 10,
    samples: int = 4096,
    momentum: float = 0.9,
    dtype: Dtype | str = Dtype.float32,
    device: Device | str = Device.auto,
    save_checkpoint: str | os.PathLike[str] | None = None,
    resamples: int = 1000,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train each configuration's nets and record per-layer gradient statistics over steps.

    Repeat k of a configuration starts from the weights ``simulate`` draws for repeat k
    (same seed), and trains on the task drawn for (seed, task, width, classes, samples, k).

    Args:
        specs: one configuration or several (see :func:`gradscope.engine.simulate.build_specs`).
        task: ``teacher`` (regression), ``gaussian-classes`` or ``random-labels``.
        optimizer: ``sgd``, ``momentum`` (SGD with ``momentum``) or ``adam``.
        lr, weight_decay: learning rate and L2 weight decay (PyTorch's ``weight_decay``).
        clip_grad_norm: clip the total gradient norm (all parameters) to this value.
        steps: optimiser steps per repeat; record_every: record every K-th step (and the last).
        classes: classes (outputs of the teacher); samples: size of the fixed data set.
        save_checkpoint: write repeat 0's trained state dict (of the first configuration)
            here, readable by ``inspect-checkpoint``.
        workers: CPU threads each training whole repeats on one core (default: one per
            core); the output does not depend on it.
        progress: called as ``progress(done, total)`` in steps over all repeats and
            configurations, every few steps (from worker threads, one call at a time).

    Returns:
        Per (step, layer) records, per-step summaries and per-layer weight-growth checks.

    Raises:
        SpecError: an invalid option.
    """
    spec_list = [specs] if isinstance(specs, NetSpec) else list(specs)
    if not spec_list:
        raise SpecError("no network configuration to train")
    if not isinstance(repeats, int) or repeats < 1:
        raise SpecError(f"repeats must be at least 1, got {repeats!r}")
    if resamples < 10:
        raise SpecError(f"resamples must be at least 10, got {resamples}")
    config = make_config(
        task=task,
        optimizer=optimizer,
        lr=lr,
        weight_decay=weight_decay,
        clip_grad_norm=clip_grad_norm,
        steps=steps,
        record_every=record_every,
        classes=classes,
        samples=samples,
        momentum=momentum,
    )
    for spec in spec_list:
        if spec.residual_scale is ResidualScale.zero_gamma:
            raise SpecError(
                "--residual-scale zero-gamma needs a learnable γ, which the training engine "
                "does not have; use none or invsqrt-depth"
            )
    if save_checkpoint is not None:
        from gradscope.output import check_output_path

        check_output_path(Path(save_checkpoint))
    dt = _parse(Dtype, dtype, "dtype")
    dev = resolve_device(_parse(Device, device, "device"))

    total = config.steps * repeats * len(spec_list)
    done = 0

    lock = threading.Lock()

    def tick(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            if progress is not None:
                progress(done, total)

    result = TrainResult(records=[], summary=[], weight_growth=[])
    n_workers = workers or default_workers(dev)
    t0 = time.perf_counter()
    # One intra-op thread per repeat and repeats on worker threads, as simulate: on a busy
    # CPU, two intra-op threads on small matrices run tens of times slower than one, and the
    # per-repeat arithmetic (hence every bit of the output) no longer depends on the workers.
    with _intra_op_threads(1 if dev == "cpu" else torch_threads()):
        for c, spec in enumerate(spec_list):
            keep = save_checkpoint is not None and c == 0

            def run(r: int, spec: NetSpec = spec, keep: bool = keep) -> tuple[RepeatTrace, Any]:
                trace, model = train_repeat(
                    spec, config, seed, r, dtype=dt, device=dev, tick=tick if progress else None
                )
                return trace, (model if keep and r == 0 else None)

            if n_workers == 1 or repeats == 1:
                outs = [run(r) for r in range(repeats)]
            else:
                with ThreadPoolExecutor(max_workers=min(n_workers, repeats)) as pool:
                    outs = list(pool.map(run, range(repeats)))
            traces = [trace for trace, _ in outs]
            if keep and save_checkpoint is not None:
                result.checkpoint = save_state_dict(outs[0][1], save_checkpoint)
            del outs
            records, summary, growth = build_train_records(spec, config, traces, seed, resamples)
            result.records.extend(records)
            result.summary.extend(summary)
            result.weight_growth.extend(growth)
    elapsed = time.perf_counter() - t0
    result.steps_per_second = total / elapsed if elapsed > 0 else math.nan
    return result


__all__ = [
    "Optimizer",
    "Task",
    "TaskData",
    "TrainRecord",
    "TrainResult",
    "TrainSummary",
    "WeightGrowthRecord",
    "build_model",
    "make_task_data",
    "save_state_dict",
    "train",
    "train_repeat",
]
