"""Synthetic checkpoints with torchvision's VGG19-BN key layout, and the CLI helpers the
checkpoint tests share.

``vgg19_bn_state_dict(scale=1)`` has VGG19-BN's exact keys and tensor shapes (about 550 MB of
float32); tests use ``scale=16`` (channel counts divided by 16, small classifier). Running
variances follow ``sigma_l = GROWTH**(16 - l) * POOL_DROP**(pools before l)`` times a per-layer
channel pattern with mean exactly 1, so sigma grows toward the input and drops right after
each of the max-pools. ``save_every_format`` writes that layout in every format gradscope reads.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M"]
CFG += [512, 512, 512, 512, "M"]
POOL_INDICES = (6, 13, 26, 39, 52)
GROWTH = 1.25
POOL_DROP = 0.5


def bn_layout() -> list[tuple[int, int, int, int]]:
    """(conv index, bn index, out channels, pools before) for the 16 conv+BN pairs."""
    out = []
    idx, pools = 0, 0
    for v in CFG:
        if v == "M":
            idx += 1
            pools += 1
        else:
            out.append((idx, idx + 1, int(v), pools))
            idx += 3
    return out


def target_sigma(layer: int, pools: int) -> float:
    """The sigma built into BN layer ``layer`` (1..16)."""
    return GROWTH ** (16 - layer) * POOL_DROP**pools


def vgg19_bn_state_dict(scale: int = 16, seed: int = 0) -> OrderedDict[str, torch.Tensor]:
    """VGG19-BN keys in module order; ``scale`` divides channel counts (1 = real shapes)."""
    gen = torch.Generator().manual_seed(seed)
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    in_ch = 3
    for layer, (ci, bi, out_ch, pools) in enumerate(bn_layout(), start=1):
        c = max(out_ch // scale, 2)
        fan_in = in_ch * 9
        sd[f"features.{ci}.weight"] = (
            torch.randn(c, in_ch, 3, 3, generator=gen) * (2.0 / fan_in) ** 0.5
        )
        sd[f"features.{ci}.bias"] = torch.randn(c, generator=gen) * 0.01
        sigma = target_sigma(layer, pools)
        pattern = torch.rand(c, generator=gen) + 0.5
        pattern = pattern / pattern.mean()  # mean exactly ~1: sigma = sqrt(mean(var))
        sd[f"features.{bi}.weight"] = torch.rand(c, generator=gen) + 0.5
        sd[f"features.{bi}.bias"] = torch.randn(c, generator=gen) * 0.1
        sd[f"features.{bi}.running_mean"] = torch.randn(c, generator=gen)
        sd[f"features.{bi}.running_var"] = (sigma**2 * pattern).float()
        sd[f"features.{bi}.num_batches_tracked"] = torch.tensor(1000 + layer)
        in_ch = c
    hidden = 4096 // scale
    flat = in_ch * 7 * 7
    for i, (fi, fo) in zip(
        (0, 3, 6), ((flat, hidden), (hidden, hidden), (hidden, 1000)), strict=True
    ):
        sd[f"classifier.{i}.weight"] = torch.randn(fo, fi, generator=gen) * (1.0 / fi) ** 0.5
        sd[f"classifier.{i}.bias"] = torch.zeros(fo)
    return sd


class VGG(nn.Module):
    """A module whose state dict has VGG19-BN's layout (for TorchScript and pickled modules)."""

    def __init__(self, scale: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c = max(int(v) // scale, 2)
                layers += [nn.Conv2d(in_ch, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True)]
                in_ch = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        hidden = 4096 // scale
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * 49, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, 1000),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg19_bn_module(scale: int = 16, seed: int = 0) -> VGG:
    model = VGG(scale)
    model.load_state_dict(vgg19_bn_state_dict(scale, seed))
    return model.eval()


def save_legacy(obj: object, path: Path) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    return path


def save_zip(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def save_safetensors(sd: dict[str, torch.Tensor], path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def save_sharded_safetensors(sd: dict[str, torch.Tensor], folder: Path, shards: int = 2) -> Path:
    """Shards ``model-0000k-of-0000n.safetensors`` plus ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    keys = list(sd)
    size = -(-len(keys) // shards)
    weight_map = {}
    for k in range(shards):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: sd[key].contiguous() for key in keys[k * size : (k + 1) * size]}
        save_file(part, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def save_torchscript(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.x
        torch.jit.save(torch.jit.script(model), str(path))
    return path


FORMATS = ("legacy", "zip", "safetensors", "sharded", "torchscript")


def save_every_format(
    folder: Path, scale: int = 16, seed: int = 0, formats: tuple[str, ...] = FORMATS
) -> dict[str, Path]:
    """``vgg19_bn_state_dict(scale, seed)`` saved in each of ``formats`` under ``folder``
    (the TorchScript archive is of a module holding the same weights)."""
    sd = vgg19_bn_state_dict(scale, seed)
    save = {
        "legacy": lambda: save_legacy(sd, folder / "vgg19_bn-legacy.pth"),
        "zip": lambda: save_zip(sd, folder / "vgg19_bn.pt"),
        "safetensors": lambda: save_safetensors(sd, folder / "vgg19_bn.safetensors"),
        "sharded": lambda: save_sharded_safetensors(sd, folder / "sharded"),
        "torchscript": lambda: save_torchscript(
            vgg19_bn_module(scale, seed), folder / "vgg19_bn.torchscript.pt"
        ),
    }
    return {fmt: save[fmt]() for fmt in formats}


def run_cli(*args: str) -> tuple[int, str, str]:
    """``gradscope ARGS`` in this process: exit code, stdout and stderr."""
    from typer.testing import CliRunner

    from gradscope.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, out: str, err: str) -> None:
    """The CLI failed as every user error fails: exit 1, nothing on stdout, one ``Error:``
    line on stderr and no traceback."""
    assert code == 1, out + err
    assert out == ""
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
