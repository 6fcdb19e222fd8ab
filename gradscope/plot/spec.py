"""What to draw: records resolved into a :class:`PlotSpec` (pure data, no matplotlib).

The kind of records is recognised from their columns, and the default figure follows from the
kind. Which columns are configuration comes from the roles :mod:`gradscope.schema` declares:
the configuration columns whose values vary tell the series apart, the constant ones make the
subtitle. A figure (:mod:`gradscope.plot.figure`) and a terminal preview
(:mod:`gradscope.plot.terminal`) draw the same spec, so the two agree.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from gradscope.errors import PlotWarning, RecordsError, SpecError
from gradscope.options import Interval, RecordKind
from gradscope.records import Row, as_rows, unique
from gradscope.schema import non_configuration_columns

# A sweep's x axis: the first of these that varies, then any other numeric column that varies.
SWEEP_AXES = (
    "step", "depth", "width", "batch", "gain", "residual_scale", "image_size", "pool_every",
    "repeats", "input_std",
)  # fmt: skip
# Columns that must hold numbers when they are on the x axis.
NUMERIC_AXES = ("layer", "index", "step", "depth")

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
    # Checkpoint figures: x ranges shaded (every other segment between downsamples), points
    # left out of the fits (drawn grey), and each fitted line (x, y) over its layers.
    spans: tuple[tuple[float, float], ...] = ()
    left_out: tuple[tuple[float, float], ...] = ()
    fits: tuple[tuple[np.ndarray, np.ndarray], ...] = ()

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


def is_training_rows(columns: Iterable[str]) -> bool:
    """True for per-layer training records: they have ``step``, ``layer`` and a gradient norm."""
    return {"step", "layer", "grad_norm_mean"} <= set(columns)


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
    kind = _resolve_kind(kind, columns, x, y)
    x, y, bars = _default_axes(kind, columns, rows, x, y)
    for option, column in (("--x", x), ("--y", y)):
        _require_column(column, columns, option)

    config = _config_columns(kind, columns, rows, x, y)
    varying = [c for c in config if len(unique([_key(r.get(c)) for r in rows])) > 1]
    if hue_columns is None:
        hue_columns = _distinguishing(varying, rows)
    constant = [c for c in config if c not in varying and c not in hue_columns]

    x_categories = _x_categories(rows, x, bars)
    series = _series(rows, x, y, hue_columns, x_categories, columns)
    _check_values(series, y)
    if logy is None:
        logy = kind in (RecordKind.layers, RecordKind.checkpoint)
    if logy:
        series, logy = _positive_only(series, y)
    markers = _downsample_markers(kind, x, columns, rows)
    extras: dict[str, Any] = {}
    if kind is RecordKind.checkpoint and (x, y) == ("index", "sigma"):
        series, extras = _checkpoint_extras(series, rows, hue_columns)
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
        interval=Interval.bars if kind is RecordKind.sweep else Interval.band,
        markers=markers,
        marker_label="downsample" if markers else "",
        reverse_x=reverse_x,
        **extras,
    )


# --- resolving records --------------------------------------------------------------------


def _resolve_kind(
    kind: RecordKind | None, columns: Sequence[str], x: str | None, y: str | None
) -> RecordKind:
    """The kind given, else the one the columns say, else plain columns when --x and --y are."""
    if kind is None:
        kind = detect_kind(columns)
    if kind is None:
        if x is None or y is None:
            raise RecordsError(
                f"cannot tell what the records hold from their columns ({', '.join(columns)}); "
                f"expected {EXPECTED_COLUMNS}, or choose the columns to plot with --x and --y"
            )
        kind = RecordKind.columns
    return kind


def _default_axes(
    kind: RecordKind, columns: Sequence[str], rows: Sequence[Row], x: str | None, y: str | None
) -> tuple[str, str, bool]:
    """(x, y, bars): the columns on each axis, the kind's default where not given."""
    bars = False
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
    return x, y, bars


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
    measured = non_configuration_columns(RecordKind.sweep)
    config = [c for c in columns if c not in measured]
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

    The schema's roles say which columns of a kind are not configuration. A column whose every
    value occurs at a single x (a module name per layer, say) describes points, not
    configurations, even when gradscope does not know its name.
    """
    known = non_configuration_columns(kind)
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


def _x_categories(rows: Sequence[Row], x: str, bars: bool) -> tuple[str, ...] | None:
    """Tick labels when x is not numeric (or is drawn as bars); None for a numeric x axis.

    Raises:
        RecordsError: x is empty in every record, or a layer-like x holds a non-number.
    """
    x_categories = None
    if bars or not _all_numeric(rows, x):
        x_categories = tuple(
            str(v) for v in unique([r.get(x) for r in rows if r.get(x) is not None])
        )
    if all(r.get(x) is None for r in rows):
        raise RecordsError(f"column {x!r} has no values to plot: it is empty in every record")
    if x_categories is not None and not bars and x in NUMERIC_AXES:
        bad = next(r.get(x) for r in rows if r.get(x) is not None and not _is_number(r.get(x)))
        raise RecordsError(f"column {x!r} must be numeric, but a record has {bad!r}")
    return x_categories


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


def _check_values(series: Sequence[Series], y: str) -> None:
    """Fail when y has no value at all; report missing and infinite values, left undrawn."""
    if all(np.all(np.isnan(s.y)) for s in series):
        raise RecordsError(f"column {y!r} has no values to plot: it is empty in every record")
    for test, what in (
        (np.isnan, "is empty or NaN in {} record(s)"),
        (np.isinf, "has {} infinite value(s) (an overflow?)"),
    ):
        count = sum(int(test(s.y).sum()) for s in series)
        if count:
            # stacklevel 3: the warning points at the caller of build_spec.
            warnings.warn(
                f"{y} {what.format(count)}, which are not drawn", PlotWarning, stacklevel=3
            )


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


def _downsample_markers(
    kind: RecordKind, x: str, columns: Sequence[str], rows: Sequence[Row]
) -> tuple[float, ...]:
    """Checkpoint layers against their index: a line where each downsample sits."""
    if kind is RecordKind.checkpoint and x == "index" and "after_downsample" in columns:
        # A downsample sits between the layer before it and the first layer after it.
        return tuple(
            sorted({float(r["index"]) - 0.5 for r in rows if r.get("after_downsample") is True})
        )
    return ()


def _checkpoint_extras(
    series: list[Series], rows: Sequence[Row], hue: Sequence[str]
) -> tuple[list[Series], dict[str, Any]]:
    """σ per layer: the layers left out of the fits come off the lines (drawn grey instead),
    every other segment is shaded (one checkpoint only), and each fit is a line over its
    layers (from ``sigma_fit``, one per segment and position)."""
    left = [
        (float(r["index"]), float(r["sigma"]))
        for r in rows
        if r.get("in_fit") is False and _is_number(r.get("sigma")) and r["sigma"] > 0
    ]
    if left:
        out = {x for x, _ in left}
        series = [
            dataclasses.replace(s, y=np.where(np.isin(s.x, list(out)), np.nan, s.y))
            if len(series) == 1
            else s
            for s in series
        ]
    spans: list[tuple[float, float]] = []
    if len(unique([r.get("checkpoint") for r in rows])) == 1 and "segment" in rows[0]:
        bounds: dict[Any, list[float]] = {}
        for r in rows:
            bounds.setdefault(r.get("segment"), []).append(float(r["index"]))
        ranges = sorted((min(v) - 0.5, max(v) + 0.5) for v in bounds.values())
        spans = ranges[1::2] if len(ranges) > 1 else []
    return series, {"spans": tuple(spans), "left_out": tuple(left), "fits": _fit_lines(rows, hue)}


def _fit_lines(
    rows: Sequence[Row], hue: Sequence[str]
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The fitted σ (``sigma_fit``) as lines: one per series and position, broken between
    segments unless the fit is one line across them (a fit across the downsamples)."""
    groups: dict[tuple[Any, ...], list[tuple[float, float, Any]]] = {}
    for r in rows:
        if _is_number(r.get("sigma_fit")) and r["sigma_fit"] > 0:
            key = tuple(_key(r.get(c)) for c in (*hue, "checkpoint", "position"))
            point = (float(r["index"]), float(r["sigma_fit"]), _key(r.get("segment")))
            groups.setdefault(key, []).append(point)
    lines: list[tuple[np.ndarray, np.ndarray]] = []
    for points in groups.values():
        x, logy = np.array([p[0] for p in points]), np.log([p[1] for p in points])
        straight = len(points) > 2 and np.allclose(
            np.diff(logy) / np.diff(x), (logy[-1] - logy[0]) / (x[-1] - x[0]), rtol=1e-9, atol=1e-12
        )
        parts: dict[Any, list[tuple[float, float, Any]]] = {}
        for p in points:
            parts.setdefault(None if straight else p[2], []).append(p)
        lines.extend(
            (np.array([p[0] for p in part]), np.array([p[1] for p in part]))
            for part in parts.values()
            if len(part) > 1
        )
    return tuple(lines)


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
