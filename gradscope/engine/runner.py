"""Running repeats: worker threads or processes, memory estimates, devices and progress.

Each repeat draws from its own generator seeded by (seed, configuration, repeat index), so
the statistics do not depend on how repeats are spread over workers, chunks or processes.
Workers run one intra-op thread each: on a CPU, PyTorch's small matmuls do not run
concurrently from Python threads, and one thread per repeat keeps every bit of the output
independent of the worker count.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from gradscope.activations import ActivationSpec
from gradscope.engine.conv import conv_forward_backward
from gradscope.engine.draws import RepeatDraw, draw_conv_repeat, draw_repeat, torch_dtype
from gradscope.engine.layers import activation_backward, activation_forward
from gradscope.engine.mlp import RepeatOutput, _overflow_layer, forward_backward
from gradscope.errors import ResourceError, SpecError
from gradscope.options import Backend, Device, Dtype
from gradscope.specs import NetSpec, SimulateRequest
from gradscope.theory.stats import LayerStats

# ``progress(done, total)``: what every engine run reports; a tick adds finished work.
ProgressFn = Callable[[int, int], None]
Tick = Callable[[int], None]
# (grad norms, forward vars, backward vars, overflow layer[, pool input var, its derivative's])
RepeatValues = tuple[Any, ...]


def available_memory() -> int:
    """Bytes of RAM available now (MemAvailable on Linux), or a conservative guess."""
    available = _meminfo("MemAvailable")
    if available is not None:
        return available
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _meminfo(key: str) -> int | None:
    """A field of /proc/meminfo in bytes, or None off Linux."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_max_memory() -> int:
    """A safe share of the RAM available now: half of it."""
    return available_memory() // 2


# Besides its tensors' data, every layer costs Python objects: the kept statistics and the
# record of each layer (about 2 KiB), and per repeat in flight the tensor objects of its
# forward and backward (about 1 KiB). Measured: 3.7 KiB a layer for width 1, batch 2, two
# repeats in flight (estimate: 4 KiB); --depth 1000000 --width 1 reached 2.76 GB.
LAYER_OVERHEAD = 2048
LAYER_OVERHEAD_PER_REPEAT = 1024


def estimate_memory(spec: NetSpec, repeats: int, dtype: Dtype, in_flight: int) -> int:
    """Bytes the engine needs for one configuration with ``in_flight`` repeats at a time.

    Per repeat in flight: the weights (depth·width²), the forward tensors kept for the backward
    (about 4 per layer of batch·width), the backward temporaries (a width² weight gradient
    and a few batch·width tensors) and ``LAYER_OVERHEAD_PER_REPEAT`` a layer. Plus, per layer,
    ``LAYER_OVERHEAD`` and 8 bytes per repeat of kept norms, and 1000 bootstrap resamples.
    """
    item = 4 if dtype is Dtype.float32 else 8
    overhead = spec.depth * (LAYER_OVERHEAD + 8 * repeats) + 8 * 250 * repeats * 2
    per_layer = spec.depth * LAYER_OVERHEAD_PER_REPEAT
    if spec.arch.is_conv:
        # Weights, and about 5 tensors of batch·C·H·W per layer (forward kept, backward
        # temporaries, pool indices): measured 192 MiB peak for 16 layers of 64 channels on
        # 32×32 images, batch 32, pool every 4 (estimate: 230 MiB).
        ch, pos = spec.channels, spec.spatial
        weights = sum(9 * ch[i] * ch[i + 1] for i in range(spec.depth))
        acts = sum(spec.batch * ch[i + 1] * pos[i] for i in range(spec.depth))
        per_conv = item * (weights + 5 * acts + 2 * spec.batch * ch[0] * pos[0])
        return in_flight * (per_conv + per_layer) + overhead
    bw = spec.batch * spec.width
    per_repeat = item * (
        spec.depth * spec.width * spec.width + (4 * spec.depth + 8) * bw + 2 * spec.width**2
    )
    return in_flight * (per_repeat + per_layer) + overhead


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _check_memory(request: SimulateRequest, in_flight: int) -> None:
    """Refuse, before anything is allocated, a configuration above the memory limit, or above
    the memory this machine has free (RAM and swap) whatever the limit: a larger
    ``max_memory`` cannot make it fit, and the allocator would fail with a traceback."""
    limit = default_max_memory() if request.max_memory is None else request.max_memory
    free = available_memory() + (_meminfo("SwapFree") or 0)
    for spec in request.specs:
        need = estimate_memory(spec, request.repeats, request.dtype, in_flight)
        what = f"{spec.arch.value} depth {spec.depth} width {spec.width} batch {spec.batch}"
        if need > limit:
            raise ResourceError(
                f"{what} needs about {format_bytes(need)}, above {{--max_memory}} "
                f"{format_bytes(limit)}; lower {{--depth}}/{{--width}}/{{--batch}}/{{--repeats}} "
                "or raise {--max_memory}"
            )
        if need > free:
            raise ResourceError(
                f"{what} needs about {format_bytes(need)}, more than the {format_bytes(free)} "
                "of memory free on this machine (RAM and swap), whatever {--max_memory} says; "
                "lower {--depth}/{--width}/{--batch}/{--repeats}"
            )


def resolve_device(device: Device) -> str:
    """``auto`` is CUDA when present, else CPU; asking for CUDA without one is an error."""

    if device is Device.auto:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device is Device.cuda and not torch.cuda.is_available():
        raise SpecError(
            "{option} cuda was asked for, but PyTorch sees no CUDA device", option="device"
        )
    return device.value


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_workers(device: str, processes_per_machine: int = 1) -> int:
    """One worker per CPU core available to this process (1 on CUDA), the cores shared among
    ``processes_per_machine`` (torchrun's ranks on one node)."""
    return max(1, available_cores() // processes_per_machine) if device == "cpu" else 1


# Below this much arithmetic (≈ 2 s of work on one core) starting worker processes costs more
# than it saves: threads are used instead.
PROCESS_MIN_FLOP = 3e11


_CHILD_LOCAL = threading.local()
_CHILD_ACT: dict[ActivationSpec, tuple[Any, Any]] = {}


def _child_init(parent: int | None = None) -> None:
    """Worker process set-up: one intra-op thread; Ctrl-C and SIGTERM are the parent's
    business (it stops the run and keeps what finished); the worker dies with its parent."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(parent)
    torch.set_num_threads(1)


def die_with_parent(parent: int | None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux ``prctl``
    ``PR_SET_PDEATHSIG``); a no-op where that does not exist. ``parent`` is the pid the
    parent had before the fork: if it is gone already, exit now."""
    import ctypes
    import ctypes.util
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent died between the fork and the prctl call


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


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
    """Worker processes forked from this one (the DataLoader pattern: one thread each), at
    most one per core available; they die with this process, even on ``kill -9``.

    Fork, not spawn: spawn would re-import the user's ``__main__``. PR_SET_PDEATHSIG fires
    when the forking *thread* ends: every worker is started here, by the caller's thread.
    """
    workers = min(workers, available_cores())
    import multiprocessing
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_child_init,
            initargs=(os.getpid(),),
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


def _counter(progress: ProgressFn | None, total: int) -> Tick:
    """A callback that adds finished work and reports ``progress(done, total)``; worker
    threads may call it (one call at a time)."""
    done = 0
    lock = threading.Lock()

    def tick(n: int) -> None:
        nonlocal done
        with lock:
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


def _run_one(
    spec: NetSpec,
    seed: int,
    repeat: int,
    dtype: Dtype,
    device: str,
    local: threading.local,
    act: tuple[Any, Any],
) -> RepeatValues:
    """One repeat: draw, forward and backward; the per-layer values it adds to the statistics.

    ``local`` keeps the previous draw's buffers of this thread, reused when the shapes match.
    """
    conv = spec.arch.is_conv
    shape = (spec.channels, spec.spatial, spec.batch, dtype, conv)
    draw = getattr(local, "draw", None) if getattr(local, "shape", None) == shape else None
    if conv:
        draw = draw_conv_repeat(spec, seed, repeat, dtype, device, out=draw)
        run: Callable[..., Any] = conv_forward_backward
    else:
        draw = draw_repeat(spec, seed, repeat, dtype, device, out=draw)
        run = forward_backward
    local.draw, local.shape = draw, shape
    out = run(spec, draw.weights, draw.x, draw.dy, *act)
    layer = _overflow_layer(out, spec.depth)
    if layer is not None and draw.x.dtype != torch.float64:
        # Squares overflow float32 long before the values do: recompute the statistics wide.
        out = run(spec, draw.weights, draw.x, draw.dy, *act, wide_stats=True)
        layer = _overflow_layer(out, spec.depth)
    values: RepeatValues = (
        out.grad_norm.double().cpu().numpy(),
        out.forward_var.double().cpu().numpy(),
        out.backward_var.double().cpu().numpy(),
        layer,
    )
    if conv:
        values += (
            out.pool_input_var.double().cpu().numpy(),
            out.pool_input_backward_var.double().cpu().numpy(),
        )
    return values


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


def run_configuration(spec: NetSpec, repeats: int, seed: int, **options: Any) -> LayerStats:
    """Run ``repeats`` repeats of one configuration and return their merged statistics.

    Repeat k always uses the generator seeded by (seed, spec, k), runs on one intra-op thread,
    and is added in repeat order, so the result is bit-identical whatever ``workers``,
    ``backend`` or (on CPU) the process it ran in. When ``stop`` is set (Ctrl-C), the repeats
    finished so far are returned. ``options`` are the keyword arguments of
    :func:`run_repeats`.
    """
    return stats_of(spec, run_repeats(spec, range(repeats), seed, **options))


def stats_of(spec: NetSpec, values: list[RepeatValues]) -> LayerStats:
    """The statistics of per-repeat values, added in the order given (repeat order)."""
    stats = LayerStats(spec.depth)
    for res in values:
        _add(stats, res)
    return stats


def run_repeats(
    spec: NetSpec,
    repeats: range,
    seed: int,
    *,
    dtype: Dtype = Dtype.float32,
    device: str = "cpu",
    workers: int | None = None,
    chunk: int | None = None,
    backend: Backend = Backend.auto,
    pool: Any = None,
    progress: Tick | None = None,
    stop: threading.Event | None = None,
) -> list[RepeatValues]:
    """The per-repeat values of ``repeats`` (a range of repeat indices) of one configuration,
    in repeat order; when ``stop`` is set, those of the repeats finished so far (a prefix).

    Args:
        workers: CPU workers, each running whole repeats on one core (default: one per core).
        chunk: repeats stacked into batched matmuls (default: 1 on CPU, 64 on CUDA).
        backend: CPU workers as processes or threads. PyTorch's CPU matmuls do not run
            concurrently from two Python threads (measured: no speed-up), processes do (1.98×);
            ``auto`` uses processes for long jobs.
        pool: a process pool from :func:`make_process_pool` to reuse across configurations.
        progress: called with the number of repeats just completed.
    """
    workers = min(workers or default_workers(device), available_cores())
    chunk = chunk or (1 if device == "cpu" else 64)
    if spec.arch.is_conv:
        chunk = 1  # conv repeats are never stacked (one thread each, as on the CPU path)
    job = _Job(spec, seed, dtype, device, progress, stop)
    if chunk > 1:
        return job.run_stacked(repeats, chunk)
    # One intra-op thread per repeat: the per-repeat arithmetic, hence every bit of the output,
    # is then the same whatever the number of workers.
    with intra_op_threads(1):
        if workers == 1:
            return job.run_serial(repeats)
        use_processes = _fork_available() and (
            backend is Backend.processes
            or (backend is Backend.auto and _work_flop(spec, len(repeats)) >= PROCESS_MIN_FLOP)
        )
        owned = None
        if use_processes and pool is None:
            pool = owned = make_process_pool(workers)
        elif not use_processes:
            pool = owned = ThreadPoolExecutor(max_workers=workers)
        try:
            return job.run_pooled(repeats, workers, pool, use_processes)
        finally:
            if owned is not None:
                owned.shutdown(wait=True, cancel_futures=True)


class _Job:
    """The repeats of one configuration, run serially, stacked or on a pool, kept in order."""

    def __init__(
        self, spec: NetSpec, seed: int, dtype: Dtype, device: str,
        progress: Tick | None, stop: threading.Event | None,
    ) -> None:  # fmt: skip
        self.spec, self.seed, self.dtype, self.device = spec, seed, dtype, device
        self.progress, self.stop = progress, stop
        self.values: list[RepeatValues] = []
        self.act = (activation_forward(spec.activation), activation_backward(spec.activation))
        self.local = threading.local()

    def stopped(self) -> bool:
        return bool(self.stop and self.stop.is_set())

    def add(self, results: list[RepeatValues], n: int) -> None:
        self.values.extend(results)
        if self.progress:
            self.progress(n)

    def one(self, k: int) -> RepeatValues:
        return _run_one(self.spec, self.seed, k, self.dtype, self.device, self.local, self.act)

    def run_stacked(self, repeats: range, chunk: int) -> list[RepeatValues]:
        """``chunk`` repeats at a time on a leading dimension (batched matmuls, for CUDA)."""
        k = repeats.start
        while k < repeats.stop and not self.stopped():
            n = min(chunk, repeats.stop - k)
            args = (self.spec, self.seed, k, n, self.dtype, self.device, self.act)
            self.add(list(_run_stack(*args)), n)
            k += n
        return self.values

    def run_serial(self, repeats: range) -> list[RepeatValues]:
        for k in repeats:
            if self.stopped():
                break
            self.add([self.one(k)], 1)
        return self.values

    def run_pooled(
        self, repeats: range, workers: int, pool: Any, processes: bool
    ) -> list[RepeatValues]:
        """A bounded window of repeats in flight on ``pool``, collected in repeat order.
        Processes get a few repeats per task (less traffic); threads one."""
        step = max(1, min(4, len(repeats) // (4 * workers))) if processes else 1

        def submit(k: int, n: int) -> Any:
            if processes:
                return pool.submit(_process_chunk, self.spec, self.seed, k, n, self.dtype)
            return pool.submit(lambda: [self.one(k)])

        run_window(submit, self.add, repeats, workers, step, self.stopped)
        return self.values


def run_window(
    submit: Callable[[int, int], Any],
    add: Callable[[list[Any], int], None],
    repeats: range,
    workers: int,
    step: int,
    stopped: Callable[[], bool],
) -> None:
    """Run ``repeats`` on a pool, ``step`` at a time, with at most two tasks per worker in
    flight, and ``add`` the results in repeat order. ``submit(first, count)`` returns a future
    of the list of results of repeats ``first .. first+count-1``. Once ``stopped()``, what is
    already running is finished and added, what has not started is cancelled."""
    pending: list[tuple[Any, int]] = []
    k = repeats.start
    while k < repeats.stop or pending:
        while k < repeats.stop and len(pending) < 2 * workers and not stopped():
            n = min(step, repeats.stop - k)
            pending.append((submit(k, n), n))
            k += n
        if not pending:
            break
        fut, n = pending.pop(0)
        add(fut.result(), n)
        if stopped():
            for f, _ in pending:
                f.cancel()
            for f, m in pending:
                if not f.cancelled():
                    add(f.result(), m)
            break
