"""Figure files: the format from the extension, the bytes, and one whole-or-nothing write.

Every figure gradscope writes (records, training heatmaps) goes through :func:`write_figure`.
Nothing here imports matplotlib at module level, so an output path can be checked before a
long run without loading it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradscope.errors import OutputError
from gradscope.options import FigureFormat, RecordKind
from gradscope.output import check_output_path, write_atomic
from gradscope.provenance import FIGURE_KEY, meta_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def check_figure_path(path: Path) -> None:
    """Fail before drawing when ``path`` names no figure format or cannot be written.

    Raises:
        OutputError: an unknown extension, a missing directory, or a directory as the file.
    """
    figure_format(path)
    check_output_path(path)


def figure_bytes(fig: Figure, fmt: FigureFormat, meta: Mapping[str, Any] | None = None) -> bytes:
    """The figure rendered in memory; SVG keeps its text as text so labels stay searchable.

    Without ``meta`` the bytes depend on the figure only (no dates, no versions). ``meta``
    (provenance, see gradscope.provenance) goes in as JSON: a PNG text chunk and a PDF Info
    entry named ``gradscope``, the SVG's ``dc:description``.
    """
    import matplotlib

    metadata: dict[str, Any] = {
        FigureFormat.png: {"Software": None},
        FigureFormat.svg: {"Date": None},
        FigureFormat.pdf: {"CreationDate": None, "ModDate": None},
    }[fmt]
    if meta is not None:
        metadata["Description" if fmt is FigureFormat.svg else FIGURE_KEY] = meta_json(meta)
    buffer = io.BytesIO()
    with (
        matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "gradscope"}),
        warnings.catch_warnings(),
    ):
        # The PDF Info dictionary may hold any key; matplotlib warns about all but the standard.
        warnings.filterwarnings("ignore", "Unknown infodict keyword", UserWarning)
        fig.savefig(buffer, format=fmt.value, dpi=fig.dpi, metadata=metadata)
    return buffer.getvalue()


def write_figure(fig: Figure, path: Path, meta: Mapping[str, Any] | None = None) -> None:
    """Write the figure whole or not at all, in the format the extension of ``path`` names,
    with ``meta`` in its metadata when given.

    Raises:
        OutputError: an unknown extension or a path that cannot be written.
    """
    write_atomic(path, figure_bytes(fig, figure_format(path), meta))


def draw_to_file(out: str | Path | None, draw: Callable[[], Figure]) -> Figure:
    """Draw a figure and write it to ``out`` when given: the path is checked before drawing,
    so a bad name costs no work, and the file is written whole or not at all.

    Raises:
        OutputError: ``out`` has an unknown extension or cannot be written.
    """
    path = Path(out) if out is not None else None
    if path is not None:
        check_figure_path(path)
    fig = draw()
    if path is not None:
        write_figure(fig, path)
    return fig


def default_output(sources: Sequence[str], kind: RecordKind | None) -> Path:
    """A figure name for when none is given: the first input's stem, or the record kind."""
    first = sources[0] if sources else "-"
    if first != "-":
        return Path(Path(first).stem + ".png")
    return Path(f"gradscope-{(kind or RecordKind.columns).value}.png")
