"""What training does to BatchNorm σ in a plain conv net with max-pools (README, issue 12).

The paper (Appendix A) reads torchvision's VGG19-BN checkpoint and claims two things: σ =
sqrt(mean running_var) grows from deep to shallow layers, and it drops right after each
max-pool. This script tests both on nets it trains itself, end to end through the same path a
user takes: ``simulate --train-steps`` trains a VGG-like ``plain-conv`` net (conv → BatchNorm →
ReLU, a 2×2 max-pool after every 4th layer) on ``gaussian-classes``, ``--save-checkpoint``
writes it, and ``inspect-checkpoint`` reads the pools from its layout, fits σ within the
segments between pools and gives its verdict.

A reference run with lr 1e-9 keeps the initial weights, so its running statistics are those of
the untrained net's forward pass: σ changes that it shows too are not made by training.

For each optimiser and seed it prints the headline fit (rate per layer from deep to shallow
with its 95% t-interval, R², verdict) and σ(after pool) / σ(before pool) at each pool; then
the counts of verdicts and the median pool ratio.

Usage: python benchmarks/conv_pool_experiment.py [--steps 600] [--seeds 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from gradscope.api import train
from gradscope.checkpoint import inspect_checkpoint
from gradscope.specs import build_specs

SETTINGS = {
    # lr 1e-9: the weights stay at initialisation; the running statistics still average 600
    # batches of the untrained net's forward pass. What training changes is measured from this.
    "untrained (lr 1e-9)": dict(optimizer="sgd", lr=1e-9, weight_decay=0.0),
    "sgd": dict(optimizer="sgd", lr=0.1, weight_decay=0.0),
    "momentum+wd": dict(optimizer="momentum", lr=0.05, weight_decay=5e-3),
}


def one_run(setting: str, seed: int, steps: int, where: Path) -> tuple[str, list[float], str]:
    """Train one net, save it, inspect it: the Markdown row and the pool ratios."""
    specs = build_specs(
        arch="plain-conv", activation="relu", depth=12, width=16, batch=32,
        image_size=16, pool_every=4,
    )  # fmt: skip
    ckpt = where / f"{setting.split()[0]}-{seed}.pt"
    began = time.perf_counter()
    result = train(
        specs, task="gaussian-classes", steps=steps, record_every=steps, repeats=1, seed=seed,
        samples=1024, save_checkpoint=ckpt, **SETTINGS[setting],  # type: ignore[arg-type]
    )  # fmt: skip
    loss = result.summary[-1].loss
    accuracy = result.summary[-1].accuracy
    found = inspect_checkpoint(ckpt, progress=False)
    head = found.summary[0]
    pools = [s.sigma_ratio for s in found.summary if s.scope == "downsample"]
    row = (
        f"| {setting} | {seed} | {head.rate_per_layer:.3f} [{head.rate_ci_low:.3f}, "
        f"{head.rate_ci_high:.3f}] | {head.r_squared:.2f} | {head.verdict} | "
        + ", ".join(f"{p:.2f}" for p in pools)
        + f" | {loss:.3f} / {accuracy:.2f} | {time.perf_counter() - began:.0f} s |"
    )
    return row, [p for p in pools if p is not None], head.verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    print(
        f"plain-conv relu batchnorm, depth 12, width 16, 16×16 images, pool after layers 4 and "
        f"8, batch 32, gaussian-classes (1024 samples), {args.steps} steps, repeat 0 saved"
    )
    print("| optimiser | seed | σ rate per layer, deep → shallow, within segments [95% CI] "
          "| R² | verdict | σ after / before each pool | loss / acc | time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    summary: dict[str, tuple[list[str], list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for setting in SETTINGS:
            verdicts, ratios = summary.setdefault(setting, ([], []))
            for seed in range(args.seeds):
                row, pools, verdict = one_run(setting, seed, args.steps, Path(tmp))
                print(row, flush=True)
                verdicts.append(verdict)
                ratios.extend(pools)
    for setting, (verdicts, ratios) in summary.items():
        counts = {v: verdicts.count(v) for v in sorted(set(verdicts))}
        below = sum(r < 1 for r in ratios)
        print(
            f"{setting}: verdicts {counts}; σ after/before pool median "
            f"{statistics.median(ratios):.2f}, {below} of {len(ratios)} below 1"
        )


if __name__ == "__main__":
    main()
