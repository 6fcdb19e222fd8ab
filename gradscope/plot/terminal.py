"""Terminal previews of a plot: unicode braille lines, or bars for a bar chart (no torch).

A preview draws the same :class:`~gradscope.plot.spec.PlotSpec` as the figure, so a one-liner
shows the shape of the data without opening a file. Neither matplotlib nor torch is imported.
"""

from __future__ import annotations

import math

import numpy as np
from rich.console import Group
from rich.text import Text

from gradscope.plot.spec import PlotSpec

PALETTE = ("cyan", "magenta", "yellow", "green", "red", "blue", "bright_white")
BRAILLE_BASE = 0x2800
# Dot bits of a braille cell, indexed [row][column] with 4 rows of 2 dots.
BRAILLE_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))


def render_preview(spec: PlotSpec, width: int = 72, height: int = 14) -> Group:
    """A rich renderable of the spec's main series: braille lines, or bars for a bar chart."""
    if spec.bars:
        return _bars(spec, width)
    return _lines(spec, width, height)


def _number(value: float) -> str:
    return f"{value:.4g}"


def _bars(spec: PlotSpec, width: int) -> Group:
    categories = spec.x_categories or ()
    entries = [
        (f"{category} {series.label}".strip(), float(value), PALETTE[i % len(PALETTE)])
        for i, series in enumerate(spec.series)
        for position, value in zip(series.x, series.y, strict=True)
        if math.isfinite(value)
        for category in [categories[int(position)]]
    ]
    name_width = max((len(name) for name, _, _ in entries), default=0)
    top = max((abs(value) for _, value, _ in entries), default=1.0) or 1.0
    bar_room = max(width - name_width - 12, 10)
    lines = [Text(f"{spec.title}: {spec.y}", style="bold")]
    for name, value, colour in entries:
        line = Text(f"{name:<{name_width}} {_number(value):>9} ")
        line.append("█" * max(1, round(bar_room * abs(value) / top)), style=colour)
        lines.append(line)
    return Group(*lines)


def _lines(spec: PlotSpec, width: int, height: int) -> Group:
    label_width = 9
    columns = max(width - label_width - 2, 10)
    dots_x, dots_y = columns * 2, height * 4

    def transform(values: np.ndarray) -> np.ndarray:
        if not spec.logy:
            return values
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log10(values), np.nan)

    xs = np.concatenate([s.x for s in spec.series])
    ys = np.concatenate([transform(s.y) for s in spec.series])
    finite = np.isfinite(xs) & np.isfinite(ys)
    if not finite.any():
        return Group(Text(f"{spec.title}: nothing finite to draw", style="bold"))
    x_min, x_max = float(xs[finite].min()), float(xs[finite].max())
    y_min, y_max = float(ys[finite].min()), float(ys[finite].max())
    x_span, y_span = (x_max - x_min) or 1.0, (y_max - y_min) or 1.0

    masks = np.zeros((height, columns), dtype=np.int64)
    owner = np.full((height, columns), -1)
    for index, series in enumerate(spec.series):
        px = (series.x - x_min) / x_span * (dots_x - 1)
        if spec.reverse_x:
            px = (dots_x - 1) - px
        py = (y_max - transform(series.y)) / y_span * (dots_y - 1)
        for dx, dy in _segment_dots(px, py):
            row, col = dy // 4, dx // 2
            masks[row, col] |= BRAILLE_DOTS[dy % 4][dx % 2]
            owner[row, col] = index

    def tick(value: float) -> str:
        return _number(10**value if spec.logy else value)

    lines = [Text(f"{spec.title}: {spec.y} against {spec.x}" + (" (log y)" if spec.logy else ""),
                  style="bold")]  # fmt: skip
    for row in range(height):
        label = tick(y_max) if row == 0 else tick(y_min) if row == height - 1 else ""
        line = Text(f"{label:>{label_width}} ┤" if label else f"{'':>{label_width}} │")
        for col in range(columns):
            mask = int(masks[row, col])
            style = PALETTE[int(owner[row, col]) % len(PALETTE)] if mask else None
            line.append(chr(BRAILLE_BASE + mask) if mask else " ", style=style)
        lines.append(line)
    left, right = (x_max, x_min) if spec.reverse_x else (x_min, x_max)
    left_text, right_text = _x_tick(spec, left), _x_tick(spec, right)
    gap = max(columns - len(left_text) - len(right_text), 1)
    lines.append(Text(f"{'':>{label_width}} └" + "─" * columns))
    lines.append(Text(f"{'':>{label_width}}  {left_text}{' ' * gap}{right_text}"))
    if len(spec.series) > 1:
        legend = Text(f"{'':>{label_width}}  ")
        if spec.hue:  # which column the series differ by: "arch: ━━ plain ━━ resnet"
            legend.append(", ".join(spec.hue) + ": ")
        for index, series in enumerate(spec.series):
            legend.append("━━ ", style=PALETTE[index % len(PALETTE)])
            legend.append(series.label + "  ")
        lines.append(legend)
    return Group(*lines)


def _x_tick(spec: PlotSpec, value: float) -> str:
    if spec.x_categories is not None:
        return spec.x_categories[int(round(value))]
    return _number(value)


def _segment_dots(px: np.ndarray, py: np.ndarray) -> list[tuple[int, int]]:
    """Dots along the polyline through finite points, one dot per step of the longer axis."""
    keep = np.isfinite(px) & np.isfinite(py)
    points = list(zip(np.round(px[keep]).astype(int), np.round(py[keep]).astype(int), strict=True))
    dots = list(points[:1])
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for step in range(1, steps + 1):
            t = step / steps
            dots.append((round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t)))
    return [(int(x), int(y)) for x, y in dots]
