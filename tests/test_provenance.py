"""Provenance: the meta object in JSON output, sidecars (--meta, --no-meta), figures (PNG, SVG,
PDF through ``plot --show-meta``), ``--from-meta`` re-runs byte for byte, and CSV headers that
pipelines read, pinned."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope import __version__
from gradscope.cli import app
from gradscope.provenance import checkpoint_meta, git_state, model_provenance, read_meta
from gradscope.records import read_records

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["simulate", "--depth", "4", "--width", "8", "--repeats", "3"]
MODEL = ["simulate", "--model", f"{ROOT / 'examples' / 'resnet.py'}:make_model", "--model-arg",
         "width=4", "--model-arg", "blocks_per_stage=1", "--input-shape", "3,8,8", "--batch",
         "8", "--repeats", "3"]  # fmt: skip


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def ok(*args: str) -> str:
    code, out, err = run(*args)
    assert code == 0, err
    return out


def test_json_output_holds_meta_beside_records() -> None:
    data = json.loads(ok(*SMALL, "-a", "selu,relu", "-f", "json"))
    assert list(data) == ["meta", "records"] and len(data["records"]) == 8
    meta = data["meta"]
    assert meta["gradscope_version"] == __version__ and meta["command"] == "simulate"
    assert meta["torch_version"] and meta["device"] == "cpu"
    assert meta["seed"] == 0 and meta["repeats"] == 3
    assert meta["prediction_basis"] == ["sqrt(r): batchnorm"]
    assert meta["command_line"] == (
        "gradscope simulate --activation selu,relu --depth 4 --width 8 --repeats 3 --format json"
    )
    assert meta["options"]["init"] == "auto" and meta["options"]["batch"] == "128"  # defaults
    assert [c["init"] for c in meta["configurations"]] == ["lecun", "he"]  # auto resolved
    assert meta["given"] == ["activation", "depth", "fmt", "repeats", "width"]
    assert meta["started"].endswith("Z") and meta["wall_time_s"] >= 0
    plain = json.loads(ok(*SMALL, "-f", "json", "--no-meta"))
    assert isinstance(plain, list) and plain[0]["layer"] == 1


def test_readers_take_both_json_shapes(tmp_path: Path) -> None:
    ok(*SMALL, "-o", tmp_path / "new.json")
    ok(*SMALL, "-o", tmp_path / "old.json", "--no-meta")
    assert read_records(tmp_path / "new.json") == read_records(tmp_path / "old.json")
    assert not (tmp_path / "new.json.meta.json").exists()  # JSON holds its meta itself
    assert read_meta(tmp_path / "new.json")["command"] == "simulate"
    fig = tmp_path / "f.png"
    ok("plot", tmp_path / "new.json", "-o", fig)
    assert json.loads(ok("plot", "--show-meta", fig))["sources"][0]["meta"]["repeats"] == 3


def test_csv_gets_a_sidecar_unless_told(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    ok(*SMALL, "-o", out)
    sidecar = json.loads((tmp_path / "out.csv.meta.json").read_text())
    assert sidecar["outputs"] == {"output": str(out)}
    assert out.read_text().startswith("arch,")  # one clean table
    ok(*SMALL, "-o", tmp_path / "quiet.csv", "--no-meta")
    assert not (tmp_path / "quiet.csv.meta.json").exists()
    ok(*SMALL, "-o", tmp_path / "named.csv", "--meta", tmp_path / "named.json")
    assert not (tmp_path / "named.csv.meta.json").exists()
    assert json.loads((tmp_path / "named.json").read_text())["command"] == "simulate"
    ok(*SMALL, "-f", "csv", "--meta", tmp_path / "stdout.json")  # records on stdout
    assert (tmp_path / "stdout.json").exists()
    code, _, err = run(*SMALL, "-o", tmp_path / "x.csv", "--meta", tmp_path / "m.json", "--no-meta")
    assert code == 1 and err == "Error: --meta and --no-meta contradict each other; give one\n"


@pytest.mark.parametrize("summary", [[], ["--summary"]])
def test_from_meta_reruns_byte_for_byte(tmp_path: Path, summary: list[str]) -> None:
    first = tmp_path / "first.csv"
    ok(*SMALL, "-a", "tanh", "--norm", "layernorm", "--seed", "7", *summary, "-o", first)
    again = tmp_path / "again.csv"
    ok("simulate", "--from-meta", tmp_path / "first.csv.meta.json", "-o", again)
    assert again.read_bytes() == first.read_bytes()
    meta = read_meta(again)
    assert (
        meta["reproduces"]["sha256"]
        == hashlib.sha256((tmp_path / "first.csv.meta.json").read_bytes()).hexdigest()
    )
    assert meta["options"]["seed"] == 7 and meta["given"] == sorted(meta["given"])


def test_from_meta_reruns_a_model_from_its_figure(tmp_path: Path) -> None:
    ok(*MODEL, "--summary", "-o", tmp_path / "m.csv", "--plot", tmp_path / "m.svg")
    ok("simulate", "--from-meta", tmp_path / "m.svg", "-o", tmp_path / "again.csv")
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "m.csv").read_bytes()


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"gradscope_version": "99.0.0"}, "field gradscope_version is 99.0.0, another major"),
        ({"gradscope_version": None}, "field gradscope_version is missing or not a version"),
        ({"command": "plot"}, "field command is 'plot': only simulate results re-run"),
        ({"options": ["depth"]}, "field options is missing or not an object"),
        ({"options": {"depth": 4}}, "field options.depth must be text, got 4"),
        ({"options": {"dtype": "float16"}}, "field options.dtype must be one of float32, float64"),
        ({"options": {"repeats": 2.5}}, "field options.repeats must be a whole number, got 2.5"),
        ({"options": {"speed": "fast"}}, "field options.speed is not an option of this gradscope"),
        ({"given": "depth"}, "field given must be a list of option names"),
    ],
)
def test_from_meta_refuses_other_versions_and_malformed_files(
    tmp_path: Path, meta: dict[str, object], message: str
) -> None:
    good = {"gradscope_version": __version__, "command": "simulate", "options": {}}
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**good, **meta}))
    code, out, err = run("simulate", "--from-meta", path)
    assert code == 1 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"Error: {path}") and message in line


def test_from_meta_refuses_configuration_options_and_non_json(tmp_path: Path) -> None:
    ok(*SMALL, "-o", tmp_path / "r.csv")
    code, _, err = run("simulate", "--from-meta", tmp_path / "r.csv.meta.json", "--depth", "9")
    assert code == 1 and "--depth cannot be given with --from-meta" in err
    (tmp_path / "broken.json").write_text("{not json")
    code, _, err = run("simulate", "--from-meta", tmp_path / "broken.json")
    assert code == 1 and err.startswith(f"Error: {tmp_path / 'broken.json'} is not valid JSON")
    code, _, err = run("simulate", "--from-meta", tmp_path / "missing.json")
    assert code == 1 and "does not exist" in err


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_figures_carry_the_meta(tmp_path: Path, suffix: str) -> None:
    fig = tmp_path / f"fig{suffix}"
    ok(*SMALL, "-o", tmp_path / "r.json", "--plot", fig)
    shown = json.loads(ok("plot", "--show-meta", fig))
    assert shown == json.loads((tmp_path / "r.json").read_text())["meta"]
    # gradscope plot: its own meta, each input with its SHA-256 and the run that wrote it.
    replot = tmp_path / f"replot{suffix}"
    ok("plot", tmp_path / "r.json", "-o", replot)
    meta = json.loads(ok("plot", "--show-meta", replot))
    assert meta["command"] == "plot" and meta["command_line"].startswith("gradscope plot ")
    (source,) = meta["sources"]
    assert (
        source["file"]["sha256"] == hashlib.sha256((tmp_path / "r.json").read_bytes()).hexdigest()
    )
    assert source["meta"] == shown
    ok("plot", tmp_path / "r.json", "-o", replot, "--no-meta")
    code, _, err = run("plot", "--show-meta", replot)
    assert code == 1 and err == f"Error: {replot} carries no gradscope metadata\n"


def test_show_meta_refuses_plot_options_and_reads_sidecars(tmp_path: Path) -> None:
    ok(*SMALL, "-o", tmp_path / "r.csv")
    assert json.loads(ok("plot", "--show-meta", tmp_path / "r.csv"))["command"] == "simulate"
    code, _, err = run("plot", "--show-meta", tmp_path / "r.csv", "--dpi", "50")
    assert code == 1 and "--show-meta reads files only; --dpi would be ignored" in err


# The columns pipelines read today: provenance must never change them.
LAYER_HEADER = (
    "arch,residual_scale,norm_position,activation,norm,init,gain,depth,width,image_size,"
    "pool_every,batch,repeats,layer,channels,spatial,grad_norm_mean,grad_norm_std,"
    "grad_norm_sem,grad_norm_ci_low,grad_norm_ci_high,forward_var,backward_var,pool_input_var,"
    "pool_input_backward_var,predicted_grad_norm,predicted_backward_var,prediction_in_ci,partial"
)
SUMMARY_HEADER = (
    "arch,residual_scale,norm_position,activation,norm,init,gain,depth,width,image_size,"
    "pool_every,batch,repeats,fitted_rate,fitted_rate_ci_low,fitted_rate_ci_high,predicted_rate,"
    "rate_deviation,prediction_in_ci,r_squared,amplification,rate_first_half,rate_last_half,"
    "overflow_layer,overflow_repeats,pool_forward_ratio,pool_backward_ratio,"
    "predicted_pool_forward_ratio,predicted_pool_backward_ratio,partial,prediction_basis"
)
MODEL_LAYER_HEADER = (
    "model,batch,repeats,layer,module,module_type,param_count,path,block,grad_norm_mean,"
    "grad_norm_std,grad_norm_sem,grad_norm_ci_low,grad_norm_ci_high,forward_var,backward_var"
)
MODEL_SUMMARY_HEADER = (
    "model,batch,repeats,path,layers,fitted_rate,fitted_rate_ci_low,fitted_rate_ci_high,"
    "r_squared,amplification,rate_first_half,rate_last_half,overflow_layer,partial"
)


@pytest.mark.parametrize(
    ("args", "header"),
    [
        (SMALL, LAYER_HEADER),
        ([*SMALL, "--summary"], SUMMARY_HEADER),
        (MODEL, MODEL_LAYER_HEADER),
        ([*MODEL, "--summary"], MODEL_SUMMARY_HEADER),
    ],
)
def test_csv_headers_are_pinned(tmp_path: Path, args: list[str], header: str) -> None:
    out = tmp_path / "r.csv"
    ok(*args, "-o", out, "--fail-if-rate-above", "9")
    assert out.read_text().splitlines()[0] == header
    assert ok(*args, "-f", "csv").splitlines()[0] == header


def test_model_provenance_names_the_file_and_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "net.py"
    model.write_text((ROOT / "examples" / "plain_cnn.py").read_text())
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert model_provenance(f"{model}:make_model")["git"] is None  # not in a repository
    if shutil.which("git"):
        git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "init", "-q"], check=True)
        subprocess.run([*git, "add", "net.py"], check=True)
        subprocess.run([*git, "commit", "-qm", "net"], check=True)
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        state = git_state(model)
        assert state == {"root": str(tmp_path.resolve()), "commit": head.stdout.strip(),
                         "dirty": False}  # fmt: skip
        (tmp_path / "notes.txt").write_text("untracked")
        assert git_state(model)["dirty"] is True  # type: ignore[index]
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    found = model_provenance(f"{model}:make_model")
    assert found["git"] is None  # no git: no commit, no failure
    assert found["file"] == {"path": str(model.resolve()), "size": model.stat().st_size,
                             "sha256": digest}  # fmt: skip


def test_checkpoint_meta_hashes_files_and_sharded_directories(tmp_path: Path) -> None:
    (tmp_path / "one.pt").write_bytes(b"weights")
    (tmp_path / "shards").mkdir()
    for name in ("a.safetensors", "b.safetensors"):
        (tmp_path / "shards" / name).write_bytes(name.encode())
    sources = [str(tmp_path / "one.pt"), str(tmp_path / "shards"), "vgg19_bn"]
    meta = checkpoint_meta(sources, {"key": None, "weights": False}, started=time.time() - 1)
    assert meta["command"] == "inspect-checkpoint" and meta["wall_time_s"] >= 1
    assert meta["options"] == {"key": None, "weights": False}
    first, shards, named = meta["checkpoints"]
    assert first["files"][0]["size"] == 7
    assert first["files"][0]["sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert [Path(f["path"]).name for f in shards["files"]] == ["a.safetensors", "b.safetensors"]
    assert named == {"source": "vgg19_bn", "files": []}  # a name, not a local file
    cached = checkpoint_meta([("vgg19_bn", str(tmp_path / "one.pt"))], {}, started=time.time())
    assert cached["checkpoints"][0]["source"] == "vgg19_bn"  # the name, the cached file's hash
    assert cached["checkpoints"][0]["files"][0]["sha256"] == first["files"][0]["sha256"]


def test_inspect_checkpoint_records_the_file_it_read(tmp_path: Path) -> None:
    """The CLI's meta carries the checkpoint's SHA-256 (computed here with hashlib), in a
    sidecar beside -o, inside JSON output, and not at all with --no-meta."""
    from ckpt_factory import save_legacy, vgg19_bn_state_dict

    ckpt = tmp_path / "vgg.pth"
    save_legacy(vgg19_bn_state_dict(), ckpt)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    runner = CliRunner()
    out = tmp_path / "sigma.csv"
    result = runner.invoke(app, ["inspect-checkpoint", str(ckpt), "-o", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "sigma.csv.meta.json").read_text())
    assert meta["command"] == "inspect-checkpoint"
    assert meta["checkpoints"] == [
        {"source": str(ckpt), "files": [{"path": str(ckpt.resolve()),
                                         "size": ckpt.stat().st_size, "sha256": digest}]}
    ]  # fmt: skip
    result = runner.invoke(app, ["inspect-checkpoint", str(ckpt), "-f", "json"])
    shaped = json.loads(result.stdout)
    assert shaped["meta"]["checkpoints"][0]["files"][0]["sha256"] == digest
    assert len(shaped["records"]) == 16
    result = runner.invoke(app, ["inspect-checkpoint", str(ckpt), "-f", "json", "--no-meta"])
    assert isinstance(json.loads(result.stdout), list)


def test_inspect_checkpoint_hashes_only_for_a_meta_that_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CSV on stdout carries no meta, so the checkpoint is not hashed (0.4 s for 575 MB)."""
    from ckpt_factory import save_legacy, vgg19_bn_state_dict

    from gradscope import provenance

    ckpt = save_legacy(vgg19_bn_state_dict(), tmp_path / "vgg.pth")
    hashed: list[str] = []
    real = provenance.file_digest
    monkeypatch.setattr(provenance, "file_digest", lambda p: hashed.append(str(p)) or real(p))
    runner = CliRunner()
    assert runner.invoke(app, ["inspect-checkpoint", str(ckpt), "-f", "csv"]).exit_code == 0
    assert hashed == []
    assert runner.invoke(app, ["inspect-checkpoint", str(ckpt), "-f", "json"]).exit_code == 0
    assert hashed == [str(ckpt)]
