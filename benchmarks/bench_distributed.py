"""Benchmark: one process with 2 worker processes against ``torchrun --nproc-per-node 2`` with
1 worker each, on the paper's Figure 1 setting (plain and resnet, ReLU + BatchNorm, depth
20, width 256, batch 128, seed 0), in the same run.

Figures printed:
- the engine's wall time in each case, and whether the records are identical;
- the collective overhead: the seconds rank 0 spends in the store (progress, stop flags) and
  in the final gather, as a % of the run (target: under 5%), and the seconds ranks wait for
  the slowest one (imbalance, not communication);
- the bytes per repeat that cross the network (rank 0 receives them once, at the end);
- torchrun's own start-up (the launcher, the rendezvous and the imports of each rank);
- a scaling model for 8, 64 and 512 ranks from the measured per-repeat compute and bytes.

Usage: python benchmarks/bench_distributed.py [--repeats 512] [--bandwidth-gbit 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
# Per-rank costs of the end of a run that grow with the number of ranks: a store round trip
# per rank for the gather's sizes and one message per rank into rank 0 (measured on loopback
# here: about 0.2 ms; a datacenter network: about 0.05-0.5 ms).
LATENCY_SECONDS = 0.5e-3
POLL_SECONDS = 0.2


def _request(repeats: int, workers: int) -> Any:
    from gradscope.specs import SimulateRequest, build_specs

    specs = build_specs(arch=["plain", "resnet"], depth=[20], width=[256], batch=[128])
    return SimulateRequest(tuple(specs), repeats=repeats, workers=workers, backend="processes")


def _digest(result: Any) -> str:
    text = repr([*result.records, *result.summary]).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def child(mode: str, repeats: int) -> None:
    """One measured run, as JSON on stdout (rank 0 only under torchrun)."""
    from gradscope.engine import run
    from gradscope.engine.distributed import start

    cluster = start("cpu") if mode == "rank" else None
    request = _request(repeats, workers=1 if cluster else 2)
    t0 = time.perf_counter()
    result = run(request, seed=0, cluster=cluster)
    seconds = time.perf_counter() - t0
    figures = {"seconds": seconds, "digest": _digest(result) if result.records else None}
    if cluster is not None:
        figures.update(
            sync_seconds=cluster.sync_seconds,
            wait_seconds=cluster.wait_seconds,
            payload_bytes=cluster.payload_bytes,
        )
        cluster.close()
    if cluster is None or cluster.is_root:
        print(json.dumps(figures), flush=True)


def _run(command: list[str]) -> tuple[dict[str, Any], float]:
    # OMP_NUM_THREADS=1 as torchrun sets it: without it, the single process's forked workers
    # inherit an OpenMP pool and run 1.3-1.6× slower here, which is not what is compared.
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": str(HERE.parent.parent),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    t0 = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    return json.loads(out.stdout.strip().splitlines()[-1]), wall


def speed_up(ranks: int, pairs: int, per_repeat: float, per_bytes: float, gbit: float) -> float:
    """Model: every rank computes pairs/ranks repeats (whole repeats: the busiest rank has
    ⌈pairs/ranks⌉), then rank 0 receives every repeat's bytes once and one message per rank;
    the store adds at most one poll interval of latency at the end."""
    compute = math.ceil(pairs / ranks) * per_repeat
    network = pairs * per_bytes / (gbit * 1e9 / 8) + ranks * LATENCY_SECONDS + POLL_SECONDS
    return pairs * per_repeat / (compute + network)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=512)
    parser.add_argument("--bandwidth-gbit", type=float, default=10.0)
    parser.add_argument("--child", choices=["single", "rank"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.repeats)
        return
    me = [str(HERE), "--repeats", str(args.repeats)]
    single, single_wall = _run([sys.executable, *me, "--child", "single"])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    ranks, ranks_wall = _run([*torchrun, "--nproc-per-node", "2", *me, "--child", "rank"])
    pairs = 2 * args.repeats
    per_repeat = 2 * ranks["seconds"] / pairs  # core-seconds per repeat
    per_bytes = ranks["payload_bytes"] / pairs
    overhead = 100 * ranks["sync_seconds"] / ranks["seconds"]
    print(f"Figure 1 setting, {args.repeats} repeats × 2 configurations, this machine "
          f"({os.cpu_count()} cores)")  # fmt: skip
    print(f"  1 process, 2 workers:          {single['seconds']:7.2f} s")
    print(f"  torchrun 2 ranks × 1 worker:   {ranks['seconds']:7.2f} s "
          f"({single['seconds'] / ranks['seconds']:.2f}× the single process)")  # fmt: skip
    print(f"  records identical:             {single['digest'] == ranks['digest']}")
    print(f"  collective overhead (rank 0):  {ranks['sync_seconds']:7.3f} s = {overhead:.2f}% "
          "of the run (target < 5%)")  # fmt: skip
    print(f"  waiting for the slowest rank:  {ranks['wait_seconds']:7.3f} s")
    print(f"  bytes per repeat sent:         {per_bytes:7.0f} B "
          f"({ranks['payload_bytes']} B in all, once, to rank 0)")  # fmt: skip
    print(f"  compute per repeat:            {1e3 * per_repeat:7.2f} core-ms")
    startup = (ranks_wall - ranks["seconds"]) - (single_wall - single["seconds"])
    print(f"  torchrun start-up beyond one process's: {startup:.1f} s")
    print(f"Scaling model ({args.bandwidth_gbit:g} Gbit/s into rank 0, "
          f"{1e3 * LATENCY_SECONDS:g} ms per rank, {pairs} and 64×{pairs} repeats):")  # fmt: skip
    for n in (8, 64, 512):
        small = speed_up(n, pairs, per_repeat, per_bytes, args.bandwidth_gbit)
        big = speed_up(n, 64 * pairs, per_repeat, per_bytes, args.bandwidth_gbit)
        print(f"  {n:4d} ranks: speed-up {small:6.1f} ({100 * small / n:3.0f}%)   "
              f"{big:6.1f} ({100 * big / n:3.0f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
