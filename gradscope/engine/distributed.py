"""Sweeps across the ranks of torch.distributed, launched by ``torchrun``.

``torchrun --nproc-per-node N -m gradscope simulate …`` starts N copies of the same command;
each one finds torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in its environment and
joins the process group (gloo on a CPU, NCCL on CUDA, the rank's GPU from ``LOCAL_RANK``).

How the work is split: the (configuration, repeat) pairs of a sweep, configuration by
configuration and in repeat order, are cut into one contiguous block per rank of equal
estimated cost (a configuration's FLOPs per repeat times its repeats), so a rank gets whole
configurations, or runs of repeats of one, and a cheap configuration costs as little as it
should. Inside a rank, the usual worker processes or threads run its block.

Why the output is bit-identical to one process: repeat k of a configuration draws from the
generator seeded by (seed, configuration, k), wherever it runs, on one intra-op thread.
Rank 0 gathers every rank's per-repeat values (``gather_object``, once, at the end) and adds
them in repeat order, exactly as a single process does: the same floating-point sums in the
same order. Nothing else crosses the network but a few counters in torch.distributed's store:
finished work (rank 0 shows the progress of all ranks), and a stop or failure flag, so that
Ctrl-C, SIGTERM or a failing rank stops every rank.
"""

from __future__ import annotations

import datetime
import math
import os
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gradscope.engine.runner import ProgressFn, Tick, _counter
from gradscope.errors import GradscopeError

# One block of a rank's share: (configuration index, first repeat, end repeat).
Block = tuple[int, int, int]
# compute(configuration, first, end, tick) -> per-repeat values of repeats first .. end-1, in
# order (fewer, a prefix, when stopped); tick(n) reports n more units of finished work.
Compute = Callable[[int, int, int, Tick], list[Any]]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
POLL_SECONDS = 0.2  # how often a rank reports its progress and looks for a stop


class DistributedError(GradscopeError):
    """Another rank failed or vanished: this rank stops, writing nothing."""


def ranks_per_machine(cluster: Cluster | None) -> int:
    """How many processes of the run share this machine's cores."""
    return 1 if cluster is None else max(1, cluster.local_world_size)


def launched_by_torchrun() -> bool:
    """Whether torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) is set."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def run_in_order(
    compute: Compute,
    configurations: int,
    repeats: int,
    progress: ProgressFn | None,
    stop: threading.Event | None,
    total: int | None = None,
) -> dict[int, list[Any]]:
    """One process: every configuration in order until ``stop``; per configuration index the
    values of its finished repeats. ``total`` is the work ``progress`` counts to (default:
    configurations × repeats)."""
    tick = _counter(progress, configurations * repeats if total is None else total)
    values: dict[int, list[Any]] = {}
    for c in range(configurations):
        if stop is not None and stop.is_set():
            break
        values[c] = compute(c, 0, repeats, tick)
        if len(values[c]) < repeats:
            break
    return values


def split_work(costs: Sequence[float], repeats: int, world_size: int) -> list[list[Block]]:
    """Each rank's share of the (configuration, repeat) pairs: contiguous blocks of equal cost.

    Pair (c, k) costs ``costs[c]``; it goes to the rank whose slice of the cumulative cost
    holds its midpoint. Every rank computes the same split from the same numbers.
    """
    weights = [max(float(cost), 1e-300) for cost in costs]
    total = sum(weights) * repeats
    shares: list[list[Block]] = [[] for _ in range(world_size)]
    offset = 0.0
    for c, cost in enumerate(weights):
        bounds = [0]
        for q in range(1, world_size):
            # the first repeat k with offset + cost·(k + ½) ≥ q·total/world_size
            first = math.ceil((q * total / world_size - offset) / cost - 0.5)
            bounds.append(min(repeats, max(bounds[-1], first)))
        bounds.append(repeats)
        for q in range(world_size):
            if bounds[q] < bounds[q + 1]:
                shares[q].append((c, bounds[q], bounds[q + 1]))
        offset += cost * repeats
    return shares


def assemble(chunks: Sequence[tuple[int, int, list[Any]]]) -> dict[int, list[Any]]:
    """Per configuration, the values of its first repeats without a gap, in repeat order,
    from every rank's (configuration, first repeat, values) chunks."""
    by_config: dict[int, list[tuple[int, list[Any]]]] = {}
    for c, first, values in chunks:
        by_config.setdefault(c, []).append((first, values))
    out: dict[int, list[Any]] = {}
    for c in sorted(by_config):
        done: list[Any] = []
        for first, values in sorted(by_config[c], key=lambda item: item[0]):
            if first != len(done):
                break  # a gap: an earlier block stopped short
            done.extend(values)
        if done:
            out[c] = done
    return out


@dataclass
class Cluster:
    """This process's place among torchrun's ranks, and the store they share.

    After :meth:`run`: ``payload_bytes`` this rank sent (rank 0: all ranks together),
    ``sync_seconds`` spent in the store and the gather, ``wait_seconds`` waiting for the
    slowest rank.
    """

    rank: int
    world_size: int
    local_rank: int
    store: Any
    local_world_size: int = 1  # ranks on this machine, which share its cores
    payload_bytes: int = 0
    sync_seconds: float = 0.0
    wait_seconds: float = 0.0
    _runs: int = field(default=0, repr=False)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def run(
        self,
        compute: Compute,
        costs: Sequence[float],
        repeats: int,
        progress: ProgressFn | None,
        stop: threading.Event | None,
        total: int | None = None,
    ) -> dict[int, list[Any]] | None:
        """Run this rank's share of a sweep; on rank 0, the values of every rank, as
        :func:`run_in_order` returns them; None on the other ranks.

        Raises:
            DistributedError: another rank failed, or stopped without sending its results.
        """
        import torch.distributed as dist

        self._runs += 1
        store = dist.PrefixStore(f"run{self._runs}/", self.store)
        stop = stop or threading.Event()
        total = len(costs) * repeats if total is None else total
        share = split_work(costs, repeats, self.world_size)[self.rank]
        sync = _Sync(self, store, progress, total, stop)
        chunks = []
        try:
            for c, first, end in share:
                if stop.is_set():
                    break
                chunks.append((c, first, compute(c, first, end, sync.tick)))
        except BaseException as exc:
            sync.fail(exc)
            raise
        sync.finish()
        return self._gather(chunks, sync)

    def _gather(self, chunks: list[Any], sync: _Sync) -> dict[int, list[Any]] | None:
        import torch.distributed as dist

        start = time.perf_counter()
        gathered: list[Any] | None = [None] * self.world_size if self.is_root else None
        try:
            dist.gather_object(chunks, gathered, dst=0)
        except RuntimeError:
            sync.raise_failure()
            raise DistributedError(
                "another rank stopped without sending its results (killed, or its machine "
                "failed); nothing written"
            ) from None
        self.sync_seconds += time.perf_counter() - start
        if gathered is None:
            self.payload_bytes = len(pickle.dumps(chunks))
            return None
        self.payload_bytes = sum(len(pickle.dumps(part)) for part in gathered)
        return assemble([chunk for part in gathered for chunk in part])

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


class _Sync:
    """This rank's side of the store: finished work, the stop flag and failures."""

    def __init__(
        self, cluster: Cluster, store: Any, progress: ProgressFn | None, total: int,
        stop: threading.Event,
    ) -> None:  # fmt: skip
        self.cluster, self.store, self.progress, self.total = cluster, store, progress, total
        self.stop = stop
        self.lock = threading.Lock()
        self.unsent = 0
        self.last = time.monotonic()

    def tick(self, n: int) -> None:
        """Count finished work; every POLL_SECONDS, send it and look for a stop."""
        with self.lock:
            self.unsent += n
            if time.monotonic() - self.last >= POLL_SECONDS:
                self.poll()

    def poll(self) -> int:
        """Send the unsent work, report everyone's on rank 0, follow a stop; the ranks done."""
        start = time.perf_counter()
        done = self.store.add("done", self.unsent)
        self.unsent = 0
        self.last = time.monotonic()
        if self.stop.is_set():
            self.store.set("stop", "1")
        elif self.store.check(["stop"]):
            self.stop.set()
        self.raise_failure()
        finished = self.store.add("finished", 0)
        self.cluster.sync_seconds += time.perf_counter() - start
        if self.cluster.is_root and self.progress is not None:
            self.progress(min(done, self.total), self.total)
        return int(finished)

    def finish(self) -> None:
        """This rank is done: wait until every rank is, or a stop (then gather at once)."""
        start = time.perf_counter()
        with self.lock:
            self.store.add("finished", 1)
            while self.poll() < self.cluster.world_size and not self.stop.is_set():
                time.sleep(POLL_SECONDS)
        self.cluster.wait_seconds += time.perf_counter() - start

    def fail(self, exc: BaseException) -> None:
        """Tell the other ranks why this one stops (they stop too)."""
        if isinstance(exc, DistributedError):
            return
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {exc}"
        try:
            self.store.set("failed", f"rank {self.cluster.rank} {what}".split("\n")[0])
            self.store.set("stop", "1")
        except Exception:  # the store is gone too: the other ranks find out from torchrun
            pass

    def raise_failure(self) -> None:
        try:
            if not self.store.check(["failed"]):
                return
            message = self.store.get("failed").decode("utf-8", "replace")
        except Exception:
            return
        raise DistributedError(f"{message}; stopping (nothing written)")


def start(device: str) -> Cluster | None:
    """Join torchrun's process group (gloo on a CPU, NCCL on CUDA with the rank's own GPU);
    None when not launched by torchrun or alone (``WORLD_SIZE`` 1)."""
    if not launched_by_torchrun():
        return None
    rank, world_size, local_rank = (int(os.environ[name]) for name in TORCHRUN_VARIABLES)
    if world_size < 2:
        return None
    import torch
    import torch.distributed as dist

    backend = "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    try:
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        client = dist.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=datetime.timedelta(minutes=5),
        )
    except (RuntimeError, ValueError, OSError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DistributedError(f"cannot join torchrun's process group: {first}") from None
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"gradscope/{restart}/", client)
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return Cluster(rank, world_size, local_rank, store, local_world_size)
