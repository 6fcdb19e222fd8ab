"""Hostile paths, names and sizes (issue 17 §1, §4, §5): outputs never replace what they should
not, names from files print as data, and every user-supplied size is bounded. Each failure is
one ``Error:`` line and exit 1 (never a traceback), before any work."""

from __future__ import annotations

import csv
import io
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gradscope.errors import ExpressionError, OutputError
from gradscope.options import Format
from gradscope.output import emit, print_table, render_table, write_atomic
from gradscope.records import parse_csv, read_records, to_csv

CliRun = Callable[..., Any]  # the cli fixture of conftest.py
ROOT = Path(__file__).resolve().parents[1]
CSV_RELU = ["ratios", "relu", "-f", "csv"]


def one_error_line(stderr: str, *fragments: str) -> None:
    """``stderr`` is exactly one ``Error:`` line holding every fragment, and no traceback."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def relu_csv(cli: CliRun) -> str:
    result = cli(CSV_RELU)
    assert result.exit_code == 0
    return result.stdout


# --------------------------------------------------------------------------------------------
# §1 output paths: regular files are replaced whole; streams are written through


def test_fifo_is_written_through_and_stays_a_fifo(cli: CliRun, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = cli([*CSV_RELU, "-o", str(fifo)])
    reader.join(timeout=30)
    assert result.exit_code == 0, result.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # not turned into a regular file
    assert received == [relu_csv(cli).encode()]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary file


def test_fifo_without_a_reader_is_refused_not_hung(
    cli: CliRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    monkeypatch.setattr("gradscope.output.FIFO_WAIT_SECONDS", 0.2)
    result = cli([*CSV_RELU, "-o", str(fifo)])
    assert result.exit_code == 1
    one_error_line(result.stderr, "no process opened the FIFO", "for reading within 0.2 s")
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_symlink_keeps_its_link_and_its_target_is_replaced(cli: CliRun, tmp_path: Path) -> None:
    target, link = tmp_path / "real.csv", tmp_path / "link.csv"
    target.write_text("old\n")
    target.chmod(0o640)
    link.symlink_to(target.name)
    result = cli(["ratios", "relu", "-o", str(link)])
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == "real.csv"
    assert target.read_text() == relu_csv(cli)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # the replaced file keeps its mode
    dangling = tmp_path / "new-link.csv"
    dangling.symlink_to("created.csv")
    assert cli(["ratios", "relu", "-o", str(dangling)]).exit_code == 0
    assert dangling.is_symlink() and (tmp_path / "created.csv").read_text() == relu_csv(cli)


def test_dev_stdout_is_written_through_to_the_pipe() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gradscope", *CSV_RELU, "-o", "/dev/stdout"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("activation,input_std,")
    assert len(done.stdout.splitlines()) == 2


@pytest.mark.parametrize(
    ("where", "fragment"),
    [
        ("afile/out.csv", "afile is not a directory"),
        ("missing/out.csv", "missing does not exist"),
        ("afile/deeper/out.csv", "deeper does not exist"),
    ],
)
def test_unwritable_directory_is_refused_before_the_work(
    cli: CliRun, tmp_path: Path, where: str, fragment: str
) -> None:
    """As root every permission check passes (``os.access``), so "cannot write there" is a
    parent that is a regular file or missing. A simulate run that would take minutes and
    pass the memory guard is refused at once: the check comes before the work."""
    (tmp_path / "afile").write_text("a file, not a directory\n")
    out = tmp_path / where
    slow = ["simulate", "--depth", "10000", "--width", "1", "--batch", "2", "--repeats", "500"]
    for args in (CSV_RELU, slow):
        result = cli([*args, "-o", str(out)])
        assert result.exit_code == 1
        one_error_line(result.stderr, fragment)


def test_socket_and_closed_descriptor_are_refused(cli: CliRun, tmp_path: Path) -> None:
    sock_path = tmp_path / "s"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(sock_path))
        result = cli([*CSV_RELU, "-o", str(sock_path)])
    finally:
        sock.close()
    one_error_line(result.stderr, "not a regular file, a FIFO or a character device")
    assert stat.S_ISSOCK(sock_path.stat().st_mode)
    closed = os.open(os.devnull, os.O_RDONLY)
    os.close(closed)
    result = cli([*CSV_RELU, "-o", f"/dev/fd/{closed}"])
    one_error_line(result.stderr, f"descriptor {closed}, which is not open")


def test_stale_part_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out.csv"
    stale = tmp_path / f".out.csv.{dead.pid}.abc123.part"
    live = tmp_path / f".out.csv.{os.getpid()}.def456.part"  # a writer still running
    other = tmp_path / f".other.csv.{dead.pid}.abc123.part"  # another output's
    for path in (stale, live, other):
        path.write_text("half")
    write_atomic(out, "whole\n")
    assert out.read_text() == "whole\n"
    assert not stale.exists() and live.exists() and other.exists()


def test_file_and_directory_are_fsynced_around_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr("gradscope.output.os.fsync", fsync)
    monkeypatch.setattr("gradscope.output.os.replace", replace)
    write_atomic(tmp_path / "out.csv", "x\n")
    assert events == ["fsync file", "rename", "fsync dir"]


def test_a_failed_write_is_one_sentence_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.csv"
    out.write_text("old\n")

    def no_space(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gradscope.output.os.replace", no_space)
    with pytest.raises(OutputError, match=r"^cannot write .*out.csv: No space left on device$"):
        write_atomic(out, "new\n")
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_stdout_on_dev_full_is_one_line() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    for fmt in ("csv", "table", "json"):
        with open("/dev/full", "w") as full:  # stdout redirected there, never an -o target
            done = subprocess.run(
                [sys.executable, "-m", "gradscope", "ratios", "-f", fmt],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                timeout=60,
            )
        assert done.returncode == 1
        one_error_line(done.stderr, "cannot write to stdout: No space left on device")


# --------------------------------------------------------------------------------------------
# §4 names are data

MARKUP = ["[/]", "[link=file:///etc/passwd]click[/link]", "[bold]x", "back\\"]


def test_markup_in_names_prints_literally_in_every_table() -> None:
    rows = [{"layer": name, "sigma": float(i + 1)} for i, name in enumerate(MARKUP)]
    for text in (render_table(rows, title="[red]t"), _screen(rows), _screen(rows[:1])):
        for name in MARKUP[: 1 if text.count("\n") < 8 else None]:
            assert name in text
    assert "[red]t" in render_table(rows, title="[red]t")


def _screen(rows: list[dict[str, object]]) -> str:
    stream = io.StringIO()
    print_table(rows, stream=stream)
    return stream.getvalue()


def test_control_characters_in_names_are_escaped_in_tables_and_error_lines(
    cli: CliRun, tmp_path: Path
) -> None:
    osc = "\x1b]8;;file:///etc/passwd\x07name\x1b[2J"
    table = render_table([{"layer": osc, "sigma": 1.0}, {"layer": "b", "sigma": 2.0}])
    assert "\x1b" not in table and "\\x1b]8;;file:///etc/passwd\\x07name\\x1b[2J" in table
    records = tmp_path / "r.csv"
    records.write_text("layer,sigma\n1,2\n2,3\n")
    result = cli(["plot", str(records), "--x", osc, "--y", "sigma", "-o", str(tmp_path / "f.png")])
    assert result.exit_code == 1
    one_error_line(result.stderr, "\\x1b]8;;file:///etc/passwd\\x07name\\x1b[2J")
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr


def test_warning_and_note_lines_escape_control_characters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gradscope.cli.common import error, note, warn

    error("a\rb\nc")
    warn("\x9b31m\u202eevil")
    note("Verdict: \x1b[31mred\nsecond line")
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "Error: a\\rb\\nc",
        "Warning: \\x9b31m\\u202eevil",
        "Verdict: \\x1b[31mred",
        "second line",
    ]


FORMULAS = ['=HYPERLINK("http://x","y")', "+cmd", "-x", "@SUM(A1)", "\t=1", "\r=1", "'=a"]


def test_csv_text_cells_are_escaped_against_formulas_and_read_back_unchanged() -> None:
    rows = [{"layer": name, "value": -1.5, "count": -3} for name in FORMULAS]
    rows.append({"layer": "-1.5", "value": 2.0, "count": 1})  # text that is a number
    text = to_csv(rows)
    cells = list(csv.reader(io.StringIO(text, newline="")))[1:]
    # OWASP: a cell that starts with = + - @ tab or CR gets a leading quote; numbers never do
    assert [c[0] for c in cells] == [
        "'=HYPERLINK(\"http://x\",\"y\")", "'+cmd", "'-x", "'@SUM(A1)", "'\t=1", "'\r=1",
        "''=a", "-1.5",
    ]  # fmt: skip
    assert all(c[1] in ("-1.5", "2.0") and c[2] in ("-3", "1") for c in cells)
    back = parse_csv(text)
    assert [r["layer"] for r in back[:-1]] == FORMULAS  # the quote keeps even a leading tab
    assert back[-1]["layer"] == -1.5 and back[0]["value"] == -1.5 and back[0]["count"] == -3


def test_escaped_csv_from_emit_reads_back(tmp_path: Path) -> None:
    rows = [{"layer": "=1+1", "sigma": 0.5}, {"layer": "@x", "sigma": 2.0}]
    out = tmp_path / "r.csv"
    emit(rows, Format.csv, out, stdout=io.StringIO(), stderr=io.StringIO())
    assert out.read_text().splitlines()[1] == "'=1+1,0.5"
    assert read_records(out) == rows


# --------------------------------------------------------------------------------------------
# §5 bounds on user-supplied sizes


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("x*9**9**9", "is over 1e+300 (9 ** 9 ** 9)"),
        ("x*10**10**7", "is over 1e+300 (10 ** 10 ** 7)"),
        ("sin(" * 150 + "x" + ")" * 150, "nested 152 deep, over the 300 parts and 40 levels"),
        ("x+" * 600 + "x", "characters long, over the 1000"),
    ],
)
def test_expression_bounds(cli: CliRun, expression: str, fragment: str) -> None:
    result = cli(["ratios", "--expr", expression])
    assert result.exit_code == 1
    one_error_line(result.stderr, fragment)


def test_sympy_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sympy")
    from gradscope.theory import expr

    # Solving for the kink of a degree-7 polynomial takes SymPy about 2 s here.
    monkeypatch.setattr(expr, "SYMPY_SECONDS", 0.05)
    with pytest.raises(ExpressionError, match="SymPy took over 0.05 s"):
        expr.parse_expression("Abs((x+1)**7 - 3*x + 1)")
    monkeypatch.setattr(expr, "SYMPY_SECONDS", 30.0)
    assert expr.parse_expression("x*tanh(x)").kinks == ()  # the alarm is off again


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["ratios", "relu", "-s", "0.25:4:10000000"], "a count from 1 to 1000"),
        (["ratios", "relu", "-s", ",".join(["1"] * 1001)], "at most 1000 values, got 1001"),
        (["simulate", "--depth", "100000"], "--depth must be from 1 to 10000, got 100000"),
        (["simulate", "--gain", "1e308"], "gain must be a positive number up to 1e+06"),
        (
            ["simulate", "--max-memory", "100TiB", "--depth", "100", "--width", "100000"],
            "of memory free on this machine (RAM and swap), whatever --max-memory says",
        ),
        (
            ["simulate", "--max-memory", "100000TiB", "--depth", "2", "--width", "10000000"],
            "whatever --max-memory says",
        ),
        (["simulate", "--max-memory", "1" + "0" * 400], "is beyond any machine's memory"),
    ],
)
def test_size_bounds(cli: CliRun, args: list[str], fragment: str) -> None:
    result = cli([*args, "-f", "csv"])
    assert result.exit_code == 1
    one_error_line(result.stderr, fragment)


def test_model_input_shape_is_refused_before_allocating(cli: CliRun, tmp_path: Path) -> None:
    model = tmp_path / "tiny.py"
    model.write_text("from torch import nn\n\ndef net():\n    return nn.Linear(4, 4)\n")
    result = cli(
        ["simulate", "--model", f"{model}:net", "--input-shape", "100000,100000", "-f", "csv"]
    )
    assert result.exit_code == 1
    # 4 copies (input, its gradient, two activations) of 128 × 10^10 float32 values
    need = 4 * 4 * 128 * 100000 * 100000 / 2**40
    one_error_line(result.stderr, f"need at least {need:.1f} TiB", "lower --input-shape")


def test_memory_estimate_counts_per_layer_overheads() -> None:
    """Deep narrow nets are dominated by per-layer Python and tensor objects: measured 3.7 KiB
    a layer (width 1, batch 2, two repeats in flight); the data alone is 16 bytes."""
    from gradscope.engine.runner import estimate_memory
    from gradscope.options import Dtype
    from gradscope.specs import build_specs

    spec = build_specs(depth=10000, width=1, batch=2)[0]
    assert estimate_memory(spec, 2, Dtype.float32, 2) / spec.depth >= 3.7 * 1024


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--size", "1e6,1e6"], "at most 200 inches a side"),
        (["--dpi", "100000"], "dpi must be from 1 to 1200, got 100000"),
        (["--size", "50,50", "--dpi", "1000"], "over the 1e+08 gradscope draws"),
        (["--title", "$\\frac{$"], "is not valid mathtext"),
    ],
)
def test_figure_bounds(cli: CliRun, tmp_path: Path, args: list[str], fragment: str) -> None:
    records = tmp_path / "r.csv"
    records.write_text(relu_csv(cli))
    figure = tmp_path / "f.png"
    result = cli(["plot", str(records), "-o", str(figure), *args])
    assert result.exit_code == 1
    one_error_line(result.stderr, fragment)
    assert not figure.exists()


def test_dollars_in_names_are_drawn_literally(cli: CliRun, tmp_path: Path) -> None:
    records = tmp_path / "r.csv"
    records.write_text("x,y,group\n1,2,$\\frac{$\n2,3,$\\frac{$\n1,3,b\n2,5,b\n")
    figure = tmp_path / "f.svg"
    result = cli(
        ["plot", str(records), "--x", "x", "--y", "y", "--hue", "group", "-o", str(figure)]
    )
    assert result.exit_code == 0, result.stderr
    assert "$\\frac{$" in figure.read_text()  # SVG text is kept as text


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("a,b\n" + "x" * 200_000 + ",1\n", "r line 2 has a field over 128 KiB"),
        ("[" * 100_000, "is JSON nested too deeply to be records"),
    ],
)
def test_records_bounds(cli: CliRun, tmp_path: Path, content: str, fragment: str) -> None:
    records = tmp_path / "r"
    records.write_text(content)
    result = cli(["plot", str(records), "-o", str(tmp_path / "f.png")])
    assert result.exit_code == 1
    one_error_line(result.stderr, fragment)


def test_binary_stdin_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gradscope", "plot", "-", "-o", str(tmp_path / "f.png")],
        input=bytes(range(256)) * 8,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 1
    one_error_line(done.stderr.decode(), "stdin is not text (expected CSV or JSON records)")


def test_deep_json_meta_is_one_line(cli: CliRun, tmp_path: Path) -> None:
    meta = tmp_path / "m.json"
    meta.write_text('{"a":' * 100_000)
    result = cli(["plot", "--show-meta", str(meta)])
    assert result.exit_code == 1
    one_error_line(result.stderr, "nested too deeply")
