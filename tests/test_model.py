"""`simulate --model`: factories, execution order, residual paths, and agreement with autograd."""

from __future__ import annotations

import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradscope.engine.user_model import ModelError, model_records, model_seed, run_model
from gradscope.errors import SpecError
from gradscope.options import Reinit
from gradscope.specs import ModelSpec, parse_input_shape, parse_model_args

ROOT = Path(__file__).resolve().parents[1]
RESNET = str(ROOT / "examples" / "resnet.py") + ":make_model"
PLAIN = str(ROOT / "examples" / "plain_cnn.py") + ":make_model"


def write(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


MLP = """
from torch import nn

def make(width=8, depth=3):
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
    return nn.Sequential(*layers)

def custom(width=8):
    m = make(width)
    nn.init.zeros_(m[1].weight)  # not what reset_parameters() would do
    return m

def broken():
    raise RuntimeError("no GPU in this dream")

def not_a_module():
    return 42
"""


def test_parse_args_and_shape() -> None:
    assert parse_model_args(["width=64", "act='tanh'", "name=relu", "sizes=(1, 2)"]) == {
        "width": 64,
        "act": "tanh",
        "name": "relu",
        "sizes": (1, 2),
    }
    assert parse_input_shape("3,32,32") == (3, 32, 32)
    assert parse_input_shape("256") == (256,)
    for bad in ["", "3,,2", "0,3", "a"]:
        with pytest.raises(SpecError):
            parse_input_shape(bad)
    with pytest.raises(SpecError, match="key=value"):
        parse_model_args(["width"])


def test_file_factory_with_args(tmp_path: Path) -> None:
    path = write(tmp_path, "mlp.py", MLP)
    run = run_model(ModelSpec(f"{path}:make", {"width": 6, "depth": 4}, (6,)), batch=8, repeats=3)
    assert [layer.module for layer in run.layers] == ["0", "3", "6", "9"]
    assert {layer.module_type for layer in run.layers} == {"Linear"}
    assert [layer.param_count for layer in run.layers] == [36] * 4
    assert run.grad_norms.shape == (3, 4) and np.all(run.grad_norms > 0)
    assert run.reinit is Reinit.reset  # default inits: reset_parameters() is equivalent


def test_module_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(MLP))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = run_model(ModelSpec("mypkg.nets:make", {}, (8,)), batch=4, repeats=2)
    assert len(run.layers) == 3
    sys.modules.pop("mypkg.nets", None)
    sys.modules.pop("mypkg", None)


def test_custom_init_falls_back_to_the_factory(tmp_path: Path) -> None:
    path = write(tmp_path, "mlp.py", MLP)
    run = run_model(ModelSpec(f"{path}:custom", {}, (8,)), batch=8, repeats=2)
    assert run.reinit is Reinit.factory and run.notes


@pytest.mark.parametrize(
    ("target", "kwargs", "shape", "message"),
    [
        (":make", {}, (8,), "FILE.py:FUNCTION"),
        ("missing.py:make", {}, (8,), "does not exist"),
        ("{mlp}:nope", {}, (8,), "has no function 'nope'; callables there: broken, custom"),
        ("{mlp}:broken", {}, (8,), "raised RuntimeError: no GPU in this dream"),
        ("{mlp}:not_a_module", {}, (8,), "returned a int, not a torch.nn.Module"),
        ("{mlp}:make", {"colour": 1}, (8,), "raised TypeError"),
        ("{mlp}:make", {}, (5,), "rejected an input of shape (4, 5): RuntimeError"),
        ("no_such_module_xyz:make", {}, (8,), "cannot import module"),
        ("{syntax}:make", {}, (8,), "importing"),
    ],
)
def test_model_errors(
    tmp_path: Path, target: str, kwargs: dict, shape: tuple, message: str
) -> None:
    mlp = write(tmp_path, "mlp.py", MLP)
    syntax = write(tmp_path, "syntax.py", "def make(:\n")
    target = target.format(mlp=mlp, syntax=syntax)
    with pytest.raises((ModelError, SpecError), match=None) as info:
        run_model(ModelSpec(target, kwargs, shape), batch=4, repeats=1)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_torchvision_name_without_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match="needs torchvision"):
            run_model(ModelSpec("torchvision:vgg19_bn", {}, (3, 32, 32)), batch=2, repeats=1)
    else:  # pragma: no cover - torchvision is not installable beside torch here
        pytest.skip("torchvision is installed")


def test_execution_order_and_residual_paths() -> None:
    run = run_model(
        ModelSpec(RESNET, {"width": 4, "blocks_per_stage": 1}, (3, 8, 8)), batch=4, repeats=1
    )
    names = [(layer.module, layer.path, layer.block) for layer in run.layers]
    assert names == [
        ("0", "main", ""),
        ("3.conv1", "branch", "3"),
        ("3.conv2", "branch", "3"),
        ("4.conv1", "branch", "4"),
        ("4.conv2", "branch", "4"),
        ("4.shortcut.0", "skip", "4"),
        ("5.conv1", "branch", "5"),
        ("5.conv2", "branch", "5"),
        ("5.shortcut.0", "skip", "5"),
        ("8", "main", ""),
    ]


def test_execution_order_is_not_definition_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rev.py",
        """
        from torch import nn
        class Rev(nn.Module):
            def __init__(self):
                super().__init__()
                self.late = nn.Linear(4, 4)
                self.early = nn.Linear(4, 4)
            def forward(self, x):
                return self.late(self.early(x))
        def make():
            return Rev()
        """,
    )
    run = run_model(ModelSpec(f"{path}:make", {}, (4,)), batch=4, repeats=1)
    assert [layer.module for layer in run.layers] == ["early", "late"]


def _plain_loop(spec: ModelSpec, batch: int, seed: int, repeat: int) -> dict[str, float]:
    """Independent reference: build, forward, backward, read .grad — no hooks, no engine."""
    import importlib.util

    file, func = spec.target.rsplit(":", 1)
    mod_spec = importlib.util.spec_from_file_location("ref_model", file)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed(seed, spec, batch, repeat))
        model = getattr(module, func)(**spec.kwargs).double().train()
    gen = torch.Generator().manual_seed(model_seed(seed, spec, batch, repeat) ^ 0x5DEECE66D)
    x = torch.randn((batch, *spec.input_shape), generator=gen, dtype=torch.float64)
    out = model(x)
    dy = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(dy / math.sqrt(out[0].numel()))
    return {
        name: float(m.weight.grad.norm())
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    }


@pytest.mark.parametrize("target", [PLAIN, RESNET])
def test_agrees_with_a_plain_autograd_loop(target: str) -> None:
    spec = ModelSpec(target, {"width": 4}, (3, 8, 8))
    run = run_model(spec, batch=4, repeats=2, seed=7, dtype="float64", reinit=Reinit.factory)
    for repeat in range(2):
        ref = _plain_loop(spec, 4, 7, repeat)
        got = {layer.module: run.grad_norms[repeat, i] for i, layer in enumerate(run.layers)}
        assert got.keys() == ref.keys()
        assert got == pytest.approx(ref, rel=1e-10)


def test_reset_and_factory_give_identical_numbers() -> None:
    spec = ModelSpec(PLAIN, {"width": 4, "blocks": 2}, (3, 8, 8))
    a = run_model(spec, batch=4, repeats=3, reinit=Reinit.reset, dtype="float64")
    b = run_model(spec, batch=4, repeats=3, reinit=Reinit.factory, dtype="float64")
    np.testing.assert_array_equal(a.grad_norms, b.grad_norms)


def test_records_and_summary() -> None:
    spec = ModelSpec(RESNET, {"width": 4, "blocks_per_stage": 1}, (3, 8, 8))
    run = run_model(spec, batch=4, repeats=6)
    rows, summary = model_records(run)
    assert [r.layer for r in rows] == list(range(1, 11))
    assert rows[0].grad_norm_ci_low < rows[0].grad_norm_mean < rows[0].grad_norm_ci_high
    assert rows[0].grad_norm_mean == pytest.approx(run.grad_norms[:, 0].mean())
    assert [s.path for s in summary] == ["all", "branch", "main+skip"]


def test_seeded_runs_are_identical() -> None:
    spec = ModelSpec(PLAIN, {"width": 4, "blocks": 1}, (3, 8, 8))
    a = run_model(spec, batch=4, repeats=2, seed=3)
    b = run_model(spec, batch=4, repeats=2, seed=3)
    c = run_model(spec, batch=4, repeats=2, seed=4)
    np.testing.assert_array_equal(a.grad_norms, b.grad_norms)
    assert not np.array_equal(a.grad_norms, c.grad_norms)


def test_per_sample_variance_matches_its_definition() -> None:
    from gradscope.engine.user_model import _per_sample_variance

    gen = torch.Generator().manual_seed(0)
    t = 3.0 + 2.0 * torch.randn(16, 4, 5, 5, generator=gen)
    expected = float(t.double().reshape(16, -1).var(dim=0, unbiased=False).mean())
    assert _per_sample_variance(t) == pytest.approx(expected, rel=1e-6)
    assert math.isnan(_per_sample_variance(torch.ones(1, 3)))
