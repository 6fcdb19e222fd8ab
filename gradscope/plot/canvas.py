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


# Bounds on a figure (the default is 7×4.5 inches at 150 dpi, 0.7 million pixels): an Agg
# canvas holds 4 bytes a pixel, so 100 million pixels is 400 MB; matplotlib's own limit is
# 2^23 pixels a side.
MAX_FIGURE_INCHES = 200.0
MAX_DPI = 1200
MAX_FIGURE_PIXELS = 100_000_000


def check_figure_options(
    size: tuple[float, float] | None,
    dpi: int | None,
    style: str | None,
    title: str | None = None,
) -> None:
    """Raise SpecError for a size or dpi that is not positive or over the bounds
    (``MAX_FIGURE_INCHES`` a side, ``MAX_DPI``, ``MAX_FIGURE_PIXELS``), an unknown style,
    or a title whose ``$...$`` mathtext does not parse."""
    width, height = size or DEFAULT_SIZE
    if not (width > 0 and height > 0 and math.isfinite(width) and math.isfinite(height)):
        raise SpecError(f"the figure size must be two positive numbers of inches, got {size}")
    if max(width, height) > MAX_FIGURE_INCHES:
        raise SpecError(
            f"the figure size must be at most {MAX_FIGURE_INCHES:g} inches a side, got {size}"
        )
    if dpi is not None and not 0 < dpi <= MAX_DPI:
        raise SpecError(f"dpi must be from 1 to {MAX_DPI}, got {dpi}")
    pixels = width * height * (dpi or DEFAULT_DPI) ** 2
    if pixels > MAX_FIGURE_PIXELS:
        raise SpecError(
            f"a figure of {width:g}×{height:g} inches at {dpi or DEFAULT_DPI} dpi has "
            f"{pixels:.3g} pixels, over the {MAX_FIGURE_PIXELS:.0e} gradscope draws; "
            "lower the size or the dpi"
        )
    if style is not None and style not in (*matplotlib.style.available, "default"):
        raise SpecError(
            f"unknown matplotlib style {style!r}; try one of: "
            + ", ".join(sorted(matplotlib.style.available)[:8])
            + ", …"
        )
    if title is not None and is_math_text(title) and not _parses(title):
        raise SpecError(
            f"the title {title!r} has $...$ that is not valid mathtext; write \\$ for a dollar sign"
        )


def is_math_text(text: str) -> bool:
    """True when matplotlib would read ``text`` as mathtext: an even number of unescaped $."""
    from matplotlib import cbook

    return bool(cbook.is_math_text(text))


def _parses(text: str) -> bool:
    from matplotlib.mathtext import MathTextParser

    try:
        MathTextParser("path").parse(text)
    except ValueError:
        return False
    return True


def set_title(fig: Figure, title: str) -> None:
    """The figure's title: mathtext when it holds ``$...$`` that parses, else literal text
    (a title made from column names is data; see :func:`style_context`)."""
    fig.suptitle(title, parse_math=is_math_text(title) and _parses(title))


@contextlib.contextmanager
def style_context(style: str | None) -> Iterator[None]:
    """A matplotlib style for what is drawn inside (nothing changes when ``style`` is None).
    Text is drawn literally: names from records (layers, categories, legend labels) are data,
    and a ``$`` in them must not start mathtext that fails to parse when the figure is saved;
    only a title opts in (:func:`set_title`)."""
    with (
        matplotlib.style.context(style) if style else contextlib.nullcontext(),
        matplotlib.rc_context({"text.parse_math": False}),
    ):
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
