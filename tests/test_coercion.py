"""gradscope's plain coercion of command-line values agrees with typer's own (pydantic) one,
and spares every run the pydantic import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from gradscope.cli import coercion
from gradscope.cli.root import COMMANDS, build_app

SAMPLES = ["0", "1", "7", "-3", "2.5", "2.0", "1e3", "1e400", " 4", "abc", "", "true", "no",
           "auto", "AUTO", "he", "Lecun", "out.csv", "-", "nan", "a_dir", "a_file.csv"]  # fmt: skip


def _params() -> list[tuple[str, Any]]:
    command = typer.main.get_command(build_app(COMMANDS))
    found = []
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        for param in sub.params:
            descriptor = getattr(param, "type_descriptor", None)
            if descriptor is not None and coercion._plain(descriptor) is not None:
                found.append((f"{name} {param.name}", param))
    return found


def _outcome(runtime: Any, param: Any, value: Any) -> tuple[str, Any]:
    try:
        return "ok", runtime.coerce(value, param=param, ctx=None)
    except typer.BadParameter:
        return "refused", None


def test_every_plain_parameter_coerces_as_typer_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """typer's pydantic adapters are the oracle: same value, or both refuse (an existing
    directory for a file option included)."""
    from typer._coercion import build_runtime_param

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file.csv").write_text("x\n")

    params = _params()
    assert len(params) > 40  # every command's options and arguments
    compared = 0
    for label, param in params:
        ours = coercion._plain(param.type_descriptor)
        theirs = build_runtime_param(param.type_descriptor)
        multi = param.multiple or param.nargs == -1
        for text in SAMPLES:
            value: Any = [text] if multi else text
            mine, expected = _outcome(ours, param, value), _outcome(theirs, param, value)
            if param.type_descriptor.annotation is bool and expected[0] != mine[0]:
                continue  # flags never reach coercion with a string (typer skips bools)
            same_nan = all(isinstance(o[1], float) and o[1] != o[1] for o in (mine, expected))
            assert same_nan or mine == expected, (label, text)
            compared += 1
    assert compared > 500


def test_pydantic_is_not_imported_by_a_run(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from gradscope.cli.root import main\n"
        "try:\n"
        "    main(['ratios', 'relu', '--depth', '30', '-f', 'csv'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print('pydantic' in sys.modules, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert proc.stderr.strip().splitlines()[-1] == "False"
    assert proc.stdout.startswith("activation,")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--repeats", "abc"], "Invalid value for '--repeats' / '-n': 'abc' is not an"),
        (["simulate", "--backend", "foo"], "'foo' is not one of 'auto', 'threads', 'processes'"),
        (["plot", "x.csv", "--dpi", "0"], "Invalid value for '--dpi': 0 must be at least 1"),
    ],
)
def test_bad_values_are_one_usage_line(args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gradscope", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: ") and message in proc.stderr
    assert proc.stderr.count("\n") == 1
