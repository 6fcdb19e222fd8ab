"""End-to-end CLI tests: exact output, errors as one line, and the no-torch start-up."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gradscope import __version__
from gradscope.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_version() -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"gradscope {__version__}"


def test_ratios_csv_reference_values() -> None:
    code, out, _ = run("ratios", "relu", "tanh", "selu", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["activation"] for r in rows] == ["relu", "tanh", "selu"]
    assert [r["ratio"][:12] for r in rows] == ["1.4669422069", "1.1778072323", "1.0715749924"]
    assert float(rows[0]["ratio"]) == pytest.approx(math.pi / (math.pi - 1), rel=1e-13)


def test_ratios_default_is_csv_in_a_pipe_and_sorted() -> None:
    code, out, _ = run("ratios")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    rates = [float(r["rate_per_layer"]) for r in rows]
    assert rates == sorted(rates, reverse=True) and rows[0]["activation"] == "relu"


def test_ratios_json_and_std_list() -> None:
    code, out, _ = run("ratios", "tanh", "--input-std", "0.5,1", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert [round(d["ratio"], 3) for d in data] == [1.034, 1.178]


def test_ratios_table_file_and_operators(tmp_path: Path) -> None:
    target = tmp_path / "r.txt"
    code, _, _ = run("ratios", "maxpool:4", "batchnorm:128", "linear:512x256", "-o", str(target))
    assert code == 0
    text = target.read_text()
    assert "maxpool:4" in text and "0.491715" in text and "linear:512x256/he" in text


def test_ratios_expr() -> None:
    code, out, _ = run("ratios", "--expr", "x*tanh(log(1+exp(x)))", "--format", "csv")
    assert code == 0
    (row,) = csv.DictReader(io.StringIO(out))
    assert row["activation"] == "expr:x*tanh(log(1+exp(x)))"
    assert float(row["ratio"]) == pytest.approx(1.2142592552894, rel=1e-10)


def test_ratios_list() -> None:
    code, out, _ = run("ratios", "--list", "--format", "csv")
    assert code == 0 and "leaky_relu,,negative_slope,0.01" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ratios", "--expr", "x*tanh("], "Error: cannot parse the expression"),
        (["ratios", "--input-std", "-1"], "Error: input std must be positive"),
        (["ratios", "relu", "-o", "/nonexistent-dir/x.csv"], "Error: the directory"),
        (["ratios", "relu", "-o", "out.xlsx"], "Error: cannot tell the format"),
        (["ratios", "--depth", "0"], "Error: depth must be at least 1"),
    ],
)
def test_errors_are_one_line(args: list[str], message: str) -> None:
    code, out, err = run(*args)
    assert code == 1
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ratios", "leaky_relu:x"], "Error: the negative_slope of leaky_relu must be a number"),
        (["ratios", "maxpool:x"], "Error: the window size K of maxpool must be an integer"),
        (["ratios", "linear:axb"], "Error: write a linear layer as linear:DOUTxDIN"),
        (["ratios", "--input-std", "1:x:3"], "Error: --input-std takes a number"),
    ],
)
def test_values_that_do_not_parse_exit_2(args: list[str], message: str) -> None:
    code, out, err = run(*args)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1


def test_unknown_activation_is_a_usage_error() -> None:
    """An unknown name is a value that does not parse: exit 2, as click's own choices."""
    code, out, err = run("ratios", "swishy")
    assert code == 2 and out == ""
    assert err.startswith("Error: unknown activation 'swishy'") and err.count("\n") == 1


def test_failed_command_writes_no_file(tmp_path: Path) -> None:
    target = tmp_path / "r.csv"
    code, _, _ = run("ratios", "relu", "nope", "-o", str(target))
    assert code == 2 and not target.exists()
    code, _, _ = run("ratios", "relu", "--depth", "0", "-o", str(target))
    assert code == 1 and not target.exists()


def test_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    from gradscope.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["ratios", "--no-such-option"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("Error: No such option: --no-such-option")


def _modules_after(args: list[str]) -> dict[str, object]:
    probe = (
        "import sys, runpy, json\n"
        f"sys.argv = ['gradscope', *{args!r}]\n"
        "try:\n"
        "    runpy.run_module('gradscope', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "else:\n"
        "    code = 0\n"
        "sys.stderr.write(json.dumps({'torch': 'torch' in sys.modules,\n"
        "                             'matplotlib': 'matplotlib' in sys.modules, 'code': code}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    return json.loads(proc.stderr.strip().splitlines()[-1])


def test_ratios_never_imports_torch() -> None:
    result = _modules_after(["ratios", "--format", "csv"])
    # nor matplotlib: the table comes back in a quarter of a second
    assert result == {"torch": False, "matplotlib": False, "code": 0}


def test_python_dash_m_works() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gradscope", "ratios", "relu", "-f", "csv"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("activation,input_std")


def test_every_command_has_help_with_an_example_and_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert "ratios" in commands
    for name in commands:
        code, out, _ = run(name, "--help")
        assert code == 0 and "Example" in out, name
        assert f"gradscope {name}" in readme, name


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["simulate", "--bogus"], "No such option: --bogus"),
        (["simulate", "--image-size", "x"], "Invalid value for '--image-size'"),
        (["ratios", "--activation", "relu"], "No such option: --activation"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gradscope", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0]
    assert "Traceback" not in proc.stderr and "─" not in proc.stderr


def test_main_returns_zero_for_help_and_version() -> None:
    for args in (["--help"], ["--version"], ["ratios", "--help"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "gradscope", *args], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0 and "gradscope" in proc.stdout


# --- help and command-line conventions ------------------------------------------------------


def _help(*args: str, columns: int = 80) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_short_version_flag() -> None:
    code, out, _ = run("-V")
    assert code == 0 and out.strip() == f"gradscope {__version__}"


def test_commands_are_listed_in_workflow_order() -> None:
    text = _help()
    commands = text[text.index("Commands") :]
    order = ["ratios", "simulate", "inspect-checkpoint", "plot"]
    positions = [commands.index(f"│ {name} ") for name in order]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    "command", [[], ["ratios"], ["simulate"], ["inspect-checkpoint"], ["plot"]]
)
def test_help_shows_no_type_placeholder_for_flags_or_lists(command: list[str]) -> None:
    text = _help(*command)
    assert "<bool>" not in text and "<list[" not in text


def test_backend_shows_its_choices_and_rejects_others_as_a_usage_error() -> None:
    assert "<auto|threads|processes>" in _help("simulate")
    proc = subprocess.run(
        [sys.executable, "-m", "gradscope", "simulate", "--backend", "fibres"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("Error: Invalid value for '--backend'")


def _placeholders(command: Any, ctx: Any) -> list[str]:
    """What help shows after each option of ``command``: its metavar or its type."""
    shown = []
    for param in command.get_params(ctx):
        placeholder = param.display_type_rich(ctx=ctx)
        if placeholder:
            shown.append(placeholder)
    return shown


@pytest.mark.parametrize("name", ["ratios", "simulate", "inspect-checkpoint", "plot"])
def test_help_at_80_columns_breaks_no_placeholder_and_no_sentence(name: str) -> None:
    """Placeholders (``<auto|threads|processes>``) are never folded, and a paragraph of help
    runs on as one sentence: no line ends inside it and starts again on its own line."""
    import click
    import typer.main

    group = typer.main.get_command(app)
    command = group.commands[name]  # type: ignore[attr-defined]
    with click.Context(command, info_name=name) as ctx:
        placeholders = _placeholders(command, ctx)
    text = _help(name)
    for placeholder in placeholders:
        assert placeholder in text, placeholder
    wide = _help(name, columns=400)
    assert command.help.split("\n\n")[0] in wide  # the first paragraph on one line


def test_command_list_shows_each_first_paragraph_as_one_sentence() -> None:
    text = _help(columns=400)  # wide enough for any paragraph: no line break of the source
    assert (
        "Forward and backward variance ratios of activations and operators, and the gradient "
        "growth per layer they imply behind BatchNorm." in text
    )


def test_shell_completion_is_offered_and_shows_a_script() -> None:
    text = _help()
    assert "--install-completion" in text and "--show-completion" in text
    proc = subprocess.run(
        [sys.executable, "-m", "gradscope", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )
    assert proc.returncode == 0 and "_gradscope_completion" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "gradscope"],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "_GRADSCOPE_COMPLETE": "complete_bash",
            "COMP_WORDS": "gradscope simulate --backend ",
            "COMP_CWORD": "3",
        },
    )
    assert proc.stdout.split() == ["auto", "threads", "processes"]


def test_ratios_list_has_the_operators_with_their_parameter() -> None:
    code, out, _ = run("ratios", "--list", "--format", "csv")
    rows = {r["activation"]: r for r in csv.DictReader(io.StringIO(out))}
    assert code == 0 and {"maxpool", "batchnorm", "linear", "relu"} <= set(rows)
    assert rows["maxpool"]["parameter"].startswith("K")
    assert rows["linear"]["parameter"].startswith("DOUTxDIN")
    assert "1 − 2/B" in rows["batchnorm"]["definition"]
    for name in ("maxpool:4", "batchnorm:8", "linear:4x2"):  # each is accepted as listed
        assert run("ratios", name, "-f", "csv")[0] == 0


@pytest.mark.parametrize("name", ["", "ratios", "simulate", "inspect-checkpoint", "plot"])
def test_help_matches_golden_files(name: str, golden: Callable[[str, str], None]) -> None:
    args = [name] if name else []
    text = f"$ gradscope {' '.join([*args, '--help'])}  # 80 columns\n{_help(*args)}"
    golden(f"help/{name or 'gradscope'}.80.txt", text)
