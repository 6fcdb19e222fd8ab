"""The Agg canvas every gradscope figure is drawn on, and the drawing helpers figures share.

matplotlib's object API only: no window and no global pyplot state.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from gradscope.errors import SpecError

DEFAULT_SIZE = (7.0, 4.5)
DEFAULT_DPI = 150
PLAIN_LOG_LABELS_BELOW = 2.0  # decades: narrower log axes get plain tick labels


def check_figure_options(
    size: tuple[float, float] | None, dpi: int | None, style: str | None
) -> None:
    """Raise SpecError for a size or dpi that is not positive, or an unknown style."""
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


@contextlib.contextmanager
def style_context(style: str | None) -> Iterator[None]:
    """A matplotlib style for what is drawn inside; nothing changes when ``style`` is None."""
    with matplotlib.style.context(style) if style else contextlib.nullcontext():
        yield


def new_figure(width: float, height: float, dpi: float) -> Figure:
    """An empty figure with constrained layout on its own Agg canvas."""
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plain_log_labels(ax: Any, decades: float) -> None:
    """On a narrow log axis, label ticks 0.05, 0.06, 3, 4 rather than 5×10⁻², 6×10⁻², 3×10⁰."""
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
