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
    return str(value)


def json_value(value: Any) -> Any:
    """JSON-safe value: NaN and infinities become null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    return value


def to_csv(records: Iterable[Any]) -> str:
    columns, rows = as_rows(records)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_csv_value(row.get(c)) for c in columns])
    return buf.getvalue()


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
        return text


def parse_csv(text: str, source: str = "<input>") -> list[Row]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise RecordsError(f"{source} is empty: expected CSV or JSON records") from None
    header = [h.strip() for h in header]
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


def parse_json(text: str, source: str = "<input>") -> list[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordsError(f"{source} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
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
        stream = stdin if stdin is not None else sys.stdin
        text = stream.read()
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


def schema(record_type: type) -> list[str]:
    """Column names of a record dataclass, in order."""
    return [f.name for f in dataclasses.fields(record_type)]


def unique(values: Sequence[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out
