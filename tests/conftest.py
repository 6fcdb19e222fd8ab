"""Fixtures shared by the test files: running the CLI in-process (in a pipe or on a terminal of a
given width) and golden files under tests/golden/.

Golden files pin output byte for byte. After a deliberate change of output, rewrite them with
``python -m pytest --update-golden`` and review the diff of tests/golden/ before committing.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

GOLDEN = Path(__file__).parent / "golden"
MAX_DIFF_LINES = 80


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="write the output of golden tests to tests/golden/ instead of comparing with it",
    )
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run the tests marked slow (GRADSCOPE_SLOW_TESTS=1 does the same)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (tens of seconds each: 3-rank torchrun sweeps and the like) are
    skipped, with that reason, unless ``--slow`` or GRADSCOPE_SLOW_TESTS=1; CI runs them."""
    if config.getoption("--slow") or os.environ.get("GRADSCOPE_SLOW_TESTS"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


class _TerminalRunner(CliRunner):
    """A CliRunner whose stdout says it is a terminal, so gradscope prints screen tables.

    rich is told (TTY_COMPATIBLE=0) to write no escape codes, so the text is what the terminal
    shows, without colour; the width comes from COLUMNS.
    """

    @contextlib.contextmanager
    def isolation(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with super().isolation(*args, **kwargs) as streams:
            sys.stdout.isatty = lambda: True  # type: ignore[method-assign]
            yield streams


CliRun = Callable[..., Result]


@pytest.fixture(autouse=True)
def _no_shell_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """A COLUMNS from the shell (or pytest-xdist) would change ``-f table`` in a pipe: tests
    that want a width set it themselves."""
    monkeypatch.delenv("COLUMNS", raising=False)


@pytest.fixture
def cli() -> CliRun:
    """Run ``gradscope ARGS`` in-process and return click's Result (exit_code, stdout, stderr).

    ``cli(["plot", "-"], input=text)`` runs in a pipe; ``terminal_width=80`` runs it as on a
    terminal 80 columns wide (COLUMNS=80, stdout a tty, no colour).
    """
    from gradscope.cli import app

    def run(
        args: Sequence[str],
        *,
        input: str | None = None,
        env: Mapping[str, str | None] | None = None,
        terminal_width: int | None = None,
    ) -> Result:
        if terminal_width is None:
            return CliRunner().invoke(app, list(args), input=input, env=env)
        screen = {"COLUMNS": str(terminal_width), "TTY_COMPATIBLE": "0", **(env or {})}
        return _TerminalRunner().invoke(app, list(args), input=input, env=screen)

    return run


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``golden(name, text)``: fail unless ``text`` is the content of tests/golden/<name>;
    with ``--update-golden``, write ``text`` there instead."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
            return
        if not path.exists():
            pytest.fail(
                f"the golden file tests/golden/{name} does not exist; create it with "
                f"python -m pytest {request.node.nodeid!r} --update-golden",
                pytrace=False,
            )
        expected = path.read_bytes().decode("utf-8")
        if text != expected:
            diff = list(
                difflib.unified_diff(
                    expected.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    f"tests/golden/{name}",
                    "output",
                )
            )
            shown = "".join(diff[:MAX_DIFF_LINES])
            more = (
                f"\n... {len(diff) - MAX_DIFF_LINES} more diff lines"
                if diff[MAX_DIFF_LINES:]
                else ""
            )
            pytest.fail(
                f"output differs from tests/golden/{name}:\n{shown}{more}\n"
                "if the change is intended, rewrite the file with --update-golden",
                pytrace=False,
            )

    return check


@pytest.fixture
def golden_cli(cli: CliRun, golden: Callable[[str, str], None]) -> CliRun:
    """``golden_cli(name, args, terminal_width=None, about="")``: run ``gradscope ARGS`` (it must
    succeed) and compare its transcript (the command, stdout, then stderr) with
    tests/golden/<name>; returns click's Result."""

    def run(
        name: str, args: Sequence[str], *, terminal_width: int | None = None, about: str = ""
    ) -> Result:
        result = cli(args, terminal_width=terminal_width)
        assert result.exit_code == 0, result.output
        where = (
            "in a pipe"
            if terminal_width is None
            else f"on a terminal {terminal_width} columns wide"
        )
        text = f"$ gradscope {' '.join(args)}  # {where}{about}\n{result.stdout}"
        if result.stderr:
            text += f"--- stderr ---\n{result.stderr}"
        golden(name, text)
        return result

    return run
