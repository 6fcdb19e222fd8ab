"""Conv archs and pre-norm resnets: the hand-written engine against a plain nn.Module +
backward() loop on the same weights, inputs and output derivatives."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradscope.activations import parse_activation
from gradscope.api import simulate
from gradscope.engine.conv import conv_forward_backward
from gradscope.engine.draws import draw_conv_repeat
from gradscope.engine.layers import activation_backward, activation_forward
from gradscope.engine.mlp import forward_backward
from gradscope.errors import SpecError
from gradscope.options import Arch, Dtype, Init, Norm, NormPosition, ResidualScale
from gradscope.specs import NetSpec, build_specs


def conv_spec(
    arch: str = "plain-conv",
    activation: str = "relu",
    norm: str = "batchnorm",
    depth: int = 4,
    width: int = 6,
    batch: int = 4,
    image_size: int = 8,
    pool_every: int = 2,
    double_channels: bool = False,
    norm_position: str = "post",
    residual_scale: str = "none",
    init: str = "he",
) -> NetSpec:
    return NetSpec(
        arch=Arch(arch),
        activation=parse_activation(activation),
        norm=Norm(norm),
        init=Init(init),
        gain=1.0,
        depth=depth,
        width=width,
        batch=batch,
        residual_scale=ResidualScale(residual_scale),
        norm_position=NormPosition(norm_position),
        image_size=image_size,
        pool_every=pool_every,
        double_channels=double_channels,
    )


def make_norm(norm: Norm, channels: int, dims: int) -> nn.Module:
    if norm is Norm.batchnorm:
        cls = nn.BatchNorm2d if dims == 4 else nn.BatchNorm1d
        return cls(channels, affine=False, track_running_stats=False)
    if norm is Norm.layernorm:
        # Over each sample's (C, H, W): GroupNorm with one group, no affine.
        return (
            nn.GroupNorm(1, channels, affine=False)
            if dims == 4
            else nn.LayerNorm(channels, elementwise_affine=False)
        )
    return nn.Identity()


def channel_var(t: torch.Tensor) -> torch.Tensor:
    """Per channel over batch (and positions), population variance, mean over channels."""
    if t.dim() == 2:
        return t.var(dim=0, correction=0).mean()
    return t.transpose(0, 1).reshape(t.shape[1], -1).var(dim=1, correction=0).mean()


def reference(spec: NetSpec, weights: list[torch.Tensor], x: torch.Tensor, dy: torch.Tensor):
    """The net written with torch.nn modules and autograd, weights copied from the draw."""
    dims = x.dim()
    dt = x.dtype
    layers = []
    for w in weights:
        if dims == 4:
            m: nn.Module = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, bias=False)
        else:
            m = nn.Linear(w.shape[1], w.shape[0], bias=False)
        m = m.to(dt)
        with torch.no_grad():
            m.weight.copy_(w)
        layers.append(m)
    act = activation_forward(spec.activation)
    pool = nn.MaxPool2d(2)
    pools = set(spec.pools_after)
    scale = spec.branch_scale
    xin = x.clone().requires_grad_(True)
    fvar, bvar_at, pin = {}, {}, {}
    keep = []

    def watch(t: torch.Tensor) -> torch.Tensor:
        t.retain_grad()
        keep.append(t)
        return t

    cur = watch(xin)
    if spec.norm_position is NormPosition.pre and spec.arch.is_resnet:
        for k in range(spec.depth // 2):
            n1 = make_norm(spec.norm, cur.shape[1], dims).to(dt)
            n2 = make_norm(spec.norm, layers[2 * k].weight.shape[0], dims).to(dt)
            bvar_at[2 * k] = cur
            a2 = watch(act(n2(layers[2 * k](act(n1(cur))))))
            fvar[2 * k], bvar_at[2 * k + 1] = a2, a2
            new = cur + scale * layers[2 * k + 1](a2)
            if 2 * k + 2 in pools:
                new = watch(new)
                pin[2 * k + 1] = new
                new = pool(new)
            cur = watch(new)
            fvar[2 * k + 1] = cur
    else:
        outs = [cur]
        for i, layer in enumerate(layers):
            bvar_at[i] = outs[-1]
            z = make_norm(spec.norm, layer.weight.shape[0], dims).to(dt)(layer(outs[-1]))
            if spec.arch.is_resnet and i % 2 == 1:
                z = z * scale + outs[-2]
            y = act(z)
            if i + 1 in pools:
                y = watch(y)
                pin[i] = y
                y = pool(y)
            outs.append(watch(y))
            fvar[i] = outs[-1]
        cur = outs[-1]
    cur.backward(dy)
    depth = spec.depth
    return (
        torch.stack([m.weight.grad.norm() for m in layers]),
        torch.stack([channel_var(fvar[i].detach()) for i in range(depth)]),
        torch.stack([channel_var(bvar_at[i].grad) for i in range(depth)]),
        {i: (float(channel_var(t.detach())), float(channel_var(t.grad))) for i, t in pin.items()},
    )


def run_engine(spec: NetSpec, dtype: Dtype, seed: int = 3):
    act = (activation_forward(spec.activation), activation_backward(spec.activation))
    draw = draw_conv_repeat(spec, seed, 0, dtype)
    out = conv_forward_backward(spec, draw.weights, draw.x, draw.dy, *act)
    return draw, out


CASES = [
    dict(arch="plain-conv", norm="batchnorm", activation="relu"),
    dict(arch="plain-conv", norm="layernorm", activation="tanh"),
    dict(arch="plain-conv", norm="none", activation="selu", init="lecun"),
    dict(arch="plain-conv", norm="batchnorm", activation="gelu", double_channels=True),
    dict(arch="resnet-conv", norm="batchnorm", activation="relu", residual_scale="invsqrt-depth"),
    dict(arch="resnet-conv", norm="layernorm", activation="relu", norm_position="pre"),
    dict(arch="resnet-conv", norm="batchnorm", activation="selu", norm_position="pre",
         residual_scale="invsqrt-depth"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_conv_engine_matches_autograd_float64(case: dict) -> None:
    spec = conv_spec(**case)
    draw, out = run_engine(spec, Dtype.float64)
    ref_norms, ref_f, ref_b, ref_pool = reference(spec, draw.weights, draw.x, draw.dy)
    torch.testing.assert_close(out.grad_norm, ref_norms, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.forward_var, ref_f, rtol=1e-8, atol=0)
    torch.testing.assert_close(out.backward_var, ref_b, rtol=1e-8, atol=0)
    for i in range(spec.depth):
        if i in ref_pool:
            assert float(out.pool_input_var[i]) == pytest.approx(ref_pool[i][0], rel=1e-8)
            assert float(out.pool_input_backward_var[i]) == pytest.approx(ref_pool[i][1], rel=1e-8)
        else:
            assert math.isnan(float(out.pool_input_var[i]))


def test_conv_engine_matches_autograd_float32() -> None:
    spec = conv_spec(width=16, batch=8, image_size=16, depth=6, pool_every=2)
    draw, out = run_engine(spec, Dtype.float32)
    ref_norms, ref_f, ref_b, _ = reference(spec, draw.weights, draw.x, draw.dy)
    torch.testing.assert_close(out.grad_norm, ref_norms, rtol=1e-4, atol=0)
    torch.testing.assert_close(out.backward_var, ref_b, rtol=1e-3, atol=0)


@pytest.mark.parametrize("norm", ["batchnorm", "layernorm"])
@pytest.mark.parametrize("scale", ["none", "invsqrt-depth", "zero-gamma"])
def test_prenorm_mlp_matches_autograd(norm: str, scale: str) -> None:
    from gradscope.engine.draws import draw_repeat

    spec = NetSpec(
        arch=Arch.resnet,
        activation=parse_activation("relu"),
        norm=Norm(norm),
        init=Init.he,
        gain=1.0,
        depth=6,
        width=12,
        batch=10,
        residual_scale=ResidualScale(scale),
        norm_position=NormPosition.pre,
    )
    draw = draw_repeat(spec, 5, 0, Dtype.float64)
    out = forward_backward(spec, draw.weights, draw.x, draw.dy)
    ref_norms, ref_f, ref_b, _ = reference(spec, list(draw.weights), draw.x, draw.dy)
    torch.testing.assert_close(out.grad_norm, ref_norms, rtol=1e-10, atol=1e-300)
    torch.testing.assert_close(out.forward_var, ref_f, rtol=1e-8, atol=0)
    torch.testing.assert_close(out.backward_var, ref_b, rtol=1e-8, atol=0)
    # Stacked repeats (the CUDA path) give the same numbers.
    stacked = forward_backward(spec, draw.weights[None], draw.x[None], draw.dy[None])
    torch.testing.assert_close(stacked.grad_norm[0], out.grad_norm, rtol=1e-10, atol=1e-300)


def test_results_do_not_depend_on_workers() -> None:
    kw = dict(arch="plain-conv", depth=4, width=4, batch=4, image_size=8, pool_every=2, repeats=6)
    one = simulate(**kw, workers=1)
    two = simulate(**kw, workers=2, backend="threads")
    forked = simulate(**kw, workers=2, backend="processes")
    chunked = simulate(**kw, chunk=4)
    assert one.records == two.records == forked.records == chunked.records


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(arch="plain", pool_every=2), "--pool-every 2 applies to the conv archs"),
        (dict(arch="resnet", image_size=16), "--image-size 16 applies to the conv archs"),
        (dict(arch="plain", norm_position="pre"), "--norm-position pre applies to the resnet"),
        (
            dict(arch="plain-conv", image_size=4, depth=8, pool_every=2),
            "image size 4 is too small for 3 2×2 max-pools",
        ),
        (dict(arch="resnet-conv", pool_every=3, depth=8), "--pool-every 3 would pool inside"),
        (dict(arch="plain-conv", init="orthogonal"), "--init orthogonal is not available"),
        (dict(arch="plain-conv", pool_every=-1), "--pool-every must be 0"),
    ],
)
def test_bad_conv_options_are_one_sentence(kwargs: dict, message: str) -> None:
    """The CLI names the flag; the Python API names the parameter, never a flag."""
    with pytest.raises(SpecError) as info:
        build_specs(**kwargs)
    assert message in info.value.cli_message()
    python_message = str(info.value)
    assert "--" not in python_message
    assert python_message == info.value.cli_message().replace("--pool-every", "pool_every").replace(
        "--image-size", "image_size"
    ).replace("--norm-position", "norm_position").replace("--init", "init")
