"""Record schemas and their CSV/JSON round trip (no torch).

Records are frozen dataclasses; the field order is the CSV header, the JSON keys and the
table columns. Readers turn CSV/JSON back into plain dicts with typed values, so ``plot``
works on files written by any command.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gradscope.errors import RecordsError

Row = dict[str, Any]


def as_row(record: Any) -> Row:
    """A record (dataclass instance or mapping) as an ordered dict of its fields."""
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    if isinstance(record, Mapping):
        return dict(record)
    raise TypeError(f"not a record: {type(record).__name__}")


def as_rows(records: Iterable[Any]) -> tuple[list[str], list[Row]]:
    """Rows and the union of their columns, in first-seen order."""
    rows = [as_row(r) for r in records]
    columns: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for key in row:
            if key not in seen:
                seen.add(key)
                columns.append(key)
    return columns, rows


def format_csv_value(value: Any) -> str:
    """Exact, round-trippable text for CSV: full float precision, empty for missing."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return escape_formula(str(value))


# A spreadsheet reads a cell that starts with one of these as a formula (OWASP, "CSV
# injection"): ``=HYPERLINK(...)`` in a layer name would run when the CSV is opened.
FORMULA_START = re.compile(r"'*[=+\-@\t\r]")


def escape_formula(text: str) -> str:
    """Text for a CSV cell that no spreadsheet runs as a formula: a cell starting with
    ``= + - @``, a tab or a carriage return gets a leading ``'`` (as does one that already
    starts with quotes before such a character, so :func:`unescape_formula` inverts it
    exactly). Numbers are never changed: ``-1.5`` stays."""
    if FORMULA_START.match(text) and not _is_number(text):
        return "'" + text
    return text


def unescape_formula(text: str) -> str:
    """Inverse of :func:`escape_formula`."""
    if text.startswith("'") and FORMULA_START.match(text[1:]) and not _is_number(text[1:]):
        return text[1:]
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# Control characters (C0 but the tab, DEL, C1) and the Unicode bidirectional overrides that
# reorder what a terminal shows ("Trojan source"): a name read from a file must not move the
# cursor, set a window title (OSC) or colour the screen (CSI) when it is printed.
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNPRINTABLE_KEEP_NEWLINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` with every control character shown as a Python escape (``\\x1b``,
    ``\\n``, ``\\u202e``), so that names from files print as data; with ``newlines``,
    line breaks are kept."""
    pattern = _UNPRINTABLE_KEEP_NEWLINES if newlines else _UNPRINTABLE
    return pattern.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    named = {0x0A: "\\n", 0x0D: "\\r"}
    if code in named:
        return named[code]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def json_value(value: Any) -> Any:
    """JSON-safe value: NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    return value


def to_csv(records: Iterable[Any]) -> str:
    """The records as CSV: a header, then one line per record (see :func:`format_csv_value`)."""
    columns, rows = as_rows(records)
    lines = [_csv_line([escape_formula(c) for c in columns])]
    lines += [_csv_line([format_csv_value(row.get(c)) for c in columns]) for row in rows]
    return "".join(lines)


def _csv_line(cells: Sequence[str]) -> str:
    """One CSV line ending in ``\\n``. The csv module quotes only the characters of its line
    terminator: written with ``\\r\\n``, a carriage return in a name is quoted too."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(cells)
    return buf.getvalue()[:-2] + "\n"


def to_json(records: Iterable[Any], meta: Mapping[str, Any] | None = None) -> str:
    """The records as a JSON list; with ``meta`` (JSON-ready, see gradscope.provenance), an
    object ``{"meta": meta, "records": [...]}``, which :func:`read_records` reads as well."""
    _, rows = as_rows(records)
    data: Any = [{k: json_value(v) for k, v in row.items()} for row in rows]
    if meta is not None:
        data = {"meta": meta, "records": data}
    return json.dumps(data, indent=2) + "\n"


def parse_value(text: str) -> Any:
    """Inverse of :func:`format_csv_value` for one CSV cell."""
    if text == "":
        return None
    low = text.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return unescape_formula(text)


# The csv module's own bound on one field (131072 characters): a longer one is refused.
MAX_CSV_FIELD = 128 * 1024


def parse_csv(text: str, source: str = "<input>") -> list[Row]:
    """CSV records: a header, then one row per line (see :func:`parse_value`).

    Raises:
        RecordsError: no header, a row of another length, a field over ``MAX_CSV_FIELD``
            characters or a NUL byte.
    """
    reader = csv.reader(io.StringIO(text))
    try:
        return _csv_rows(reader, source)
    except csv.Error as exc:
        where = f"{source} line {reader.line_num}" if reader.line_num else source
        too_long = "field larger than field limit" in str(exc)
        problem = (
            f"has a field over {MAX_CSV_FIELD // 1024} KiB, the longest gradscope reads"
            if too_long
            else f"is not CSV records ({exc})"
        )
        raise RecordsError(f"{where} {problem}") from None


def _csv_rows(reader: Any, source: str) -> list[Row]:
    try:
        header = next(reader)
    except StopIteration:
        raise RecordsError(f"{source} is empty: expected CSV or JSON records") from None
    header = [unescape_formula(h.strip()) for h in header]
    rows: list[Row] = []
    for lineno, cells in enumerate(reader, start=2):
        if not cells or all(c.strip() == "" for c in cells):
            continue
        if len(cells) != len(header):
            raise RecordsError(
                f"{source} line {lineno} has {len(cells)} fields, the header has {len(header)}"
            )
        rows.append({h: parse_value(c.strip()) for h, c in zip(header, cells, strict=True)})
    return rows


def load_json(text: str, source: str | Path) -> Any:
    """``json.loads`` with one-sentence errors, for records and meta files.

    Raises:
        RecordsError: invalid JSON, or JSON nested deeper than Python's parser goes (about
            a thousand levels; gradscope's own files are three deep).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordsError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise RecordsError(f"{source} is JSON nested too deeply to be records") from None


def parse_json(text: str, source: str = "<input>") -> list[Row]:
    data = load_json(text, source)
    if isinstance(data, Mapping):
        for key in ("records", "rows", "data"):
            if isinstance(data.get(key), list):
                data = data[key]
                break
        else:
            data = [data]
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise RecordsError(f"{source} must hold a JSON list of objects (one per record)")
    return [dict(r) for r in data]


def read_records(source: str | Path, stdin: Any = None) -> list[Row]:
    """Read records from a CSV or JSON file, or from stdin when ``source`` is ``-``. JSON is a
    list of records or an object holding them under ``records`` (beside ``meta``, the
    provenance gradscope writes: gradscope.provenance.read_meta reads that).

    Raises:
        RecordsError: the file is missing, empty, or neither CSV nor JSON records.
    """
    name = str(source)
    if name == "-":
        text = _read_stdin(stdin if stdin is not None else sys.stdin)
        name = "stdin"
    else:
        path = Path(source)
        if not path.exists():
            raise RecordsError(f"{name} does not exist")
        if path.is_dir():
            raise RecordsError(f"{name} is a directory, not a CSV or JSON file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RecordsError(f"{name} is not a text file (expected CSV or JSON)") from None
    if not text.strip():
        raise RecordsError(f"{name} is empty: expected CSV or JSON records")
    stripped = text.lstrip()
    is_json = stripped[:1] in "[{"
    rows = parse_json(text, name) if is_json else parse_csv(text, name)
    if not rows:
        if is_json:
            raise RecordsError(f"{name} holds no records (an empty JSON list)")
        raise RecordsError(f"{name} has a header but no records")
    return rows


def _read_stdin(stream: Any) -> str:
    """All of stdin as UTF-8 text (read as bytes when it has them, so binary input is one
    sentence, not a decoding traceback)."""
    raw = getattr(stream, "buffer", None)
    try:
        data = raw.read() if raw is not None else stream.read()
        return data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        raise RecordsError("stdin is not text (expected CSV or JSON records)") from None


def schema(record_type: type) -> list[str]:
    """Column names of a record dataclass, in order."""
    return [f.name for f in dataclasses.fields(record_type)]


def unique(values: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out
