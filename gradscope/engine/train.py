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

import dataclasses
import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gradscope.engine.distributed import Cluster, ranks_per_machine, run_in_order
from gradscope.engine.draws import draw_conv_repeat, draw_repeat, torch_dtype
from gradscope.engine.layers import activation_forward
from gradscope.engine.runner import (
    ProgressFn,
    _work_flop,
    available_cores,
    default_workers,
    intra_op_threads,
    resolve_device,
)
from gradscope.errors import SpecError
from gradscope.options import Arch, Dtype, Norm, NormPosition, Optimizer, ResidualScale, Task
from gradscope.schema import (
    Result,
    TrainConfigColumns,
    TrainRecord,
    TrainSummary,
    WeightGrowthRecord,
)
from gradscope.specs import (
    CONV_KERNEL,
    NORM_EPS,
    NetSpec,
    TrainConfig,
    TrainRequest,
    check_seed,
    coerce,
)
from gradscope.theory.stats import LayerStats, bootstrap_rate_ci, log_linear_rate

BN_MOMENTUM = 0.1  # PyTorch's BatchNorm1d default: running_var ← 0.9·running_var + 0.1·var
CLIP_EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_
PROGRESS_EVERY = 10  # steps between progress callbacks
MAX_TASK_BYTES = 1 << 30  # a repeat's training set (drawn in float64) may take 1 GiB at most


# --------------------------------------------------------------------------------------------
# Records


@dataclass
class TrainResult(Result):
    """What a training run returns: ``records`` per (step, layer), ``summary`` per step and
    ``weight_growth`` per layer; ``state_dict`` is repeat 0's trained state dict of the first
    configuration when the request asked for it (``checkpoint``: where it was written)."""

    weight_growth: list[WeightGrowthRecord] = field(default_factory=list)
    state_dict: dict[str, Any] | None = None
    checkpoint: Path | None = None
    steps_per_second: float = math.nan
    configurations_done: int = 0

    def state_dict_bytes(self) -> bytes:
        """The state dict as ``torch.save`` writes it (readable by inspect-checkpoint)."""
        import io

        buffer = io.BytesIO()
        torch.save(self.state_dict, buffer)
        return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Configuration


def _no_growth_basis(spec: NetSpec, config: TrainConfig) -> str:
    if spec.norm is Norm.none:
        return "not predicted: without a norm layer the weight is not scale invariant"
    return f"not predicted: {config.optimizer.value} has no exact norm identity"


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
    sample_shape: tuple[int, ...] | None = None,
    head_inputs: int | None = None,
) -> TaskData:
    """Draw one repeat's task (data, head, minibatch order) from its own generator.

    Draws are made in float64 on the CPU and then cast, so float32 and float64 runs train on
    the same numbers (rounded). A conv net's samples have ``sample_shape`` (C, S, S): the task
    is drawn on the flattened sample (the teacher's hidden layer has ``width`` units), and the
    head sees ``head_inputs`` features (default ``width``).
    """

    dtype = coerce(Dtype, dtype, "dtype")
    gen = torch.Generator()
    gen.manual_seed(task_seed(seed, config, width, repeat))
    n, k = config.samples, config.classes
    dim = math.prod(sample_shape) if sample_shape else width
    if n * dim * 8 > MAX_TASK_BYTES:
        raise SpecError(
            f"the training set would hold {n} × {dim} numbers ({n * dim * 8 / 2**30:.1f} GiB in "
            "float64, per repeat): lower {--samples}, {--width} or {--image_size}"
        )
    f64 = torch.float64
    x = torch.randn(n, dim, generator=gen, dtype=f64)
    if config.task is Task.teacher:
        a = torch.randn(width, dim, generator=gen, dtype=f64) / math.sqrt(dim)
        b = torch.randn(k, width, generator=gen, dtype=f64) / math.sqrt(width)
        y: torch.Tensor = torch.tanh(x @ a.T) @ b.T
        y = y / y.std()
    elif config.task is Task.gaussian_classes:
        # Cluster means ~ N(0, 4/dim · I): neighbouring means are about 2√2 apart, against
        # unit noise, so the classes overlap a little and the task takes some training.
        means = torch.randn(k, dim, generator=gen, dtype=f64) * (2.0 / math.sqrt(dim))
        y = torch.randint(0, k, (n,), generator=gen)
        x = x + means[y]
    else:
        y = torch.randint(0, k, (n,), generator=gen)
    if sample_shape:
        x = x.reshape(n, *sample_shape)
    fan_in = head_inputs or width
    head_weight = torch.randn(k, fan_in, generator=gen, dtype=f64) / math.sqrt(fan_in)
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


class _Activation(nn.Module):
    """An activation function as a module without parameters (a Sequential slot)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def build_model(spec: NetSpec, classes: int) -> Any:
    """The trainable net: blocks of Linear (no bias) → norm → activation, and a head
    (plain-conv: :func:`build_conv_model`).

    State-dict keys: ``blocks.{i}.fc.weight``, ``blocks.{i}.bn.running_mean|running_var|
    num_batches_tracked`` (BatchNorm1d without affine parameters, γ = 1, β = 0, as
    ``simulate``), ``head.weight``, ``head.bias``. A resnet adds the skip every two layers as
    ``simulate`` does: x_{k+2} = g(norm(W x_{k+1}) · branch_scale + x_k).

    Both nets list their layer weights (``layer_weights``) and BatchNorm modules
    (``batch_norms``), layer 1 first.
    """

    if spec.arch.is_conv:
        return build_conv_model(spec, classes)
    act = activation_forward(spec.activation)

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

        def layer_weights(self) -> list[Any]:
            blocks: Any = self.blocks
            return [block.fc.weight for block in blocks]

        def batch_norms(self) -> list[Any]:
            return [b.bn for b in self.blocks if isinstance(b.bn, nn.BatchNorm1d)]

    return TrainNet()


def build_conv_model(spec: NetSpec, classes: int) -> Any:
    """A VGG-like plain conv net: ``features`` is an ``nn.Sequential`` of, per layer, a 3×3
    convolution (stride 1, padding 1, no bias) → norm (BatchNorm2d without affine
    parameters, or LayerNorm over (C, H, W) as GroupNorm with one group) → activation, and a
    2×2 max-pool after every ``pool_every``-th layer (never after the last), as ``simulate``'s
    plain-conv; the ``head`` is a Linear layer on the global average of the last feature map.

    State-dict keys follow torchvision's VGG layout: ``features.{i}.weight`` (conv),
    ``features.{i+1}.running_mean|running_var|num_batches_tracked`` (BatchNorm); the
    activation and pool slots hold no tensors, so ``inspect-checkpoint`` finds the pools from
    the index gaps. ``head.weight``, ``head.bias``.
    """

    if spec.arch is not Arch.plain_conv:
        raise SpecError(f"training supports plain-conv among the conv archs, not {spec.arch.value}")
    act = activation_forward(spec.activation)
    ch, pools = spec.channels, set(spec.pools_after)
    layers: list[nn.Module] = []
    for layer in range(1, spec.depth + 1):
        c = ch[layer]
        layers.append(
            nn.Conv2d(ch[layer - 1], c, CONV_KERNEL, padding=CONV_KERNEL // 2, bias=False)
        )
        if spec.norm is Norm.batchnorm:
            layers.append(nn.BatchNorm2d(c, eps=NORM_EPS, momentum=BN_MOMENTUM, affine=False))
        elif spec.norm is Norm.layernorm:
            layers.append(nn.GroupNorm(1, c, eps=NORM_EPS, affine=False))
        layers.append(_Activation(act))
        if layer in pools:
            layers.append(nn.MaxPool2d(2))

    class ConvTrainNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(ch[-1], classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x).mean(dim=(2, 3)))

        def layer_weights(self) -> list[Any]:
            return [m.weight for m in self.features if isinstance(m, nn.Conv2d)]

        def batch_norms(self) -> list[Any]:
            return [m for m in self.features if isinstance(m, nn.BatchNorm2d)]

    return ConvTrainNet()


def _optimizer(config: TrainConfig, params: list[Any]) -> Any:
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
    trainer = _Trainer(spec, config, seed, repeat, dtype, device)
    for t in range(config.steps):
        trainer.step(t)
        if tick is not None and (t % PROGRESS_EVERY == PROGRESS_EVERY - 1 or t == config.steps - 1):
            tick(t % PROGRESS_EVERY + 1)
    return trainer.trace(), trainer.model


class _Trainer:
    """One repeat's net, its task and optimiser, and the statistics of its recorded steps."""

    def __init__(
        self, spec: NetSpec, config: TrainConfig, seed: int, repeat: int, dtype: Dtype,
        device: str,
    ) -> None:  # fmt: skip
        self.config, self.batch = config, spec.batch
        self.tdt = tdt = torch_dtype(dtype)
        self.model = model = build_model(spec, config.classes).to(device=device, dtype=tdt)
        self.weights = model.layer_weights()
        self.norms = model.batch_norms()
        conv = spec.arch.is_conv
        self.data = make_task_data(
            config, spec.width, spec.batch, seed, repeat, dtype, device,
            sample_shape=(spec.width, spec.image_size, spec.image_size) if conv else None,
            head_inputs=spec.channels[-1],
        )  # fmt: skip
        with torch.no_grad():
            draw: Any = (draw_conv_repeat if conv else draw_repeat)(
                spec, seed, repeat, dtype, device
            )
            for i, w in enumerate(self.weights):
                w.copy_(draw.weights[i])
            model.head.weight.copy_(self.data.head_weight)
            model.head.bias.copy_(self.data.head_bias)
        del draw
        model.train()
        self.params = list(model.parameters())
        self.head_params = [model.head.weight, model.head.bias]
        self.opt = _optimizer(config, self.params)
        self.classify = config.task is not Task.teacher
        self.loss_fn = F.cross_entropy if self.classify else F.mse_loss
        recorded = config.record_steps()
        self.slot = dict(zip(recorded, range(len(recorded)), strict=True))
        n_rec, self.depth = len(recorded), spec.depth
        self.buf = torch.full(
            (n_rec, N_LAYER_STATS, spec.depth), math.nan, dtype=tdt, device=device
        )
        self.loss_buf = torch.full((n_rec,), math.nan, dtype=tdt, device=device)
        self.acc_buf = torch.full((n_rec,), math.nan, dtype=tdt, device=device)
        with torch.no_grad():
            self.start_sq = (
                torch.stack(torch._foreach_norm(self.weights)).to(torch.float64).square()
            )
        # The exact ‖W‖² recursion, where it holds (plain SGD, weight followed by a norm).
        self.predicted = self.start_sq.clone() if config.growth_basis(spec) is not None else None
        self.decay2 = (1.0 - config.lr * config.weight_decay) ** 2
        self.lr2 = config.lr**2

    def step(self, t: int) -> None:
        data, batch = self.data, self.batch
        idx = data.order[t * batch : (t + 1) * batch]
        xb, yb = data.x[idx], data.y[idx]
        out = self.model(xb)
        loss = self.loss_fn(out, yb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        k = self.slot.get(t)
        with torch.no_grad():
            before, wnorm = self.after_backward(k, out, yb, loss)
        self.opt.step()
        if k is not None:
            with torch.no_grad():
                # the update size overwrites the placeholder in row 3
                torch._foreach_sub_(before, self.weights)  # W_t − W_{t+1}
                self.buf[k, 3] = torch.stack(torch._foreach_norm(before)) / wnorm

    def after_backward(self, k: int | None, out: Any, yb: Any, loss: Any) -> tuple[Any, Any]:
        """Clip, advance the predicted ‖W‖², and record step ``k`` (if recorded)."""
        clip = self.config.clip_grad_norm
        gsq = coef = None
        if self.predicted is not None or clip is not None or k is not None:
            grads = [w.grad for w in self.weights]
            gsq = torch.stack(torch._foreach_norm(grads)).square()  # (depth,)
        if clip is not None:
            assert gsq is not None
            hsq = torch.stack(torch._foreach_norm([p.grad for p in self.head_params])).square()
            total = (gsq.sum() + hsq.sum()).sqrt()
            coef = torch.clamp(clip / (total + CLIP_EPS), max=1.0)
            torch._foreach_mul_([p.grad for p in self.params], coef)
        if self.predicted is not None:
            assert gsq is not None
            if self.decay2 != 1.0:
                self.predicted.mul_(self.decay2)
            if coef is None:
                self.predicted.add_(gsq, alpha=self.lr2)
            else:
                self.predicted.add_(gsq * coef.square(), alpha=self.lr2)
        if k is None:
            return None, None
        assert gsq is not None
        before = torch._foreach_mul(self.weights, 1.0)  # copies of W_t
        gnorm = gsq.sqrt()
        wnorm = torch.stack(torch._foreach_norm(before))
        sigma = (
            torch.stack([bn.running_var.mean() for bn in self.norms]).sqrt()
            if self.norms
            else torch.full_like(gnorm, math.nan)
        )
        self.buf[k] = torch.stack([gnorm, wnorm, sigma, gnorm, wnorm / gnorm])
        self.loss_buf[k] = loss.detach()
        if self.classify:
            self.acc_buf[k] = (out.detach().argmax(dim=1) == yb).to(self.tdt).mean()
        return before, wnorm

    def trace(self) -> RepeatTrace:
        with torch.no_grad():
            end_sq = torch.stack(torch._foreach_norm(self.weights)).to(torch.float64).square()
        predicted = self.predicted
        return RepeatTrace(
            layers=self.buf.double().cpu().numpy(),
            loss=self.loss_buf.double().cpu().numpy(),
            accuracy=self.acc_buf.double().cpu().numpy(),
            start_sq=self.start_sq.cpu().numpy(),
            end_sq=end_sq.cpu().numpy(),
            predicted_sq=(
                predicted.cpu().numpy() if predicted is not None else np.full(self.depth, math.nan)
            ),
        )


# --------------------------------------------------------------------------------------------
# Records from traces


def _num(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _config_columns(spec: NetSpec, config: TrainConfig, repeats: int) -> dict[str, Any]:
    """The configuration columns of every training record (schema.TrainConfigColumns)."""
    columns = TrainConfigColumns(
        arch=spec.arch.value,
        residual_scale=spec.residual_scale.value,
        activation=spec.activation.label,
        norm=spec.norm.value,
        init=spec.init.value,
        gain=float(spec.gain),
        depth=spec.depth,
        width=spec.width,
        batch=spec.batch,
        repeats=repeats,
        task=config.task.value,
        optimizer=config.optimizer.value,
        lr=config.lr,
        weight_decay=config.weight_decay,
        clip_grad_norm=config.clip_grad_norm,
    )
    return dataclasses.asdict(columns)


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


def run(
    request: TrainRequest,
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    cluster: Cluster | None = None,
) -> TrainResult:
    """Train every configuration of a validated :class:`~gradscope.specs.TrainRequest`.

    Repeat k of a configuration starts from the weights ``simulate`` draws for repeat k
    (same seed), and trains on the task drawn for (seed, task, width, classes, samples, k).
    ``progress(done, total)`` counts steps over all repeats and configurations (from worker
    threads, one call at a time); ``stop``, when set, ends the run before the next
    configuration, marked ``partial``. With a ``cluster`` (torchrun's ranks), each rank trains
    its share of the (configuration, repeat) pairs and rank 0 returns the records.
    """
    check_seed(seed)
    _check_trainable(request)
    stop = stop or threading.Event()  # shared with the other ranks' stops
    device = resolve_device(request.device)
    total = request.config.steps * request.repeats * len(request.specs)
    share = ranks_per_machine(cluster)
    t0 = time.perf_counter()

    def compute(c: int, first: int, end: int, tick: Callable[[int], None]) -> list[Any]:
        keep = request.save_checkpoint is not None and c == 0
        return _train_repeats(request, c, range(first, end), seed, device, keep, tick, share)

    # One intra-op thread per repeat and repeats on worker threads, as simulate: on a busy
    # CPU, two intra-op threads on small matrices run tens of times slower than one, and the
    # per-repeat arithmetic (hence every bit of the output) no longer depends on the workers.
    with intra_op_threads(1 if device == "cpu" else torch.get_num_threads()):
        values: dict[int, list[Any]] | None
        if cluster is None:
            values = run_in_order(compute, len(request.specs), request.repeats, progress, stop,
                                  total)  # fmt: skip
        else:
            costs = [_work_flop(spec, request.config.steps) for spec in request.specs]
            values = cluster.run(compute, costs, request.repeats, progress, stop, total)
    if values is None:  # a rank other than 0: rank 0 reports
        return TrainResult(records=[], summary=[], partial=stop.is_set())
    result = _train_result(request, values, seed)
    elapsed = time.perf_counter() - t0
    result.steps_per_second = total / elapsed if elapsed > 0 else math.nan
    return result


def _check_trainable(request: TrainRequest) -> None:
    for spec in request.specs:
        if spec.arch is Arch.resnet_conv or spec.norm_position is not NormPosition.post:
            what = "resnet-conv" if spec.arch is Arch.resnet_conv else "pre-norm blocks"
            raise SpecError(f"training does not support {what} yet (plain-conv trains)")
        if spec.residual_scale is ResidualScale.zero_gamma:
            raise SpecError(
                "{--residual_scale} zero-gamma needs a learnable γ, which the training engine "
                "does not have; use none or invsqrt-depth"
            )


def _train_result(request: TrainRequest, values: dict[int, list[Any]], seed: int) -> TrainResult:
    """Records of every configuration whose repeats all finished (``values``: per
    configuration index, (trace, state dict or None) per repeat, in repeat order)."""
    result = TrainResult(records=[], summary=[])
    for c, spec in enumerate(request.specs):
        done = values.get(c, [])
        if len(done) < request.repeats:
            result.partial = True
            continue
        traces = [trace for trace, _ in done]
        if done[0][1] is not None:
            result.state_dict = done[0][1]
        records, summary, growth = build_train_records(
            spec, request.config, traces, seed, request.resamples
        )
        result.records.extend(records)
        result.summary.extend(summary)
        result.weight_growth.extend(growth)
        result.configurations_done += 1
    return result


def _train_repeats(
    request: TrainRequest,
    c: int,
    repeats: range,
    seed: int,
    device: str,
    keep: bool,
    tick: Callable[[int], None] | None,
    share: int = 1,
) -> list[tuple[RepeatTrace, dict[str, Any] | None]]:
    """Train ``repeats`` of configuration ``c``: per repeat its trace, and repeat 0's trained
    state dict (on the CPU) when ``keep``."""
    spec = request.specs[c]
    workers = min(request.workers or default_workers(device, share), available_cores())

    def one(r: int) -> tuple[RepeatTrace, dict[str, Any] | None]:
        trace, model = train_repeat(
            spec, request.config, seed, r, dtype=request.dtype, device=device, tick=tick
        )
        if not (keep and r == 0):
            return trace, None
        return trace, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    if workers == 1 or len(repeats) <= 1:
        return [one(r) for r in repeats]
    with ThreadPoolExecutor(max_workers=min(workers, len(repeats))) as pool:
        return list(pool.map(one, repeats))
