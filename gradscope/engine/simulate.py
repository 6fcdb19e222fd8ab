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

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gradscope.activations import ActivationSpec
from gradscope.engine.layers import (
    activation_backward,
    activation_forward,
    norm_backward,
    norm_forward,
)
from gradscope.engine.mlp import RepeatDraw, draw_repeat, resolve_device, torch_dtype
from gradscope.errors import ResourceError
from gradscope.options import Arch, Backend, Dtype, NormPosition
from gradscope.schema import Result, SimulateRecord, SimulateSummary
from gradscope.specs import NetSpec, SimulateRequest, check_seed
from gradscope.theory.predict import Prediction, predict
from gradscope.theory.stats import LayerStats, bootstrap_rate_ci, half_rates, log_linear_rate

if TYPE_CHECKING:
    import torch

ProgressFn = Callable[[int], None]


# --------------------------------------------------------------------------------------------
# Records


@dataclass
class SimulationResult(Result):
    """What :func:`simulate` returns; ``repeats_done`` counts the finished repeats of each
    configuration (by :meth:`NetSpec.key`)."""

    repeats_done: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Memory


def available_memory() -> int:
    """Bytes of RAM available now (MemAvailable on Linux), or a conservative guess."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def default_max_memory() -> int:
    """A safe share of the RAM available now: half of it."""
    return available_memory() // 2


def estimate_memory(spec: NetSpec, repeats: int, dtype: Dtype, in_flight: int) -> int:
    """Bytes the engine needs for one configuration with ``in_flight`` repeats at a time.

    Per repeat in flight: the weights (depth·width²), the forward tensors kept for the backward
    (about 4 per layer of batch·width) and the backward temporaries (a width² weight gradient
    and a few batch·width tensors). Plus 8 bytes per layer and repeat of kept norms and
    1000 bootstrap resamples.
    """
    item = 4 if dtype is Dtype.float32 else 8
    if spec.arch.is_conv:
        # Weights, and about 5 tensors of batch·C·H·W per layer (forward kept, backward
        # temporaries, pool indices): measured 192 MiB peak for 16 layers of 64 channels on
        # 32×32 images, batch 32, pool every 4 (estimate: 230 MiB).
        ch, pos = spec.channels, spec.spatial
        weights = sum(9 * ch[i] * ch[i + 1] for i in range(spec.depth))
        acts = sum(spec.batch * ch[i + 1] * pos[i] for i in range(spec.depth))
        per_conv = item * (weights + 5 * acts + 2 * spec.batch * ch[0] * pos[0])
        return in_flight * per_conv + 8 * spec.depth * repeats + 8 * 250 * repeats * 2
    bw = spec.batch * spec.width
    per_repeat = item * (
        spec.depth * spec.width * spec.width + (4 * spec.depth + 8) * bw + 2 * spec.width**2
    )
    kept = 8 * spec.depth * repeats
    bootstrap = 8 * 250 * repeats * 2
    return in_flight * per_repeat + kept + bootstrap


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Activation derivatives: the ATen kernels autograd itself calls, one fused pass each.


# --------------------------------------------------------------------------------------------
# Norm layers: forward keeps (normalised output, 1/σ); backward is the closed form.


def _unit_var(t: torch.Tensor, wide: bool = False) -> torch.Tensor:
    """Variance over the batch of each unit (divided by the batch size), averaged over units.

    From sums, as BLAS dot products for one repeat (torch.var over the batch dimension is ~15×
    slower on a CPU); ``wide`` computes in float64, for float32 values whose squares overflow.
    """
    import torch

    if wide:
        t = t.to(torch.float64)
    batch, width = t.shape[-2], t.shape[-1]
    if t.dim() == 2 and t.is_contiguous():
        flat = t.view(-1)
        col = t.sum(dim=0)
        return (torch.dot(flat, flat) - torch.dot(col, col) / batch) / (batch * width)
    col = t.sum(dim=-2)  # (..., width)
    total_sq = (t * t).sum(dim=(-2, -1))
    return (total_sq - (col * col).sum(dim=-1) / batch) / (batch * width)


# --------------------------------------------------------------------------------------------
# One repeat (or a stack of R repeats on a leading dimension)


@dataclass
class RepeatOutput:
    """Per layer (layer 1 first): shapes (depth,) for one repeat, (R, depth) for a stack."""

    grad_norm: torch.Tensor
    forward_var: torch.Tensor
    backward_var: torch.Tensor


def forward_backward(
    spec: NetSpec,
    weights: torch.Tensor,
    x: torch.Tensor,
    dy: torch.Tensor,
    act_fn: Callable[[Any], Any] | None = None,
    act_back: Callable[[Any, Any, Any], Any] | None = None,
    wide_stats: bool = False,
) -> RepeatOutput:
    """Forward and hand-written backward of one repeat, or of R stacked repeats.

    Args:
        weights: (depth, width, width) or (R, depth, width, width); layer l computes x @ W_l.T.
        x: (batch, width) or (R, batch, width), the input.
        dy: like ``x``, the derivative of the loss at the last layer's output.
        wide_stats: compute the statistics in float64 (for float32 values whose squares
            overflow although the values do not).

    Returns:
        Per layer: the weight gradient's Frobenius norm, the variance of the layer's output and
        the variance of the derivative at the layer's input (both over the batch, per unit,
        averaged over units).
    """
    import torch

    act_fn = act_fn or activation_forward(spec.activation)
    act_back = act_back or activation_backward(spec.activation)
    if spec.arch is Arch.resnet and spec.norm_position is NormPosition.pre:
        return _prenorm_forward_backward(spec, weights, x, dy, act_fn, act_back, wide_stats)
    depth, norm, resnet = spec.depth, spec.norm, spec.arch is Arch.resnet
    scale = spec.branch_scale
    stacked = weights.dim() == 4
    w_of = (lambda i: weights[:, i]) if stacked else (lambda i: weights[i])

    with torch.no_grad():
        xs = [x]  # x_0 .. x_L
        saved: list[tuple[Any, Any, Any, Any]] = []  # (h, norm state, u, y) per layer
        for i in range(depth):
            w = w_of(i)
            h = torch.matmul(xs[-1], w.transpose(-1, -2))
            n, state = norm_forward(norm, h)
            is_second = resnet and i % 2 == 1
            u = n
            if is_second:
                u = n * scale + xs[-2] if scale != 1.0 else n + xs[-2]
            y = act_fn(u)
            saved.append((h, state, u, y))
            xs.append(y)
        fvar = torch.stack([_unit_var(t, wide_stats) for t in xs[1:]], dim=-1)

        grads: list[torch.Tensor | None] = [None] * (depth + 1)  # ∂ℓ/∂x_l
        grads[depth] = dy
        norms: list[torch.Tensor] = [dy.new_empty(())] * depth
        bvars: list[torch.Tensor] = [dy.new_empty(())] * depth
        for i in range(depth - 1, -1, -1):
            h, state, u, y = saved[i]
            g_out = grads[i + 1]
            assert g_out is not None
            du = act_back(g_out, u, y)
            is_second = resnet and i % 2 == 1
            if is_second:
                grads[i - 1] = du  # the skip (only consumer of x_{i-1} besides layer i)
                dn = du * scale if scale != 1.0 else du
            else:
                dn = du
            dh = norm_backward(norm, dn, h, state)
            grad_w = torch.matmul(dh.transpose(-1, -2), xs[i])
            norms[i] = torch.linalg.vector_norm(
                grad_w, dim=(-2, -1), dtype=torch.float64 if wide_stats else None
            )
            dx = torch.matmul(dh, w_of(i))
            prev = grads[i]
            dx = dx if prev is None else dx + prev
            grads[i] = dx
            bvars[i] = _unit_var(dx, wide_stats)
            saved[i] = (None, None, None, None)
        return RepeatOutput(torch.stack(norms, -1), fvar, torch.stack(bvars, -1))


def _prenorm_forward_backward(
    spec: NetSpec,
    weights: torch.Tensor,
    x: torch.Tensor,
    dy: torch.Tensor,
    act_fn: Callable[[Any], Any],
    act_back: Callable[[Any, Any, Any], Any],
    wide_stats: bool,
) -> RepeatOutput:
    """Pre-norm blocks x_{k+1} = x_k + s·W2·g(norm(W1·g(norm(x_k)))) (pre-activation ResNet).

    Layer 2k+1 (W1) reports the derivative at the block input x_k (the stream, skip included)
    and the variance of g(norm(W1·…)), the input of W2; layer 2k+2 (W2) the derivative at its
    input and the variance of x_{k+1}. The net's output is the stream x_{L/2}.
    """
    import torch

    norm, scale = spec.norm, spec.branch_scale
    stacked = weights.dim() == 4
    w_of = (lambda i: weights[:, i]) if stacked else (lambda i: weights[i])
    wide = torch.float64 if wide_stats else None
    blocks = spec.depth // 2
    with torch.no_grad():
        stream = x
        saved = []
        fvar: list[torch.Tensor] = []
        for k in range(blocks):
            w1, w2 = w_of(2 * k), w_of(2 * k + 1)
            n1, s1 = norm_forward(norm, stream)
            a1 = act_fn(n1)
            h1 = torch.matmul(a1, w1.transpose(-1, -2))
            n2, s2 = norm_forward(norm, h1)
            a2 = act_fn(n2)
            h2 = torch.matmul(a2, w2.transpose(-1, -2))
            new = stream + h2 * scale if scale != 1.0 else stream + h2
            fvar += [_unit_var(a2, wide_stats), _unit_var(new, wide_stats)]
            saved.append((stream, s1, n1, a1, h1, s2, n2, a2))
            stream = new
        norms: list[torch.Tensor] = [dy.new_empty(())] * spec.depth
        bvars: list[torch.Tensor] = [dy.new_empty(())] * spec.depth
        g = dy
        for k in range(blocks - 1, -1, -1):
            stream, s1, n1, a1, h1, s2, n2, a2 = saved[k]
            w1, w2 = w_of(2 * k), w_of(2 * k + 1)
            dh2 = g * scale if scale != 1.0 else g
            norms[2 * k + 1] = torch.linalg.vector_norm(
                torch.matmul(dh2.transpose(-1, -2), a2), dim=(-2, -1), dtype=wide
            )
            da2 = torch.matmul(dh2, w2)
            bvars[2 * k + 1] = _unit_var(da2, wide_stats)
            dh1 = norm_backward(norm, act_back(da2, n2, a2), h1, s2)
            norms[2 * k] = torch.linalg.vector_norm(
                torch.matmul(dh1.transpose(-1, -2), a1), dim=(-2, -1), dtype=wide
            )
            da1 = torch.matmul(dh1, w1)
            g = g + norm_backward(norm, act_back(da1, n1, a1), stream, s1)
            bvars[2 * k] = _unit_var(g, wide_stats)
            saved[k] = None  # type: ignore[call-overload]
        return RepeatOutput(torch.stack(norms, -1), torch.stack(fvar, -1), torch.stack(bvars, -1))


def _overflow_layer(out: Any, depth: int) -> int | None:
    """First layer, in the order computed (forward 1→L, then backward L→1), with inf/NaN."""
    fv = out.forward_var.cpu().numpy()
    bad = np.flatnonzero(~np.isfinite(fv))
    if bad.size:
        return int(bad[0]) + 1
    back = ~np.isfinite(out.backward_var.cpu().numpy()) | ~np.isfinite(out.grad_norm.cpu().numpy())
    bad = np.flatnonzero(back)
    if bad.size:
        return int(bad[-1]) + 1
    return None


# --------------------------------------------------------------------------------------------
# Running one configuration


def _run_one(
    spec: NetSpec,
    seed: int,
    repeat: int,
    dtype: Dtype,
    device: str,
    local: threading.local,
    act: tuple[Any, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int | None]:
    import torch

    if spec.arch.is_conv:
        return _run_one_conv(spec, seed, repeat, dtype, device, local, act)
    draw = getattr(local, "draw", None)
    if (
        draw is None
        or draw.weights.shape[0] != spec.depth
        or draw.x.shape
        != (
            spec.batch,
            spec.width,
        )
    ):
        draw = None
    draw = draw_repeat(spec, seed, repeat, dtype, device, out=draw)
    local.draw = draw
    out = forward_backward(spec, draw.weights, draw.x, draw.dy, *act)
    layer = _overflow_layer(out, spec.depth)
    if layer is not None and draw.x.dtype != torch.float64:
        # Squares overflow float32 long before the values do: recompute the statistics wide.
        out = forward_backward(spec, draw.weights, draw.x, draw.dy, *act, wide_stats=True)
        layer = _overflow_layer(out, spec.depth)
    return (
        out.grad_norm.double().cpu().numpy(),
        out.forward_var.double().cpu().numpy(),
        out.backward_var.double().cpu().numpy(),
        layer,
    )


def _run_one_conv(
    spec: NetSpec,
    seed: int,
    repeat: int,
    dtype: Dtype,
    device: str,
    local: threading.local,
    act: tuple[Any, Any],
) -> RepeatValues:
    import torch

    from gradscope.engine.conv import conv_forward_backward, draw_conv_repeat

    draw = getattr(local, "conv_draw", None)
    if getattr(local, "conv_spec", None) != (spec.channels, spec.spatial, spec.batch, dtype):
        draw = None
    draw = draw_conv_repeat(spec, seed, repeat, dtype, device, out=draw)
    local.conv_draw = draw
    local.conv_spec = (spec.channels, spec.spatial, spec.batch, dtype)
    out = conv_forward_backward(spec, draw.weights, draw.x, draw.dy, *act)
    layer = _overflow_layer(out, spec.depth)
    if layer is not None and draw.x.dtype != torch.float64:
        out = conv_forward_backward(spec, draw.weights, draw.x, draw.dy, *act, wide_stats=True)
        layer = _overflow_layer(out, spec.depth)
    return (
        out.grad_norm.double().cpu().numpy(),
        out.forward_var.double().cpu().numpy(),
        out.backward_var.double().cpu().numpy(),
        layer,
        out.pool_input_var.double().cpu().numpy(),
        out.pool_input_backward_var.double().cpu().numpy(),
    )


def _run_stack(
    spec: NetSpec,
    seed: int,
    first: int,
    count: int,
    dtype: Dtype,
    device: str,
    act: tuple[Any, Any],
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int | None]]:
    """``count`` repeats stacked on a leading dimension (batched matmuls; the GPU path).

    Conv nets are not stacked: their repeats run one after the other.
    """
    import torch

    if spec.arch.is_conv:
        local = threading.local()
        return [_run_one(spec, seed, first + k, dtype, device, local, act) for k in range(count)]

    tdt = torch_dtype(dtype)
    d, w, b = spec.depth, spec.width, spec.batch
    weights = torch.empty(count, d, w, w, dtype=tdt, device=device)
    xs = torch.empty(count, b, w, dtype=tdt, device=device)
    dys = torch.empty(count, b, w, dtype=tdt, device=device)
    for k in range(count):
        draw_repeat(spec, seed, first + k, dtype, device, out=RepeatDraw(weights[k], xs[k], dys[k]))
    out = forward_backward(spec, weights, xs, dys, *act)
    if tdt != torch.float64 and not bool(torch.isfinite(out.grad_norm).all()):
        out = forward_backward(spec, weights, xs, dys, *act, wide_stats=True)
    gn = out.grad_norm.double().cpu().numpy()
    fv = out.forward_var.double().cpu().numpy()
    bv = out.backward_var.double().cpu().numpy()
    results = []
    for k in range(count):
        one = RepeatOutput(out.grad_norm[k], out.forward_var[k], out.backward_var[k])
        results.append((gn[k], fv[k], bv[k], _overflow_layer(one, d)))
    return results


# (grad norms, forward vars, backward vars, overflow layer[, pool input var, its derivative's])
RepeatValues = tuple[Any, ...]


def _add(stats: LayerStats, res: RepeatValues) -> None:
    pools = (res[4], res[5]) if len(res) > 4 else (None, None)
    stats.add(
        res[0],
        res[1],
        res[2],
        overflow_layer=res[3],
        pool_input_var=pools[0],
        pool_input_backward_var=pools[1],
    )


@contextlib.contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_workers(device: str) -> int:
    """One worker thread per CPU core available to this process (1 on CUDA)."""
    if device != "cpu":
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# Below this much arithmetic (≈ 2 s of work on one core) starting worker processes costs more
# than it saves: threads are used instead.
PROCESS_MIN_FLOP = 3e11

_CHILD_LOCAL = threading.local()
_CHILD_ACT: dict[ActivationSpec, tuple[Any, Any]] = {}


def _child_init() -> None:
    """Worker process set-up: one intra-op thread; Ctrl-C is the parent's business."""
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


def _process_chunk(
    spec: NetSpec, seed: int, first: int, count: int, dtype: Dtype
) -> list[RepeatValues]:
    """Repeats ``first .. first+count-1`` in a worker process."""
    act = _CHILD_ACT.get(spec.activation)
    if act is None:
        act = (activation_forward(spec.activation), activation_backward(spec.activation))
        _CHILD_ACT[spec.activation] = act
    return [
        _run_one(spec, seed, k, dtype, "cpu", _CHILD_LOCAL, act)
        for k in range(first, first + count)
    ]


def make_process_pool(workers: int) -> Any:
    """Worker processes forked from this one (the DataLoader pattern: one thread each).

    Fork, not spawn: spawn would re-import the user's ``__main__``.
    """
    import multiprocessing
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_child_init,
        )
        # Start the workers now, before any progress-bar thread exists in this process.
        list(pool.map(int, range(workers)))
    return pool


def _fork_available() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _work_flop(spec: NetSpec, repeats: int) -> float:
    if spec.arch.is_conv:
        from gradscope.engine.conv import conv_flop

        return repeats * conv_flop(spec)
    return 6.0 * repeats * spec.depth * spec.batch * spec.width**2


def run_configuration(
    spec: NetSpec,
    repeats: int,
    seed: int,
    *,
    dtype: Dtype = Dtype.float32,
    device: str = "cpu",
    workers: int | None = None,
    chunk: int | None = None,
    backend: Backend = Backend.auto,
    pool: Any = None,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> LayerStats:
    """Run ``repeats`` repeats of one configuration and return their merged statistics.

    Repeat k always uses the generator seeded by (seed, spec, k), runs on one intra-op thread,
    and is added in repeat order, so the result is bit-identical whatever ``workers``,
    ``backend`` or (on CPU) the process it ran in. When ``stop`` is set (Ctrl-C), the repeats
    finished so far are returned.

    Args:
        workers: CPU workers, each running whole repeats on one core (default: one per core).
        chunk: repeats stacked into batched matmuls (default: 1 on CPU, 64 on CUDA).
        backend: CPU workers as processes or threads. PyTorch's CPU matmuls do not run
            concurrently from two Python threads (measured: no speed-up), processes do (1.98×);
            ``auto`` uses processes for long jobs.
        pool: a process pool from :func:`make_process_pool` to reuse across configurations.
        progress: called with the number of repeats just completed.
    """
    stats = LayerStats(spec.depth)
    act = (activation_forward(spec.activation), activation_backward(spec.activation))
    workers = workers or default_workers(device)
    chunk = chunk or (1 if device == "cpu" else 64)
    if spec.arch.is_conv:
        chunk = 1  # conv repeats are never stacked (one thread each, as on the CPU path)
    if chunk > 1:
        done = 0
        while done < repeats and not (stop and stop.is_set()):
            n = min(chunk, repeats - done)
            for res in _run_stack(spec, seed, done, n, dtype, device, act):
                _add(stats, res)
            done += n
            if progress:
                progress(n)
        return stats
    use_processes = (workers > 1 and _fork_available()) and (
        backend is Backend.processes
        or (backend is Backend.auto and _work_flop(spec, repeats) >= PROCESS_MIN_FLOP)
    )
    local = threading.local()
    # One intra-op thread per repeat: the per-repeat arithmetic, hence every bit of the output,
    # is then the same whatever the number of workers.
    with _intra_op_threads(1):
        if workers == 1:
            for k in range(repeats):
                if stop and stop.is_set():
                    break
                _add(stats, _run_one(spec, seed, k, dtype, device, local, act))
                if progress:
                    progress(1)
            return stats
        owned = None
        if use_processes and pool is None:
            pool = owned = make_process_pool(workers)
        elif not use_processes:
            pool = owned = ThreadPoolExecutor(max_workers=workers)
        # Processes get a few repeats per task (less traffic); threads one.
        step = max(1, min(4, repeats // (4 * workers))) if use_processes else 1
        try:
            pending: list[tuple[Any, int]] = []
            k = 0
            # A bounded window in flight, collected in repeat order.
            while k < repeats or pending:
                while k < repeats and len(pending) < 2 * workers and not (stop and stop.is_set()):
                    n = min(step, repeats - k)
                    if use_processes:
                        fut = pool.submit(_process_chunk, spec, seed, k, n, dtype)
                    else:
                        fut = pool.submit(_run_one, spec, seed, k, dtype, device, local, act)
                    pending.append((fut, n))
                    k += n
                if not pending:
                    break
                fut, n = pending.pop(0)
                results = fut.result() if use_processes else [fut.result()]
                for res in results:
                    _add(stats, res)
                if progress:
                    progress(n)
                if stop and stop.is_set():
                    # Finish what is already running; cancel what has not started.
                    for f, _ in pending:
                        f.cancel()
                    for f, m in pending:
                        if not f.cancelled():
                            for res in f.result() if use_processes else [f.result()]:
                                _add(stats, res)
                            if progress:
                                progress(m)
                    break
        finally:
            if owned is not None:
                owned.shutdown(wait=True, cancel_futures=True)
    return stats


# --------------------------------------------------------------------------------------------
# Records from statistics


def _num(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def build_records(
    spec: NetSpec,
    stats: LayerStats,
    prediction: Prediction,
    seed: int,
    partial: bool = False,
    resamples: int = 1000,
) -> tuple[list[SimulateRecord], SimulateSummary]:
    """Per-layer records and the configuration's summary from its statistics."""
    s = stats.summary()
    n = stats.count
    config: dict[str, Any] = {
        "arch": spec.arch.value,
        "residual_scale": spec.residual_scale.value,
        "norm_position": spec.norm_position.value,
        "activation": spec.activation.label,
        "norm": spec.norm.value,
        "init": spec.init.value,
        "gain": float(spec.gain),
        "depth": spec.depth,
        "width": spec.width,
        "image_size": spec.image_size if spec.arch.is_conv else None,
        "pool_every": spec.pool_every if spec.arch.is_conv else None,
        "batch": spec.batch,
        "repeats": n,
    }
    anchor = float(s.mean[-1])
    rel = prediction.relative
    predicted: list[float | None] = [None] * spec.depth
    if rel is not None and math.isfinite(anchor):
        predicted = [anchor * r for r in rel]
    back_anchor = float(s.backward_var[-1])
    back_rel = prediction.backward_relative
    predicted_back: list[float | None] = [None] * spec.depth
    if back_rel is not None and math.isfinite(back_anchor):
        predicted_back = [back_anchor * r for r in back_rel]
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
                pool_input_var=_num(float(s.pool_input_var[i])) if i + 1 in pools else None,
                pool_input_backward_var=(
                    _num(float(s.pool_input_backward_var[i])) if i + 1 in pools else None
                ),
                predicted_grad_norm=p,
                predicted_backward_var=predicted_back[i],
                prediction_in_ci=in_ci,
                partial=partial,
            )
        )
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
    summary = SimulateSummary(
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
    return records, summary


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
) -> SimulationResult:
    """Run a validated :class:`~gradscope.specs.SimulateRequest` (see :func:`simulate`)."""
    check_seed(seed)
    specs, repeats = list(request.specs), request.repeats
    dev = resolve_device(request.device)
    n_workers = request.workers or default_workers(dev)
    n_chunk = request.chunk or (1 if dev == "cpu" else 64)
    _check_memory(request, in_flight=n_chunk if n_chunk > 1 else 2 * n_workers)
    predictions = [predict(spec) for spec in specs]
    tick = _counter(progress, repeats * len(specs))
    result = SimulationResult(records=[], summary=[])
    use_processes = _use_processes(request, dev, n_workers, n_chunk)
    pool = make_process_pool(n_workers) if use_processes else None
    try:
        for spec, prediction in zip(specs, predictions, strict=True):
            if stop is not None and stop.is_set():
                result.partial = True
                break
            stats = run_configuration(
                spec,
                repeats,
                seed,
                dtype=request.dtype,
                device=dev,
                workers=n_workers,
                chunk=n_chunk,
                backend=Backend.processes if use_processes else Backend.threads,
                pool=pool,
                progress=tick,
                stop=stop,
            )
            if stats.count == 0:
                result.partial = True
                break
            partial = stats.count < repeats
            result.partial = result.partial or partial
            records, summary = build_records(
                spec, stats, prediction, seed, partial, request.resamples
            )
            result.records.extend(records)
            result.summary.append(summary)
            result.repeats_done[spec.key()] = stats.count
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return result


def _check_memory(request: SimulateRequest, in_flight: int) -> None:
    """Refuse, before anything is allocated, a configuration above the memory limit."""
    limit = default_max_memory() if request.max_memory is None else request.max_memory
    for spec in request.specs:
        need = estimate_memory(spec, request.repeats, request.dtype, in_flight)
        if need > limit:
            raise ResourceError(
                f"{spec.arch.value} depth {spec.depth} width {spec.width} batch {spec.batch} "
                f"needs about {format_bytes(need)}, above {{--max_memory}} {format_bytes(limit)}; "
                "lower {--depth}/{--width}/{--batch}/{--repeats} or raise {--max_memory}"
            )


def _counter(progress: Callable[[int, int], None] | None, total: int) -> Callable[[int], None]:
    """A callback that adds finished repeats and reports ``progress(done, total)``."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    return tick


def _use_processes(request: SimulateRequest, device: str, workers: int, chunk: int) -> bool:
    """Worker processes for long CPU jobs (or when asked for), threads otherwise."""
    if device != "cpu" or chunk != 1 or workers < 2 or not _fork_available():
        return False
    if request.backend is Backend.processes:
        return True
    work = sum(_work_flop(spec, request.repeats) for spec in request.specs)
    return request.backend is Backend.auto and work >= PROCESS_MIN_FLOP
