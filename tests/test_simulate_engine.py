"""The fast engine against a plain nn.Module + backward() loop on the same weights and inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradscope.activations import parse_activation
from gradscope.api import simulate
from gradscope.engine.draws import draw_repeat, repeat_seed
from gradscope.engine.layers import activation_forward
from gradscope.engine.mlp import forward_backward
from gradscope.engine.runner import intra_op_threads, run_configuration
from gradscope.options import Arch, Dtype, Init, Norm, ResidualScale
from gradscope.specs import NetSpec


def make_spec(
    arch: str = "plain",
    activation: str = "relu",
    norm: str = "batchnorm",
    init: str = "he",
    depth: int = 4,
    width: int = 24,
    batch: int = 10,
    gain: float = 1.0,
    residual_scale: str = "none",
) -> NetSpec:
    return NetSpec(
        arch=Arch(arch),
        activation=parse_activation(activation),
        norm=Norm(norm),
        init=Init(init),
        gain=gain,
        depth=depth,
        width=width,
        batch=batch,
        residual_scale=ResidualScale(residual_scale),
    )


class Reference(nn.Module):
    """The net as a user would write it with torch.nn, weights copied from the draw."""

    def __init__(self, spec: NetSpec, weights: torch.Tensor) -> None:
        super().__init__()
        self.spec = spec
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for w in weights:
            lin = nn.Linear(spec.width, spec.width, bias=False).to(w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
            self.linears.append(lin)
            if spec.norm is Norm.batchnorm:
                norm: nn.Module = nn.BatchNorm1d(spec.width, track_running_stats=False)
            elif spec.norm is Norm.layernorm:
                norm = nn.LayerNorm(spec.width, elementwise_affine=False)
            else:
                norm = nn.Identity()
            self.norms.append(norm.to(w.dtype))
        self.act = activation_forward(spec.activation)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for i, (lin, norm) in enumerate(zip(self.linears, self.norms, strict=True)):
            z = norm(lin(outs[-1]))
            if self.spec.arch is Arch.resnet and i % 2 == 1:
                z = z * self.spec.branch_scale + outs[-2]
            outs.append(self.act(z))
        return outs


def reference(spec: NetSpec, weights: torch.Tensor, x: torch.Tensor, dy: torch.Tensor):
    model = Reference(spec, weights).train()
    xin = x.clone().requires_grad_(True)
    outs = model(xin)
    for o in outs:
        o.retain_grad()
    outs[-1].backward(dy)
    norms = torch.stack([lin.weight.grad.norm() for lin in model.linears])

    def unit_var(t: torch.Tensor) -> torch.Tensor:
        return t.var(dim=0, correction=0).mean()

    fvar = torch.stack([unit_var(o.detach()) for o in outs[1:]])
    bvar = torch.stack([unit_var(o.grad) for o in outs[:-1]])
    return norms, fvar, bvar


def compare(spec: NetSpec, dtype: Dtype, rtol: float, repeat: int = 0) -> None:
    draw = draw_repeat(spec, seed=7, repeat=repeat, dtype=dtype)
    out = forward_backward(spec, draw.weights, draw.x, draw.dy)
    ref_norms, ref_f, ref_b = reference(spec, draw.weights, draw.x, draw.dy)
    torch.testing.assert_close(out.grad_norm, ref_norms, rtol=rtol, atol=0)
    torch.testing.assert_close(out.forward_var, ref_f, rtol=100 * rtol, atol=0)
    torch.testing.assert_close(out.backward_var, ref_b, rtol=100 * rtol, atol=0)


ALL_ACTIVATIONS = [
    "relu", "leaky_relu:0.2", "elu:0.5", "selu", "celu:2", "gelu", "gelu_tanh", "silu", "mish",
    "softplus:2", "tanh", "sigmoid", "hardtanh:0.8", "hardswish", "relu6", "softsign", "identity",
]  # fmt: skip


@pytest.mark.parametrize("activation", ALL_ACTIVATIONS)
@pytest.mark.parametrize("arch", ["plain", "resnet"])
@pytest.mark.parametrize("norm", ["batchnorm", "layernorm", "none"])
def test_engine_matches_autograd_float64(activation: str, arch: str, norm: str) -> None:
    spec = make_spec(arch=arch, activation=activation, norm=norm)
    compare(spec, Dtype.float64, rtol=1e-10)


@pytest.mark.parametrize("activation", ["relu", "tanh", "selu", "gelu", "leaky_relu:0.2"])
@pytest.mark.parametrize("arch", ["plain", "resnet"])
@pytest.mark.parametrize("norm", ["batchnorm", "layernorm", "none"])
def test_engine_matches_autograd_float32(activation: str, arch: str, norm: str) -> None:
    # Paper sizes, moderate depth: float32 rounding grows with depth in these chaotic nets.
    spec = make_spec(arch=arch, activation=activation, norm=norm, depth=6, width=64, batch=32)
    compare(spec, Dtype.float32, rtol=1e-5)


@pytest.mark.parametrize(
    ("init", "residual_scale"),
    [
        ("lecun", "invsqrt-depth"),
        ("xavier-normal", "zero-gamma"),
        ("xavier-uniform", "none"),
        ("truncated-normal", "none"),
        ("orthogonal", "invsqrt-depth"),
        ("identity", "none"),
    ],
)
def test_inits_and_residual_scales_match_autograd(init: str, residual_scale: str) -> None:
    spec = make_spec(arch="resnet", init=init, residual_scale=residual_scale, gain=1.3)
    compare(spec, Dtype.float64, rtol=1e-10)


def test_initialisations_have_the_promised_distribution() -> None:
    width = 64
    for init, var in [
        ("he", 2.0 / width),
        ("lecun", 1.0 / width),
        ("xavier-normal", 2.0 / (2 * width)),
        ("xavier-uniform", 2.0 / (2 * width)),
        ("truncated-normal", 2.0 / width),
    ]:
        spec = make_spec(init=init, depth=8, width=width, gain=1.5)
        w = draw_repeat(spec, 0, 0, Dtype.float64).weights
        assert float(w.var()) == pytest.approx(1.5**2 * var, rel=0.03), init
    spec = make_spec(init="truncated-normal", depth=8, width=width)
    w = draw_repeat(spec, 0, 0, Dtype.float64).weights
    assert float(w.abs().max()) <= 2 * math.sqrt(2 / width) / 0.87962566103423978 + 1e-12
    q = draw_repeat(make_spec(init="orthogonal", gain=2.0), 0, 0, Dtype.float64).weights
    eye = torch.eye(q.shape[-1], dtype=q.dtype)
    torch.testing.assert_close(q @ q.transpose(-1, -2), 4.0 * eye.expand_as(q))


def test_stacked_repeats_match_one_at_a_time() -> None:
    spec = make_spec(arch="resnet", activation="tanh", depth=6)
    one = run_configuration(spec, 6, seed=3, dtype=Dtype.float64, workers=1)
    stacked = run_configuration(spec, 6, seed=3, dtype=Dtype.float64, chunk=4)
    np.testing.assert_allclose(stacked.norm_matrix(), one.norm_matrix(), rtol=1e-10)


def test_repeats_do_not_depend_on_workers_or_order() -> None:
    spec = make_spec(depth=5, width=32, batch=16)
    a = run_configuration(spec, 7, seed=11, workers=1)
    b = run_configuration(spec, 7, seed=11, workers=2)
    assert np.array_equal(a.norm_matrix(), b.norm_matrix())
    # Repeat 5 alone is the same as repeat 5 of the run: its seed is (seed, spec, 5) only.
    # (The engine runs each repeat on one intra-op thread; so does this check.)
    draw = draw_repeat(spec, 11, 5)
    with intra_op_threads(1):
        alone = forward_backward(spec, draw.weights, draw.x, draw.dy).grad_norm.double().numpy()
    assert np.array_equal(alone, a.norm_matrix()[5])
    assert repeat_seed(11, spec, 5) != repeat_seed(11, spec, 6)
    assert repeat_seed(11, spec, 5) != repeat_seed(12, spec, 5)


def test_linear_c_identity_net_is_exact() -> None:
    """W = c·I, no norm, identity: derivative variance c^(2(L−l)), weight gradients c^(L−1)."""
    c, depth = 1.2, 30
    spec = make_spec(activation="identity", norm="none", init="identity", gain=c, depth=depth)
    draw = draw_repeat(spec, 0, 0, Dtype.float64)
    out = forward_backward(spec, draw.weights, draw.x, draw.dy)
    layers = np.arange(1, depth + 1)
    bvar = out.backward_var.numpy()
    np.testing.assert_allclose(bvar / bvar[-1], c ** (2.0 * (depth - layers)), rtol=1e-12)
    fvar = out.forward_var.numpy()
    x0_var = float(draw.x.var(dim=0, correction=0).mean())
    np.testing.assert_allclose(fvar, x0_var * c ** (2.0 * layers), rtol=1e-12)
    expected = c ** (depth - 1) * float(torch.linalg.matrix_norm(draw.dy.T @ draw.x))
    np.testing.assert_allclose(out.grad_norm.numpy(), expected, rtol=1e-12)


def test_c_identity_net_overflow_is_reported_not_hidden() -> None:
    spec = make_spec(
        activation="identity", norm="none", init="identity", gain=1.2, depth=500, width=8
    )
    stats = run_configuration(spec, 2, seed=0, workers=1)
    # float32 holds 1.2^l only up to l ≈ 480: the forward pass overflows there.
    assert stats.overflow_layer is not None
    assert 470 <= stats.overflow_layer <= 490
    assert stats.nonfinite_repeats == 2
    ok = run_configuration(spec, 2, seed=0, dtype=Dtype.float64, workers=1)
    assert ok.overflow_layer is None


def test_worker_processes_give_the_same_bits() -> None:
    from gradscope.engine.runner import make_process_pool
    from gradscope.options import Backend

    spec = make_spec(arch="resnet", activation="selu", depth=6, width=32, batch=16)
    one = run_configuration(spec, 9, seed=4, workers=1)
    pool = make_process_pool(2)
    try:
        procs = run_configuration(spec, 9, seed=4, workers=2, backend=Backend.processes, pool=pool)
    finally:
        pool.shutdown()
    assert np.array_equal(one.norm_matrix(), procs.norm_matrix())
    assert np.array_equal(one.forward_var_sum, procs.forward_var_sum)
    assert np.array_equal(one.backward_var_sum, procs.backward_var_sum)


def test_interrupted_run_marks_every_layer_record_partial() -> None:
    import threading

    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        stop.set()  # as Ctrl-C would, once a repeat has finished

    res = simulate(
        depth=3, width=8, batch=8, repeats=100_000, workers=1, progress=progress, stop=stop
    )
    assert res.partial and all(r.partial for r in res.records)
    assert 0 < res.records[0].repeats < 100_000
    full = simulate(depth=3, width=8, batch=8, repeats=4, workers=1)
    assert not full.partial and not any(r.partial for r in full.records)
