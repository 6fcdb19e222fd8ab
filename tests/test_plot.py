"""gradscope plot: the figure itself (lines, bands, scales, labels), files, CLI and bad input.

Records are built here from closed forms (geometric series), not from other commands.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.image import imread

from gradscope.errors import OutputError, PlotWarning, RecordsError, SpecError
from gradscope.options import RecordKind
from gradscope.plot.figure import plot_records
from gradscope.plot.spec import build_spec, detect_kind
from gradscope.plot.terminal import render_preview
from gradscope.plot.write import figure_bytes, figure_format
from gradscope.records import read_records

RATE = 1.2111738962363166  # sqrt(r(ReLU)), the norm growth per layer behind BatchNorm
DEPTH = 8


def layer_rows(archs: tuple[str, ...] = ("plain", "resnet")) -> list[dict]:
    """Per-layer records: plain grows by RATE per layer toward the input, resnet is flat."""
    rows = []
    for arch in archs:
        for layer in range(1, DEPTH + 1):
            mean = 0.1 * RATE ** (DEPTH - layer) if arch == "plain" else 0.1
            rows.append(
                {
                    "arch": arch,
                    "activation": "relu",
                    "norm": "batchnorm",
                    "init": "he" if arch == "plain" else "he-resnet",  # varies with arch
                    "gain": 1.0,
                    "depth": DEPTH,
                    "width": 64,
                    "batch": 32,
                    "repeats": 16,
                    "module": f"layers.{layer - 1}",  # describes the layer, not the config
                    "layer": layer,
                    "grad_norm_mean": mean,
                    "grad_norm_std": 0.2 * mean,
                    "grad_norm_sem": 0.05 * mean,
                    "grad_norm_ci_low": 0.9 * mean,
                    "grad_norm_ci_high": 1.1 * mean,
                    "forward_var": 1.0,
                    "backward_var": mean**2,
                    "predicted_grad_norm": mean if arch == "plain" else None,
                    "prediction_in_ci": layer % 2 == 0 if arch == "plain" else None,
                }
            )
    return rows


def sweep_rows() -> list[dict]:
    rates = {"relu": RATE, "selu": 1.0351690646729157}
    return [
        {
            "arch": "plain",
            "activation": activation,
            "depth": depth,
            "width": 64,
            "fitted_rate": rate + 0.01 / depth,
            "fitted_rate_ci_low": rate - 0.1 / depth,
            "fitted_rate_ci_high": rate + 0.1 / depth,
            "predicted_rate": rate,
            "r_squared": 0.99,
            "amplification": rate ** (depth - 1),
            "overflow_layer": None,
            "prediction_in_ci": depth > 4,
            "partial": False,
        }
        for activation, rate in rates.items()
        for depth in (4, 8, 16, 32)
    ]


DOWNSAMPLES = {2, 5}  # indices of the first BatchNorm after each pooling layer


def checkpoint_rows(names: tuple[str, ...] = ("a.pt", "b.pt")) -> list[dict]:
    return [
        {
            "checkpoint": name,
            "index": index,
            "name": f"features.{3 * index + 1}",
            "num_features": 64,
            "sigma": (1 + k) * 2.0 ** (8 - index),
            "after_downsample": index in DOWNSAMPLES,
            "flags": "",
        }
        for k, name in enumerate(names)
        for index in range(8)
    ]


def ratio_rows(stds: tuple[float, ...] = (1.0,)) -> list[dict]:
    return [
        {
            "activation": activation,
            "input_std": std,
            "ratio": base * std,
            "rate_per_layer": base**0.5,
            "method": "closed-form",
        }
        for activation, base in (("relu", 1.4669422069242599), ("tanh", 1.1778072323041796))
        for std in stds
    ]


def legend_texts(fig: Figure) -> list[str]:
    legend = fig.axes[0].get_legend() or fig.legends[0]
    return [t.get_text() for t in legend.get_texts()]


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: "" if v is None else ("true" if v is True else "false" if v is False else v)
                    for k, v in row.items()
                }
            )
    return path


# --- recognising the records ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "kind"),
    [
        (layer_rows(), RecordKind.layers),
        (sweep_rows(), RecordKind.sweep),
        (checkpoint_rows(), RecordKind.checkpoint),
        (ratio_rows(), RecordKind.ratios),
        ([{"a": 1, "b": 2}], None),
    ],
)
def test_kind_is_recognised_from_columns(rows: list[dict], kind: RecordKind | None) -> None:
    assert detect_kind(rows[0]) is kind


# --- the default figures --------------------------------------------------------------------


def test_layer_figure_has_lines_bands_predictions_and_log_axis() -> None:
    fig = plot_records(layer_rows())
    ax = fig.axes[0]
    # Two measured lines and one prediction: resnet has no predicted_grad_norm.
    assert len(ax.lines) == 3
    assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2
    assert ax.get_yscale() == "log"
    assert "grad_norm_mean" in ax.get_ylabel()
    assert ax.get_xlabel() == "layer"
    # Labelled by the column that varies and is needed: arch (init varies with it, module
    # describes layers), and the legend explains the band and the dashed line.
    assert legend_texts(fig) == ["plain", "resnet", "confidence interval", "predicted"]
    assert ax.get_legend().get_title().get_text() == "arch"
    measured, predicted = ax.lines[0], ax.lines[1]
    assert predicted.get_linestyle() == "--"
    assert predicted.get_color() == measured.get_color()
    expected = 0.1 * RATE ** (DEPTH - np.arange(1, DEPTH + 1))
    np.testing.assert_allclose(measured.get_ydata(), expected)
    np.testing.assert_allclose(predicted.get_ydata(), expected)
    assert "depth=8" in ax.get_title() and "width=64" in ax.get_title()


def test_layer_figure_with_one_config_needs_no_hue() -> None:
    fig = plot_records(layer_rows(("plain",)))
    assert legend_texts(fig) == ["measured", "confidence interval", "predicted"]
    assert "arch=plain" in fig.axes[0].get_title()


def test_sweep_figure_plots_rate_against_the_swept_variable() -> None:
    fig = plot_records(sweep_rows())
    ax = fig.axes[0]
    assert ax.get_xlabel() == "depth"
    assert ax.get_yscale() == "linear"
    assert sum(isinstance(c, LineCollection) for c in ax.collections) == 2  # CI bars
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 2
    np.testing.assert_allclose(dashed[0].get_ydata(), RATE)
    assert legend_texts(fig)[:2] == ["relu", "selu"]


def test_checkpoint_figure_marks_downsamples_and_reverses() -> None:
    fig = plot_records(checkpoint_rows(), reverse_x=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.xaxis_inverted()
    vertical = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert sorted(line.get_xdata()[0] for line in vertical) == [i - 0.5 for i in DOWNSAMPLES]
    assert legend_texts(fig) == ["a.pt", "b.pt", "downsample"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 2.0 ** (8 - np.arange(8)))


def test_ratios_with_one_std_is_a_bar_chart_by_activation() -> None:
    fig = plot_records(ratio_rows())
    ax = fig.axes[0]
    # bars rise from 1 (no growth) to the rate, and are labelled with the rate itself
    tops = [p.get_y() + p.get_height() for p in ax.patches]
    np.testing.assert_allclose(tops, [1.4669422069242599**0.5, 1.1778072323041796**0.5])
    assert all(p.get_y() == 1.0 for p in ax.patches)
    assert [t.get_text() for t in ax.texts] == ["1.211", "1.085"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["relu", "tanh"]
    assert "rate_per_layer" in ax.get_ylabel()


def test_ratios_with_several_stds_are_lines_against_input_std() -> None:
    fig = plot_records(ratio_rows((0.5, 1.0, 2.0)))
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    assert "input_std" in ax.get_xlabel() and "ratio" in ax.get_ylabel()
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0.5, 1.0, 2.0])


def test_narrow_log_axis_has_plain_tick_labels() -> None:
    rows = [{"layer": i, "grad_norm_mean": 0.05 * 1.02 ** (20 - i)} for i in range(1, 21)]
    ax = plot_records(rows).axes[0]
    ax.figure.canvas.draw()
    labels = {t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()}
    assert {"0.05", "0.06", "0.07"} <= labels


def test_dataclass_records_are_accepted() -> None:
    @dataclasses.dataclass(frozen=True)
    class Layer:
        layer: int
        grad_norm_mean: float

    fig = plot_records([Layer(i, 2.0**i) for i in range(1, 5)])
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [2, 4, 8, 16])


# --- overrides --------------------------------------------------------------------------------


def test_overrides_choose_axes_hue_scale_and_title() -> None:
    fig = plot_records(
        layer_rows(), y="backward_var", hue="init", logy=False, title="Backward variance"
    )
    ax = fig.axes[0]
    assert ax.get_yscale() == "linear"
    assert fig.get_suptitle() == "Backward variance"
    assert legend_texts(fig) == ["he", "he-resnet"]
    assert len(ax.collections) == 0  # no interval columns for backward_var


def test_unknown_columns_plot_with_x_and_y() -> None:
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 6)]
    fig = plot_records(rows, x="step", y="loss")
    assert fig.get_suptitle() == "loss against step"
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [1 / s for s in range(1, 6)])


def test_unknown_style_and_column_are_spec_errors() -> None:
    with pytest.raises(SpecError, match="unknown matplotlib style 'nope'"):
        plot_records(layer_rows(), style="nope")
    with pytest.raises(SpecError, match="--y 'nope' is not a column"):
        plot_records(layer_rows(), y="nope")


# --- files -------------------------------------------------------------------------------


def test_png_has_requested_size_and_dpi(tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "fig.png"
    plot_records(layer_rows(), out, size=(4.0, 3.0), dpi=50)
    assert imread(out).shape[:2] == (150, 200)
    with Image.open(out) as image:
        assert image.size == (200, 150)
        assert image.info["dpi"] == pytest.approx((50, 50), abs=0.1)


def test_svg_keeps_series_labels_as_text(tmp_path: Path) -> None:
    out = tmp_path / "fig.svg"
    plot_records(checkpoint_rows(), out)
    text = out.read_text()
    assert "a.pt" in text and "b.pt" in text and "downsample" in text


def test_pdf_and_determinism(tmp_path: Path) -> None:
    fig = plot_records(sweep_rows())
    assert figure_bytes(fig, figure_format(Path("x.pdf"))).startswith(b"%PDF")
    first = figure_bytes(plot_records(sweep_rows()), figure_format(Path("x.svg")))
    assert first == figure_bytes(plot_records(sweep_rows()), figure_format(Path("x.svg")))


def test_bad_output_fails_before_writing(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="use .png, .svg or .pdf"):
        plot_records(layer_rows(), tmp_path / "fig.jpg")
    with pytest.raises(OutputError, match="does not exist"):
        plot_records(layer_rows(), tmp_path / "missing" / "fig.png")
    assert list(tmp_path.iterdir()) == []


# --- values a log axis cannot show ------------------------------------------------------------


def test_non_positive_values_are_left_out_with_a_warning() -> None:
    rows = layer_rows(("plain",))
    rows[0]["grad_norm_mean"] = 0.0
    with pytest.warns(PlotWarning, match="1 of 8 values of grad_norm_mean are not positive"):
        fig = plot_records(rows)
    assert fig.axes[0].get_yscale() == "log"
    assert np.isnan(fig.axes[0].lines[0].get_ydata()[0])


def test_all_non_positive_values_fall_back_to_a_linear_axis() -> None:
    rows = [{"layer": i, "grad_norm_mean": -float(i)} for i in range(1, 4)]
    with pytest.warns(PlotWarning, match="y axis is linear"):
        fig = plot_records(rows)
    assert fig.axes[0].get_yscale() == "linear"


def test_infinite_values_are_reported() -> None:
    rows = [{"layer": i, "grad_norm_mean": float("inf") if i == 1 else 1.0 / i} for i in (1, 2, 3)]
    with pytest.warns(PlotWarning, match=r"grad_norm_mean has 1 infinite value\(s\)"):
        plot_records(rows)


def test_non_numeric_column_is_a_records_error() -> None:
    rows = layer_rows(("plain",))
    rows[3]["grad_norm_mean"] = "oops"
    with pytest.raises(RecordsError, match="'grad_norm_mean' is not numeric"):
        build_spec(rows)


# --- terminal preview ----------------------------------------------------------------------


def render_text(renderable: object) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_terminal_preview_draws_braille_lines_with_a_legend() -> None:
    text = render_text(render_preview(build_spec(layer_rows())))
    assert any(0x2801 <= ord(ch) <= 0x28FF for ch in text)
    assert "plain" in text and "resnet" in text
    assert f"{0.1 * RATE ** (DEPTH - 1):.4g}" in text  # the top tick is the largest value


def test_terminal_preview_of_bars_orders_lengths_by_value() -> None:
    text = render_text(render_preview(build_spec(ratio_rows())))
    lines = {line.split()[0]: line.count("█") for line in text.splitlines() if "█" in line}
    assert lines["relu"] > lines["tanh"] > 0


PREVIEW_SOURCES = ("simulate", "two-archs", "ratios")


@pytest.mark.parametrize("width", [80, 200])
@pytest.mark.parametrize("source", PREVIEW_SOURCES)
def test_terminal_preview_matches_golden_files(
    source: str,
    width: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Callable[..., Any],
    golden_cli: Callable[..., Any],
) -> None:
    """``plot FILE --terminal`` as a terminal of ``width`` columns shows it (previews are at
    most 100 columns wide). Rewrite: python -m pytest tests/test_plot.py --update-golden"""
    monkeypatch.chdir(tmp_path)
    if source == "simulate":
        made = cli(["simulate", "--depth", "6", "--repeats", "16", "--seed", "0", "-o", "s.csv"])
        assert made.exit_code == 0, made.output
    else:
        write_csv(tmp_path / "s.csv", layer_rows() if source == "two-archs" else ratio_rows())
    golden_cli(
        f"plot/terminal-{source}.{width}.txt",
        ["plot", "s.csv", "--terminal"],
        terminal_width=width,
        about=f" ({source} records)",
    )
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".meta.json"))
    assert written == ["s.csv"]  # no figure file (s.csv.meta.json is simulate's provenance)


# --- the CLI end to end -------------------------------------------------------------------


def test_cli_reads_stdin_and_writes_png(tmp_path: Path, cli: Callable[..., Any]) -> None:
    write_csv(tmp_path / "in.csv", layer_rows())
    out = tmp_path / "grads.png"
    result = cli(["plot", "-", "-o", str(out)], input=(tmp_path / "in.csv").read_text())
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote {out}\n"
    assert result.stdout == ""
    assert imread(out).shape[:2] == (675, 1050)


def test_cli_reads_json_and_picks_a_default_name(
    tmp_path: Path, monkeypatch, cli: Callable[..., Any]
) -> None:
    source = tmp_path / "sweep.json"
    source.write_text(json.dumps(sweep_rows()))
    monkeypatch.chdir(tmp_path)
    result = cli(["plot", str(source), "--size", "4,3", "--dpi", "40"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "wrote sweep.png\n"
    assert imread(tmp_path / "sweep.png").shape[:2] == (120, 160)


def test_cli_labels_files_apart_when_nothing_else_differs(
    tmp_path: Path, cli: Callable[..., Any]
) -> None:
    first = write_csv(tmp_path / "run1.csv", layer_rows(("plain",)))
    second = write_csv(tmp_path / "run2.csv", layer_rows(("plain",)))
    out = tmp_path / "both.svg"
    result = cli(["plot", str(first), str(second), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "run1.csv" in out.read_text() and "run2.csv" in out.read_text()


def test_cli_terminal_preview_without_output_writes_no_file(
    tmp_path: Path, monkeypatch, cli: Callable[..., Any]
) -> None:
    source = write_csv(tmp_path / "ck.csv", checkpoint_rows())
    monkeypatch.chdir(tmp_path)
    result = cli(["plot", str(source), "--terminal", "--reverse-x"])
    assert result.exit_code == 0, result.output
    assert "BatchNorm σ per layer" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.csv"]


def test_cli_overrides_reach_the_figure(tmp_path: Path, cli: Callable[..., Any]) -> None:
    source = write_csv(tmp_path / "layers.csv", layer_rows())
    out = tmp_path / "fig.svg"
    args = ["--y", "backward_var", "--hue", "init", "--no-logy", "--title", "My title"]
    args += ["--style", "ggplot", "--size", "5,3", "--dpi", "72", "-o", str(out)]
    result = cli(["plot", str(source), *args])
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert "My title" in svg and "he-resnet" in svg and "backward_var" in svg
    assert 'width="360pt" height="216pt"' in svg


def test_cli_warns_about_non_positive_values(tmp_path: Path, cli: Callable[..., Any]) -> None:
    rows = layer_rows(("plain",))
    rows[-1]["grad_norm_mean"] = -1.0
    source = write_csv(tmp_path / "neg.csv", rows)
    out = tmp_path / "neg.png"
    result = cli(["plot", str(source), "-o", str(out)])
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        "Warning: 1 of 8 values of grad_norm_mean are not positive and are left out of the "
        "log axis",
        f"wrote {out}",
    ]
    assert out.exists()


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("", [], "is empty: expected CSV or JSON records"),
        ("a,b\n1,2\n", [], "expected simulate records (layer, grad_norm_mean)"),
        ("a,b\n1,2\n", [], "choose the columns to plot with --x and --y"),
        ("a,b\n1,x\n", ["--x", "a", "--y", "b"], "column 'b' is not numeric"),
        ("layer,grad_norm_mean\n1,2\n", ["--size", "big"], "--size takes W,H in inches"),
        ("layer,grad_norm_mean\n1,2\n", ["--style", "nope"], "unknown matplotlib style"),
        ("layer,grad_norm_mean\n1,2\n", ["-o", "fig.jpg"], "use .png, .svg or .pdf"),
        ("layer,grad_norm_mean\n1,2\n", ["-o", "no/such/dir/f.png"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_without_a_file(
    tmp_path: Path,
    monkeypatch,
    content: str,
    args: list[str],
    message: str,
    cli: Callable[..., Any],
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(content)
    monkeypatch.chdir(tmp_path)
    result = cli(["plot", str(source), *args])
    assert result.exit_code == (2 if args[:1] == ["--size"] else 1)  # --size big: no parse
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_cli_rejects_mixed_record_kinds(tmp_path: Path, cli: Callable[..., Any]) -> None:
    first = write_csv(tmp_path / "a.csv", layer_rows())
    second = write_csv(tmp_path / "b.csv", checkpoint_rows())
    result = cli(["plot", str(first), str(second)])
    assert result.exit_code == 1
    assert "different kinds of records (checkpoint, layers)" in result.stderr


def test_plot_imports_neither_torch_nor_pyplot(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "in.csv", layer_rows())
    code = (
        "import sys\n"
        "from gradscope.cli import app\n"
        f"try:\n    app(['plot', {str(source)!r}, '-o', {str(tmp_path / 'f.png')!r}])\n"
        "except SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "f.png").exists()


def test_help_and_terminal_preview_load_no_matplotlib(tmp_path: Path) -> None:
    """matplotlib loads only when a figure is drawn: not for --help, nor for a preview."""
    source = write_csv(tmp_path / "in.csv", layer_rows())
    code = (
        "import sys\n"
        "from gradscope.cli import app\n"
        f"for args in (['plot', '--help'], ['plot', {str(source)!r}, '--terminal']):\n"
        "    try:\n        app(args)\n"
        "    except SystemExit as exc:\n        assert exc.code in (0, None), exc.code\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_training_rows_become_a_heatmap(tmp_path: Path) -> None:
    from matplotlib.collections import QuadMesh

    rows = [
        {"arch": "plain", "step": step, "layer": layer, "grad_norm_mean": 1.2 ** (4 - layer),
         "weight_norm": 1.0, "sigma": 1.0 + 0.1 * (4 - layer), "loss": 1.0 / (1 + step)}
        for step in (0, 10, 20)
        for layer in (1, 2, 3, 4)
    ]  # fmt: skip
    fig = plot_records(rows, tmp_path / "train.png")
    heatmap = fig.axes[0]  # (the colour bar has a mesh of its own)
    meshes = [c for c in heatmap.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 1 and heatmap.get_xlabel() == "training step"
    values = np.asarray(meshes[0].get_array()).reshape(-1)
    # log10 of the gradient norms, one cell per (layer, step)
    assert sorted(np.round(values, 10)) == sorted(
        np.round([math.log10(r["grad_norm_mean"]) for r in rows], 10)
    )
    assert (tmp_path / "train.png").stat().st_size > 0


@pytest.fixture
def simulate_csv(cli: Callable[..., Any]) -> Callable[..., str]:
    """``simulate_csv(*args)``: the CSV that ``gradscope simulate --seed 3 ARGS`` writes."""

    def run(*args: str) -> str:
        result = cli(["simulate", "--format", "csv", "--seed", "3", *args])
        assert result.exit_code == 0, result.stderr
        return result.stdout

    return run


def test_conv_records_from_simulate_plot_one_line_per_arch(
    simulate_csv: Callable[..., str],
) -> None:
    # Per-layer measurements of conv nets (channels, spatial size, pool variances) change along
    # the layers: they must not be taken for configuration and split the lines.
    text = simulate_csv(
        "--arch", "plain-conv,resnet-conv", "--depth", "4", "--width", "4", "--batch", "2",
        "--repeats", "4", "--image-size", "8", "--pool-every", "2",
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {"channels", "spatial", "pool_input_var"} <= set(rows[0])
    fig = plot_records(read_records("-", stdin=io.StringIO(text)))
    assert legend_texts(fig) == ["plain-conv", "resnet-conv", "confidence interval", "predicted"]
    solid = [line for line in fig.axes[0].lines if line.get_linestyle() == "-"]
    assert [len(line.get_xdata()) for line in solid] == [4, 4]


def test_training_summary_plots_rate_against_step(simulate_csv: Callable[..., str]) -> None:
    text = simulate_csv(
        "--depth", "4", "--width", "8", "--batch", "16", "--repeats", "2",
        "--train-steps", "6", "--record-every", "2", "--task", "teacher", "--summary",
    )  # fmt: skip
    fig = plot_records(read_records("-", stdin=io.StringIO(text)))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "step"
    measured = [line for line in ax.lines if line.get_linestyle() == "-"]
    assert len(measured) == 1
    steps = sorted({int(r["step"]) for r in csv.DictReader(io.StringIO(text))})
    np.testing.assert_allclose(np.sort(measured[0].get_xdata()), steps)


def test_empty_nan_and_non_numeric_inputs() -> None:
    with pytest.raises(RecordsError, match="no values to plot"):
        plot_records([{"layer": 1, "grad_norm_mean": None}, {"layer": 2, "grad_norm_mean": None}])
    with pytest.warns(PlotWarning, match="empty or NaN in 1 record"):
        fig = plot_records(
            [{"layer": i, "grad_norm_mean": v} for i, v in ((1, 2.0), (2, math.nan), (3, 1.0))]
        )
    assert len(fig.axes[0].lines[0].get_xdata()) == 3  # the gap stays a gap
    with pytest.raises(RecordsError, match="'layer' must be numeric"):
        plot_records([{"layer": "a", "grad_norm_mean": 2.0}, {"layer": "b", "grad_norm_mean": 1.0}])


def test_empty_json_list_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "e.json"
    path.write_text("[]")
    with pytest.raises(RecordsError, match="an empty JSON list"):
        read_records(path)


def test_model_skip_modules_get_their_own_marker() -> None:
    rows = [
        {"model": "m", "layer": i, "module": f"m{i}", "path": p, "grad_norm_mean": v}
        for i, (p, v) in enumerate(
            [("main", 3.0), ("branch", 2.0), ("skip", 0.5), ("branch", 1.5)], 1
        )
    ]
    fig = plot_records(rows)
    squares = [line for line in fig.axes[0].lines if line.get_marker() == "s"]
    assert len(squares) == 1 and list(squares[0].get_xdata()) == [3.0]
    assert "skip path (shortcut)" in legend_texts(fig)
