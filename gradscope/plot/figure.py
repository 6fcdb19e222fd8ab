"""Figures from records: a :class:`~gradscope.plot.spec.PlotSpec` drawn on an Agg figure.

Plotting consumes rows (dataclass records or dicts), never a model, and never imports torch.
It uses matplotlib's object API on the Agg canvas: no window and no global pyplot state.
Two steps keep the figure and the terminal preview in agreement: :func:`build_spec` turns rows
into series (pure data), then :func:`draw_figure` (or :mod:`gradscope.plot.terminal`) draws them.
Per-layer training records go to :mod:`gradscope.plot.training` instead.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from gradscope.errors import SpecError
from gradscope.options import Interval, RecordKind
from gradscope.plot.canvas import (
    DEFAULT_DPI,
    DEFAULT_SIZE,
    check_figure_options,
    new_figure,
    plain_log_labels,
    set_title,
    style_context,
)
from gradscope.plot.spec import PlotSpec, Series, build_spec, is_training_rows
from gradscope.plot.training import plot_training
from gradscope.plot.write import draw_to_file, figure_format
from gradscope.records import as_rows

MAX_INLINE_LEGEND = 6  # more legend entries than this go outside the axes
MAX_MARKED_POINTS = 40  # longer lines are drawn without point markers
# Checkpoint figures: the layers left out of the fits, and the fitted lines.
LEFT_OUT_STYLE: dict[str, Any] = dict(
    linestyle="none", marker="o", markersize=5, color="0.6", markerfacecolor="0.85", zorder=3
)
FIT_STYLE: dict[str, Any] = dict(color="0.15", linestyle="--", linewidth=1.2, zorder=4)


def draw_figure(
    spec: PlotSpec,
    *,
    size: tuple[float, float] | None = None,
    dpi: int | None = None,
    style: str | None = None,
) -> Figure:
    """Draw a spec on a new Agg figure (object API only).

    Raises:
        SpecError: an unknown matplotlib style, or a size or dpi that is not positive.
    """
    width, height = size or DEFAULT_SIZE
    dpi = DEFAULT_DPI if dpi is None else dpi
    check_figure_options(size, dpi, style)
    with style_context(style):
        fig = new_figure(width, height, dpi)
        _draw_axes(fig, spec)
    return fig


def plot_records(
    rows: Iterable[Any],
    out: str | Path | None = None,
    *,
    kind: RecordKind | None = None,
    x: str | None = None,
    y: str | None = None,
    hue: str | Sequence[str] | None = None,
    logy: bool | None = None,
    title: str | None = None,
    size: tuple[float, float] | None = None,
    dpi: int | None = None,
    style: str | None = None,
    reverse_x: bool = False,
) -> Figure:
    """Plot records as the figure their kind calls for, and write it to ``out`` if given.

    The file is written whole or not at all, in the format its extension names. Values left
    out (non-positive on a log axis) are reported as :class:`PlotWarning`.

    Args:
        rows: dataclass records or dicts (any gradscope command's records, or read from a file).
        out: figure file (.png, .svg or .pdf); nothing is written when None.
        kind, x, y, hue, logy, title, reverse_x: see :func:`build_spec`.
        size: (width, height) in inches; dpi: dots per inch; style: a matplotlib style name.

    Returns:
        The figure, for inspection or further drawing.

    Raises:
        RecordsError, SpecError, OutputError: bad records, options or output path.
    """
    rows = list(rows)
    check_figure_options(size, dpi, style, title)
    if kind is None and x is None and rows and is_training_rows(as_rows(rows[:1])[0]):
        # Per-layer training records: a heatmap over (layer, step) and sigma at the end.
        _refuse_heatmap_options(hue=hue, logy=logy, reverse_x=reverse_x)
        return plot_training(
            rows, out, value=y or "grad_norm_mean", title=title, size=size, dpi=dpi, style=style
        )

    def draw() -> Figure:
        spec = build_spec(
            rows, kind=kind, x=x, y=y, hue=hue, logy=logy, title=title, reverse_x=reverse_x
        )
        return draw_figure(spec, size=size, dpi=dpi, style=style)

    return draw_to_file(out, draw)


def _refuse_heatmap_options(
    *, hue: str | Sequence[str] | None, logy: bool | None, reverse_x: bool
) -> None:
    """Raise SpecError for line-figure options that the training heatmap has no use for."""
    ignored = [
        flag
        for flag, given in (
            ("--hue", hue),
            ("--logy/--no-logy", logy),
            ("--reverse-x", reverse_x or None),
        )
        if given is not None
    ]
    if ignored:
        raise SpecError(
            f"{', '.join(ignored)}: not used by the training heatmap; to draw training "
            "records as lines, choose the axes with --x and --y (e.g. --x layer --y sigma)"
        )


# --- drawing -------------------------------------------------------------------------------


def _draw_axes(fig: Figure, spec: PlotSpec) -> None:
    ax = fig.add_subplot()
    handles = _draw_series(ax, spec)
    _draw_guides(ax, spec)
    style_handles = _style_entries(spec)
    _set_scales_and_labels(fig, ax, spec)
    several = len(spec.series) > 1
    entries = (handles if several or not spec.bars else []) + style_handles
    legend_outside = len(entries) > MAX_INLINE_LEGEND
    if spec.subtitle:
        # About 14 characters of 8.5 pt text per inch of axes; an outside legend takes a quarter.
        axes_inches = fig.get_figwidth() * (0.7 if legend_outside else 0.9)
        wrapped = textwrap.fill(
            spec.subtitle, width=max(int(axes_inches * 14), 20), max_lines=2, placeholder=" …"
        )
        ax.set_title(wrapped, fontsize=8.5, color="0.35")

    if len(entries) <= 1 and not several:
        return
    legend_title = ", ".join(spec.hue) if several and spec.hue else None
    if not legend_outside:
        ax.legend(handles=entries, title=legend_title, fontsize=8, title_fontsize=8)
    else:
        fig.legend(
            handles=entries, title=legend_title, loc="outside right upper", fontsize=8,
            title_fontsize=8,
        )  # fmt: skip


def _colours(count: int) -> list[Any]:
    cycle = [entry["color"] for entry in matplotlib.rcParams["axes.prop_cycle"]]
    if count <= len(cycle):
        return cycle[:count]
    return [matplotlib.colormaps["viridis"](t) for t in np.linspace(0.0, 0.9, count)]


def _draw_series(ax: Any, spec: PlotSpec) -> list[Any]:
    """Each series as a line (with its interval and prediction) or a set of bars: the handles."""
    several = len(spec.series) > 1
    # Rates and ratios sit near 1: bars grow up or down from 1 so that differences show.
    baseline = 0.0
    if spec.bars:
        values = np.concatenate([s.y[np.isfinite(s.y)] for s in spec.series])
        if values.size and values.min() > 0.2 and values.max() < 5.0:
            baseline = 1.0
    handles: list[Any] = []
    colours = _colours(len(spec.series))
    for i, (series, colour) in enumerate(zip(spec.series, colours, strict=True)):
        label = series.label if several else (series.label or "measured")
        if spec.bars:
            width = 0.8 / len(spec.series)
            offset = (i - (len(spec.series) - 1) / 2) * width
            bars = ax.bar(
                series.x + offset, series.y - baseline, width, bottom=baseline, color=colour,
                label=label,
            )  # fmt: skip
            ax.bar_label(bars, labels=[f"{v:.4g}" for v in series.y], fontsize=8, padding=2)
            handles.append(bars)
        else:
            handles.append(_draw_line(ax, spec.interval, series, colour, label))
    return handles


def _draw_line(ax: Any, interval: Interval, series: Series, colour: Any, label: str) -> Any:
    """A measured line with its confidence interval, skip-path markers and prediction."""
    if interval is Interval.bars and series.ci_low is not None:
        assert series.ci_high is not None
        below = np.clip(series.y - series.ci_low, 0, None)
        above = np.clip(series.ci_high - series.y, 0, None)
        ax.errorbar(
            series.x, series.y, yerr=[below, above], fmt="none", ecolor=colour, capsize=3,
            elinewidth=1.2,
        )  # fmt: skip
    elif series.ci_low is not None and series.ci_high is not None:
        ax.fill_between(
            series.x, series.ci_low, series.ci_high, color=colour, alpha=0.18, linewidth=0
        )
    (line,) = ax.plot(
        series.x, series.y, marker="o" if series.x.size <= MAX_MARKED_POINTS else "",
        markersize=3.5, linewidth=1.6, color=colour,
        label=label,
    )  # fmt: skip
    if series.paths is not None and "skip" in series.paths:
        skip = np.array([p == "skip" for p in series.paths])
        ax.plot(
            series.x[skip], series.y[skip], linestyle="none", marker="s", markersize=6.5,
            markerfacecolor="white", markeredgecolor=colour, markeredgewidth=1.4,
        )  # fmt: skip
    if series.predicted is not None:
        ax.plot(series.x, series.predicted, linestyle="--", linewidth=1.3, color=colour)
    return line


def _draw_guides(ax: Any, spec: PlotSpec) -> None:
    """Dotted lines at the markers (downsamples), the no-growth line under bars, and for
    checkpoints the shaded segments, the layers left out of the fits and the fitted lines."""
    for position in spec.markers:
        ax.axvline(position, color="0.55", linestyle=":", linewidth=1.1, zorder=0)
    if spec.bars:
        ax.axhline(1.0, color="0.35", linestyle="--", linewidth=1.0, zorder=0)
    for start, end in spec.spans:
        ax.axvspan(start, end, color="0.5", alpha=0.09, linewidth=0, zorder=0)
    if spec.left_out:
        points = np.array(spec.left_out)
        ax.plot(points[:, 0], points[:, 1], **LEFT_OUT_STYLE)
    for fit_x, fit_y in spec.fits:
        ax.plot(fit_x, fit_y, **FIT_STYLE)


def _style_entries(spec: PlotSpec) -> list[Any]:
    """Legend entries that explain a style rather than name a series."""
    entries: list[Any] = []
    has_interval = any(s.ci_low is not None for s in spec.series) and not spec.bars
    if has_interval:
        interval = (
            Patch(facecolor="0.5", alpha=0.3, label="confidence interval")
            if spec.interval is Interval.band
            else Line2D([], [], color="0.4", marker="|", linestyle="none", markersize=9,
                        label="confidence interval")
        )  # fmt: skip
        entries.append(interval)
    if any(s.predicted is not None for s in spec.series):
        entries.append(Line2D([], [], color="0.3", linestyle="--", label="predicted"))
    if any(s.paths is not None and "skip" in s.paths for s in spec.series):
        entries.append(
            Line2D([], [], linestyle="none", marker="s", markersize=6.5, markerfacecolor="white",
                   markeredgecolor="0.3", markeredgewidth=1.4, label="skip path (shortcut)")
        )  # fmt: skip
    if spec.markers:
        entries.append(
            Line2D([], [], color="0.55", linestyle=":", linewidth=1.1, label=spec.marker_label)
        )
    if spec.spans:
        entries.append(Patch(facecolor="0.5", alpha=0.18, label="segment between downsamples"))
    if spec.left_out:
        entries.append(Line2D([], [], **LEFT_OUT_STYLE, label="left out of the fits"))
    if spec.fits:
        entries.append(Line2D([], [], **FIT_STYLE, label="headline fit"))
    if spec.bars:
        entries.append(Line2D([], [], color="0.35", linestyle="--", label="1 (no growth)"))
    return entries


def _set_scales_and_labels(fig: Figure, ax: Any, spec: PlotSpec) -> None:
    """The y scale, x ticks and direction, axis labels, grid and title."""
    if spec.logy:
        ax.set_yscale("log", nonpositive="clip")
        plain_log_labels(ax, _decades(spec))
    if spec.x_categories is not None:
        ax.set_xticks(range(len(spec.x_categories)), list(spec.x_categories))
        longest = max((len(str(c)) for c in spec.x_categories), default=0)
        if len(spec.x_categories) * (longest + 1) > fig.get_figwidth() * 9:
            # Too many names for the width: slant them instead of letting them overlap.
            ax.tick_params(axis="x", labelrotation=35)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")
                tick.set_rotation_mode("anchor")
    elif all(np.array_equal(s.x, np.round(s.x)) for s in spec.series):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    if spec.reverse_x:
        ax.invert_xaxis()
    ax.set_xlabel(spec.x_label)
    ax.set_ylabel(spec.y_label)
    ax.grid(True, which="major", alpha=0.3)
    ax.set_axisbelow(True)
    if spec.title:
        set_title(fig, spec.title)


def _decades(spec: PlotSpec) -> float:
    """How many powers of ten the positive y values span."""
    values = np.concatenate([s.y for s in spec.series])
    positive = values[np.isfinite(values) & (values > 0)]
    return float(np.log10(positive.max() / positive.min())) if positive.size else 0.0


__all__ = ["draw_figure", "figure_format", "plot_records"]
