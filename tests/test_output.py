"""The output layer shared by every command: format resolution, rendering, whole-file writes."""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from gradscope.errors import OutputError, RecordsError
from gradscope.options import Format
from gradscope.output import (
    _display_tables,
    emit,
    format_cell,
    print_table,
    render,
    resolve_format,
    write_atomic,
)
from gradscope.records import parse_csv, read_records, to_csv, to_json
from gradscope.schema import RatioRecord


@dataclass(frozen=True)
class Row:
    name: str
    value: float
    count: int | None
    flag: bool


ROWS = [Row("a", 1.2111738962363166, 3, True), Row("b", math.nan, None, False)]


@pytest.mark.parametrize(
    ("fmt", "tty", "path", "expected"),
    [
        (Format.auto, True, None, Format.table),
        (Format.auto, False, None, Format.csv),
        (Format.auto, True, Path("x.csv"), Format.csv),
        (Format.auto, True, Path("x.JSON"), Format.json),
        (Format.auto, False, Path("x.txt"), Format.table),
        (Format.json, True, Path("x.csv"), Format.json),
        (Format.csv, True, None, Format.csv),
    ],
)
def test_resolve_format(fmt: Format, tty: bool, path: Path | None, expected: Format) -> None:
    assert resolve_format(fmt, tty, path) is expected


def test_unknown_extension_needs_format() -> None:
    with pytest.raises(OutputError, match="extension"):
        resolve_format(Format.auto, False, Path("out.xlsx"))


def test_csv_round_trip_is_exact() -> None:
    rows = parse_csv(to_csv(ROWS))
    assert rows[0] == {"name": "a", "value": 1.2111738962363166, "count": 3, "flag": True}
    assert math.isnan(rows[1]["value"]) and rows[1]["count"] is None and rows[1]["flag"] is False


def test_json_has_no_nan() -> None:
    data = json.loads(to_json(ROWS))
    assert data[1]["value"] is None and data[0]["value"] == 1.2111738962363166


def test_read_records_csv_json_and_stdin(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text(to_csv(ROWS))
    (tmp_path / "r.json").write_text(to_json(ROWS))
    assert read_records(tmp_path / "r.csv")[0]["value"] == 1.2111738962363166
    assert read_records(tmp_path / "r.json")[0]["name"] == "a"
    assert read_records("-", stdin=io.StringIO(to_csv(ROWS)))[0]["count"] == 3


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "empty"),
        ("a,b\n", "no records"),
        ("[1, 2]", "list of objects"),
        ("{bad", "not valid"),
        ("a,b\n1\n", "has 1 fields"),
    ],
)
def test_bad_records(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(RecordsError, match=fragment):
        read_records(path)


def test_missing_records_file(tmp_path: Path) -> None:
    with pytest.raises(RecordsError, match="does not exist"):
        read_records(tmp_path / "nope.csv")


def test_write_atomic_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.csv"
    with pytest.raises(OutputError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "out.csv", "x")
    write_atomic(target, "first")
    assert target.read_text() == "first"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # like a plain open()

    def interrupted(src: str, dst: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("gradscope.output.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, "second, never complete")
    assert target.read_text() == "first"  # the old file is intact
    assert list(tmp_path.iterdir()) == [target]  # and no temporary file is left behind


def test_emit_to_stdout_and_file(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    emit(ROWS, Format.csv, stdout=out, stderr=err, summary=[{"total": 2}])
    assert out.getvalue().splitlines()[0] == "name,value,count,flag"
    assert "total" in err.getvalue()  # the summary goes to stderr in csv mode
    emit(ROWS, Format.auto, tmp_path / "r.json", stdout=out, stderr=err)
    assert json.loads((tmp_path / "r.json").read_text())[0]["name"] == "a"
    emit(ROWS, Format.auto, tmp_path / "r.txt", stdout=out, stderr=err)
    text = (tmp_path / "r.txt").read_text()
    assert "name" in text and "1.21117" in text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (math.nan, "—"),
        ("", "—"),
        (1.2111738962363166, "1.21117"),
        (1e-5, "1e-05"),
        (1e-9, "1e-09"),
        (1.0773e-14, "1.0773e-14"),
        (123456.789, "123457"),
        (2.5e7, "2.5e+07"),
        (-0.0, "0"),
        (math.inf, "inf"),
        (True, "yes"),
        (7, "7"),
        ((3, 32, 32), "3x32x32"),
    ],
)
def test_format_cell_one_rule_for_numbers_and_for_missing_values(value: Any, text: str) -> None:
    assert format_cell(value) == text


def _printed(records: list[dict]) -> str:  # not a terminal: 120 columns
    buf = io.StringIO()
    print_table(records, stream=buf, title="t")
    return buf.getvalue()


def test_screen_table_moves_constant_columns_under_it_and_drops_empty_ones() -> None:
    rows = [
        {"arch": "plain", "depth": 20, "layer": i, "value": 0.5 * i, "empty": None}
        for i in (1, 2, 3)
    ]
    text = _printed(rows)
    lines = text.splitlines()
    assert lines[-1] == "arch=plain, depth=20"
    header = next(line for line in lines if "layer" in line)
    assert "value" in header and "arch" not in header and "empty" not in text


def test_screen_table_of_one_record_is_field_by_field() -> None:
    text = _printed([{"fitted_rate": 1.2113, "predicted_rate": None, "arch": "plain"}])
    assert re.search(r"fitted_rate\s+│\s+1\.2113", text)
    assert re.search(r"arch\s+│\s+plain", text)
    assert "predicted_rate" not in text


def test_screen_table_splits_wide_records_and_keeps_numbers_whole() -> None:
    rows = [
        {"name": f"r{i}", **{f"column_{j}": 123456.789 + i + j for j in range(12)}}
        for i in range(3)
    ]
    text = _printed(rows)
    assert max(len(line) for line in text.splitlines()) <= 120
    # Every number appears whole, and the key column is repeated in each part.
    for i in range(3):
        for j in range(12):
            assert format_cell(123456.789 + i + j) in text
    assert text.count("┃ name") >= 2


def test_screen_table_of_nothing_or_of_empty_columns_does_not_fail() -> None:
    assert "(no records)" in _printed([])
    assert "┃ a" in _printed([{"a": None, "b": None}, {"a": None, "b": None}])


def test_split_screen_table_repeats_the_columns_that_name_a_row() -> None:
    rows = [
        {"activation": act, "layer": i, **{f"measure_{j}": 1000.5 + i + j for j in range(12)}}
        for act in ("relu", "tanh")
        for i in (1, 2)
    ]
    parts = _printed(rows).split("┏")[1:]
    assert len(parts) >= 2
    assert all("activation" in part and "layer" in part for part in parts)


def test_split_screen_table_repeats_every_configuration_column_that_varies() -> None:

    from gradscope.theory.ratios import ratios

    # relu's ratios do not depend on the input std: without input_std its rows look alike
    tables, _ = _display_tables(ratios(["gelu", "relu"], input_std=[0.5, 1.0, 2.0]), None, 80)
    assert len(tables) >= 2
    for table in tables:
        names = [str(c.header).replace("\n", "") for c in table.columns]
        assert names[:2] == ["activation", "input_std"]
    assert str(tables[0].columns[2].header).replace("\n", "") == "rate_per_layer"


def test_headline_comes_right_after_the_row_names_only_in_tables() -> None:
    rows = [
        {"activation": a, "mean_out": 0.5, "forward_ratio": 0.1 * i, "rate_per_layer": 1.0 + i}
        for i, a in enumerate(("relu", "tanh"))
    ]
    header = next(line for line in _printed(rows).splitlines() if "activation" in line)
    assert header.split() == ["┃", "activation", "┃", "rate_per_layer", "┃", "forward_ratio", "┃"]
    piped = render(rows, Format.table)
    assert piped.index("rate_per_layer") < piped.index("mean_out")
    assert to_csv(rows).startswith("activation,mean_out,forward_ratio,rate_per_layer")


@pytest.mark.parametrize(
    ("column", "width", "header"),
    [
        ("rate_per_layer", 9, "rate_per_\nlayer"),
        ("rate_per_layer", 14, "rate_per_layer"),
        ("depth_to_1000x", 8, "depth_\nto_1000x"),
        ("r_squared", 3, "r_squared"),  # never after a single letter
        ("amplification", 5, "amplification"),  # nor inside a word
    ],
)
def test_headers_wrap_at_underscores_only(column: str, width: int, header: str) -> None:
    from gradscope.output import _header

    assert _header(column, width) == header


@pytest.mark.parametrize("width", [40, 60, 80, 100])
def test_screen_tables_fit_the_width_and_break_no_header_inside_a_word(width: int) -> None:
    from gradscope.theory.ratios import ratios

    records = ratios(["relu", "tanh", "maxpool:4"], input_std=[0.5, 1.0])
    tables, _ = _display_tables(records, "t", width)
    buf = io.StringIO()
    console = Console(file=buf, width=width)
    for table in tables:
        console.print(table)
        for column in table.columns:
            lines = str(column.header).split("\n")
            assert "".join(lines) in RatioRecord.__dataclass_fields__  # nothing cut or lost
            assert all(line.endswith("_") for line in lines[:-1])  # each break at an underscore
    assert max(len(line) for line in buf.getvalue().splitlines()) <= width


def test_row_names_are_configuration_or_descriptor_columns_of_the_schema() -> None:
    from gradscope.output import ROW_NAMES
    from gradscope.schema import RECORD_TYPES, Role, roles

    named = {
        column: role
        for record_type in RECORD_TYPES
        for column, role in roles(record_type).items()
        if column in ROW_NAMES
    }
    assert set(named) == ROW_NAMES
    assert Role.measurement not in named.values()


# --- golden screen tables ------------------------------------------------------------------
# What `-f table` prints, in a pipe (every column, one wide table) and on terminals 80 and 200
# columns wide (constant columns under the table, wide tables split with their key columns).
# Rewrite after a deliberate change: python -m pytest tests/test_output.py --update-golden

TABLE_COMMANDS = {
    "ratios-default": ["ratios", "-f", "table"],
    "ratios-relu-tanh-stds": ["ratios", "relu", "tanh", "--input-std", "0.5,1,2", "-f", "table"],
    "ratios-gelu-relu-stds": ["ratios", "gelu", "relu", "--input-std", "0.5,1,2", "-f", "table"],
    "ratios-list": ["ratios", "--list", "-f", "table"],
    "simulate": ["simulate", "--depth", "6", "--repeats", "16", "--seed", "0", "-f", "table"],
    "simulate-summary": [
        "simulate",
        "--depth",
        "6",
        "--repeats",
        "16",
        "--seed",
        "0",
        "--summary",
        "-f",
        "table",
    ],  # fmt: skip
    "simulate-sweep": [
        "simulate",
        "--activation",
        "relu,tanh",
        "--norm",
        "batchnorm,none",
        "--depth",
        "3",
        "--width",
        "32",
        "--repeats",
        "4",
        "--seed",
        "0",
        "-f",
        "table",
    ],  # fmt: skip
    "checkpoint": ["inspect-checkpoint", "vgg.pth", "-f", "table"],
    "checkpoint-summary": ["inspect-checkpoint", "vgg.pth", "--summary", "-f", "table"],
}


@pytest.fixture(scope="module")
def vgg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with vgg.pth: a synthetic VGG19-BN state dict in torch's legacy format."""
    from ckpt_factory import save_legacy, vgg19_bn_state_dict

    folder = tmp_path_factory.mktemp("golden-ckpt")
    save_legacy(vgg19_bn_state_dict(), folder / "vgg.pth")
    return folder


@pytest.mark.parametrize("width", [None, 80, 200], ids=["pipe", "80", "200"])
@pytest.mark.parametrize("name", list(TABLE_COMMANDS))
def test_screen_tables_match_golden_files(
    name: str,
    width: int | None,
    golden_cli: Callable[..., Any],
    vgg_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(vgg_dir)
    variant = "pipe" if width is None else width
    golden_cli(f"tables/{name}.{variant}.txt", TABLE_COMMANDS[name], terminal_width=width)


def test_table_in_a_pipe_follows_columns(cli) -> None:  # type: ignore[no-untyped-def]
    """-f table into a pipe: one wide table by default (a file keeps every column in one
    table); with COLUMNS set, the screen tables at that width, none of them wider."""
    wide = cli(["ratios", "relu", "tanh", "-f", "table"])
    assert wide.exit_code == 0
    assert max(len(line) for line in wide.stdout.splitlines()) > 150
    assert wide.stdout.count("┏") == 1
    narrow = cli(["ratios", "relu", "tanh", "-f", "table"], env={"COLUMNS": "60"})
    assert narrow.exit_code == 0
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 60
    assert narrow.stdout.count("┏") > 1  # split into parts, each repeating the activation
    assert narrow.stdout.count("┃ activation ┃") == narrow.stdout.count("┏")
