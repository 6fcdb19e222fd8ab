"""`gradscope plot`: figures from the records any command wrote, read from files or stdin."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from gradscope.cli.common import command_line, error, given_options, note, warn
from gradscope.errors import PlotWarning, RecordsError, SpecError, UsageError
from gradscope.options import RecordKind
from gradscope.provenance import file_digest, new_meta, read_meta
from gradscope.records import Row, read_records


def plot_to_file(
    rows: Iterable[Any], out: Path, meta: Mapping[str, Any] | None = None, **options: Any
) -> None:
    """Write a figure of ``rows`` to ``out`` with ``meta`` (provenance) in its metadata,
    reporting left-out values as ``Warning:`` lines.

    This is what ``simulate --plot`` and ``inspect-checkpoint --plot`` call.
    """
    # matplotlib loads only when a figure is drawn
    from gradscope.plot.figure import plot_records
    from gradscope.plot.write import check_figure_path, write_figure

    check_figure_path(out)
    with _warnings_on_stderr():
        fig = plot_records(rows, None, **options)
    write_figure(fig, out, meta)
    note(f"wrote {out}")


def plot_command(
    ctx: typer.Context,
    files: Annotated[
        list[str],
        typer.Argument(
            help="CSV or JSON records from any gradscope command; - reads stdin.", metavar="FILE"
        ),
    ],  # fmt: skip
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FIG",
            help="Figure file: .png, .svg or .pdf (written whole). "
            "Default: the first input's name with .png.",
            dir_okay=False,
        ),
    ] = None,  # fmt: skip
    kind: Annotated[
        RecordKind | None,
        typer.Option(
            metavar="KIND",
            help=f"Record kind: {' | '.join(k.value for k in RecordKind)}; recognised from the "
            "columns when not given.",
        ),
    ] = None,
    x: Annotated[
        str | None, typer.Option("--x", metavar="COLUMN", help="Column on the x axis.")
    ] = None,
    y: Annotated[
        str | None, typer.Option("--y", metavar="COLUMN", help="Column on the y axis.")
    ] = None,
    hue: Annotated[
        str | None,
        typer.Option(
            "--hue",
            metavar="COLUMNS",
            help="Column(s), comma-separated, that tell the lines apart.",
        ),
    ] = None,
    logy: Annotated[
        bool | None,
        typer.Option("--logy/--no-logy", help="Log y axis (default: per record kind)."),
    ] = None,
    title: Annotated[str | None, typer.Option(metavar="TEXT", help="Figure title.")] = None,
    size: Annotated[
        str | None, typer.Option(metavar="W,H", help="Figure size in inches (default 7,4.5).")
    ] = None,
    dpi: Annotated[
        int | None, typer.Option(metavar="DPI", help="Dots per inch (default 150).", min=1)
    ] = None,
    style: Annotated[
        str | None, typer.Option(metavar="NAME", help="A matplotlib style name, e.g. ggplot.")
    ] = None,
    reverse_x: Annotated[
        bool, typer.Option("--reverse-x", help="Draw the x axis from right to left.")
    ] = False,
    terminal: Annotated[
        bool,
        typer.Option(
            "--terminal",
            help="Preview the main series in the terminal; without -o no file is written.",
        ),
    ] = False,  # fmt: skip
    show_meta: Annotated[
        bool,
        typer.Option(
            "--show-meta",
            help="Print the provenance a figure (or a records file, or its .meta.json) "
            "carries, as JSON, instead of plotting.",
        ),
    ] = False,
    no_meta: Annotated[
        bool, typer.Option("--no-meta", help="Write the figure without provenance.")
    ] = False,
) -> None:
    """Plot gradscope records: the figure is chosen from the columns.

    Examples:

      gradscope simulate --depth 20 | gradscope plot - -o grads.png

      gradscope plot vgg.csv --reverse-x -o sigma.svg

      gradscope plot runs.csv --x width --y fitted_rate --terminal

      gradscope plot --show-meta grads.png
    """
    from gradscope.plot.write import default_output, figure_format

    started = time.time()
    if show_meta:
        _show_meta(files, given_options(ctx) - {"files", "show_meta"})
        return
    with _first_interrupt_deferred("-" in files) as interrupted:
        try:
            rows = _read_all(files)
        except RecordsError:
            if not interrupted:
                raise
            error("interrupted before any record arrived: nothing to draw")
            raise typer.Exit(130) from None
    if interrupted:
        warn(f"interrupted: drawing the {len(rows)} records that arrived before the input closed")
    figure_size = _parse_size(size) if size is not None else None
    options: dict[str, Any] = dict(kind=kind, x=x, y=y, hue=hue, logy=logy, title=title)
    if output is not None:
        figure_format(output)
    if terminal:
        _preview(rows, reverse_x=reverse_x, **options)
        if output is None:
            return
    if output is None:
        from gradscope.plot.spec import detect_kind

        output = default_output(files, kind or detect_kind(rows[0]))
    meta = None if no_meta else _plot_meta(ctx, files, started)
    plot_to_file(
        rows, output, meta, size=figure_size, dpi=dpi, style=style, reverse_x=reverse_x,
        **options,
    )  # fmt: skip
    if interrupted:
        raise typer.Exit(130)


@contextlib.contextmanager
def _first_interrupt_deferred(from_pipe: bool) -> Iterator[list[bool]]:
    """While records come from a pipe, the first Ctrl-C does not stop plot. The terminal sends
    it to the producer too (``gradscope simulate … | gradscope plot -``), which then writes
    what it finished and closes the pipe: plot draws that and exits 130. A second Ctrl-C
    stops at once. The yielded list holds True once a Ctrl-C came."""
    interrupted: list[bool] = []
    if not from_pipe or threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _show_meta(files: list[str], others: set[str]) -> None:
    """Print the meta of each file: the object for one file, ``{file: meta}`` for several."""
    if others:
        flags = ", ".join("--" + name.replace("_", "-") for name in sorted(others))
        raise SpecError(f"--show-meta reads files only; {flags} would be ignored")
    if "-" in files:
        raise SpecError("--show-meta reads files, not stdin (-)")
    metas = {name: read_meta(name) for name in files}
    shown = metas[files[0]] if len(files) == 1 else metas
    sys.stdout.write(json.dumps(shown, indent=2) + "\n")


def _plot_meta(ctx: typer.Context, files: list[str], started: float) -> dict[str, Any]:
    """The provenance of a figure: this command, and each input with its SHA-256 and the
    provenance of the run that wrote it (when it carries one)."""
    sources: list[dict[str, Any]] = []
    for name in files:
        if name == "-":
            sources.append({"source": "stdin"})
            continue
        try:
            made_by: Any = read_meta(name)
        except RecordsError:
            made_by = None
        sources.append({"source": name, "file": file_digest(name), "meta": made_by})
    meta = new_meta("plot", command_line(ctx), started, time.time() - started)
    meta["sources"] = sources
    return meta


def _preview(rows: list[Row], **options: Any) -> None:
    """Print the terminal preview of the figure (matplotlib is not loaded for it)."""
    from rich.console import Console

    from gradscope.plot.spec import build_spec
    from gradscope.plot.terminal import render_preview

    with _warnings_on_stderr():
        spec = build_spec(rows, **options)
    console = Console()
    console.print(render_preview(spec, width=min(console.width, 100)))


def _read_all(files: list[str]) -> list[Row]:
    from gradscope.plot.spec import detect_kind

    if files.count("-") > 1:
        raise SpecError("stdin (-) can be read only once; give - at most one time")
    per_file = [read_records(name) for name in files]
    if len(per_file) == 1:
        return per_file[0]
    kinds = {detect_kind(rows[0]) for rows in per_file}
    if len(kinds) > 1:
        names = ", ".join(sorted(k.value if k else "unknown" for k in kinds))
        raise RecordsError(f"the files hold different kinds of records ({names}); plot them apart")
    # The file a row came from is configuration too: it labels lines only when needed.
    return [
        {**row, "file": "stdin" if name == "-" else Path(name).name}
        for name, rows in zip(files, per_file, strict=True)
        for row in rows
    ]


def _parse_size(text: str) -> tuple[float, float]:
    parts = text.split(",")
    try:
        width, height = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--size takes W,H in inches, e.g. 7,4.5; got {text!r}") from None
    if not (width > 0 and height > 0):
        raise SpecError(f"--size must be two positive numbers of inches, got {text!r}")
    return width, height


@contextlib.contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """Print :class:`PlotWarning` messages as ``Warning: ...`` lines; others pass through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PlotWarning)
        try:
            yield
        finally:
            recorded = list(caught)
    for item in recorded:
        if issubclass(item.category, PlotWarning):
            warn(str(item.message))
        else:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
