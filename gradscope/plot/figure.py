"""Figures from records: the kind is recognised from the columns, the default figure follows.

Plotting consumes rows (dataclass records or dicts), never a model, and never imports torch.
It uses matplotlib's object API on the Agg canvas: no window and no global pyplot state.
Two steps keep the figure and the terminal preview in agreement: :func:`build_spec` turns rows
into series (pure data), then :func:`draw_figure` (or :mod:`gradscope.plot.terminal`) draws them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import textwrap
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradscope.errors import OutputError, PlotWarning, RecordsError, SpecError
from gradscope.options import FigureFormat, Interval, RecordKind
from gradscope.output import check_output_path, write_atomic
from gradscope.plot.training import is_training_rows, plot_training
from gradscope.records import Row, as_rows, unique

DEFAULT_SIZE = (7.0, 4.5)
DEFAULT_DPI = 150
MAX_INLINE_LEGEND = 6  # more legend entries than this go outside the axes
MAX_MARKED_POINTS = 40  # longer lines are drawn without point markers
PLAIN_LOG_LABELS_BELOW = 2.0  # decades: narrower log axes get plain tick labels


# Columns that are not configuration: measurements and per-row descriptors. Every other column
# is configuration, and the configuration columns whose values vary tell the series apart.
_SIMULATE_CHECKS = {"prediction_in_ci", "rate_deviation", "overflow_repeats", "partial",
                    "prediction_basis"}  # fmt: skip
_LAYER_COLUMNS = _SIMULATE_CHECKS | {
    "layer", "grad_norm_mean", "grad_norm_std", "grad_norm_sem", "grad_norm_ci_low",
    "grad_norm_ci_high", "forward_var", "backward_var", "predicted_grad_norm", "module",
    "module_type", "param_count", "path", "block", "channels", "spatial", "pool_input_var",
    "pool_input_backward_var", "predicted_backward_var",
}  # fmt: skip
_SWEEP_COLUMNS = _SIMULATE_CHECKS | {
    "fitted_rate", "fitted_rate_ci_low", "fitted_rate_ci_high", "predicted_rate", "r_squared",
    "amplification", "overflow_layer", "rate_first_half", "rate_last_half", "pool_forward_ratio",
    "pool_backward_ratio", "predicted_pool_forward_ratio", "predicted_pool_backward_ratio",
    "loss", "loss_sem", "accuracy", "sigma_rate", "sigma_r_squared", "weight_norm_rate",
}  # fmt: skip
_CHECKPOINT_COLUMNS = {
    "index", "name", "num_features", "sigma", "running_var_min", "running_var_max",
    "running_mean_mean", "gamma_mean", "beta_mean", "eps", "effective_gain", "weight_name",
    "weight_shape", "weight_fro", "forward_ratio", "backward_ratio", "after_downsample", "flags",
}  # fmt: skip
_RATIOS_COLUMNS = {
    "mean_out", "second_moment_out", "forward_ratio", "backward_ratio", "ratio",
    "rate_per_layer", "amplification", "depth_to_10x", "depth_to_1000x", "forward_gain",
    "method", "abs_error",
}  # fmt: skip
NON_CONFIG_COLUMNS = {
    RecordKind.layers: _LAYER_COLUMNS,
    RecordKind.sweep: _SWEEP_COLUMNS,
    RecordKind.checkpoint: _CHECKPOINT_COLUMNS,
    RecordKind.ratios: _RATIOS_COLUMNS,
    RecordKind.columns: set(),
}
# A sweep's x axis: the first of these that varies, then any other numeric column that varies.
SWEEP_AXES = (
    "step", "depth", "width", "batch", "gain", "residual_scale", "image_size", "pool_every",
    "repeats", "input_std",
)  # fmt: skip

AXIS_LABELS = {
    "layer": "layer",
    "grad_norm_mean": "weight-gradient norm",
    "fitted_rate": "fitted growth rate per layer",
    "sigma": "σ = √mean(running_var)",
    "index": "BatchNorm layer index",
    "input_std": "input std",
    "ratio": "backward / forward ratio",
    "rate_per_layer": "gradient-norm growth per layer",
    "activation": "activation",
}
# Titles of the default figures; any other choice of axes is titled "<y> against <x>".
DEFAULT_TITLES = {
    (RecordKind.layers, "layer", "grad_norm_mean"): "Gradient norm per layer",
    (RecordKind.checkpoint, "index", "sigma"): "BatchNorm σ per layer",
    (RecordKind.ratios, "activation", "rate_per_layer"): "Gradient growth per layer by activation",
}
EXPECTED_COLUMNS = (
    "simulate records (layer, grad_norm_mean), simulate summaries (fitted_rate), "
    "inspect-checkpoint records (index, sigma) or ratios records (activation, rate_per_layer)"
)


@dataclasses.dataclass(frozen=True)
class Series:
    """One line (or one set of bars): values are float arrays, NaN where missing."""

    label: str
    x: np.ndarray
    y: np.ndarray
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None
    predicted: np.ndarray | None = None
    # Per point, the residual path of a model's module (``simulate --model``): skip
    # (shortcut) modules get their own marker, so a dip there reads as a path, not a jump.
    paths: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class PlotSpec:
    """Everything a figure or a terminal preview draws, already resolved from the records."""

    kind: RecordKind
    x: str
    y: str
    hue: tuple[str, ...]
    series: tuple[Series, ...]
    logy: bool
    title: str
    subtitle: str
    x_categories: tuple[str, ...] | None = None  # tick labels when x is not numeric
    bars: bool = False
    interval: Interval = Interval.band
    markers: tuple[float, ...] = ()  # vertical lines, e.g. between layers around a downsample
    marker_label: str = ""
    reverse_x: bool = False

    @property
    def x_label(self) -> str:
        return _axis_label(self.x)

    @property
    def y_label(self) -> str:
        return _axis_label(self.y)


def detect_kind(columns: Iterable[str]) -> RecordKind | None:
    """The record kind its columns say, or None when they say nothing gradscope knows."""
    present = set(columns)
    if {"layer", "grad_norm_mean"} <= present:
        return RecordKind.layers
    if "fitted_rate" in present:
        return RecordKind.sweep
    if {"index", "sigma"} <= present:
        return RecordKind.checkpoint
    if {"activation", "rate_per_layer"} <= present:
        return RecordKind.ratios
    return None


def figure_format(path: Path) -> FigureFormat:
    """The figure format from a file name's extension.

    Raises:
        OutputError: the extension is not .png, .svg or .pdf.
    """
    suffix = path.suffix.lower().lstrip(".")
    try:
        return FigureFormat(suffix)
    except ValueError:
        raise OutputError(
            f"cannot tell the figure format of {path} from its extension; use .png, .svg or .pdf"
        ) from None


def build_spec(
    records: Iterable[Any],
    *,
    kind: RecordKind | None = None,
    x: str | None = None,
    y: str | None = None,
    hue: str | Sequence[str] | None = None,
    logy: bool | None = None,
    title: str | None = None,
    reverse_x: bool = False,
) -> PlotSpec:
    """Resolve records and overrides into the series to draw (pure: no matplotlib).

    Args:
        records: dataclass records or dicts, from any gradscope command or a CSV/JSON file.
        kind: the record kind; recognised from the columns when None.
        x, y: the columns on each axis; the kind's default when None.
        hue: columns whose values tell the series apart (a comma list or a sequence); when None,
            the configuration columns that vary, keeping only those needed to tell them apart.
        logy: log y axis; the kind's default when None.
        title: figure title; a default from the kind when None.
        reverse_x: draw the x axis from right to left.

    Raises:
        RecordsError: no records, unknown columns without --x/--y, or a non-numeric column.
        SpecError: an override names a column the records do not have.
    """
    columns, rows = as_rows(records)
    if not rows:
        raise RecordsError("there are no records to plot")
    hue_columns = _parse_hue(hue, columns)
    if kind is None:
        kind = detect_kind(columns)
    if kind is None:
        if x is None or y is None:
            raise RecordsError(
                f"cannot tell what the records hold from their columns ({', '.join(columns)}); "
                f"expected {EXPECTED_COLUMNS}, or choose the columns to plot with --x and --y"
            )
        kind = RecordKind.columns

    bars = False
    interval = Interval.bars if kind is RecordKind.sweep else Interval.band
    if kind is RecordKind.layers:
        x, y = x or "layer", y or "grad_norm_mean"
    elif kind is RecordKind.sweep:
        y = y or "fitted_rate"
        x = x or _sweep_axis(columns, rows)
    elif kind is RecordKind.checkpoint:
        x, y = x or "index", y or "sigma"
    elif kind is RecordKind.ratios:
        several_stds = len(unique([r.get("input_std") for r in rows])) > 1
        if x is None:
            x = "input_std" if several_stds and "input_std" in columns else "activation"
            bars = x == "activation"
        y = y or ("ratio" if several_stds else "rate_per_layer")
    assert x is not None and y is not None
    for option, column in (("--x", x), ("--y", y)):
        _require_column(column, columns, option)

    config = _config_columns(kind, columns, rows, x, y)
    varying = [c for c in config if len(unique([_key(r.get(c)) for r in rows])) > 1]
    if hue_columns is None:
        hue_columns = _distinguishing(varying, rows)
    constant = [c for c in config if c not in varying and c not in hue_columns]

    x_categories = None
    if bars or not _all_numeric(rows, x):
        x_categories = tuple(
            str(v) for v in unique([r.get(x) for r in rows if r.get(x) is not None])
        )
    if all(r.get(x) is None for r in rows):
        raise RecordsError(f"column {x!r} has no values to plot: it is empty in every record")
    if x_categories is not None and not bars and x in ("layer", "index", "step", "depth"):
        bad = next(r.get(x) for r in rows if r.get(x) is not None and not _is_number(r.get(x)))
        raise RecordsError(f"column {x!r} must be numeric, but a record has {bad!r}")
    series = _series(rows, x, y, hue_columns, x_categories, columns)
    if all(np.all(np.isnan(s.y)) for s in series):
        raise RecordsError(f"column {y!r} has no values to plot: it is empty in every record")
    for test, what in (
        (np.isnan, "is empty or NaN in {} record(s)"),
        (np.isinf, "has {} infinite value(s) (an overflow?)"),
    ):
        count = sum(int(test(s.y).sum()) for s in series)
        if count:
            warnings.warn(
                f"{y} {what.format(count)}, which are not drawn", PlotWarning, stacklevel=2
            )
    if logy is None:
        logy = kind in (RecordKind.layers, RecordKind.checkpoint)
    if logy:
        series, logy = _positive_only(series, y)

    markers: tuple[float, ...] = ()
    if kind is RecordKind.checkpoint and x == "index" and "after_downsample" in columns:
        # A downsample sits between the layer before it and the first layer after it.
        markers = tuple(
            sorted({float(r["index"]) - 0.5 for r in rows if r.get("after_downsample") is True})
        )
    return PlotSpec(
        kind=kind,
        x=x,
        y=y,
        hue=tuple(hue_columns),
        series=tuple(series),
        logy=logy,
        title=_default_title(kind, x, y) if title is None else title,
        subtitle=_subtitle(rows, constant),
        x_categories=x_categories,
        bars=bars,
        interval=interval,
        markers=markers,
        marker_label="downsample" if markers else "",
        reverse_x=reverse_x,
    )


def check_figure_options(
    size: tuple[float, float] | None, dpi: int | None, style: str | None
) -> None:
    """Raise SpecError for a size or dpi that is not positive, or an unknown style."""
    import matplotlib.style

    width, height = size or DEFAULT_SIZE
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise SpecError(f"the figure size must be two positive numbers of inches, got {size}")
    if dpi is not None and dpi <= 0:
        raise SpecError(f"dpi must be positive, got {dpi}")
    if style is not None and style not in (*matplotlib.style.available, "default"):
        raise SpecError(
            f"unknown matplotlib style {style!r}; try one of: "
            + ", ".join(sorted(matplotlib.style.available)[:8])
            + ", …"
        )


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
    import matplotlib.style

    width, height = size or DEFAULT_SIZE
    dpi = DEFAULT_DPI if dpi is None else dpi
    check_figure_options(size, dpi, style)
    with matplotlib.style.context(style) if style else contextlib.nullcontext():
        fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
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
    if kind is None and x is None and rows and is_training_rows(as_rows(rows[:1])[0]):
        # Per-layer training records: a heatmap over (layer, step) and sigma at the end.
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
        check_figure_options(size, dpi, style)
        return plot_training(
            rows, out, value=y or "grad_norm_mean", title=title, size=size, dpi=dpi, style=style
        )
    path = Path(out) if out is not None else None
    if path is not None:
        fmt = figure_format(path)
        check_output_path(path)
    spec = build_spec(
        rows, kind=kind, x=x, y=y, hue=hue, logy=logy, title=title, reverse_x=reverse_x
    )
    fig = draw_figure(spec, size=size, dpi=dpi, style=style)
    if path is not None:
        write_atomic(path, figure_bytes(fig, fmt))
    return fig


def figure_bytes(fig: Figure, fmt: FigureFormat) -> bytes:
    """The figure rendered in memory; SVG keeps its text as text so labels stay searchable."""
    import matplotlib

    metadata: dict[str, Any] = {
        FigureFormat.png: {"Software": None},
        FigureFormat.svg: {"Date": None},
        FigureFormat.pdf: {"CreationDate": None, "ModDate": None},
    }[fmt]
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "gradscope"}):
        fig.savefig(buffer, format=fmt.value, dpi=fig.dpi, metadata=metadata)
    return buffer.getvalue()


def default_output(sources: Sequence[str], kind: RecordKind | None) -> Path:
    """A figure name for when none is given: the first input's stem, or the record kind."""
    first = sources[0] if sources else "-"
    if first != "-":
        return Path(Path(first).stem + ".png")
    return Path(f"gradscope-{(kind or RecordKind.columns).value}.png")


# --- resolving records --------------------------------------------------------------------


def _require_column(column: str | None, columns: Sequence[str], option: str) -> None:
    if column is not None and column not in columns:
        raise SpecError(
            f"{option} {column!r} is not a column of the records; columns are: {', '.join(columns)}"
        )


def _parse_hue(hue: str | Sequence[str] | None, columns: Sequence[str]) -> list[str] | None:
    if hue is None:
        return None
    names = [h.strip() for h in hue.split(",")] if isinstance(hue, str) else list(hue)
    for name in names:
        _require_column(name, columns, "--hue")
    return names


def _key(value: Any) -> Any:
    """A hashable, comparable stand-in for a cell (lists from JSON become tuples)."""
    return tuple(value) if isinstance(value, list) else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _all_numeric(rows: Sequence[Row], column: str) -> bool:
    values = [r.get(column) for r in rows if r.get(column) is not None]
    return bool(values) and all(_is_number(v) for v in values)


def _sweep_axis(columns: Sequence[str], rows: Sequence[Row]) -> str:
    config = [c for c in columns if c not in _SWEEP_COLUMNS]
    numeric = [c for c in config if _all_numeric(rows, c)]
    varies = [c for c in config if len(unique([_key(r.get(c)) for r in rows])) > 1]
    preferred = [c for c in SWEEP_AXES if c in numeric] + [
        c for c in numeric if c not in SWEEP_AXES
    ]
    for candidate in [c for c in preferred if c in varies] + varies + preferred:
        return candidate
    raise RecordsError("the summary records have no configuration column to put on the x axis")


def _config_columns(
    kind: RecordKind, columns: Sequence[str], rows: Sequence[Row], x: str, y: str
) -> list[str]:
    """Configuration columns: not measurements, not x or y, and not a per-point descriptor.

    A column whose every value occurs at a single x (a module name per layer, say) describes
    points, not configurations, even when gradscope does not know its name.
    """
    known = NON_CONFIG_COLUMNS[kind]
    config = []
    for column in columns:
        if column in known or column in (x, y):
            continue
        x_by_value: dict[Any, set[Any]] = {}
        for row in rows:
            x_by_value.setdefault(_key(row.get(column)), set()).add(_key(row.get(x)))
        describes_points = len(x_by_value) > 1 and all(len(s) == 1 for s in x_by_value.values())
        if not describes_points:
            config.append(column)
    return config


def _distinguishing(varying: Sequence[str], rows: Sequence[Row]) -> list[str]:
    """The fewest varying columns, earliest first, that still tell every configuration apart."""

    def groups(cols: Sequence[str]) -> int:
        return len({tuple(_key(r.get(c)) for c in cols) for r in rows})

    kept = list(varying)
    target = groups(kept)
    for column in reversed(varying):
        trial = [c for c in kept if c != column]
        if groups(trial) == target:
            kept = trial
    return kept


def _floats(rows: Sequence[Row], column: str, *, required: bool) -> np.ndarray:
    values = np.full(len(rows), np.nan)
    for i, row in enumerate(rows):
        value = row.get(column)
        if value is None:
            continue
        if not _is_number(value):
            if not required:
                return np.full(len(rows), np.nan)
            raise RecordsError(
                f"column {column!r} is not numeric (a record has {value!r}); "
                "choose a numeric column with --x or --y"
            )
        values[i] = float(value)
    return values


def _series(
    rows: Sequence[Row],
    x: str,
    y: str,
    hue: Sequence[str],
    x_categories: tuple[str, ...] | None,
    columns: Sequence[str],
) -> list[Series]:
    stem = y.removesuffix("_mean")
    ci_low = _first_present(columns, f"{y}_ci_low", f"{stem}_ci_low")
    ci_high = _first_present(columns, f"{y}_ci_high", f"{stem}_ci_high")
    predicted = _first_present(columns, f"predicted_{stem}", f"predicted_{y.split('_', 1)[-1]}")
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        if row.get(x) is not None:
            groups.setdefault(tuple(_key(row.get(c)) for c in hue), []).append(row)
    series = []
    for values, members in groups.items():
        if x_categories is None:
            xs = _floats(members, x, required=True)
        else:
            xs = np.array([float(x_categories.index(str(r.get(x)))) for r in members])
        order = np.argsort(xs, kind="stable")
        members = [members[i] for i in order]

        def column(name: str | None, group: list[Row] = members) -> np.ndarray | None:
            if name is None:
                return None
            data = _floats(group, name, required=False)
            return None if np.isnan(data).all() else data

        series.append(
            Series(
                label=", ".join(_format_value(v) for v in values),
                x=xs[order],
                y=_floats(members, y, required=True),
                ci_low=column(ci_low) if ci_high else None,
                ci_high=column(ci_high) if ci_low else None,
                predicted=column(predicted),
                paths=tuple(str(r.get("path") or "") for r in members)
                if "path" in columns
                else None,
            )
        )
    return series


def _first_present(columns: Sequence[str], *candidates: str) -> str | None:
    return next((c for c in candidates if c in columns), None)


def _positive_only(series: list[Series], y: str) -> tuple[list[Series], bool]:
    """Leave out values a log axis cannot show; fall back to linear when none are left."""
    measured = np.concatenate([s.y for s in series])
    finite = measured[np.isfinite(measured)]
    bad = int((finite <= 0).sum())
    if bad == 0:
        return series, True
    if bad == finite.size:
        warnings.warn(
            f"no value of {y} is positive, so the y axis is linear instead of log",
            PlotWarning,
            stacklevel=3,
        )
        return series, False
    warnings.warn(
        f"{bad} of {finite.size} values of {y} are not positive and are left out of the log axis",
        PlotWarning,
        stacklevel=3,
    )

    def positive(values: np.ndarray) -> np.ndarray:
        return np.where(values > 0, values, np.nan)

    cleaned = [
        dataclasses.replace(
            s, y=positive(s.y), predicted=None if s.predicted is None else positive(s.predicted)
        )
        for s in series
    ]
    return cleaned, True


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def _subtitle(rows: Sequence[Row], constant: Sequence[str]) -> str:
    """The configuration every series shares, as ``name=value`` pairs."""
    values = ((column, rows[0].get(column)) for column in constant)
    return ", ".join(f"{c}={_format_value(_key(v))}" for c, v in values if v is not None)


def _default_title(kind: RecordKind, x: str, y: str) -> str:
    if (kind, x, y) in DEFAULT_TITLES:
        return DEFAULT_TITLES[(kind, x, y)]
    name = AXIS_LABELS[y][:1].upper() + AXIS_LABELS[y][1:] if y in AXIS_LABELS else y
    return f"{name} against {AXIS_LABELS.get(x, x)}"


def _axis_label(column: str) -> str:
    pretty = AXIS_LABELS.get(column, column)
    return column if pretty == column else f"{pretty} ({column})"


# --- drawing -------------------------------------------------------------------------------


def _colours(count: int) -> list[Any]:
    import matplotlib

    cycle = [entry["color"] for entry in matplotlib.rcParams["axes.prop_cycle"]]
    if count <= len(cycle):
        return cycle[:count]
    return [matplotlib.colormaps["viridis"](t) for t in np.linspace(0.0, 0.9, count)]


def _decades(spec: PlotSpec) -> float:
    """How many powers of ten the positive y values span."""
    values = np.concatenate([s.y for s in spec.series])
    positive = values[np.isfinite(values) & (values > 0)]
    return float(np.log10(positive.max() / positive.min())) if positive.size else 0.0


def _plain_log_labels(ax: Any, decades: float) -> None:
    """On a narrow log axis, label ticks 0.05, 0.06, 3, 4 rather than 5×10⁻², 6×10⁻², 3×10⁰."""
    from matplotlib.ticker import FuncFormatter

    if decades >= PLAIN_LOG_LABELS_BELOW:
        return

    def plain(value: float, _position: int | None = None) -> str:
        if not 1e-4 <= value < 1e6:
            return f"{value:.3g}"
        return np.format_float_positional(value, precision=3, fractional=False, trim="-")

    def some(value: float, _position: int | None = None) -> str:
        leading = round(value / 10 ** math.floor(math.log10(value)))
        return plain(value) if leading in (2, 3, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(plain))
    ax.yaxis.set_minor_formatter(FuncFormatter(plain if decades < 0.7 else some))


def _draw_axes(fig: Figure, spec: PlotSpec) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    ax = fig.add_subplot()
    colours = _colours(len(spec.series))
    handles: list[Any] = []
    several = len(spec.series) > 1
    # Rates and ratios sit near 1: bars grow up or down from 1 so that differences show.
    baseline = 0.0
    if spec.bars:
        values = np.concatenate([s.y[np.isfinite(s.y)] for s in spec.series])
        if values.size and values.min() > 0.2 and values.max() < 5.0:
            baseline = 1.0
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
            continue
        if spec.interval is Interval.bars and series.ci_low is not None:
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
        handles.append(line)
        if series.paths is not None and "skip" in series.paths:
            skip = np.array([p == "skip" for p in series.paths])
            ax.plot(
                series.x[skip], series.y[skip], linestyle="none", marker="s", markersize=6.5,
                markerfacecolor="white", markeredgecolor=colour, markeredgewidth=1.4,
            )  # fmt: skip
        if series.predicted is not None:
            ax.plot(series.x, series.predicted, linestyle="--", linewidth=1.3, color=colour)

    style_handles: list[Any] = []
    has_interval = any(s.ci_low is not None for s in spec.series) and not spec.bars
    has_prediction = any(s.predicted is not None for s in spec.series)
    if has_interval:
        interval = (
            Patch(facecolor="0.5", alpha=0.3, label="confidence interval")
            if spec.interval is Interval.band
            else Line2D([], [], color="0.4", marker="|", linestyle="none", markersize=9,
                        label="confidence interval")
        )  # fmt: skip
        style_handles.append(interval)
    if has_prediction:
        style_handles.append(Line2D([], [], color="0.3", linestyle="--", label="predicted"))
    if any(s.paths is not None and "skip" in s.paths for s in spec.series):
        style_handles.append(
            Line2D([], [], linestyle="none", marker="s", markersize=6.5, markerfacecolor="white",
                   markeredgecolor="0.3", markeredgewidth=1.4, label="skip path (shortcut)")
        )  # fmt: skip
    for position in spec.markers:
        ax.axvline(position, color="0.55", linestyle=":", linewidth=1.1, zorder=0)
    if spec.markers:
        style_handles.append(
            Line2D([], [], color="0.55", linestyle=":", linewidth=1.1, label=spec.marker_label)
        )
    if spec.bars:
        ax.axhline(1.0, color="0.35", linestyle="--", linewidth=1.0, zorder=0)
        style_handles.append(Line2D([], [], color="0.35", linestyle="--", label="1 (no growth)"))

    if spec.logy:
        ax.set_yscale("log", nonpositive="clip")
        _plain_log_labels(ax, _decades(spec))
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
        fig.suptitle(spec.title)
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
