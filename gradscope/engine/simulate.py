"""The ``simulate`` engine: fresh random nets, forward and hand-written backward, per-layer records.

One repeat draws its weights, input and output derivative
(:func:`gradscope.engine.mlp.draw_repeat`),
runs the forward pass keeping what the backward needs, and runs the backward pass by hand
(fused ATen kernels for the norm layers and activation derivatives; no autograd graph), giving
per layer the Frobenius norm of the weight gradient, the variance of the layer's output and the
variance of the derivative at the layer's input. Tests compare it with a plain
``nn.Module`` + ``backward()`` loop on the same numbers.

On a CPU, repeats run one at a time on each of ``workers`` threads (each thread with its own
buffers and one intra-op thread): random-number generation is single-threaded in PyTorch, so
two repeats in flight keep both cores busy where one repeat at a time would leave one idle.
On CUDA, ``chunk`` repeats are stacked and run as batched matmuls.

Statistics are merged in repeat order, so the output is bit-identical whatever the number of
workers or the chunk size. The engine returns records and never prints.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradscope.engine.distributed import Cluster, ranks_per_machine, run_in_order
from gradscope.engine.runner import (
    _check_memory,
    _use_processes,
    _work_flop,
    available_cores,
    default_workers,
    make_process_pool,
    resolve_device,
    run_repeats,
    stats_of,
)
from gradscope.options import Backend
from gradscope.schema import NetConfig, Result, SimulateRecord, SimulateSummary
from gradscope.specs import NetSpec, SimulateRequest, check_seed
from gradscope.theory.predict import Prediction, predict
from gradscope.theory.stats import LayerStats, bootstrap_rate_ci, half_rates, log_linear_rate

# --------------------------------------------------------------------------------------------
# Records


@dataclass
class SimulationResult(Result):
    """What :func:`simulate` returns; ``repeats_done`` counts the finished repeats of each
    configuration (by :meth:`NetSpec.key`)."""

    repeats_done: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Memory


# --------------------------------------------------------------------------------------------
# Activation derivatives: the ATen kernels autograd itself calls, one fused pass each.


# --------------------------------------------------------------------------------------------
# Norm layers: forward keeps (normalised output, 1/σ); backward is the closed form.


# --------------------------------------------------------------------------------------------
# One repeat (or a stack of R repeats on a leading dimension)


# --------------------------------------------------------------------------------------------
# Running one configuration


# --------------------------------------------------------------------------------------------
# Records from statistics


def _num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def net_config(spec: NetSpec, repeats: int) -> NetConfig:
    """The configuration columns of a synthetic net's records."""
    conv = spec.arch.is_conv
    return NetConfig(
        arch=spec.arch.value,
        residual_scale=spec.residual_scale.value,
        norm_position=spec.norm_position.value,
        activation=spec.activation.label,
        norm=spec.norm.value,
        init=spec.init.value,
        gain=float(spec.gain),
        depth=spec.depth,
        width=spec.width,
        image_size=spec.image_size if conv else None,
        pool_every=spec.pool_every if conv else None,
        batch=spec.batch,
        repeats=repeats,
    )


def build_records(
    spec: NetSpec,
    stats: LayerStats,
    prediction: Prediction,
    seed: int,
    partial: bool = False,
    resamples: int = 1000,
) -> tuple[list[SimulateRecord], SimulateSummary]:
    """Per-layer records and the configuration's summary from its statistics."""
    config = dataclasses.asdict(net_config(spec, stats.count))
    records = _layer_records(spec, stats.summary(), prediction, config, partial)
    return records, _summary(spec, stats, prediction, config, seed, partial, resamples)


def _scaled(anchor: float, relative: Any, depth: int) -> list[float | None]:
    """Theory's per-layer values, anchored at the measured last layer."""
    if relative is None or not math.isfinite(anchor):
        return [None] * depth
    return [anchor * r for r in relative]


def _layer_records(
    spec: NetSpec, s: Any, prediction: Prediction, config: dict[str, Any], partial: bool
) -> list[SimulateRecord]:
    predicted = _scaled(float(s.mean[-1]), prediction.relative, spec.depth)
    predicted_back = _scaled(float(s.backward_var[-1]), prediction.backward_relative, spec.depth)
    pools = set(spec.pools_after)
    records = []
    for i in range(spec.depth):
        p = predicted[i]
        lo, hi = float(s.ci_low[i]), float(s.ci_high[i])
        in_ci = (
            None
            if p is None or not (math.isfinite(lo) and math.isfinite(hi))
            else (bool(lo <= p <= hi))
        )
        pooled = i + 1 in pools
        records.append(
            SimulateRecord(
                **config,
                layer=i + 1,
                channels=spec.channels[i + 1],
                spatial=spec.spatial[i],
                grad_norm_mean=float(s.mean[i]),
                grad_norm_std=_num(float(s.std[i])),
                grad_norm_sem=_num(float(s.sem[i])),
                grad_norm_ci_low=_num(lo),
                grad_norm_ci_high=_num(hi),
                forward_var=float(s.forward_var[i]),
                backward_var=float(s.backward_var[i]),
                pool_input_var=_num(float(s.pool_input_var[i])) if pooled else None,
                pool_input_backward_var=(
                    _num(float(s.pool_input_backward_var[i])) if pooled else None
                ),
                predicted_grad_norm=p,
                predicted_backward_var=predicted_back[i],
                prediction_in_ci=in_ci,
                partial=partial,
            )
        )
    return records


def _summary(
    spec: NetSpec, stats: LayerStats, prediction: Prediction, config: dict[str, Any],
    seed: int, partial: bool, resamples: int,
) -> SimulateSummary:  # fmt: skip
    """The fitted growth rate (with its bootstrap CI over repeats) against theory's."""
    s = stats.summary()
    rate, r2 = log_linear_rate(s.mean)
    boot_seed = int.from_bytes(spec.key().encode()[:8].ljust(8, b"\0"), "little") ^ seed
    ci_low, ci_high = bootstrap_rate_ci(stats.norm_matrix(), boot_seed, resamples)
    first, last = half_rates(s.mean)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        amp = float(s.mean[0] / s.mean[-1]) if s.mean[-1] != 0 else math.nan
    pred_rate = _num(prediction.rate) if prediction.relative is not None else None
    deviation = None
    pred_in_ci = None
    if pred_rate is not None and math.isfinite(rate):
        deviation = rate / pred_rate - 1.0
        if math.isfinite(ci_low):
            pred_in_ci = bool(ci_low <= pred_rate <= ci_high)
    return SimulateSummary(
        **config,
        fitted_rate=_num(rate),
        fitted_rate_ci_low=_num(ci_low),
        fitted_rate_ci_high=_num(ci_high),
        predicted_rate=pred_rate,
        rate_deviation=deviation,
        prediction_in_ci=pred_in_ci,
        r_squared=_num(r2),
        amplification=_num(amp),
        rate_first_half=_num(first),
        rate_last_half=_num(last),
        overflow_layer=stats.overflow_layer,
        overflow_repeats=stats.nonfinite_repeats,
        **_pool_ratios(spec, s, prediction),
        partial=partial,
        prediction_basis=prediction.basis,
    )


def _pool_ratios(spec: NetSpec, s: Any, prediction: Prediction) -> dict[str, Any]:
    """Mean over the pools of the measured ratios (of averaged variances), and theory's."""
    out: dict[str, float | None] = {
        "pool_forward_ratio": None,
        "pool_backward_ratio": None,
        "predicted_pool_forward_ratio": None,
        "predicted_pool_backward_ratio": None,
    }
    layers = [layer - 1 for layer in spec.pools_after]
    if not layers:
        return out
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        fwd = [s.forward_var[i] / s.pool_input_var[i] for i in layers]
        # The derivative at the pool's output is the derivative at the next layer's input.
        back = [s.pool_input_backward_var[i] / s.backward_var[i + 1] for i in layers]
    out["pool_forward_ratio"] = _num(float(np.mean(fwd)))
    out["pool_backward_ratio"] = _num(float(np.mean(back)))
    if prediction.pool_ratios is not None:
        out["predicted_pool_forward_ratio"] = prediction.pool_ratios[0]
        out["predicted_pool_backward_ratio"] = prediction.pool_ratios[1]
    return out


# --------------------------------------------------------------------------------------------
# The public API


def run(
    request: SimulateRequest,
    *,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
    cluster: Cluster | None = None,
) -> SimulationResult:
    """Run a validated :class:`~gradscope.specs.SimulateRequest` (see :func:`simulate`).

    With a ``cluster`` (torchrun's ranks), each rank runs its share of the (configuration,
    repeat) pairs and rank 0 returns the records; the other ranks return none.
    """
    check_seed(seed)
    stop = stop or threading.Event()  # shared with the other ranks' stops
    specs, repeats = list(request.specs), request.repeats
    dev = resolve_device(request.device)
    n_workers = request.workers or default_workers(dev, ranks_per_machine(cluster))
    n_workers = min(n_workers, available_cores())
    n_chunk = request.chunk or (1 if dev == "cpu" else 64)
    _check_memory(request, in_flight=n_chunk if n_chunk > 1 else 2 * n_workers)
    predictions = [predict(spec) for spec in specs]
    use_processes = _use_processes(request, dev, n_workers, n_chunk)
    pool = make_process_pool(n_workers) if use_processes else None

    def compute(c: int, first: int, end: int, tick: Callable[[int], None]) -> list[Any]:
        return run_repeats(
            specs[c], range(first, end), seed, dtype=request.dtype, device=dev,
            workers=n_workers, chunk=n_chunk, pool=pool, progress=tick, stop=stop,
            backend=Backend.processes if use_processes else Backend.threads,
        )  # fmt: skip

    try:
        values: dict[int, list[Any]] | None
        if cluster is None:
            values = run_in_order(compute, len(specs), repeats, progress, stop)
        else:
            costs = [_work_flop(spec, 1) for spec in specs]
            values = cluster.run(compute, costs, repeats, progress, stop)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if values is None:  # a rank other than 0: rank 0 reports
        return SimulationResult(records=[], summary=[], partial=stop.is_set())
    return _result(request, predictions, values, seed)


def _result(
    request: SimulateRequest, predictions: list[Prediction], values: dict[int, list[Any]],
    seed: int,
) -> SimulationResult:  # fmt: skip
    """Records of every configuration with finished repeats (``values``: per configuration
    index, the per-repeat values of its first repeats, in repeat order)."""
    result = SimulationResult(records=[], summary=[])
    for c, spec in enumerate(request.specs):
        done = values.get(c, [])
        partial = len(done) < request.repeats
        result.partial = result.partial or partial
        if not done:
            continue
        stats = stats_of(spec, done)
        records, summary = build_records(
            spec, stats, predictions[c], seed, partial, request.resamples
        )
        result.records.extend(records)
        result.summary.append(summary)
        result.repeats_done[spec.key()] = stats.count
    return result
