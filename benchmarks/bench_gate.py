"""The CI gate on a ResNet-18-sized model (11.7 M parameters) at 32×32, before and after the
``--model`` thread fix, in one run.

    python benchmarks/bench_gate.py [--repeats 16] [--batch 128] [--rounds 2]

- before: the repeats one after the other in this process with PyTorch's default intra-op
  threads (one per core), as ``simulate --model`` ran them before the fix;
- before, one thread: the same with one intra-op thread (what ``OMP_NUM_THREADS=1`` gave);
- after: ``measure_model``, what ``simulate --model`` runs now: one intra-op thread per repeat,
  and a long run's repeats on one forked worker per core.

Each is timed on the machine as it is (its load average printed: other users of a shared
machine count) and beside one more busy process (a CI runner's other job); the variants
take turns for ``--rounds`` rounds and the best time of each is shown, so that load from
elsewhere hits every variant alike. Then the numbers
are compared (after against before with one thread: bit-identical), and the gate is timed
end to end as CI runs it: the ``gradscope simulate ... --fail-if-rate-above 1.15`` command,
process start included.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from gradscope.engine.runner import default_workers, intra_op_threads
from gradscope.engine.user_model import ModelRun, _ModelRunner, measure_model
from gradscope.specs import ModelRequest, ModelSpec

ROOT = Path(__file__).resolve().parents[1]
TARGET = f"{ROOT / 'examples' / 'resnet18.py'}:make_model"
SHAPE = (3, 32, 32)
MINUTE = 60.0


@contextlib.contextmanager
def busy_neighbour(on: bool) -> Iterator[None]:
    """One process spinning on a core for the duration (when ``on``)."""
    if not on:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        yield
    finally:
        spinner.kill()
        spinner.wait()


def variants(request: ModelRequest) -> dict[str, Callable[[], ModelRun]]:
    def before() -> ModelRun:
        return _ModelRunner(request, 0).run(None, None)

    def before_one_thread() -> ModelRun:
        with intra_op_threads(1):
            return _ModelRunner(request, 0).run(None, None)

    def after() -> ModelRun:
        return measure_model(request, 0)

    return {"before": before, "before, 1 thread": before_one_thread, "after": after}


def timed(run: Callable[[], ModelRun]) -> tuple[float, ModelRun]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def gate_command(repeats: int, batch: int) -> tuple[float, int, str]:
    """The gate as CI runs it: wall time, exit code, its last stderr line."""
    command = [
        sys.executable, "-m", "gradscope", "simulate", "--model", TARGET, "--input-shape",
        ",".join(map(str, SHAPE)), "--repeats", str(repeats), "--batch", str(batch),
        "--fail-if-rate-above", "1.15", "--summary", "-f", "csv", "--no-meta",
        "--progress", "none",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = done.stderr.strip().splitlines()
    return time.perf_counter() - start, done.returncode, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    request = ModelRequest(ModelSpec(TARGET, {}, SHAPE), args.batch, repeats=args.repeats,
                           device="cpu")  # fmt: skip
    print(
        f"ResNet-18 ({TARGET.rsplit('/', 1)[-1]}) at {'x'.join(map(str, SHAPE))}, batch "
        f"{args.batch}, {args.repeats} repeats; torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads by default, {default_workers('cpu')} cores"
    )
    measure_model(ModelRequest(request.spec, args.batch, repeats=1, device="cpu"), 0)  # warm-up
    results: dict[str, ModelRun] = {}
    for neighbour in (False, True):
        load = os.getloadavg()[0]
        where = f"{'+ a busy process' if neighbour else 'as is'} (load {load:.1f})"
        times: dict[str, float] = {}
        with busy_neighbour(neighbour):
            for _ in range(args.rounds):
                for name, run in variants(request).items():
                    seconds, results[name] = timed(run)
                    times[name] = min(seconds, times.get(name, seconds))
        cells = ", ".join(f"{name} {seconds:5.1f} s" for name, seconds in times.items())
        speed_up = times["before"] / times["after"]
        print(f"{where:27s} {cells}; after is {speed_up:.2f}x faster than before")
    after, one = results["after"], results["before, 1 thread"]
    same = all(
        np.array_equal(getattr(after, k), getattr(one, k))
        for k in ("grad_norms", "forward_var", "backward_var")
    )
    drift = np.nanmax(np.abs(results["before"].grad_norms / after.grad_norms - 1))
    print(
        f"numbers: after vs before with 1 thread {'bit-identical' if same else 'DIFFER'}; "
        f"vs before with default threads max relative difference {drift:.1e} (float32 sums "
        "split over threads round differently)"
    )
    wall, code, last = gate_command(args.repeats, args.batch)
    verdict = "under a minute" if wall < MINUTE else "OVER A MINUTE"
    print(f"gate end to end: {wall:.1f} s ({verdict}), exit {code}: {last}")


if __name__ == "__main__":
    main()
