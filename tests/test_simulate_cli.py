"""``gradscope simulate`` end to end: CSV columns, sweeps, errors, overflow, Ctrl-C."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.records import parse_csv

runner = CliRunner()
SMALL = ["--depth", "4", "--width", "16", "--batch", "8", "--repeats", "4"]
COLUMNS = (
    "arch,residual_scale,norm_position,activation,norm,init,gain,depth,width,image_size,"
    "pool_every,batch,repeats,layer,channels,spatial,"
    "grad_norm_mean,grad_norm_std,grad_norm_sem,grad_norm_ci_low,grad_norm_ci_high,"
    "forward_var,backward_var,pool_input_var,pool_input_backward_var,predicted_grad_norm,"
    "predicted_backward_var,prediction_in_ci,partial"
)


def run(*args: str):
    return runner.invoke(app, ["simulate", *args])


def test_csv_has_the_documented_columns_and_one_row_per_layer() -> None:
    res = run(*SMALL, "--format", "csv")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == COLUMNS
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [int(r["layer"]) for r in rows] == [1, 2, 3, 4]
    assert {r["init"] for r in rows} == {"he"}


def test_same_seed_gives_bit_identical_csv() -> None:
    a = run(*SMALL, "--seed", "5", "-f", "csv").stdout
    b = run(*SMALL, "--seed", "5", "-f", "csv", "--workers", "1").stdout
    c = run(*SMALL, "--seed", "6", "-f", "csv").stdout
    assert a == b and a != c


def test_figure3_is_one_command_and_one_csv(tmp_path: Path) -> None:
    out = tmp_path / "fig3.csv"
    res = run(*SMALL, "--activation", "selu,tanh,relu", "--norm", "batchnorm,none", "-o", str(out))
    assert res.exit_code == 0, res.output
    rows = parse_csv(out.read_text())
    configs = {(r["activation"], r["norm"], r["init"]) for r in rows}
    assert configs == {
        ("selu", "batchnorm", "lecun"),
        ("selu", "none", "lecun"),
        ("tanh", "batchnorm", "he"),
        ("tanh", "none", "he"),
        ("relu", "batchnorm", "he"),
        ("relu", "none", "he"),
    }
    assert len(rows) == 6 * 4
    assert "summary" in res.stderr  # the summary table goes to stderr in file/csv mode


def test_summary_records_and_plot(tmp_path: Path) -> None:
    fig = tmp_path / "rates.png"
    res = run(*SMALL, "--arch", "plain,resnet", "--summary", "-f", "json", "--plot", str(fig))
    assert res.exit_code == 0, res.output
    assert '"fitted_rate_ci_low"' in res.stdout and '"rate_first_half"' in res.stdout
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


USAGE = 2  # a value that does not parse, as click's own usage errors
USER = 1  # a value that parses but cannot be run


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--arch", "mlp"], "unknown --arch 'mlp'; choose from plain, resnet", USAGE),
        (["--activation", "relu,bogus"], "unknown activation 'bogus'", USAGE),
        (["--arch", "resnet", "--depth", "5"], "its depth must be even, got 5", USER),
        (
            ["--residual-scale", "zero-gamma"],
            "--residual-scale zero-gamma applies to the resnet archs only",
            USER,
        ),
        (["--arch", "resnet", "--norm", "none", "--residual-scale", "zero-gamma"], "zero-gamma",
         USER),
        (["--depth", "0"], "depth must be from 1 to 10000, got 0", USER),
        (["--depth", "4,,8"], "comma-separated list without empty items", USAGE),
        (["--width", "wide"], "--width takes whole numbers, got 'wide'", USAGE),
        (["--depth", "abc"], "--depth takes whole numbers, got 'abc'", USAGE),
        (["--gain", "-1"], "gain must be a positive number", USER),
        (["--repeats", "0"], "--repeats must be at least 1, got 0", USER),
        (["--max-memory", "1MB"], "above --max-memory", USER),
        (["--max-memory", "lots"], "--max-memory must be a size", USAGE),
        (["--plot", "fig.bmp"], "bmp", USER),
    ],
)  # fmt: skip
def test_bad_input_is_one_sentence(
    args: list[str], message: str, code: int, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    res = run(*args, "-o", str(out))
    assert res.exit_code == code, res.output
    assert res.stderr.startswith("Error: ") and message in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert not out.exists()


def test_a_value_of_the_wrong_type_exits_2_whatever_the_option() -> None:
    """--depth abc (parsed by gradscope) and --repeats abc (parsed by click) are the same kind
    of mistake, and exit the same way."""
    assert run("--depth", "abc").exit_code == run("--repeats", "abc").exit_code == 2


def test_c_identity_net_overflow_is_reported() -> None:
    res = run(
        "--activation", "identity", "--norm", "none", "--init", "identity", "--gain", "1.2",
        "--depth", "500", "--width", "8", "--batch", "4", "--repeats", "2", "--summary",
        "-f", "csv",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "overflowed to inf/NaN from layer" in res.stderr and "--dtype float64" in res.stderr
    (row,) = parse_csv(res.stdout)
    assert 470 <= row["overflow_layer"] <= 490 and row["overflow_repeats"] == 2


def test_help_has_an_example() -> None:
    res = runner.invoke(app, ["simulate", "--help"])
    assert res.exit_code == 0 and "Example: gradscope simulate" in res.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_prints_partial_results_and_exits_130() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradscope", "simulate", "--depth", "8", "--width", "64",
         "--repeats", "1000000", "--summary", "-f", "csv", "--progress", "log"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    # Interrupt once some repeats are done, however long start-up takes on a loaded machine:
    # --progress log prints "simulate: done/total" lines on stderr.
    assert proc.stderr is not None
    first = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stderr.readline()
        match = re.match(r"simulate: (\d+)/1000000", line)
        if match and int(match.group(1)) > 0:
            first = line
            break
    assert first, "no progress line within 120 s"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted: partial results" in stderr
    (row,) = parse_csv(stdout)
    assert row["partial"] is True and 0 < row["repeats"] < 1000000


def test_conv_net_end_to_end_with_pool_columns() -> None:
    res = run(
        "--arch", "plain-conv", "--depth", "4", "--width", "4", "--batch", "4",
        "--image-size", "8", "--pool-every", "2", "--double-channels", "--repeats", "3",
        "-f", "csv",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = parse_csv(res.stdout)
    assert [r["channels"] for r in rows] == [4, 4, 8, 8]
    assert [r["spatial"] for r in rows] == [64, 64, 16, 16]
    assert [r["pool_input_var"] is not None for r in rows] == [False, True, False, False]
    assert {r["image_size"] for r in rows} == {8} and {r["pool_every"] for r in rows} == {2}


def test_norm_position_sweeps_resnets_only() -> None:
    res = run(*SMALL, "--arch", "plain,resnet", "--norm-position", "post,pre", "--summary",
              "-f", "csv")  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = parse_csv(res.stdout)
    assert [(r["arch"], r["norm_position"]) for r in rows] == [
        ("plain", "post"), ("resnet", "post"), ("resnet", "pre"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pool-every", "2"], "Error: --pool-every 2 applies to the conv archs"),
        (["--arch", "plain-conv", "--image-size", "2", "--pool-every", "1", "--depth", "4"],
         "Error: image size 2 is too small for 3 2×2 max-pools"),
        (["--norm-position", "pre"], "Error: --norm-position pre applies to the resnet archs"),
        (["--arch", "resnet-conv", "--train-steps", "2"],
         "Error: --train-steps does not support --arch resnet-conv yet"),
        (["--arch", "plain-conv", "--train-steps", "2"],
         "Error: the training set would hold 4096 × 262144 numbers"),
    ],
)  # fmt: skip
def test_bad_conv_and_norm_position_options_are_one_line(args: list[str], message: str) -> None:
    res = run(*args)
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1].startswith(message), res.stderr


def test_unknown_norm_position_is_a_usage_error() -> None:
    res = run("--norm-position", "middle")
    assert res.exit_code == 2
    assert res.stderr == "Error: unknown --norm-position 'middle'; choose from post, pre\n"


def test_batch_two_with_batchnorm_is_warned_about() -> None:
    res = run("--batch", "2", "--depth", "3", "--width", "8", "--repeats", "2", "-f", "csv")
    assert res.exit_code == 0
    assert "Warning: with --batch 2, BatchNorm maps every unit to ±1" in res.stderr
    res = run("--batch", "4", "--depth", "3", "--width", "8", "--repeats", "2", "-f", "csv")
    assert "--batch 2" not in res.stderr


def test_ctrl_c_in_a_pipe_to_plot_keeps_the_partial_records(tmp_path: Path) -> None:
    """`simulate | plot -` and one Ctrl-C, which the terminal sends to both: simulate writes
    the repeats it finished and exits 130; plot draws them and exits 130 too."""
    figure = tmp_path / "x.png"
    script = (
        f"{sys.executable} -m gradscope simulate --depth 6 --width 32 --repeats 1000000 "
        f"--progress log -f csv 2>{tmp_path / 'sim.err'} | "
        f"{sys.executable} -m gradscope plot - -o {figure} 2>{tmp_path / 'plot.err'}; "
        "echo ${PIPESTATUS[0]} ${PIPESTATUS[1]} >" + str(tmp_path / "codes")
    )
    proc = subprocess.Popen(["bash", "-c", script], start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = (tmp_path / "sim.err").read_text() if (tmp_path / "sim.err").exists() else ""
        if re.search(r"simulate: [1-9]\d*/1000000", text):
            break
        time.sleep(0.2)
    else:
        pytest.fail("no progress line within 120 s")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group
    proc.wait(timeout=60)
    assert (tmp_path / "codes").read_text().split() == ["130", "130"]
    plot_err = (tmp_path / "plot.err").read_text()
    assert "interrupted: drawing the" in plot_err and "Traceback" not in plot_err
    assert figure.stat().st_size > 10_000
