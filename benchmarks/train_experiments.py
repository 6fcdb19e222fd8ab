"""The README's "Does training fix it?" numbers and figures, from the Python API.

Trains ReLU, tanh and SELU plain nets and a ReLU resnet (Linear → BatchNorm → activation,
depth 20) on ``gaussian-classes`` with plain SGD, once without weight decay and once with it,
and prints one Markdown table per condition. Figures go to ``docs/figures/train_*.png``; the records
(CSV) and repeat 0's checkpoint of the ReLU plain net go to ``--out``.

The equivalent CLI (what the lead wires into ``gradscope simulate``)::

    gradscope simulate --activation relu,tanh,selu --depth 20 --width 128 --batch 128 \
        --repeats 2 --train-steps 2000 --task gaussian-classes --optimizer sgd --lr 0.1 \
        --weight-decay 0.02 --record-every 50 -o train.csv --save-checkpoint relu.pt

Usage: python benchmarks/train_experiments.py [--steps 2000] [--width 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from gradscope.api import train
from gradscope.checkpoint import inspect_checkpoint
from gradscope.engine.train import TrainResult
from gradscope.plot.training import plot_training
from gradscope.records import as_rows, format_csv_value
from gradscope.specs import build_specs
from gradscope.theory.stats import log_linear_rate

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path: Path, records: list[Any]) -> None:
    columns, rows = as_rows(records)
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for row in rows:
            w.writerow([format_csv_value(row.get(c)) for c in columns])


def label(r: Any) -> str:
    return f"{r.activation} {r.arch}"


def table(res: TrainResult, last_fraction: float = 0.25) -> list[str]:
    """One Markdown row per configuration."""
    lines = [
        "| net | grad rate step 0 | grad rate end | σ rate end (R²) | σ rate layers 2–L "
        "| σ₁/σ_L end "
        "| ‖W‖ rate end | √(normalised-grad rate) | loss end | acc end | ‖W‖² growth check |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    configs: dict[str, list[Any]] = {}
    for s in res.summary:
        configs.setdefault(label(s), []).append(s)
    for name, summ in configs.items():
        first, last = summ[0], summ[-1]
        recs = [r for r in res.records if label(r) == name]
        steps = sorted({r.step for r in recs})
        tail = steps[int(len(steps) * (1 - last_fraction)) :]
        depth = max(r.layer for r in recs)
        # normalised (scale-free) gradient ‖∇W‖·‖W‖, averaged over the last recorded steps
        g = np.zeros(depth)
        for r in recs:
            if r.step in tail:
                g[r.layer - 1] += r.grad_norm_mean * r.weight_norm / len(tail)
        g_rate, _ = log_linear_rate(g)
        end = sorted((r for r in recs if r.step == steps[-1]), key=lambda r: r.layer)
        sig = [r.sigma for r in end]
        rest_rate, _ = log_linear_rate(np.array(sig[1:]))
        growth = [w for w in res.weight_growth if label(w) == name]
        errs = [w.max_relative_error for w in growth if w.max_relative_error is not None]
        check = f"max rel. error {max(errs):.1e}" if errs else "n/a"
        lines.append(
            f"| {name} | {first.fitted_rate:.3f} | {last.fitted_rate:.3f} "
            f"| {last.sigma_rate:.3f} ({last.sigma_r_squared:.2f}) | {rest_rate:.3f} "
            f"| {sig[0] / sig[-1]:.2f} "
            f"| {last.weight_norm_rate:.3f} | {math.sqrt(g_rate):.3f} | {last.loss:.3f} "
            f"| {last.accuracy:.2f} | {check} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--record-every", type=int, default=50)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=0.02)
    ap.add_argument("--out", type=Path, default=Path("/tmp/gradscope-train-experiments"))
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "figures")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    size = {"depth": args.depth, "width": args.width, "batch": args.batch}
    specs = build_specs(activation=["relu", "tanh", "selu"], **size) + build_specs(
        activation="relu", arch="resnet", **size
    )
    for wd in (0.0, args.weight_decay):
        tag = "wd" if wd else "sgd"
        ckpt = args.out / f"relu_plain_{tag}.pt"
        t0 = time.perf_counter()
        res = train(
            specs,
            task="gaussian-classes",
            optimizer="sgd",
            lr=args.lr,
            weight_decay=wd,
            steps=args.steps,
            record_every=args.record_every,
            repeats=args.repeats,
            seed=0,
            device="cpu",
            save_checkpoint=ckpt,
        )
        took = time.perf_counter() - t0
        write_csv(args.out / f"train_{tag}.csv", res.records)
        write_csv(args.out / f"train_{tag}_summary.csv", res.summary)
        write_csv(args.out / f"train_{tag}_growth.csv", res.weight_growth)
        plot_training(
            res.records,
            args.docs / f"train_{tag}.png",
            title=f"SGD lr {args.lr:g}, weight decay {wd:g}: log10 gradient norm, and σ at the end",
            dpi=90,
        )
        ck = inspect_checkpoint(ckpt)
        fit = [s for s in ck.summary if s.scope == "all"]
        print(
            f"\n### weight decay {wd:g} ({args.steps} steps, {args.repeats} repeats, "
            f"{took:.0f} s, {res.steps_per_second:.0f} steps/s)\n"
        )
        print("\n".join(table(res)))
        if fit:
            f0 = fit[0]
            print(
                f"\ninspect-checkpoint on {ckpt.name} (ReLU plain, repeat 0): σ rate per layer "
                f"{f0.rate_per_layer:.3f} (CI {f0.rate_ci_low:.3f}–{f0.rate_ci_high:.3f})"
            )

    # The weight-norm identity in float64, where rounding no longer hides it.
    check = train(
        specs,
        task="gaussian-classes",
        lr=args.lr,
        steps=300,
        record_every=300,
        repeats=1,
        seed=0,
        dtype="float64",
        device="cpu",
    )
    print("\n### ‖W‖² growth check in float64 (300 steps, plain SGD, no weight decay)\n")
    print("| net | growth layer 1 (measured / predicted) | growth layer L | max rel. error |")
    print("|---|---|---|---|")
    for spec in specs:
        rows = [
            w
            for w in check.weight_growth
            if label(w) == f"{spec.activation.label} {spec.arch.value}"
        ]
        errs = max(w.max_relative_error or 0.0 for w in rows)
        print(
            f"| {label(rows[0])} | {rows[0].measured_growth:.4f} / {rows[0].predicted_growth:.4f} "
            f"| {rows[-1].measured_growth:.4f} / {rows[-1].predicted_growth:.4f} | {errs:.1e} |"
        )


if __name__ == "__main__":
    main()
