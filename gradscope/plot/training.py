"""Figures of training records (``simulate --train-steps``): a (layer, step) heatmap of log
gradient norm per configuration, and BatchNorm σ against layer at the last recorded step.

Consumes records only (dataclasses, dicts, or rows read from CSV/JSON), never a model; no torch,
no pyplot. :func:`~gradscope.plot.figure.plot_records` hands rows with a ``step`` column here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from gradscope.errors import RecordsError, SpecError
from gradscope.plot.canvas import new_figure, plain_log_labels, set_title, style_context
from gradscope.plot.spec import is_training_rows
from gradscope.plot.write import draw_to_file
from gradscope.records import Row, as_rows
from gradscope.schema import Role, TrainRecord, roles

# Columns that do not tell one heatmap from another: the measurements of a training record
# (the schema's), the heatmap's axes (step, layer), and how many repeats were averaged.
# Every other column is configuration.
MEASURED = frozenset(
    name for name, role in roles(TrainRecord).items() if role is Role.measurement
) | {"repeats", "step", "layer"}

LABELS = {
    "grad_norm_mean": "gradient norm",
    "weight_norm": "weight norm",
    "sigma": "BatchNorm σ",
    "update_size": "update size ‖Δw‖/‖w‖",
    "trust_ratio": "trust ratio ‖w‖/‖∇w‖",
}

Grid = tuple[str, np.ndarray, np.ndarray, np.ndarray]  # label, steps, layers, values[layer, step]


def _float(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _configurations(
    columns: Sequence[str], rows: Sequence[Row], value: str = "grad_norm_mean"
) -> list[tuple[str, list[Row]]]:
    """Rows grouped by configuration, labelled by the configuration columns that vary."""
    config_cols = [c for c in columns if c not in MEASURED]
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        key = tuple(str(row.get(c)) for c in config_cols)
        groups.setdefault(key, []).append(row)
    keys = list(groups)
    varying = [i for i, c in enumerate(config_cols) if len({k[i] for k in keys}) > 1]
    out = []
    for key in keys:
        label = (
            ", ".join(f"{config_cols[i]}={key[i]}" for i in varying)
            or f"{LABELS.get(value, value)} per (step, layer)"
        )
        out.append((label, groups[key]))
    return out


def _grid(rows: Sequence[Row], value: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, layers, values[layer, step]) with NaN where a cell is missing."""
    steps = np.array(sorted({int(_float(r["step"])) for r in rows}))
    layers = np.array(sorted({int(_float(r["layer"])) for r in rows}))
    si = {s: i for i, s in enumerate(steps)}
    li = {v: i for i, v in enumerate(layers)}
    grid = np.full((layers.size, steps.size), np.nan)
    for r in rows:
        grid[li[int(_float(r["layer"]))], si[int(_float(r["step"]))]] = _float(r.get(value))
    return steps, layers, grid


def training_figure(
    records: Iterable[Any],
    *,
    value: str = "grad_norm_mean",
    title: str | None = None,
    size: tuple[float, float] | None = None,
    dpi: int | None = None,
) -> Figure:
    """One heatmap of log10(``value``) over (step, layer) per configuration, on one colour scale,
    and a panel of BatchNorm σ against layer at each configuration's last recorded step.

    Raises:
        RecordsError: no rows, or rows without ``step``/``layer``/``grad_norm_mean``.
        SpecError: ``value`` is not a column of the records.
    """
    columns, rows = as_rows(records)
    _check_training_records(columns, rows, value)
    configs = _configurations(columns, rows, value)
    grids = [(label, *_grid(group, value)) for label, group in configs]
    has_sigma = "sigma" in columns and any(math.isfinite(_float(r.get("sigma"))) for r in rows)

    n = len(grids) + (1 if has_sigma else 0)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    width, height = size or (4.6 * ncols, 3.4 * nrows)
    fig = new_figure(width, height, dpi or 120)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    _draw_heatmaps(fig, axes, grids, value)
    if has_sigma:
        _draw_sigma_panel(axes[len(grids)], configs, rows)
    for ax in axes[n:]:
        ax.set_visible(False)
    set_title(fig, title or f"{LABELS.get(value, value).capitalize()} over training")
    return fig


def _check_training_records(columns: Sequence[str], rows: Sequence[Row], value: str) -> None:
    """Raise RecordsError or SpecError unless the rows are training records with a numeric
    ``value`` column."""
    if not rows:
        raise RecordsError("there are no records to plot")
    if not is_training_rows(columns):
        raise RecordsError(
            "training plots need per-layer training records (columns step, layer, "
            f"grad_norm_mean); these have {', '.join(columns)}"
        )
    if value not in columns:
        raise SpecError(
            f"{value!r} is not a column of the records; columns are: {', '.join(columns)}"
        )
    present = [r.get(value) for r in rows if r.get(value) not in (None, "")]
    if not present:
        raise RecordsError(f"column {value!r} has no values to plot: it is empty in every record")
    if any(isinstance(v, bool) or math.isnan(_float(v)) and v == v for v in present):
        raise RecordsError(f"column {value!r} is not numeric; choose a numeric column with --y")


def _draw_heatmaps(fig: Figure, axes: np.ndarray, grids: Sequence[Grid], value: str) -> None:
    """One heatmap of log10 values per grid, all on one colour scale, with one colour bar."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = [np.where(g > 0, np.log10(g), np.nan) for *_, g in grids]
    finite = np.concatenate([v[np.isfinite(v)] for v in logs]) if logs else np.array([])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    mesh = None
    for ax, (label, steps, layers, _), logv in zip(axes, grids, logs, strict=False):
        mesh = ax.pcolormesh(
            steps, layers, logv, shading="nearest", cmap="viridis", vmin=vmin, vmax=vmax
        )
        ax.set_xlabel("training step")
        ax.set_ylabel("layer (1 = input side)")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        # Ticks at recorded steps only (the last may be N-1): never a step that was not run.
        ticks = steps if steps.size <= 8 else steps[:: -(-steps.size // 6)]
        ax.set_xticks(ticks)
        ax.set_title(label, fontsize=9)
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes[: len(grids)]), label=f"log10 {LABELS.get(value, value)}")


def _draw_sigma_panel(
    ax: Any, configs: Sequence[tuple[str, list[Row]]], rows: Sequence[Row]
) -> None:
    """BatchNorm σ against layer at each configuration's last recorded step."""
    for label, group in configs:
        last = max(int(_float(r["step"])) for r in group)
        end = sorted(
            (r for r in group if int(_float(r["step"])) == last),
            key=lambda r: _float(r["layer"]),
        )
        xs = [_float(r["layer"]) for r in end]
        ys = [_float(r.get("sigma")) for r in end]
        if any(math.isfinite(y) for y in ys):
            name = f"{label} (step {last})" if len(configs) > 1 else f"step {last}"
            ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set_yscale("log")
    sig = np.array([_float(r.get("sigma")) for r in rows])
    sig = sig[np.isfinite(sig) & (sig > 0)]
    if sig.size:
        plain_log_labels(ax, float(np.log10(sig.max() / sig.min())))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (1 = input side)")
    ax.set_ylabel("BatchNorm σ")
    ax.set_title("σ at the last recorded step", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)


def plot_training(
    records: Iterable[Any],
    out: str | Path | None = None,
    *,
    value: str = "grad_norm_mean",
    title: str | None = None,
    size: tuple[float, float] | None = None,
    dpi: int | None = None,
    style: str | None = None,
) -> Figure:
    """:func:`training_figure`, written to ``out`` (.png, .svg or .pdf) when given, whole or not
    at all. ``style`` is a matplotlib style name."""

    def draw() -> Figure:
        with style_context(style):
            return training_figure(records, value=value, title=title, size=size, dpi=dpi)

    return draw_to_file(out, draw)


__all__ = ["is_training_rows", "plot_training", "training_figure"]
