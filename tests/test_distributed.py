"""Sweeps across torchrun's ranks, SIGTERM, and worker processes that die with their parent.

The torchrun tests run ``python -m torch.distributed.run --standalone`` (gloo on 127.0.0.1)
as a subprocess and compare its CSV byte for byte with the single-process run. The split of
the work itself is checked in-process for every engine and several world sizes, with a
stand-in cluster that runs each rank's share one after the other.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gradscope import specs
from gradscope.engine import run as engine_run
from gradscope.engine.distributed import assemble, split_work
from gradscope.records import parse_csv

ROOT = Path(__file__).resolve().parent.parent
POSIX = pytest.mark.skipif(sys.platform != "linux", reason="Linux signals and /proc")
# The heavier torchrun runs (3 ranks, --model, --train-steps: about 5-10 s each on 2 cores)
# are marked slow (run with --slow, as CI does); the 2-rank sweep and the kill test always run.

TINY_MODEL = """
from torch import nn


def make_model(width: int = 4):
    return nn.Sequential(
        nn.Conv2d(2, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * 16, 3),
    )
"""
SWEEP = ["--arch", "plain,resnet,plain-conv", "--depth", "4", "--width", "8", "--batch", "8",
         "--image-size", "8", "--repeats", "5", "--seed", "3"]  # fmt: skip
TRAIN = ["--arch", "plain,plain-conv", "--depth", "3", "--width", "6", "--batch", "4",
         "--image-size", "4", "--train-steps", "5", "--record-every", "2", "--samples", "16",
         "--repeats", "3"]  # fmt: skip
MODEL = ["--model", "tiny.py:make_model", "--input-shape", "2,4,4", "--batch", "4",
         "--repeats", "5"]  # fmt: skip


# The split ------------------------------------------------------------------------------


def test_split_covers_every_pair_once_in_contiguous_blocks_of_equal_cost() -> None:
    costs, repeats = [1.0, 100.0, 3.0, 1000.0], 64
    for world in (1, 2, 3, 7, 300):
        shares = split_work(costs, repeats, world)
        pairs = [(c, k) for share in shares for c, a, b in share for k in range(a, b)]
        assert pairs == [(c, k) for c in range(4) for k in range(repeats)]  # in rank order
        loads = [sum(costs[c] * (b - a) for c, a, b in share) for share in shares]
        # each end of a block is within half a pair of its ideal place: no rank is more than
        # one pair (at most 1000) off its even share
        assert max(abs(load - sum(loads) / world) for load in loads) <= 1000.0


def test_assemble_keeps_the_finished_prefix_of_each_configuration() -> None:
    chunks = [(0, 3, ["d", "e"]), (0, 0, ["a", "b", "c"]), (1, 0, ["x"]), (1, 4, ["z"])]
    assert assemble(chunks) == {0: ["a", "b", "c", "d", "e"], 1: ["x"]}
    assert assemble([(2, 1, ["late"])]) == {}


class _SequentialCluster:
    """Stands in for torchrun's ranks: each rank's share runs here, one rank after another."""

    def __init__(self, world_size: int) -> None:
        self.world_size, self.rank, self.is_root, self.local_world_size = world_size, 0, True, 1

    def run(
        self, compute: Callable[..., list[Any]], costs: list[float], repeats: int, *_: Any
    ) -> dict[int, list[Any]]:
        chunks = [
            (c, a, compute(c, a, b, lambda n: None))
            for share in split_work(costs, repeats, self.world_size)
            for c, a, b in share
        ]
        return assemble(chunks)


def _records(request: Any, cluster: Any = None) -> list[Any]:
    result = engine_run(request, seed=7, cluster=cluster)
    return [*result.records, *result.summary, *getattr(result, "weight_growth", [])]


@pytest.mark.parametrize("world", [2, 3, 5])
def test_any_split_of_a_sweep_gives_the_same_records(world: int, tmp_path: Path) -> None:
    nets = specs.build_specs(arch=["plain", "resnet", "plain-conv"], depth=[4], width=[6],
                             batch=[4], image_size=8)  # fmt: skip
    request = specs.SimulateRequest(nets, repeats=4, workers=1, resamples=50)
    assert _records(request, _SequentialCluster(world)) == _records(request)
    config = specs.make_config(task="gaussian-classes", optimizer="momentum", lr=0.05,
                               weight_decay=0.01, clip_grad_norm=None, steps=3, record_every=2,
                               classes=3, samples=8, momentum=0.9)  # fmt: skip
    train = specs.TrainRequest(tuple(nets[:1] + nets[2:]), config, repeats=3, workers=1,
                               resamples=50)  # fmt: skip
    assert _records(train, _SequentialCluster(world)) == _records(train)
    (tmp_path / "tiny.py").write_text(TINY_MODEL)
    spec = specs.ModelSpec(f"{tmp_path}/tiny.py:make_model", {}, (2, 4, 4))
    model = specs.ModelRequest(spec, 4, 4)
    assert _records(model, _SequentialCluster(world)) == _records(model)


# torchrun --------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def _torchrun(ranks: int, args: list[str], cwd: Path, **popen: Any) -> Any:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(ranks), "-m", "gradscope", "simulate", *args]  # fmt: skip
    if popen:
        return subprocess.Popen(command, cwd=cwd, env=_env(), text=True, **popen)
    return subprocess.run(command, cwd=cwd, env=_env(), text=True, capture_output=True,
                          timeout=300)  # fmt: skip


def _single(args: list[str], cwd: Path) -> Any:
    return subprocess.run([sys.executable, "-m", "gradscope", "simulate", *args], cwd=cwd,
                          env=_env(), text=True, capture_output=True, timeout=300)  # fmt: skip


def _same_csv(ranks: int, args: list[str], tmp_path: Path) -> None:
    (tmp_path / "tiny.py").write_text(TINY_MODEL)
    one = _single([*args, "-o", "one.csv", "--meta", "one.json"], tmp_path)
    assert one.returncode == 0, one.stderr
    many = _torchrun(ranks, [*args, "-o", "many.csv", "--meta", "many.json"], tmp_path)
    assert many.returncode == 0, many.stderr
    assert (tmp_path / "many.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert f'"world_size": {ranks}' in (tmp_path / "many.json").read_text()
    assert '"world_size": 1' in (tmp_path / "one.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "many.csv", "many.json", "one.csv", "one.json", "tiny.py"
    ]  # fmt: skip


def test_two_ranks_write_the_single_process_csv_byte_for_byte(tmp_path: Path) -> None:
    """plain, resnet and conv in one sweep; rank 1 writes nothing and prints nothing."""
    _same_csv(2, SWEEP, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("ranks", "args"),
    [(3, SWEEP), (2, MODEL), (3, MODEL), (2, TRAIN), (3, TRAIN)],
    ids=["3-sweep", "2-model", "3-model", "2-train", "3-train"],
)
def test_more_ranks_and_runs_write_the_single_process_csv(
    ranks: int, args: list[str], tmp_path: Path
) -> None:
    _same_csv(ranks, args, tmp_path)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(v[5:]) for v in env if v.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _wait_for_progress(proc: Any, label: str = "simulate") -> None:
    """Read stderr until a ``--progress log`` line shows finished work."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(rf"{label}: (\d+)/", proc.stderr.readline())
        if match and int(match.group(1)) > 0:
            return
    raise AssertionError("no progress line within 120 s")


@POSIX
def test_killing_one_rank_stops_the_others_with_one_line_and_no_file(tmp_path: Path) -> None:
    args = ["--depth", "6", "--width", "32", "--repeats", "200000", "--workers", "1",
            "--progress", "log", "-o", "out.csv"]  # fmt: skip
    proc = _torchrun(2, args, tmp_path, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_progress(proc)
        (rank1,) = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        os.kill(rank1, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        assert time.monotonic() - killed < 10
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    assert "another rank stopped without sending its results" in errors[0]
    assert list(tmp_path.iterdir()) == []  # no output, no half-written or temporary file


# SIGTERM and worker processes ------------------------------------------------------------


def _gradscope(args: list[str], cwd: Path) -> Any:
    command = [sys.executable, "-m", "gradscope", "simulate", *args, "--progress", "log"]
    return subprocess.Popen(command, cwd=cwd, env=_env(), text=True, stderr=subprocess.PIPE)


@POSIX
def test_sigterm_writes_the_partial_results_and_exits_143(tmp_path: Path) -> None:
    proc = _gradscope(["--depth", "6", "--width", "32", "--repeats", "1000000", "--summary",
                       "-o", "out.csv"], tmp_path)  # fmt: skip
    try:
        _wait_for_progress(proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "interrupted: partial results" in stderr
    (row,) = parse_csv((tmp_path / "out.csv").read_text())
    assert row["partial"] is True and 0 < row["repeats"] < 1000000


@POSIX
def test_worker_processes_die_with_their_parent(tmp_path: Path) -> None:
    proc = _gradscope(["--depth", "6", "--width", "32", "--repeats", "1000000", "--workers",
                       "2", "--backend", "processes", "-o", "out.csv"], tmp_path)  # fmt: skip
    try:
        _wait_for_progress(proc)
        workers = _children(proc.pid)
        assert len(workers) == 2
        proc.kill()  # kill -9: no handler runs in the parent
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        assert not any(_alive(p) for p in workers)
    finally:
        for pid in _children(proc.pid) if proc.poll() is None else []:
            os.kill(pid, signal.SIGKILL)
    assert not (tmp_path / "out.csv").exists()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_more_workers_than_cores_is_capped_with_a_warning(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gradscope.cli import app
    from gradscope.engine.runner import available_cores

    cores = available_cores()
    args = ["--depth", "3", "--width", "4", "--batch", "4", "--repeats", "2", "--workers", "100000"]
    res = CliRunner().invoke(app, ["simulate", *args, "-f", "csv"])
    assert res.exit_code == 0, res.output
    assert (
        f"Warning: --workers 100000 is more than the {cores} cores available: using {cores}"
        in res.stderr
    )
