"""`simulate --model` and `simulate --train-steps` end to end through the CLI."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
RESNET = f"{ROOT / 'examples' / 'resnet.py'}:make_model"
PLAIN = f"{ROOT / 'examples' / 'plain_cnn.py'}:make_model"


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_model_records_and_summary(tmp_path: Path) -> None:
    code, out, err = run(
        "simulate", "--model", RESNET, "--model-arg", "width=4", "--model-arg",
        "blocks_per_stage=1", "--input-shape", "3,8,8", "--batch", "4", "--repeats", "3",
        "-f", "csv", "--plot", str(tmp_path / "m.png"),
    )  # fmt: skip
    assert code == 0, err
    table = rows(out)
    assert [r["module"] for r in table][:3] == ["0", "3.conv1", "3.conv2"]
    assert {r["path"] for r in table} == {"main", "branch", "skip"}
    assert table[0]["module_type"] == "Conv2d" and table[0]["param_count"] == "108"
    assert all(float(r["grad_norm_mean"]) > 0 for r in table)
    assert (tmp_path / "m.png").stat().st_size > 0
    code, out, _ = run(
        "simulate", "--model", PLAIN, "--model-arg", "width=4", "--input-shape", "3,8,8",
        "--batch", "4", "--repeats", "3", "--summary", "-f", "csv",
    )  # fmt: skip
    assert code == 0 and rows(out)[0]["path"] == "all"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", RESNET], "Error: --model needs --input-shape"),
        (["--model", "nope.py:make", "--input-shape", "3"], "Error: model file nope.py does not"),
        (["--model", RESNET, "--input-shape", "5,8,8"], "rejected an input of shape"),
        (["--model", RESNET, "--input-shape", "3,8,8", "--batch", "4,8"], "Error: --batch takes"),
        (["--input-shape", "3,8,8"], "Error: --input-shape applies only with --model"),
        (["--train-steps", "-1"], "Error: --train-steps must be 0 or more"),
        (["--growth", "g.csv"], "Error: --growth applies only with --train-steps"),
    ],
)
def test_model_and_train_errors(args: list[str], message: str) -> None:
    code, out, err = run("simulate", "--repeats", "1", *args)
    assert code == 1
    (line,) = err.strip().splitlines()
    assert line.startswith("Error: ") and message.removeprefix("Error: ") in line
    assert out == ""


def test_shape_error_shows_the_models_own_message() -> None:
    code, _, err = run("simulate", "--model", RESNET, "--input-shape", "5,8,8", "--repeats", "1")
    assert code == 1
    assert "rejected an input of shape (128, 5, 8, 8): RuntimeError" in err
    assert "expected input" in err and "channels" in err  # torch's own words


def test_train_steps_records_growth_and_checkpoint(tmp_path: Path) -> None:
    ckpt, growth = tmp_path / "net.pt", tmp_path / "growth.csv"
    code, out, err = run(
        "simulate", "--train-steps", "20", "--depth", "4", "--width", "16", "--batch", "16",
        "--repeats", "2", "--record-every", "10", "--task", "gaussian-classes",
        "--save-checkpoint", str(ckpt), "--growth", str(growth), "-f", "csv",
    )  # fmt: skip
    assert code == 0, err
    table = rows(out)
    assert sorted({int(r["step"]) for r in table}) == [0, 10, 19]
    assert {"weight_norm", "sigma", "update_size", "trust_ratio", "loss"} <= set(table[0])
    check = rows(growth.read_text())
    assert len(check) == 4
    # SGD without weight decay: ‖W‖² grows by lr²Σ‖∇W‖², measured against predicted
    for r in check:
        assert float(r["measured_growth"]) == pytest.approx(float(r["predicted_growth"]), rel=1e-2)
    assert "weight-norm growth check" in err
    # the checkpoint reads back through inspect-checkpoint with the last step's sigma
    code, out, _ = run("inspect-checkpoint", str(ckpt), "-f", "csv")
    assert code == 0
    sigmas = [float(r["sigma"]) for r in rows(out)]
    last = [r for r in table if r["step"] == "19"]
    assert len(sigmas) == len(last) == 4


BAD_OUTPUTS = """
import torch
from torch import nn


class Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x).detach()


class Argmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x).argmax(dim=1)


def detached():
    return Detached()


def argmax():
    return Argmax()
"""


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("detached", "autograd cannot backpropagate"),
        ("argmax", "returned a int64 output"),
    ],
)
def test_outputs_that_cannot_be_backpropagated_are_one_line(
    tmp_path: Path, factory: str, message: str
) -> None:
    path = tmp_path / "bad.py"
    path.write_text(BAD_OUTPUTS)
    out = tmp_path / "out.csv"
    code, _, err = run(
        "simulate", "--model", f"{path}:{factory}", "--input-shape", "4", "--batch", "4",
        "--repeats", "2", "-o", str(out),
    )  # fmt: skip
    assert code == 1 and err.startswith("Error: ") and message in err
    assert err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--model", PLAIN, "--input-shape", "3,8,8", "--depth", "7"],
            "--depth only applies to the built-in nets, not to --model",
        ),
        (
            ["--model", PLAIN, "--input-shape", "3,8,8", "--activation", "tanh", "--lr", "1"],
            "--activation, --lr only apply to the built-in nets",
        ),
        (
            ["--model", PLAIN, "--input-shape", "3,8,8", "--train-steps", "2"],
            "--train-steps does not support --model",
        ),
        (["--lr", "0.5"], "--lr applies only with --train-steps"),
        # Given with its default value is still given (click's parameter source decides).
        (["--lr", "0.1"], "--lr applies only with --train-steps"),
        (
            ["--task", "teacher", "--weight-decay", "0.1"],
            "--task, --weight-decay apply only with --train-steps",
        ),
        (
            ["--model", PLAIN, "--input-shape", "3,8,8", "--plot", "fig.gif"],
            "cannot tell the figure format",
        ),
    ],
)
def test_options_that_would_be_ignored_are_refused(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out.csv"
    code, _, err = run("simulate", "--repeats", "2", *args, "-o", str(out))
    assert code == 1 and message in err, err
    assert not out.exists()


def test_training_plot_checks_style_and_refuses_unused_overrides(tmp_path: Path) -> None:
    code, out, err = run(
        "simulate", "--train-steps", "4", "--depth", "3", "--width", "8", "--batch", "16",
        "--repeats", "1", "-f", "csv",
    )  # fmt: skip
    assert code == 0, err
    records = tmp_path / "train.csv"
    records.write_text(out)
    fig = tmp_path / "f.png"
    code, _, err = run("plot", str(records), "--style", "nosuchstyle", "-o", str(fig))
    assert code == 1 and "unknown matplotlib style 'nosuchstyle'" in err and not fig.exists()
    code, _, err = run("plot", str(records), "--hue", "layer", "-o", str(fig))
    assert code == 1 and "--hue: not used by the training heatmap" in err and not fig.exists()
    code, _, err = run("plot", str(records), "-o", str(fig))
    assert code == 0 and fig.exists()
