"""inspect-checkpoint on named, URL and hf:// checkpoints, and broken optional packages.

Nothing here reaches the internet: URLs and torchvision's weight table point at an HTTP server
on 127.0.0.1 started by a fixture, which counts its requests; the torch hub cache lives under
a temporary TORCH_HOME, and hf:// reads a Hugging Face cache laid out on disk, offline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ckpt_factory import (
    assert_one_line_error,
    run_cli,
    save_legacy,
    save_safetensors,
    save_sharded_safetensors,
    vgg19_bn_state_dict,
)

from gradscope.checkpoint import inspect_checkpoint, weights
from gradscope.engine.user_model import ModelError, resolve_factory
from gradscope.thirdparty import UnavailablePackage, import_optional, installed_version

TORCH = (installed_version("torch") or "").partition("+")[0]


def rows(result: object) -> list[dict]:
    """The records of a result without their checkpoint column (the label differs)."""
    return [
        {k: v for k, v in dataclasses.asdict(r).items() if k != "checkpoint"}
        for r in result.records  # type: ignore[attr-defined]
    ]


def error_line(code: int, out: str, err: str) -> str:
    """A one-line user error after torch.hub's progress bar (stderr): the error line."""
    assert code == 1 and out == "", out + err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    return errors[0]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vgg(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str, list[dict]]:
    """A VGG19-BN-layout legacy checkpoint: its bytes, its torchvision-style file name (with
    the SHA-256 prefix) and the rows read from it as a local file."""
    path = save_legacy(vgg19_bn_state_dict(16), tmp_path_factory.mktemp("vgg") / "v.pth")
    data = path.read_bytes()
    name = f"vgg19_bn-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    return data, name, rows(inspect_checkpoint(path))


class Server:
    """Files served on 127.0.0.1; ``requests`` lists every path asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join(5)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache (TORCH_HOME), and torchvision's table pointing nowhere."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights, "WEIGHTS_BASE_URL", "http://127.0.0.1:9/none/")
    return tmp_path / "torch" / "hub" / "checkpoints"


class _BrokenFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import <name>`` raise like a torchvision built for another torch."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname: str, path: object, target: object = None) -> object:
        if fullname != self.name:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: object) -> None:
        return None

    def exec_module(self, module: object) -> None:
        raise RuntimeError("operator torchvision::nms does not exist")


@pytest.fixture
def broken(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision and timm installed but failing to import (RuntimeError)."""
    for name in ("torchvision", "timm"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        monkeypatch.setattr(sys, "meta_path", [_BrokenFinder(name), *sys.meta_path])


# ---------------------------------------------------------------- URLs


def test_url_downloads_once_checks_hash_and_reuses_cache(
    server: Server, hub: Path, vgg: tuple[bytes, str, list[dict]]
) -> None:
    data, name, expected = vgg
    server.files[f"/w/{name}"] = data
    url = f"{server.base}/w/{name}"
    code, out, err = run_cli("inspect-checkpoint", url, "--format", "csv")
    assert code == 0, err
    assert sorted(p.name for p in hub.iterdir()) == [name]  # no temporary file left
    assert (hub / name).read_bytes() == data
    assert out.splitlines()[1].startswith(url) and server.requests == [f"/w/{name}"]
    assert rows(inspect_checkpoint(url)) == expected
    assert rows(inspect_checkpoint(url, offline=True)) == expected
    assert server.requests == [f"/w/{name}"]  # the cache was used: no second request


def test_offline_refuses_a_download(server: Server, hub: Path) -> None:
    url = f"{server.base}/w/resnet18-f37072fd.pth"
    code, out, err = run_cli("inspect-checkpoint", url, "--offline")
    assert_one_line_error(code, out, err)
    assert "would need a download" in err and "--offline forbids" in err and url in err
    assert server.requests == []


def test_corrupt_download_fails_the_hash_check_and_leaves_nothing(
    server: Server, hub: Path, vgg: tuple[bytes, str, list[dict]]
) -> None:
    data, name, _ = vgg
    server.files[f"/w/{name}"] = data[:-1] + bytes([data[-1] ^ 1])
    line = error_line(*run_cli("inspect-checkpoint", f"{server.base}/w/{name}"))
    assert "is corrupt: its SHA-256 does not start with" in line and "discarded" in line
    assert list(hub.iterdir()) == []


def test_missing_url_is_one_line(server: Server, hub: Path) -> None:
    line = error_line(*run_cli("inspect-checkpoint", f"{server.base}/w/none-0123abcd.pth"))
    assert "could not be downloaded (HTTP Error 404" in line
    assert list(hub.iterdir()) == []


# ---------------------------------------------------------------- model names


def test_model_name_downloads_from_the_table(
    server: Server, hub: Path, vgg: tuple[bytes, str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, name, expected = vgg
    monkeypatch.setattr(weights, "WEIGHTS_BASE_URL", f"{server.base}/models/")
    monkeypatch.setitem(weights.TORCHVISION_WEIGHTS, "vgg19_bn", name)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # the table suffices
    server.files[f"/models/{name}"] = data
    result = inspect_checkpoint("vgg19_bn", progress=False)
    assert rows(result) == expected and result.records[0].checkpoint == "vgg19_bn"
    code, _, err = run_cli("inspect-checkpoint", "vgg19_bn", "--offline")
    assert code == 0, err
    assert server.requests == [f"/models/{name}"]


def test_model_name_offline_not_cached(hub: Path) -> None:
    code, out, err = run_cli("inspect-checkpoint", "resnet50", "--offline")
    assert_one_line_error(code, out, err)
    assert "resnet50 would need a download from" in err and "resnet50-0676ba61.pth" in err


def test_table_has_the_classic_weights() -> None:
    table = weights.TORCHVISION_WEIGHTS
    for name in ("vgg11_bn", "vgg19_bn", "resnet152", "resnext50_32x4d", "wide_resnet50_2"):
        assert name in table
    for name in ("densenet121", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b7"):
        assert name in table
    assert table["vgg19_bn"] == "vgg19_bn-c79401a0.pth"
    assert all("-" in f and f.endswith(".pth") for f in table.values())


def test_typo_with_broken_torchvision_suggests_and_says_how_to_fix(hub: Path, broken: None) -> None:
    code, out, err = run_cli("inspect-checkpoint", "vgg19_bnn")
    assert_one_line_error(code, out, err)
    assert "vgg19_bnn is neither a file nor a known model name (did you mean vgg19_bn" in err
    assert "could not be imported (RuntimeError: operator torchvision::nms does not exist)" in err
    assert f"built for torch {TORCH} from the index your torch came from" in err
    assert "pip install torchvision" in err


def test_typo_without_torchvision(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    code, out, err = run_cli("inspect-checkpoint", "resnet5")
    assert_one_line_error(code, out, err)
    assert "did you mean resnet50" in err and "torchvision" in err and "is not installed" in err


def test_table_name_with_broken_torchvision_never_imports_it(hub: Path, broken: None) -> None:
    code, out, err = run_cli("inspect-checkpoint", "vgg19_bn", "--offline")
    assert_one_line_error(code, out, err)
    assert "would need a download" in err and "could not be imported" not in err


def test_broken_torchvision_model_option(broken: None) -> None:
    with pytest.raises(ModelError) as info:
        resolve_factory("torchvision:vgg19_bn")
    text = str(info.value)
    assert "torchvision:vgg19_bn needs torchvision, which could not be imported" in text
    assert "RuntimeError: operator torchvision::nms" in text and f"torch {TORCH}" in text


def test_broken_timm_says_how_to_fix(broken: None) -> None:
    with pytest.raises(UnavailablePackage) as info:
        import_optional("timm")
    assert str(info.value).startswith("timm could not be imported (RuntimeError:")
    assert str(info.value).endswith("then pip install timm")


# ---------------------------------------------------------------- hf://


def _hub_repo(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """A repository as huggingface_hub caches it: refs/main names a snapshot holding files."""
    commit = hashlib.sha1(repo.encode()).hexdigest()
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        (snapshot / name).write_bytes(source.read_bytes())


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants

    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    sd = vgg19_bn_state_dict(16)
    single = save_safetensors(sd, tmp_path / "model.safetensors")
    sharded = save_sharded_safetensors(sd, tmp_path / "sharded")
    _hub_repo(cache, "owner/single", {"model.safetensors": single})
    _hub_repo(cache, "owner/sharded", {p.name: p for p in sharded.iterdir()})
    return cache


def test_hf_single_and_sharded_offline(
    hf_cache: Path, vgg: tuple[bytes, str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = vgg[2]
    result = inspect_checkpoint(["hf://owner/single", "hf://owner/sharded"], offline=True)
    assert [r.checkpoint for r in result.records[::16]] == [
        "hf://owner/single",
        "hf://owner/sharded",
    ]
    assert rows(result)[:16] == rows(result)[16:]
    assert [r["name"] for r in rows(result)[:16]] == [r["name"] for r in expected]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run_cli("inspect-checkpoint", "hf://owner/single/model.safetensors")
    assert code == 0, err


def test_hf_not_cached_offline(hf_cache: Path) -> None:
    code, out, err = run_cli("inspect-checkpoint", "hf://owner/other", "--offline")
    assert_one_line_error(code, out, err)
    assert "hf://owner/other would need a download (none of model.safetensors" in err
    assert "is in the Hugging Face cache" in err and "--offline" in err
    code, out, err = run_cli("inspect-checkpoint", "hf://owner/single/x.bin", "--offline")
    assert_one_line_error(code, out, err)
    assert "(x.bin is not in the Hugging Face cache" in err


def test_hf_bad_name_and_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_cli("inspect-checkpoint", "hf://gpt2", "--offline")
    assert_one_line_error(code, out, err)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    code, out, err = run_cli("inspect-checkpoint", "hf://owner/repo")
    assert_one_line_error(code, out, err)
    assert "needs huggingface_hub, which is not installed" in err
    assert "pip install -e '.[hub]'" in err


# ---------------------------------------------------------------- safetensors package


def test_safetensors_package_and_fallback_give_identical_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors

    path = save_safetensors(vgg19_bn_state_dict(16), tmp_path / "m.safetensors")
    calls: list[str] = []
    real = safetensors.safe_open

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(str(kwargs.get("framework")))
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors, "safe_open", counting)
    with_package = inspect_checkpoint(path, weights=True)
    assert calls and set(calls) == {"numpy"}
    monkeypatch.setitem(sys.modules, "safetensors", None)
    without = inspect_checkpoint(path, weights=True)
    assert with_package.records == without.records and with_package.weights == without.weights
