"""Rendering records: rich table, CSV or JSON, to stdout or to a file written whole (no torch)."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import math
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from gradscope.errors import OutputError
from gradscope.options import Format
from gradscope.records import Row, as_rows, printable, to_csv, to_json

SUFFIX_FORMATS = {".csv": Format.csv, ".json": Format.json, ".txt": Format.table}


def resolve_format(fmt: Format, is_tty: bool, output: Path | None = None) -> Format:
    """The concrete format: explicit wins, then the output file's extension, then the terminal.

    Raises:
        OutputError: ``--format auto`` with an output file whose extension says nothing.
    """
    if fmt is not Format.auto:
        return fmt
    if output is not None:
        suffix = output.suffix.lower()
        if suffix not in SUFFIX_FORMATS:
            raise OutputError(
                f"cannot tell the format of {output} from its extension; "
                "use .csv, .json or .txt, or pass --format"
            )
        return SUFFIX_FORMATS[suffix]
    return Format.table if is_tty else Format.csv


MISSING = "—"  # a missing value in a table cell: None, NaN or an empty string
SIGNIFICANT_DIGITS = 6


def format_cell(value: Any) -> str:
    """Display text for a table cell. One rule for every number: ``SIGNIFICANT_DIGITS``
    significant digits, trailing zeros dropped, exponent form below 1e-4 and from 1e6 (Python's
    ``g`` format: ``1.21117``, ``1e-05``, ``2.5e+07``); a missing value (None, NaN, empty
    text) is ``MISSING``. CSV and JSON keep every digit."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value == 0:
            return "0"
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value) or MISSING


def table_width(default: int) -> int:
    """The width of text tables away from a terminal: ``COLUMNS`` when the environment sets
    it (a user who pipes ``-f table`` into a pager or a log asks for that width), else
    ``default``."""
    try:
        width = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        return default
    return width if 20 <= width <= 10_000 else default


def render_table(records: Iterable[Any], title: str | None = None, width: int | None = None) -> str:
    """A rich table as text, every column in one table (no colour when rendered for a file or a
    pipe); the row-naming columns and the headline measurement come first."""
    from rich.console import Console

    records = list(records)
    columns, rows = as_rows(records)
    numeric = {col: _is_numeric_column(rows, col) for col in columns}
    keys = _key_columns(columns, rows, numeric, _configuration_columns(records))
    order = _headline_first(columns, keys)
    table = _new_table(title)
    for col in order:
        table.add_column(_escape(col), justify="right" if numeric[col] else "left", overflow="fold")
    for row in rows:
        table.add_row(*[_escape(format_cell(row.get(c))) for c in order])
    console = Console(
        file=io.StringIO(), width=width or 400, color_system=None, force_terminal=False
    )
    with console.capture() as capture:
        console.print(table)
    return capture.get()


def _is_numeric_column(rows: Sequence[Row], col: str) -> bool:
    """True when some row holds a number (not a yes/no flag) in ``col``: it is right-aligned."""
    return any(
        isinstance(r.get(col), (int, float)) and not isinstance(r.get(col), bool) for r in rows
    )


def _escape(text: str) -> Any:
    """A table cell or header as plain text: rich markup in a name (``[/]``,
    ``[link=file:///etc/passwd]``) is shown as typed, never interpreted, and control
    characters as escapes (see gradscope.records.printable)."""
    from rich.text import Text

    return Text(printable(text, newlines=True))


def render(
    records: Sequence[Any],
    fmt: Format,
    title: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """Records as CSV, JSON (with ``meta`` beside them when given) or a table."""
    if fmt is Format.csv:
        return to_csv(records)
    if fmt is Format.json:
        return to_json(records, meta)
    return render_table(records, title=title)


# Columns that name a row rather than measure it, besides the configuration columns of its
# record type and text columns: repeated in every part of a split screen table so that rows
# can be matched across the parts. Each is a configuration or descriptor column of the schema
# (tests/test_output.py checks); they also name the rows of records read back as plain dicts.
ROW_NAMES = frozenset(
    {"layer", "index", "step", "depth", "width", "batch", "from_index", "to_index"}
)
# The measurement each kind of record is read for: it comes right after the row-naming
# columns, so it is in the first part of a split table (ratios and checkpoint summaries:
# rate_per_layer; simulate layers: grad_norm_mean; summaries: fitted_rate; checkpoints: sigma).
# A table's headline is the first of these, in this order, that it has.
HEADLINES = ("rate_per_layer", "grad_norm_mean", "fitted_rate", "sigma")
MIN_WRAPPED_WIDTH = 12  # a text column too wide for the screen wraps, at least this wide
MAX_KEY_SHARE = 2 / 3  # the repeated row-naming columns take at most this share of the width


def _configuration_columns(records: Sequence[Any]) -> frozenset[str]:
    """The configuration columns of the records' types (see gradscope.schema); none for
    plain dicts."""
    from gradscope.schema import Role

    types = {type(r) for r in records if dataclasses.is_dataclass(r) and not isinstance(r, type)}
    return frozenset(
        f.name
        for record_type in types
        for f in dataclasses.fields(record_type)
        if f.metadata.get("role") is Role.configuration
    )


def _key_columns(
    shown: Sequence[str],
    rows: Sequence[Row],
    numeric: dict[str, bool],
    configuration: frozenset[str],
) -> list[str]:
    """The leading columns that name a row, repeated in every part of a split table: the
    configuration columns of the record type (those shown vary between rows), text columns and
    ``ROW_NAMES``; the first column when none does."""

    def names_rows(col: str) -> bool:  # a yes/no column counts as data
        if col in configuration or col in ROW_NAMES:
            return True
        return not (numeric[col] or any(isinstance(r.get(col), bool) for r in rows))

    keys: list[str] = []
    for col in shown:
        if not names_rows(col):
            break
        keys.append(col)
    return keys or list(shown[:1])


def _fit_keys(
    keys: Sequence[str], shown: Sequence[str], widths: dict[str, int], width: int
) -> list[str]:
    """The leading ``keys`` that take at most ``MAX_KEY_SHARE`` of ``width`` and leave room
    beside them for the widest other column (at least the first key)."""
    others = [widths[col] + 3 for col in shown if col not in keys]
    room = min(width * MAX_KEY_SHARE, width - 1 - max(others, default=0))
    fitted: list[str] = []
    used = 1
    for col in keys:
        used += widths[col] + 3
        if fitted and used > room:
            break
        fitted.append(col)
    return fitted


def _headline_first(shown: Sequence[str], keys: Sequence[str]) -> list[str]:
    """``shown`` with the headline measurement moved to just after the row-naming columns."""
    rest = [c for c in shown if c not in keys]
    headline = next((c for name in HEADLINES for c in rest if c == name), None)
    if headline is not None:
        rest.remove(headline)
        rest.insert(0, headline)
    return [*keys, *rest]


def _segments(col: str) -> list[str]:
    """A column name cut after each underscore, where its header may wrap, except after a
    single letter (``r_squared``, ``n_layers`` stay whole)."""
    segments = [""]
    for part in col.split("_")[:-1]:
        segments[-1] += part + "_"
        if len(part) > 1:
            segments.append("")
    segments[-1] += col.split("_")[-1]
    return segments


def _header(col: str, width: int) -> str:
    """The header of ``col`` wrapped to ``width`` at underscores only, never inside a word."""
    lines = [""]
    for segment in _segments(col):
        if lines[-1] and len(lines[-1]) + len(segment) > width:
            lines.append(segment)
        else:
            lines[-1] += segment
    return "\n".join(lines)


def _two_line_width(col: str) -> int:
    """The narrowest width at which the header of ``col`` takes at most two lines."""
    segments = _segments(col)
    return min(
        max(len("".join(segments[:i])), len("".join(segments[i:])))
        for i in range(1, len(segments) + 1)
    )


def _display_tables(
    records: Sequence[Any], title: str | None, width: int
) -> tuple[list[Any], str | None]:
    """Rich tables for reading on a screen ``width`` characters wide, not for parsing.

    Columns with the same value in every row say nothing row by row: they move to a line
    printed under the tables (``arch=plain, depth=20, ...``, returned second), and columns
    empty in every row are left out. A single record is shown as a two-column field/value
    table. The columns that name a row come first, then the headline measurement
    (``HEADLINES``), then the others in record order. Columns that do not fit across go to a
    further table below, which repeats the columns that name a row so rows can still be told
    apart. Headers wrap at underscores (``rate_per_``/``layer``), never inside a word; numbers
    are never broken. ``--format csv`` or ``json`` keeps every column, in record order.
    """
    columns, rows = as_rows(records)
    cells = [{c: format_cell(r.get(c)) for c in columns} for r in rows]
    numeric = {col: _is_numeric_column(rows, col) for col in columns}
    configuration = _configuration_columns(records)
    if not rows or not columns:
        return [_new_table(title, columns)], "(no records)"
    if len(rows) == 1:
        keys = _key_columns(columns, rows, numeric, configuration)
        return [_field_table(title, _headline_first(columns, keys), cells[0])], None
    shown, constant = _shown_and_constant(columns, cells)
    caption = ", ".join(f"{c}={cells[0][c]}" for c in constant) or None
    data = {col: max(len(cell[col]) for cell in cells) for col in shown}
    natural = {col: max(data[col], len(col)) for col in shown}
    compact = {col: max(data[col], _two_line_width(col)) for col in shown}
    keys = _fit_keys(_key_columns(shown, rows, numeric, configuration), shown, compact, width)
    tables = []
    for i, chunk in enumerate(_pack(_headline_first(shown, keys), keys, compact, width)):
        table = _new_table(title if i == 0 else None)
        widths = _widen(chunk, compact, natural, width, keys)
        for col in chunk:
            table.add_column(
                _escape(_header(col, widths[col])),
                justify="right" if numeric[col] else "left",
                overflow="fold",
                width=widths[col],
            )
        for cell in cells:
            table.add_row(*[_escape(cell[c]) for c in chunk])
        tables.append(table)
    return tables, caption


def _new_table(title: str | None, columns: Sequence[str] = ()) -> Any:
    from rich.table import Table

    table = Table(title=None if title is None else _escape(title), header_style="bold")
    for col in columns:
        table.add_column(_escape(col))
    return table


def _field_table(title: str | None, columns: Sequence[str], cells: dict[str, str]) -> Any:
    """One record as a field/value table, leaving out empty fields."""
    table = _new_table(title)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for col in columns:
        if cells[col] != MISSING:
            table.add_row(_escape(col), _escape(cells[col]))
    return table


def _shown_and_constant(
    columns: Sequence[str], cells: Sequence[dict[str, str]]
) -> tuple[list[str], list[str]]:
    """The columns to show in the table, and those with one value in every row (the caption);
    columns empty in every row are in neither, unless every column is."""
    empty = {c for c in columns if all(cell[c] == MISSING for cell in cells)}
    constant = [c for c in columns if c not in empty and len({cell[c] for cell in cells}) == 1]
    shown = [c for c in columns if c not in empty and c not in constant]
    if not shown:  # identical rows: show them whole
        shown, constant = [c for c in columns if c not in empty], []
    if not shown:  # every column empty in every row
        shown = list(columns)
    return shown, constant


def _pack(
    shown: Sequence[str], keys: Sequence[str], widths: dict[str, int], width: int
) -> list[list[str]]:
    """Columns packed into tables that fit ``width`` across; each part starts with the keys."""
    rest = [c for c in shown if c not in keys]
    key_width = 1 + sum(widths[k] + 3 for k in keys)
    chunks: list[list[str]] = [list(keys)]
    used = key_width
    for col in rest:
        need = widths[col] + 3
        if used + need > width and len(chunks[-1]) > len(keys):
            chunks.append(list(keys))
            used = key_width
        chunks[-1].append(col)
        used += need
    return chunks


def _widen(
    chunk: Sequence[str],
    compact: dict[str, int],
    natural: dict[str, int],
    width: int,
    keys: Sequence[str] = (),
) -> dict[str, int]:
    """The widths of one part: natural (every header on one line) when the part fits ``width``
    across so, else compact (headers on at most two lines); a part still too wide (a long text
    column) narrows its widest column that is not a key, whose text then wraps."""
    fits = 1 + sum(natural[col] + 3 for col in chunk) <= width
    widths = {col: (natural if fits else compact)[col] for col in chunk}
    excess = 1 + sum(widths[col] + 3 for col in chunk) - width
    others = [col for col in chunk if col not in keys]
    if excess > 0 and others:
        widest = max(others, key=lambda col: widths[col])
        widths[widest] = max(widths[widest] - excess, MIN_WRAPPED_WIDTH)
    return widths


def print_table(
    records: Sequence[Any],
    stream: IO[str] | None = None,
    title: str | None = None,
    stderr: bool = False,
) -> None:
    """Print records for reading on a terminal (or in a log): constant columns go to a line
    under the table, a single record is shown field by field, wide tables are split to fit; colour
    and width follow the terminal (a file or pipe gets COLUMNS, else 120 columns)."""
    from rich.console import Console

    target = stream if stream is not None else (sys.stderr if stderr else sys.stdout)
    is_tty = hasattr(target, "isatty") and target.isatty()
    console = Console(file=target, width=None if is_tty else table_width(120))
    tables, caption = _display_tables(records, title, console.width)
    for table in tables:
        console.print(table)
    if caption:
        console.print(printable(caption), style="dim", markup=False, highlight=False)


# Paths that name one of this process's open files (``-o /dev/stdout``): written through,
# never replaced, whatever they resolve to (replacing the file a shell redirected stdout to
# would leave the shell's descriptor on the old, unlinked file).
_FD_ALIASES = re.compile(r"/dev/(stdout|stderr|fd/\d+)|/proc/(self|\d+)/fd/\d+")


@dataclasses.dataclass(frozen=True)
class OutputTarget:
    """Where an output path really writes: ``path`` is the file to replace (symlinks
    resolved) or, when ``stream``, a FIFO, character device or descriptor alias that is
    written through in place."""

    path: Path
    stream: bool


def output_target(path: Path) -> OutputTarget:
    """What writing ``path`` means, checked before any work.

    A regular file (or a new name) is replaced atomically; through a symlink, the file the
    link points to is replaced and the link stays a link. A FIFO, a character device
    (``/dev/null``, a terminal) or ``/dev/stdout`` is a stream: it is written through, never
    replaced. The directory must exist and be writable. Root passes every permission check
    (``os.access``): a directory root cannot write to fails when the file is written, with
    one line, and the old file is kept.

    Raises:
        OutputError: a missing or non-directory parent, an unwritable directory, a directory,
            block device or socket as the output.
    """
    given = Path(os.path.abspath(path))
    if _FD_ALIASES.fullmatch(str(given)):
        own = _own_descriptor(given)
        if own is not None and not _is_open(own):
            raise OutputError(f"{path} names descriptor {own}, which is not open")
        return OutputTarget(given, stream=True)
    target = Path(os.path.realpath(given))
    shown = str(path) if target == given else f"{path} (a link to {target})"
    try:
        mode = target.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # a new file; its directory is checked
        mode = None
    except OSError as exc:
        raise OutputError(f"cannot use {shown} as output: {exc.strerror}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"{shown} is a directory; give a file name")
    if mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        return OutputTarget(target, stream=True)
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputError(f"{shown} is not a regular file, a FIFO or a character device")
    _check_directory(target.parent, shown)
    return OutputTarget(target, stream=False)


def _check_directory(parent: Path, shown: str) -> None:
    if not parent.exists():
        raise OutputError(f"the directory {parent} does not exist (for output {shown})")
    if not parent.is_dir():
        raise OutputError(f"{parent} is not a directory (for output {shown})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"the directory {parent} is not writable (for output {shown})")


def check_output_path(path: Path) -> None:
    """Fail before any work when the output cannot be written (see :func:`output_target`)."""
    output_target(path)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write the whole file or nothing: a temporary file in the same directory, flushed to
    disk, then renamed over the file (the file a symlink points to). A FIFO or character
    device is written through instead (see :func:`output_target`).

    Raises:
        OutputError: the path cannot be written (one sentence; the old file is kept).
    """
    target = output_target(path)
    payload = data if isinstance(data, bytes) else data.encode("utf-8")
    try:
        if target.stream:
            _write_through(target.path, payload)
        else:
            _replace(target.path, payload)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_through(path: Path, payload: bytes) -> None:
    """Every byte of ``payload`` into an existing FIFO or device, or into one of this
    process's open descriptors (``/dev/stdout``: at its offset, in its append mode)."""
    own = _own_descriptor(path)
    fd = own if own is not None else _open_stream(path)
    try:
        if own is not None:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    stream.flush()
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        if own is None:
            os.close(fd)


FIFO_WAIT_SECONDS = 30.0  # how long a FIFO may go without a reader before the write gives up


def _open_stream(path: Path) -> int:
    """A FIFO or device opened for writing. A FIFO with no reader yet is retried for
    ``FIFO_WAIT_SECONDS`` (a blocking open would hang for ever), then refused."""
    deadline = time.monotonic() + FIFO_WAIT_SECONDS
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: a FIFO that no process has open to read
                raise
            if time.monotonic() > deadline:
                raise OutputError(
                    f"no process opened the FIFO {path} for reading within {FIFO_WAIT_SECONDS:g} s"
                ) from None
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)  # then write at the reader's pace
        return fd


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _own_descriptor(path: Path) -> int | None:
    """The descriptor number an alias of this process's open files names, else None."""
    text = str(path)
    if text in ("/dev/stdout", "/dev/stderr"):
        return 1 if text == "/dev/stdout" else 2
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if text.startswith(prefix) and text[len(prefix) :].isdigit():
            return int(text[len(prefix) :])
    return None


PART_SUFFIX = ".part"


def _replace(path: Path, payload: bytes) -> None:
    """Atomic replacement of a regular file: the temporary file ``.NAME.PID.XXXX.part`` is
    written, fsynced, given the old file's mode (a new file's: 0666 less the umask), renamed
    over ``path``, and the directory is fsynced so that the rename survives a crash."""
    parent = path.parent
    _remove_stale_parts(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=PART_SUFFIX, dir=parent
    )
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(parent)


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _remove_stale_parts(path: Path) -> None:
    """Remove temporary files left beside ``path`` by a writer that was killed (``kill -9``,
    a power cut): ``.NAME.PID.XXXX.part`` whose process no longer runs. A live writer's file
    is left alone."""
    prefix = f".{path.name}."
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(PART_SUFFIX)):
            continue
        pid = name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    """Flush a directory entry to disk; some file systems cannot, which is not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


class StdoutError(OutputError):
    """Standard output cannot be written (a full disk, ``> /dev/full``, a dead terminal)."""


@contextlib.contextmanager
def stdout_errors() -> Iterator[None]:
    """Turn a failed write to stdout into one :class:`StdoutError` sentence; a closed pipe
    (``| head``) stays a ``BrokenPipeError``, which the CLI ends quietly."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise StdoutError(f"cannot write to stdout: {exc.strerror or exc}") from None


def emit(
    records: Sequence[Any],
    fmt: Format = Format.auto,
    output: Path | None = None,
    *,
    summary: Sequence[Any] | None = None,
    title: str | None = None,
    summary_title: str = "summary",
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    meta: Mapping[str, Any] | None = None,
    meta_file: Path | None = None,
) -> None:
    """Render records to ``output`` (whole or not at all) or stdout; a summary goes under a table.

    In CSV/JSON on stdout the summary is printed to stderr as a table, so pipes stay clean.

    ``meta`` (provenance, JSON-ready) goes beside the records in JSON, and to ``meta_file``
    when given, else, for an ``output`` file in another format, to ``<output>.meta.json``:
    CSV stays one clean table. Each file is written whole or not at all, the records first.
    """
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    is_tty = out.isatty() if hasattr(out, "isatty") else False
    concrete = resolve_format(fmt, is_tty, output)
    tables = (summary, title, summary_title)
    if output is not None:
        text = render(records, concrete, title=title, meta=meta)
        if concrete is Format.table and summary:
            text += "\n" + render_table(summary, title=summary_title)
        write_atomic(output, text)
        if summary:
            print_table(summary, stream=err, title=summary_title)
    else:
        with stdout_errors():
            _print(records, concrete, out, err, is_tty, tables, meta)
            out.flush()
    if meta is None:
        return
    from gradscope.provenance import meta_json, sidecar_path  # not on the ratios path

    if meta_file is None and output is not None:
        meta_file = sidecar_path(output) if concrete is not Format.json else None
    if meta_file is not None:
        write_atomic(meta_file, meta_json(meta))


def _print(
    records: Sequence[Any],
    concrete: Format,
    out: IO[str],
    err: IO[str],
    is_tty: bool,
    tables: tuple[Sequence[Any] | None, str | None, str],
    meta: Mapping[str, Any] | None,
) -> None:
    """Records on stdout: screen tables on a terminal (or in a pipe when COLUMNS says how wide
    it is: ``-f table | less``), else the text of ``concrete``; the summary (``tables``:
    summary, title, summary title) under a table, else on stderr."""
    summary, title, summary_title = tables
    if concrete is Format.table and (is_tty or table_width(0)):
        print_table(records, stream=out, title=title)
        if summary:
            print_table(summary, stream=out, title=summary_title)
        return
    text = render(records, concrete, title=title, meta=meta)
    out.write(text)
    out.flush()
    if summary:
        if concrete is Format.table:
            out.write("\n" + render_table(summary, title=summary_title))
        else:
            print_table(summary, stream=err, title=summary_title)
