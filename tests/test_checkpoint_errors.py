"""inspect-checkpoint on bad input: one ``Error:`` line and exit 1, never a traceback."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from ckpt_factory import (
    assert_one_line_error,
    run_cli,
    save_every_format,
    save_legacy,
    save_safetensors,
    save_zip,
    vgg19_bn_state_dict,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradscope.checkpoint import inspect_checkpoint
from gradscope.errors import CheckpointError, GradscopeError


def fails(*args: str, contains: str) -> str:
    code, out, err = run_cli("inspect-checkpoint", *args)
    assert_one_line_error(code, out, err)
    assert contains in err, err
    return err


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    return vgg19_bn_state_dict(scale=16, seed=0)


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    formats = ("zip", "legacy", "safetensors", "torchscript")
    paths = save_every_format(tmp_path_factory.mktemp("valid"), 16, 0, formats)
    return {k: p.read_bytes() for k, p in paths.items()}


def test_missing_path() -> None:
    fails("no/such/file.pt", contains="no/such/file.pt does not exist")


def test_directory_without_index(tmp_path: Path, sd: dict) -> None:
    save_safetensors(sd, tmp_path / "model.safetensors")
    err = fails(str(tmp_path), contains="directory without a *.index.json")
    assert "model.safetensors" in err


def test_index_with_missing_shard(tmp_path: Path) -> None:
    index = {"weight_map": {"features.1.running_var": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    fails(str(tmp_path), contains="does not exist")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    fails(str(tmp_path / "empty.pt"), contains="is empty")


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors", "torchscript"])
def test_truncated(tmp_path: Path, valid: dict[str, bytes], fmt: str) -> None:
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(valid[fmt][: len(valid[fmt]) * 2 // 3])
    fails(str(path), contains=str(path))


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(os.urandom(0) + bytes(range(7, 256)) * 40)
    fails(str(path), contains="not a checkpoint gradscope can read")


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_text("epoch,loss\n1,0.5\n")
    fails(str(path), contains="is a text file, not a checkpoint")


def test_dict_without_tensors(tmp_path: Path) -> None:
    path = save_zip({"epoch": 3, "args": {"lr": 0.1}, "history": [1.0, 2.0]}, tmp_path / "x.pt")
    err = fails(str(path), contains="holds no tensors")
    assert "epoch" in err and "args" in err


def test_unknown_key_lists_keys(tmp_path: Path, sd: dict) -> None:
    path = save_zip({"state_dict": sd, "epoch": 1}, tmp_path / "k.pt")
    err = fails(str(path), "--key", "ema", contains="key 'ema' is not in")
    assert "state_dict, epoch" in err


def test_key_on_safetensors_is_refused(tmp_path: Path, sd: dict) -> None:
    path = save_safetensors(sd, tmp_path / "s.safetensors")
    fails(str(path), "--key", "model", contains="safetensors files are flat")


def test_bad_variances_are_flags_not_a_crash(tmp_path: Path, sd: dict) -> None:
    bad = dict(sd)
    var = bad["features.1.running_var"].clone()
    var[0] = float("nan")
    bad["features.1.running_var"] = var
    var = bad["features.4.running_var"].clone()
    var[0], var[1] = -1.0, 0.0
    bad["features.4.running_var"] = var
    var = bad["features.8.running_var"].clone()
    var[2] = 1e-9
    bad["features.8.running_var"] = var
    path = save_legacy(bad, tmp_path / "bad.pth")
    code, out, err = run_cli("inspect-checkpoint", str(path), "--format", "json")
    assert code == 0
    rows = json.loads(out)["records"]
    assert [r["flags"] for r in rows[:3]] == ["nan", "negative,zero", "tiny"]
    assert rows[0]["sigma"] is None  # NaN is null in JSON
    assert all(r["flags"] == "" for r in rows[3:])
    assert "suspicious running variances" in err
    records = inspect_checkpoint(path).records
    assert math.isnan(records[0].sigma)
    # The summary fits skip the NaN layer instead of failing (layer 2 is alone in its segment).
    assert inspect_checkpoint(path, include_input_layer=True).summary[0].n_layers == 14


def test_bad_output_path_is_checked_first(tmp_path: Path, sd: dict) -> None:
    path = save_zip(sd, tmp_path / "ok.pt")
    fails(str(path), "-o", str(tmp_path / "missing" / "out.csv"), contains="does not exist")
    assert not (tmp_path / "missing").exists()


def test_output_file_not_half_written(tmp_path: Path, sd: dict) -> None:
    good = save_zip(sd, tmp_path / "ok.pt")
    out = tmp_path / "rows.csv"
    fails(str(good), str(tmp_path / "nope.pt"), "-o", str(out), contains="does not exist")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".rows")] == []


def check_only_own_errors(path: Path) -> None:
    try:
        inspect_checkpoint(path)
    except GradscopeError as exc:
        assert isinstance(exc, CheckpointError)
        assert "\n" not in str(exc) and str(exc)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(min_size=0, max_size=2048))
def test_random_bytes_only_own_errors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "random.pt"
    path.write_bytes(data)
    check_only_own_errors(path)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    fmt=st.sampled_from(["zip", "legacy", "safetensors", "torchscript"]),
    cut=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    flip=st.none() | st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(1, 255)),
)
def test_truncated_or_corrupted_only_own_errors(
    tmp_path: Path, valid: dict[str, bytes], fmt: str, cut: float, flip: tuple | None
) -> None:
    blob = bytearray(valid[fmt][: int(len(valid[fmt]) * cut)])
    if flip is not None and blob:
        blob[int(flip[0] * len(blob))] ^= flip[1]
    path = tmp_path / f"broken-{fmt}"
    path.write_bytes(bytes(blob))
    check_only_own_errors(path)


def test_plain_pickle_file_is_one_line_without_torch_warnings(tmp_path: Path) -> None:
    import pickle
    import subprocess
    import sys

    path = tmp_path / "raw.pkl"
    with path.open("wb") as fh:
        pickle.dump({"bn.running_var": torch.ones(3)}, fh, protocol=4)
    proc = subprocess.run(
        [sys.executable, "-m", "gradscope", "inspect-checkpoint", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("Error: ")
    assert "--trust-pickle" in proc.stderr
