"""Issue 17 §2–§4 for the checkpoint readers: hostile files do bounded work and fail with one
CheckpointError; payloads never run; every reader survives a fuzz under time and memory bounds.

The corpus is built by ``tests/redteam_corpus.py``; each reader call runs in a forked child
with an address-space limit (:func:`redteam_corpus.run_bounded`), so a blow-up is a failed
test, not a dead machine. ``benchmarks/redteam.py`` runs the large version.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redteam_corpus as rc
import torch
from ckpt_factory import (
    assert_one_line_error,
    run_cli,
    save_every_format,
    save_sharded_safetensors,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradscope.checkpoint import inspect_checkpoint, open_checkpoint
from gradscope.checkpoint.open import check_pickle
from gradscope.checkpoint.structure import _param_free_gap
from gradscope.checkpoint.table import TensorEntry, collapse, entry_norm
from gradscope.errors import CheckpointError

SECONDS, MEMORY = 5.0, rc.GiB


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, rc.Hostile]:
    return {h.name: h for h in rc.build_hostile(tmp_path_factory.mktemp("hostile"))}


def bounded(call: Callable[[], object]) -> rc.Outcome:
    outcome = rc.run_bounded(call, timeout=SECONDS, memory=MEMORY)
    assert outcome.status not in ("hang", "memory", "crash", "unexpected"), outcome
    assert outcome.peak_mib < MEMORY / 2**20, outcome
    return outcome


HOSTILE_NAMES = [
    "index-gap", "laughs-legacy", "laughs-zip", "bn-10k", "expand-300m", "expand-conv",
    "overlap-conv", "memo-bomb-zip", "memo-bomb-legacy", "length-bomb", "inflate-data-pkl",
    "inflate-byteorder", "prefix-repeat", "deep-json", "index-self", "index-absolute",
    "index-dotdot", "inf-shape", "inf-offsets", "eocd", "name-flip", "zip-version", "encrypted",
    "zlib", "markup-names",
]  # fmt: skip


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_file_is_bounded_and_answered_or_refused(
    hostile: dict[str, rc.Hostile], name: str
) -> None:
    case = hostile[name]
    outcome = bounded(lambda: inspect_checkpoint(case.path, weights=True))
    assert outcome.status == ("ok" if case.expect == "ok" else "refused"), outcome
    if case.expect == "error":
        # One sentence that names the file once.
        assert outcome.message.count(str(case.path)) == 1, outcome.message
        code, out, err = run_cli("inspect-checkpoint", str(case.path))
        assert_one_line_error(code, out, err)


def test_tiny_files_give_the_right_numbers(hostile: dict[str, rc.Hostile]) -> None:
    gap = inspect_checkpoint(hostile["index-gap"].path).records
    assert [r.name for r in gap] == ["0", "100000000000"]
    assert [r.sigma for r in gap] == pytest.approx([1.0, math.sqrt(2.0)])
    for name in ("laughs-legacy", "laughs-zip"):
        (row,) = inspect_checkpoint(hostile[name].path).records
        assert row.sigma == 1.0 and row.num_features == 4
    (row,) = inspect_checkpoint(hostile["expand-300m"].path).records
    assert row.num_features == 300_000_000 and row.sigma == 1.0
    assert row.effective_gain == pytest.approx(1 / math.sqrt(1 + 1e-5))


def test_expanded_conv_weight_norm_counts_each_value(hostile: dict[str, rc.Hostile]) -> None:
    (row,) = inspect_checkpoint(hostile["expand-conv"].path).records
    weight = torch.load(hostile["expand-conv"].path)["features.0.weight"]
    distinct = weight[0, 0].double()  # (3, 3): the rest repeats it 10**8 times
    assert row.weight_shape == (10_000, 10_000, 3, 3)
    assert row.weight_fro == pytest.approx(1e4 * float(distinct.norm()), rel=1e-6)
    assert row.sigma == 2.0 and row.num_features == 10_000


def test_many_batchnorm_layers_read_in_module_order(hostile: dict[str, rc.Hostile]) -> None:
    rows = inspect_checkpoint(hostile["bn-10k"].path).records
    base = rc.many_batchnorm_values(10_000)  # the builder's seeded values, made again
    assert len(rows) == 10_000
    assert [r.name for r in rows[:3]] == ["features.1", "features.4", "features.7"]
    assert [r.sigma for r in rows] == pytest.approx(np.sqrt(base[0::2].double().numpy()), rel=1e-6)


@pytest.mark.slow
def test_thirty_thousand_layers_finish_in_seconds(tmp_path: Path) -> None:
    (case,) = [h for h in rc.build_hostile(tmp_path, large=True) if h.name == "bn-30k"]
    outcome = rc.run_bounded(lambda: inspect_checkpoint(case.path), timeout=15.0)
    assert outcome.status == "ok", outcome


def test_names_from_files_are_data(hostile: dict[str, rc.Hostile]) -> None:
    names = [r.name for r in inspect_checkpoint(hostile["markup-names"].path).records]
    assert "[/]" in names and "[link=file:///etc/passwd]x[/link]" in names
    assert "\x1b[2J\x1b[31mred" in names and "=cmd|' /C calc'!A0" in names
    assert "²" in names and "features.²" in names


def test_overlapping_strides_within_the_limit_are_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = torch.rand(2_000)
    weight = base.as_strided((1_000, 1_000, 1, 1), (1, 1, 1, 1))
    path = tmp_path / "overlap.pt"
    torch.save({"0.weight": weight, "1.running_var": torch.ones(1_000)}, path)
    (row,) = inspect_checkpoint(path).records
    assert row.weight_fro == pytest.approx(float(weight.double().norm()), rel=1e-7)
    monkeypatch.setenv("GRADSCOPE_MAX_READ", "1MiB")  # 10**6 float64 elements need 8 MB
    with pytest.raises(CheckpointError, match="raise GRADSCOPE_MAX_READ"):
        inspect_checkpoint(path)
    monkeypatch.setenv("GRADSCOPE_MAX_READ", "lots")
    with pytest.raises(CheckpointError, match="GRADSCOPE_MAX_READ='lots' is not a size"):
        inspect_checkpoint(path)


@pytest.mark.parametrize(
    ("shape", "stride"),
    [((5, 7), (7, 1)), ((5, 7), (0, 1)), ((5, 7), (1, 0)), ((4, 1, 6), (0, 3, 1)),
     ((3, 4, 5), (1, 0, 3)), ((0, 4), (0, 1)), ((6,), (0,))],
)  # fmt: skip
def test_distinct_values_give_the_tensors_statistics(
    shape: tuple[int, ...], stride: tuple[int, ...]
) -> None:
    base = torch.rand(64, dtype=torch.float64) - 0.25
    view = base.as_strided(shape, stride, 2)
    entry = TensorEntry.of(view.numpy())
    values, repeat = entry.values()
    assert values.size * repeat == view.numel()
    if view.numel():
        assert values.mean() == pytest.approx(float(view.mean()), rel=1e-12)
        assert values.min() == float(view.min()) and values.max() == float(view.max())
    assert entry_norm(TensorEntry.of(view)) == pytest.approx(float(view.norm()), rel=1e-12)
    repeated = math.prod(n for n, s in zip(shape, stride, strict=True) if s == 0)
    assert collapse(shape, stride)[2] == (repeated if view.numel() else 1)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    held=st.sets(st.integers(0, 60), max_size=20),
    first=st.integers(0, 60),
    width=st.integers(1, 60),
)
def test_index_gap_counts_like_a_loop(held: set[int], first: int, width: int) -> None:
    last = first + width
    gap = _param_free_gap(f"f.{first}", f"f.{last}", {"f": sorted(held)})
    assert gap == ("f", sum(1 for j in range(first + 1, last) if j not in held))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    obj=st.recursive(
        st.integers() | st.text(max_size=5) | st.binary(max_size=5) | st.floats(),
        lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=3), kids),
        max_leaves=20,
    ),
    protocol=st.integers(0, 5),
    cut=st.floats(0.0, 1.0, exclude_max=True),
)
def test_pickle_scan_ends_where_the_pickle_ends(obj: object, protocol: int, cut: float) -> None:
    data = pickle.dumps([obj, obj], protocol=protocol) + b"trailing storage bytes"
    end = [pos for _, _, pos in pickletools.genops(io.BytesIO(data))][-1] + 1
    assert check_pickle(data) == end
    with pytest.raises(ValueError):
        check_pickle(data[: int(end * cut)])


# ---------------------------------------------------------------- payloads


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> list[rc.Payload]:
    return rc.build_payloads(tmp_path_factory.mktemp("payloads"))


def test_no_payload_runs(payloads: list[rc.Payload]) -> None:
    assert len(payloads) >= 65
    for case in payloads:
        outcome = bounded(lambda case=case: inspect_checkpoint(case.path, weights=True))
        assert outcome.status == "refused", (case.name, outcome)
        assert not case.marker.exists(), case.name


@pytest.mark.parametrize("carrier", ["raw", "legacy", "zip", "torchscript"])
def test_payloads_through_the_cli_are_one_line(payloads: list[rc.Payload], carrier: str) -> None:
    for case in [p for p in payloads if p.name.endswith(f"/{carrier}")][::4]:
        code, out, err = run_cli("inspect-checkpoint", str(case.path))
        assert_one_line_error(code, out, err)
        assert not case.marker.exists(), case.name


def test_the_payloads_do_run_when_unpickled_for_real(tmp_path: Path) -> None:
    """The corpus is honest: its payloads execute under a plain unpickler."""
    marker = tmp_path / "ran"
    for name in ("reduce-open-p2", "eval", "getattr-chain", "stack-global-exec"):
        pickle.loads(rc.payload_pickles(str(marker), tmp_path)[name])
        assert marker.exists(), name
        marker.unlink()


# ---------------------------------------------------------------- fuzz


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    formats = ("zip", "legacy", "safetensors", "torchscript")
    paths = save_every_format(tmp_path_factory.mktemp("valid"), 32, 0, formats)
    return {k: p.read_bytes() for k, p in paths.items()}


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(fmt=st.sampled_from(["zip", "legacy", "safetensors", "torchscript"]), seed=st.integers())
def test_fuzzed_files_only_own_errors_within_bounds(
    tmp_path: Path, valid: dict[str, bytes], fmt: str, seed: int
) -> None:
    rng = random.Random(seed)
    kind = rng.choice(rc.kinds_for(fmt))
    path = tmp_path / f"mutant-{fmt}"
    path.write_bytes(rc.mutate(valid[fmt], kind, rng))
    outcome = bounded(lambda: inspect_checkpoint(path, weights=True))
    assert outcome.status in ("ok", "refused"), (kind, outcome)
    assert outcome.seconds < SECONDS


def test_fuzzed_index_files(tmp_path: Path) -> None:
    sd = {f"features.{i}.running_var": torch.rand(3) + 0.5 for i in (1, 4)}
    folder = tmp_path / "sharded"
    index = save_sharded_safetensors(sd, folder) / "model.safetensors.index.json"
    original = index.read_bytes()
    rng = random.Random(17)
    for _ in range(20):
        index.write_bytes(rc.mutate(original, rng.choice(["truncate", "flip"]), rng))
        outcome = bounded(lambda: open_checkpoint(folder))
        assert outcome.status in ("ok", "refused"), outcome


def test_run_bounded_sees_a_blow_up() -> None:
    """The harness is honest: an allocation over the bound is reported, not hidden."""
    outcome = rc.run_bounded(lambda: np.ones(rc.GiB // 4, dtype=np.float64), memory=rc.GiB)
    assert outcome.status == "memory", outcome
    assert rc.run_bounded(lambda: None).status == "ok"
