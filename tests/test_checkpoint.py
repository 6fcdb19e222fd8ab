"""inspect-checkpoint: every format gives the same rows, checked against numpy on the tensors."""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from ckpt_factory import (
    GROWTH,
    POOL_DROP,
    VGG,
    assert_one_line_error,
    bn_layout,
    run_cli,
    save_every_format,
    save_legacy,
    save_safetensors,
    save_torchscript,
    save_zip,
    vgg19_bn_module,
    vgg19_bn_state_dict,
)
from torch import nn

from gradscope.checkpoint import batchnorm_records, inspect_checkpoint, open_checkpoint
from gradscope.errors import CheckpointError
from gradscope.records import schema
from gradscope.schema import CheckpointRecord, CheckpointSummaryRecord, WeightRecord

BN_NAMES = [f"features.{bi}" for _, bi, _, _ in bn_layout()]
AFTER_POOL = {3, 5, 9, 13}  # 1-based BN indices right after the first four max-pools


@pytest.fixture(scope="module")
def sd() -> OrderedDict[str, torch.Tensor]:
    return vgg19_bn_state_dict(scale=16, seed=0)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, sd: dict) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("vgg")
    return {
        **save_every_format(d, scale=16, seed=0),
        "lightning": save_zip(
            {
                "epoch": 3,
                "global_step": 1200,
                "pytorch-lightning_version": "2.2.0",
                "state_dict": OrderedDict((f"model.{k}", v) for k, v in sd.items()),
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1}]}],
                "hyper_parameters": {"lr": 0.1},
            },
            d / "lightning.ckpt",
        ),
    }


def expected_rows(sd: dict[str, torch.Tensor], prefix: str = "") -> list[dict]:
    """Independent computation of every numeric column with numpy."""
    rows = []
    for ci, bi, _, _ in bn_layout():
        var = sd[f"features.{bi}.running_var"].numpy().astype(np.float64)
        gamma = sd[f"features.{bi}.weight"].numpy().astype(np.float64)
        w = sd[f"features.{ci}.weight"].numpy().astype(np.float64)
        fro2 = float(np.sum(w**2))
        rows.append(
            {
                "name": f"{prefix}features.{bi}",
                "sigma": float(np.sqrt(var.mean())),
                "running_var_min": float(var.min()),
                "running_var_max": float(var.max()),
                "running_mean_mean": float(sd[f"features.{bi}.running_mean"].double().mean()),
                "gamma_mean": float(gamma.mean()),
                "beta_mean": float(sd[f"features.{bi}.bias"].double().mean()),
                "effective_gain": float(np.mean(np.abs(gamma) / np.sqrt(var + 1e-5))),
                "weight_name": f"{prefix}features.{ci}.weight",
                "weight_shape": tuple(w.shape),
                "weight_fro": math.sqrt(fro2),
                "forward_ratio": fro2 / w.shape[0],
                "backward_ratio": fro2 / w.shape[1],
            }
        )
    return rows


def check_vgg(records: list[CheckpointRecord], sd: dict, prefix: str = "") -> None:
    assert len(records) == 16
    assert [r.index for r in records] == list(range(1, 17))
    assert {r.index for r in records if r.after_downsample} == AFTER_POOL
    for rec, exp in zip(records, expected_rows(sd, prefix), strict=True):
        for column, value in exp.items():
            got = getattr(rec, column)
            if isinstance(value, float):
                assert got == pytest.approx(value, rel=1e-9), (rec.name, column)
            else:
                assert got == value, (rec.name, column)
        assert rec.flags == ""
        assert rec.eps == 1e-5


@pytest.mark.parametrize("fmt", ["legacy", "zip", "safetensors", "sharded", "torchscript"])
def test_vgg_layout_every_format_cli_with_plot(
    files: dict[str, Path], tmp_path: Path, fmt: str
) -> None:
    fig, out = tmp_path / "sigma.svg", tmp_path / "rows.json"
    code, _, err = run_cli(
        "inspect-checkpoint", str(files[fmt]), "--plot", str(fig), "-o", str(out)
    )
    assert code == 0, err
    rows = json.loads(out.read_text())["records"]
    assert [r["name"] for r in rows] == BN_NAMES
    assert {r["index"] for r in rows if r["after_downsample"]} == AFTER_POOL
    svg = fig.read_text()
    assert svg.startswith("<?xml") and "downsample" in svg


@pytest.mark.parametrize("fmt", ["legacy", "zip", "safetensors", "sharded", "torchscript"])
def test_vgg_layout_every_format(files: dict[str, Path], sd: dict, fmt: str) -> None:
    result = inspect_checkpoint(files[fmt])
    check_vgg(result.records, sd)
    assert all(r.checkpoint == str(files[fmt]) for r in result.records)
    head = result.summary[0]  # the headline: within segments, the input layer left out
    assert head.scope == "within segments" and head.n_layers == 14
    assert head.growth_per_layer is not None and head.growth_per_layer > 0
    assert head.rate_ci_low is not None and head.rate_ci_low > 1


def test_order_note_only_for_unordered_formats(files: dict[str, Path]) -> None:
    for fmt in ("safetensors", "sharded"):
        assert any("natural key order" in n for n in inspect_checkpoint(files[fmt]).notes)
    for fmt in ("legacy", "zip", "torchscript"):
        assert not any("natural key order" in n for n in inspect_checkpoint(files[fmt]).notes)


def test_summary_fits_against_numpy(files: dict[str, Path], sd: dict) -> None:
    result = inspect_checkpoint(files["legacy"], include_input_layer=True)
    sigma = np.array([r["sigma"] for r in expected_rows(sd)])
    index = np.arange(1, 17)
    slope = np.polyfit(-index, np.log(sigma), 1)[0]
    whole = next(s for s in result.summary if s.scope == "all layers")
    assert whole.rate_per_layer == pytest.approx(math.exp(slope), rel=1e-10)
    # Between pools sigma grows by exactly GROWTH per layer toward the input (built in).
    segments = [s for s in result.summary if s.scope.startswith("segment")]
    assert [(s.from_index, s.to_index) for s in segments] == [
        (1, 2),
        (3, 4),
        (5, 8),
        (9, 12),
        (13, 16),
    ]
    for seg in segments:
        assert seg.rate_per_layer == pytest.approx(GROWTH, rel=1e-5)
    for seg in segments[2:]:
        assert seg.r_squared == pytest.approx(1.0, abs=1e-9)
        assert seg.rate_ci_low <= GROWTH <= seg.rate_ci_high
    # The drops right after the pools.
    drops = [s for s in result.summary if s.scope == "downsample"]
    assert {d.to_index for d in drops} == AFTER_POOL
    for drop in drops:
        assert drop.sigma_ratio == pytest.approx(POOL_DROP / GROWTH, rel=1e-5)


def test_lightning_checkpoint(files: dict[str, Path], sd: dict) -> None:
    result = inspect_checkpoint(files["lightning"])
    check_vgg(result.records, sd, prefix="model.")
    assert any("'state_dict'" in n for n in result.notes)
    assert any("Lightning" in n for n in result.notes)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict", "net"])
def test_nested_keys_are_found_and_named(tmp_path: Path, sd: dict, key: str) -> None:
    path = save_zip({key: sd, "epoch": 7, "args": {"lr": 0.1}}, tmp_path / "nested.pth")
    result = inspect_checkpoint(path)
    check_vgg(result.records, sd)
    assert result.sources[0].key == key
    assert any(f"under key {key!r}" in n for n in result.notes)


def test_ema_needs_key_and_key_chooses(tmp_path: Path, sd: dict) -> None:
    ema = vgg19_bn_state_dict(scale=16, seed=1)
    path = save_legacy({"state_dict": sd, "ema": ema}, tmp_path / "ema.pth")
    default = inspect_checkpoint(path)
    check_vgg(default.records, sd)
    assert any("'ema'" in n and "--key" in n for n in default.notes)
    chosen = inspect_checkpoint(path, key="ema")
    check_vgg(chosen.records, ema)
    nested = save_zip({"ema": {"module": sd}}, tmp_path / "ema_nested.pth")
    check_vgg(inspect_checkpoint(nested, key="ema.module").records, sd)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_prefixes_are_stripped(tmp_path: Path, sd: dict, prefix: str) -> None:
    path = save_zip(OrderedDict((prefix + k, v) for k, v in sd.items()), tmp_path / "p.pt")
    result = inspect_checkpoint(path)
    check_vgg(result.records, sd)
    assert any("stripped the prefix" in n for n in result.notes)


def test_compiled_submodule_prefix_is_stripped_inside_names(tmp_path: Path, sd: dict) -> None:
    path = save_zip(
        OrderedDict(("model._orig_mod." + k, v) for k, v in sd.items()), tmp_path / "c.pt"
    )
    records = inspect_checkpoint(path).records
    assert len(records) == 16
    assert records[0].name == "model.features.1"
    assert not any("_orig_mod" in r.name for r in records)


def record_load(log: list[str], name: str, load: Callable[[], torch.Tensor]) -> torch.Tensor:
    log.append(name)
    return load()


def test_only_needed_tensors_are_read(files: dict[str, Path]) -> None:
    for fmt in ("legacy", "zip", "safetensors", "sharded", "torchscript"):
        table = open_checkpoint(files[fmt])
        loaded: list[str] = []
        for name, entry in table.entries.items():
            entry.load = functools.partial(record_load, loaded, name, entry.load)
            if entry.distinct is not None:  # BatchNorm statistics read distinct values
                entry.distinct = functools.partial(record_load, loaded, name, entry.distinct)
        batchnorm_records(table)
        assert loaded, fmt
        assert not any(n.startswith("classifier") for n in loaded), fmt


def test_pickled_module_needs_trust(tmp_path: Path, sd: dict) -> None:
    model = vgg19_bn_module(16, 0)
    model.features[4].eps = 1e-3  # only a module graph knows eps
    path = tmp_path / "whole_model.pt"
    torch.save(model, path)
    code, out, err = run_cli("inspect-checkpoint", str(path), "--format", "csv")
    assert_one_line_error(code, out, err)
    assert "--trust-pickle" in err and "arbitrary code" in err
    result = inspect_checkpoint(path, trust_pickle=True)
    assert [r.eps for r in result.records][:3] == [1e-5, 1e-3, 1e-5]
    assert {r.index for r in result.records if r.after_downsample} == AFTER_POOL
    assert [r.name for r in result.records] == BN_NAMES


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("carrier", ["zip", "legacy", "raw-pickle", "nested", "torchscript"])
def test_untrusted_pickle_never_runs(tmp_path: Path, sd: dict, carrier: str) -> None:
    target = tmp_path / "pwned.txt"
    path = tmp_path / f"evil-{carrier}.pt"
    payload = Payload(target)
    if carrier == "zip":
        torch.save({"state_dict": sd, "x": payload}, path)
    elif carrier == "legacy":
        torch.save({"x": payload, **sd}, path, _use_new_zipfile_serialization=False)
    elif carrier == "raw-pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif carrier == "nested":
        torch.save({"model": {"features.1.running_var": torch.ones(3), "p": payload}}, path)
    else:
        # A TorchScript archive whose data.pkl was replaced by the payload.
        import zipfile

        good = save_torchscript(vgg19_bn_module(16, 0), tmp_path / "good.pt")
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
            for item in src.infolist():
                data = src.read(item.filename)
                if item.filename.endswith("/data.pkl"):
                    data = pickle.dumps(payload, protocol=2)
                dst.writestr(item, data)
    code, out, err = run_cli("inspect-checkpoint", str(path), "--format", "csv")
    assert not target.exists()
    assert_one_line_error(code, out, err)
    assert "--trust-pickle" in err and "arbitrary code" in err


# ---------------------------------------------------------------- naming schemes, other BNs


class TinyResNet(nn.Module):
    """ResNet-style names: conv1/bn1, maxpool, layer1.0.conv1/bn1, downsample.0/.1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        block = nn.Module()
        block.conv1 = nn.Conv2d(8, 16, 3, bias=False)
        block.bn1 = nn.BatchNorm2d(16)
        block.conv2 = nn.Conv2d(16, 16, 3, bias=False)
        block.bn2 = nn.BatchNorm2d(16)
        block.downsample = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.layer1 = nn.Sequential(block)
        self.fc = nn.Linear(16, 10)


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_var is not None:
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.1)
    return model


def test_resnet_names_and_module_graph(tmp_path: Path) -> None:
    model = randomize_bn(TinyResNet())
    sd = model.state_dict()
    rows = inspect_checkpoint(save_zip(sd, tmp_path / "r.pt")).records
    assert [r.name for r in rows] == [
        "bn1",
        "layer1.0.bn1",
        "layer1.0.bn2",
        "layer1.0.downsample.1",
    ]
    assert [r.weight_name for r in rows] == [
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer1.0.conv2.weight",
        "layer1.0.downsample.0.weight",
    ]
    for r in rows:
        var = sd[f"{r.name}.running_var"].double().numpy()
        assert r.sigma == pytest.approx(math.sqrt(var.mean()), rel=1e-12)
    # No module graph in a state dict: the ResNet names show the stem's max-pool.
    assert [r.after_downsample for r in rows] == [False, True, False, False]
    # A whole module (trusted) has a graph: the max-pool sits before layer1.0.bn1.
    torch.save(model, tmp_path / "whole.pt")
    graph_rows = inspect_checkpoint(tmp_path / "whole.pt", trust_pickle=True).records
    assert [r.after_downsample for r in graph_rows] == [False, True, False, False]
    # Safetensors (natural key order) finds the same feeding layers by name.
    st = inspect_checkpoint(save_safetensors(sd, tmp_path / "r.safetensors")).records
    assert sorted(r.weight_name or "" for r in st) == sorted(r.weight_name or "" for r in rows)


def test_other_naming_schemes_and_batchnorm_kinds(tmp_path: Path) -> None:
    model = nn.Module()
    model.conv1 = nn.Conv2d(3, 6, 3)
    model.conv1_BN = nn.BatchNorm2d(6)
    model.stem = nn.Module()
    model.stem.conv = nn.Conv3d(6, 5, 3)
    model.stem.norm = nn.BatchNorm3d(5)
    model.head = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7))
    model.sync = nn.SyncBatchNorm(7)
    randomize_bn(model, seed=3)
    sd = model.state_dict()
    rows = inspect_checkpoint(save_legacy(sd, tmp_path / "n.pth")).records
    assert [(r.name, r.num_features, r.weight_name) for r in rows] == [
        ("conv1_BN", 6, "conv1.weight"),
        ("stem.norm", 5, "stem.conv.weight"),
        ("head.1", 7, "head.0.weight"),
        ("sync", 7, "head.0.weight"),
    ]
    w = sd["stem.conv.weight"].double()
    assert rows[1].weight_fro == pytest.approx(float(w.norm()), rel=1e-12)
    assert rows[1].backward_ratio == pytest.approx(float(w.pow(2).sum()) / 6, rel=1e-12)


# ---------------------------------------------------------------- no BatchNorm, --weights


class TinyTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.ln1 = nn.LayerNorm(16)
        self.attn = nn.Linear(16, 48)
        self.gn = nn.GroupNorm(4, 16)
        self.out = nn.Linear(16, 8)


def test_no_batchnorm_is_a_message_not_a_crash(tmp_path: Path) -> None:
    path = save_zip(TinyTransformer().state_dict(), tmp_path / "t.pt")
    code, out, err = run_cli("inspect-checkpoint", str(path), "--format", "csv")
    assert code == 0 and out == ""
    assert "no BatchNorm layers" in err and "LayerNorm/GroupNorm" in err
    assert "--weights" in err and "ln1" in err
    assert inspect_checkpoint(path).records == []


def test_norm_layers_are_recognised_by_shape_under_any_name(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.GroupNorm(2, 4))
    path = save_zip(model.state_dict(), tmp_path / "s.pt")
    code, _, err = run_cli("inspect-checkpoint", str(path), "--format", "csv")
    assert code == 0
    assert "2 of them weight matrices, and 2 normalisation layers" in err


def test_weights_lists_norms(tmp_path: Path) -> None:
    sd = TinyTransformer().state_dict()
    path = save_zip(sd, tmp_path / "t.pt")
    code, out, _ = run_cli("inspect-checkpoint", str(path), "--weights", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == schema(WeightRecord)
    assert [r["name"] for r in rows] == ["embed.weight", "attn.weight", "out.weight"]
    for r in rows:
        w = sd[r["name"]].double().numpy()
        assert float(r["fro"]) == pytest.approx(np.linalg.norm(w), rel=1e-12)
        assert float(r["rms"]) == pytest.approx(np.sqrt(np.mean(w**2)), rel=1e-12)
        assert float(r["forward_ratio"]) == pytest.approx(np.sum(w**2) / w.shape[0], rel=1e-12)
        assert float(r["backward_ratio"]) == pytest.approx(np.sum(w**2) / w.shape[1], rel=1e-12)


# ---------------------------------------------------------------- CLI end to end


def test_cli_csv_columns_and_values(files: dict[str, Path], sd: dict) -> None:
    code, out, err = run_cli("inspect-checkpoint", str(files["legacy"]), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == schema(CheckpointRecord)
    assert [r["name"] for r in rows] == BN_NAMES
    assert [r["after_downsample"] for r in rows].count("true") == 4
    for row, exp in zip(rows, expected_rows(sd), strict=True):
        assert float(row["sigma"]) == pytest.approx(exp["sigma"], rel=1e-12)
    assert "eps is not stored" in err
    assert "sigma growth per layer" in err  # the summary table goes to stderr in CSV mode


def test_cli_summary_records(files: dict[str, Path]) -> None:
    code, out, _ = run_cli("inspect-checkpoint", str(files["zip"]), "--summary", "--format", "json")
    assert code == 0
    rows = json.loads(out)["records"]
    assert list(rows[0]) == schema(CheckpointSummaryRecord)
    assert rows[0]["scope"] == "within segments" and rows[0]["growth_per_layer"] > 0
    assert [r["scope"] for r in rows].count("jump") == 3


def test_cli_table_has_summary_under_it(files: dict[str, Path]) -> None:
    code, out, _ = run_cli("inspect-checkpoint", str(files["safetensors"]), "--format", "table")
    assert code == 0
    assert out.index("features.50") < out.index("rate_per_layer")


def test_cli_several_checkpoints_and_plot(files: dict[str, Path], tmp_path: Path) -> None:
    fig = tmp_path / "sigma.png"
    out_csv = tmp_path / "rows.csv"
    code, _, err = run_cli(
        "inspect-checkpoint",
        str(files["legacy"]),
        str(files["lightning"]),
        "--plot",
        str(fig),
        "-o",
        str(out_csv),
    )
    assert code == 0, err
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 32
    assert {r["checkpoint"] for r in rows} == {str(files["legacy"]), str(files["lightning"])}


def test_cli_bad_plot_path_fails_before_reading(files: dict[str, Path], tmp_path: Path) -> None:
    code, _, err = run_cli(
        "inspect-checkpoint", str(files["zip"]), "--plot", str(tmp_path / "no" / "f.png")
    )
    assert code == 1 and err.startswith("Error: ") and "does not exist" in err


def test_help_has_an_example() -> None:
    code, out, _ = run_cli("inspect-checkpoint", "--help")
    assert code == 0 and "Example" in out and "--trust-pickle" in out


# ---------------------------------------------------------------- torchvision model names


def test_model_name_without_torchvision(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # gradscope's own table suffices
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    code, out, err = run_cli("inspect-checkpoint", "vgg19_bn", "--offline")
    assert_one_line_error(code, out, err)
    assert "vgg19_bn-c79401a0.pth" in err and "--offline forbids network access" in err


def fake_torchvision(url: str) -> types.ModuleType:
    weights = types.SimpleNamespace(DEFAULT=types.SimpleNamespace(url=url))

    def get_model_weights(name: str) -> object:
        if name != "tinyvgg":
            raise ValueError(f"Unknown model {name}")
        return weights

    module = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.get_model_weights = get_model_weights  # type: ignore[attr-defined]
    module.models = models  # type: ignore[attr-defined]
    return module


def test_model_name_resolved_in_hub_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sd: dict
) -> None:
    """A name outside gradscope's table is asked of torchvision; both come from the cache."""
    url = "https://example.invalid/models/tinyvgg-0123abcd.pth"
    fake = fake_torchvision(url)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.models", fake.models)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / "tinyvgg-0123abcd.pth"
    code, _, err = run_cli("inspect-checkpoint", "tinyvgg", "--offline")
    assert code == 1 and str(expected) in err and url in err and "would need a download" in err
    code, _, err = run_cli("inspect-checkpoint", "resnet_nope")
    assert code == 1 and "neither a file nor a known model name" in err
    expected.parent.mkdir(parents=True)
    save_legacy(sd, expected)  # torchvision's VGG19-BN file is in the legacy format
    save_legacy(sd, expected.parent / "vgg19_bn-c79401a0.pth")
    for name in ("tinyvgg", "vgg19_bn"):
        result = inspect_checkpoint(name)
        check_vgg(result.records, sd)
        assert result.records[0].checkpoint == name


def test_vgg_module_matches_factory_layout() -> None:
    """The helper's module and state dict agree on keys (the layout the tests rely on)."""
    assert list(VGG(16).state_dict()) == list(vgg19_bn_state_dict(16))
    with pytest.raises(CheckpointError):
        open_checkpoint("definitely/not/here.pt")


@pytest.mark.parametrize("save", [save_zip, save_legacy])
def test_objects_beyond_the_lazy_reader_fall_back_to_torch_weights_only(
    tmp_path: Path, sd: dict, save: Callable
) -> None:
    # A set, a torch.Size and a dtype: safe for torch's weights-only loader, unknown to
    # gradscope's restricted reader, which then hands the file to torch.load.
    extra = {"tags": {"a", "b"}, "shape": torch.Size([3, 4]), "dtype": torch.float16}
    path = save({"state_dict": sd, **extra}, tmp_path / "fallback.pt")
    check_vgg(inspect_checkpoint(path).records, sd)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_frobenius_norm_large_tensors(dtype: torch.dtype) -> None:
    from gradscope.checkpoint import frobenius_norm

    gen = torch.Generator().manual_seed(5)
    w = (torch.randn(3_000_007, generator=gen) * 0.02 + 0.001).to(dtype)
    exact = float(np.linalg.norm(w.to(torch.float64).numpy()))
    assert frobenius_norm(w) == pytest.approx(exact, rel=1e-7)
    assert frobenius_norm(w[:1000]) == pytest.approx(
        float(np.linalg.norm(w[:1000].to(torch.float64).numpy())), rel=1e-14
    )


def test_weight_norms_stream_from_the_file(files: dict[str, Path], sd: dict) -> None:
    from gradscope.checkpoint.table import _file_norm, entry_norm

    for fmt in ("legacy", "zip", "safetensors", "sharded", "torchscript"):
        table = open_checkpoint(files[fmt])
        entry = table.entries["features.49.weight"]
        assert entry.span is not None, fmt
        span = entry.span()
        assert span is not None, fmt  # contiguous: streamed, never loaded whole
        exact = float(np.linalg.norm(sd["features.49.weight"].double().numpy()))
        assert entry_norm(entry) == pytest.approx(exact, rel=1e-12), fmt
        # Several small chunks give the same sum.
        assert _file_norm(*span, chunk=1000) == pytest.approx(exact, rel=1e-12), fmt


def test_non_contiguous_tensors_are_loaded_not_streamed(tmp_path: Path) -> None:
    from gradscope.checkpoint import entry_norm

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"t.weight": base.t(), "s.weight": base[1:3]}  # a transpose and an offset view
    for save in (save_zip, save_legacy):
        table = open_checkpoint(save(sd, tmp_path / "views.pt"))
        t, s = table.entries["t.weight"], table.entries["s.weight"]
        assert t.span is not None and t.span() is None
        assert np.array_equal(t.load(), base.t().numpy())
        assert entry_norm(t) == pytest.approx(float(base.double().norm()), rel=1e-14)
        assert s.span is not None and s.span() is not None
        assert np.array_equal(s.load(), base[1:3].numpy())
        assert entry_norm(s) == pytest.approx(float(base[1:3].double().norm()), rel=1e-14)


def test_module_nested_in_a_dict_gives_its_graph_with_trust(tmp_path: Path) -> None:
    model = randomize_bn(TinyResNet())
    path = tmp_path / "yolo_style.pt"
    torch.save({"epoch": 3, "model": model}, path)
    assert run_cli("inspect-checkpoint", str(path))[0] == 1  # refused without --trust-pickle
    rows = inspect_checkpoint(path, trust_pickle=True).records
    assert [r.after_downsample for r in rows] == [False, True, False, False]


def test_key_on_torchscript_is_refused(files: dict[str, Path]) -> None:
    code, _, err = run_cli("inspect-checkpoint", str(files["torchscript"]), "--key", "model")
    assert code == 1 and "TorchScript" in err


def test_no_batchnorm_with_an_output_file_is_an_error_not_a_silent_success(tmp_path: Path) -> None:
    path = save_zip(TinyTransformer().state_dict(), tmp_path / "t.pt")
    out = tmp_path / "out.csv"
    code, _, err = run_cli("inspect-checkpoint", str(path), "-o", str(out))
    assert code == 1 and "Error: nothing to write to" in err and not out.exists()
