"""The Python API's keyword functions: options in, a validated request, one engine run.

``simulate(...)`` and ``train(...)`` take the same options as the command line (lists sweep),
build a :mod:`gradscope.specs` request, and hand it to the engine's ``run``. They are what
``import gradscope`` exposes; the engine itself takes requests only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from gradscope.activations import ActivationSpec
from gradscope.engine.runner import ProgressFn
from gradscope.engine.simulate import SimulationResult
from gradscope.engine.simulate import run as run_simulation
from gradscope.engine.train import TrainResult
from gradscope.engine.train import run as run_training
from gradscope.options import (
    Arch,
    Backend,
    Device,
    Dtype,
    Init,
    Norm,
    NormPosition,
    Optimizer,
    ResidualScale,
    Task,
)
from gradscope.output import check_output_path, write_atomic
from gradscope.specs import (
    NetSpec,
    SimulateRequest,
    TrainRequest,
    build_specs,
    make_config,
)


def simulate(
    *,
    arch: Arch | str | Sequence[Arch | str] = Arch.plain,
    activation: str | ActivationSpec | Sequence[str | ActivationSpec] = "relu",
    norm: Norm | str | Sequence[Norm | str] = Norm.batchnorm,
    init: Init | str | Sequence[Init | str] = Init.auto,
    gain: float = 1.0,
    depth: int | Sequence[int] = 20,
    width: int | Sequence[int] = 256,
    batch: int | Sequence[int] = 128,
    residual_scale: ResidualScale | str = ResidualScale.none,
    norm_position: NormPosition | str | Sequence[NormPosition | str] = NormPosition.post,
    image_size: int | None = None,
    pool_every: int | None = None,
    double_channels: bool = False,
    repeats: int = 256,
    seed: int = 0,
    dtype: Dtype | str = Dtype.float32,
    device: Device | str = Device.auto,
    max_memory: int | None = None,
    workers: int | None = None,
    chunk: int | None = None,
    backend: Backend | str = Backend.auto,
    resamples: int = 1000,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> SimulationResult:
    """Measure per-layer weight-gradient norms of fresh random nets over repeats.

    Every list-valued option sweeps a grid; each configuration gets its per-layer records and
    a summary. Results are bit-identical for the same seed, whatever ``workers``/``chunk``.

    Args:
        backend: CPU workers as ``processes`` (forked, one thread each: PyTorch's CPU matmuls
            do not run concurrently from Python threads), ``threads``, or ``auto``
            (processes when the whole job is more than about two seconds of arithmetic).
        norm_position: resnets only: ``post`` (the paper's basic block) or ``pre``
            (x + s·W2·g(norm(W1·g(norm(x))))); a list sweeps.
        image_size, pool_every, double_channels: conv archs only: N×N input images (default
            32), a 2×2 max-pool after every ``pool_every``-th layer, channels doubled at pools.
        progress: called as ``progress(done, total)`` with repeats over all configurations.
        stop: when set (e.g. on Ctrl-C), returns what has finished, marked ``partial``.

    Raises:
        SpecError: an invalid option. ResourceError: the estimated memory exceeds
            ``max_memory`` (default: half the available RAM).
    """
    specs = build_specs(
        arch=arch,
        activation=activation,
        norm=norm,
        init=init,
        gain=gain,
        depth=depth,
        width=width,
        batch=batch,
        residual_scale=residual_scale,
        norm_position=norm_position,
        image_size=image_size,
        pool_every=pool_every,
        double_channels=double_channels,
    )
    request = SimulateRequest(
        tuple(specs),
        repeats=repeats,
        dtype=dtype,  # type: ignore[arg-type]  # coerced by the request
        device=device,  # type: ignore[arg-type]
        max_memory=max_memory,
        workers=workers,
        chunk=chunk,
        backend=backend,  # type: ignore[arg-type]
        resamples=resamples,
    )
    return run_simulation(request, seed=seed, progress=progress, stop=stop)


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
    request = TrainRequest(
        (specs,) if isinstance(specs, NetSpec) else tuple(specs),
        config,
        repeats=repeats,
        dtype=dtype,  # type: ignore[arg-type]  # coerced by the request
        device=device,  # type: ignore[arg-type]
        workers=workers,
        resamples=resamples,
        save_checkpoint=None if save_checkpoint is None else Path(save_checkpoint),
    )
    if request.save_checkpoint is not None:
        check_output_path(request.save_checkpoint)
    result = run_training(request, seed=seed, progress=progress)
    if request.save_checkpoint is not None and result.state_dict is not None:
        write_atomic(request.save_checkpoint, result.state_dict_bytes())
        result.checkpoint = request.save_checkpoint
    return result
