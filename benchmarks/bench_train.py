"""Benchmark: the training engine's steps/s against a plain PyTorch training loop of the same
model, in the same run.

- gradscope: :func:`gradscope.engine.train.train_repeat` (what ``simulate --train-steps`` runs per
  repeat), recording every step (``--record-every 1``) and, separately, every 50th step; the
  weight-growth accumulation is on in both (plain SGD + BatchNorm).
- baseline: an ``nn.Sequential`` of Linear(no bias) → BatchNorm1d → ReLU blocks and a head,
  ``torch.optim.SGD``, the same data and minibatch order: forward, loss, ``zero_grad``,
  ``backward``, ``step`` and nothing else.

Both run with one intra-op thread (as the engine does on a CPU, one repeat per core), on the
same weights, alternating, median of ``--rounds`` rounds. Target: the engine within 1.3× of the
baseline while recording every step.

Usage: python benchmarks/bench_train.py [--steps 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradscope.engine.draws import draw_repeat
from gradscope.engine.train import make_task_data, train_repeat
from gradscope.options import Dtype
from gradscope.specs import NORM_EPS, build_specs, make_config


def baseline(spec: Any, config: Any, seed: int) -> float:
    """Seconds for a plain PyTorch loop of the same model and data, setup included (as the
    engine's figure includes drawing its weights and task)."""
    t0 = time.perf_counter()
    layers: list[nn.Module] = []
    for _ in range(spec.depth):
        layers += [
            nn.Linear(spec.width, spec.width, bias=False),
            nn.BatchNorm1d(spec.width, eps=NORM_EPS, affine=False),
            nn.ReLU(),
        ]
    model = nn.Sequential(*layers, nn.Linear(spec.width, config.classes))
    data = make_task_data(config, spec.width, spec.batch, seed, 0)
    draw = draw_repeat(spec, seed, 0, Dtype.float32)
    with torch.no_grad():
        for i in range(spec.depth):
            model[3 * i].weight.copy_(draw.weights[i])
        model[-1].weight.copy_(data.head_weight)
        model[-1].bias.copy_(data.head_bias)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    for t in range(config.steps):
        idx = data.order[t * spec.batch : (t + 1) * spec.batch]
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def engine(spec: Any, config: Any, seed: int) -> float:
    t0 = time.perf_counter()
    train_repeat(spec, config, seed, 0)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [(20, 64, 64), (20, 256, 128)]
    print(
        f"torch {torch.__version__}, 1 intra-op thread, {args.steps} steps, median of "
        f"{args.rounds} rounds (steps/s)"
    )
    print(
        "| depth × width, batch | plain PyTorch | gradscope, every step | ratio "
        "| gradscope, every 50th | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for depth, width, batch in sizes:
        spec = build_specs(activation="relu", depth=depth, width=width, batch=batch)[0]

        def cfg(every: int) -> Any:
            return make_config(
                task="gaussian-classes",
                optimizer="sgd",
                lr=0.1,
                weight_decay=0.0,
                clip_grad_norm=None,
                steps=args.steps,
                record_every=every,
                classes=10,
                samples=4096,
                momentum=0.9,
            )

        every1, every50 = cfg(1), cfg(50)
        base, rec1, rec50 = [], [], []
        engine(spec, cfg(1), 0)  # warm-up
        for _ in range(args.rounds):
            base.append(baseline(spec, every1, 0))
            rec1.append(engine(spec, every1, 0))
            rec50.append(engine(spec, every50, 0))
        b, r1, r50 = (args.steps / statistics.median(v) for v in (base, rec1, rec50))
        print(
            f"| {depth} × {width}, {batch} | {b:.0f} | {r1:.0f} | {b / r1:.2f}× "
            f"| {r50:.0f} | {b / r50:.2f}× |"
        )


if __name__ == "__main__":
    main()
