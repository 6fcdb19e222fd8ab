"""Synthetic checkpoints with torchvision's VGG19-BN key layout (and torchvision's ResNet,
DenseNet and MobileNetV2 and timm's ResNet-D layouts, key for key), and the CLI helpers the
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
from collections.abc import Callable
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


def assert_one_line_error(code: int, out: str, err: str, expected: int = 1) -> None:
    """The CLI failed as every user error fails: exit 1 (2 for a value that does not parse),
    nothing on stdout, one ``Error:`` line on stderr and no traceback."""
    assert code == expected, out + err
    assert out == ""
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


# ---------------------------------------------------------------- other layouts, key for key


class _ResBlock(nn.Module):
    """torchvision's BasicBlock/Bottleneck attribute order (timm's adds parameter-free
    act/aa/drop_block slots, which leave the keys unchanged). ``shortcut``: ``conv``
    (torchvision, timm's default: downsample.0 conv, .1 BN) or ``avg`` (timm's avg-down
    ResNet-D: downsample.0 AvgPool2d, .1 conv, .2 BN)."""

    def __init__(
        self, cin: int, planes: int, stride: int, bottleneck: bool, shortcut: str | None
    ) -> None:
        super().__init__()
        out = planes * (4 if bottleneck else 1)
        if bottleneck:
            self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
            self.relu = nn.ReLU(inplace=True)
        else:
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
        if shortcut == "conv":
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )
        elif shortcut == "avg":
            self.downsample = nn.Sequential(
                nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
                if stride > 1
                else nn.Identity(),
                nn.Conv2d(cin, out, 1, bias=False),
                nn.BatchNorm2d(out),
            )


class ResNetLayout(nn.Module):
    """torchvision's ResNet (``deep_stem=False, avg_down=False``) or timm's ResNet-D
    (``resnet50d``: a three-conv stem ``conv1.0..6`` and avg-down shortcuts), channels divided
    by ``scale``."""

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        bottleneck: bool = False,
        deep_stem: bool = False,
        avg_down: bool = False,
        scale: int = 16,
    ) -> None:
        super().__init__()
        width = 64 // scale
        if deep_stem:
            half = width // 2
            self.conv1: nn.Module = nn.Sequential(
                nn.Conv2d(3, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                nn.Conv2d(half, width, 3, 1, 1, bias=False),
            )  # fmt: skip
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for stage, count in enumerate(layers, start=1):
            planes = width * 2 ** (stage - 1)
            blocks = []
            for j in range(count):
                stride = 2 if stage > 1 and j == 0 else 1
                out = planes * (4 if bottleneck else 1)
                needs = j == 0 and (stride != 1 or cin != out)
                shortcut = ("avg" if avg_down else "conv") if needs else None
                blocks.append(_ResBlock(cin, planes, stride, bottleneck, shortcut))
                cin = out
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, 10)


def resnet_sigma(name: str, stage_rate: float = 1.3, seed: int = 0) -> float:
    """The sigma built into a ResNet BatchNorm: per block position, sigma grows by
    ``stage_rate`` per block from deep to shallow within a stage, on a per-stage and
    per-position level, times a little seeded noise (the stem: 5)."""
    import re as _re
    import zlib

    m = _re.match(r"layer(\d+)\.(\d+)\.(bn\d|downsample\.\d+)$", name)
    if m is None:
        return 5.0
    stage, block = int(m.group(1)), int(m.group(2))
    level = {"bn1": 1.0, "bn2": 2.0, "bn3": 0.7}.get(m.group(3), 1.5) * 3.0 / stage
    gen = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
    noise = 1.0 + 0.02 * float(torch.randn((), generator=gen))
    return float(level * stage_rate ** (-block) * noise)


def with_sigmas(model: nn.Module, sigma: Callable[[str], float], seed: int = 0) -> nn.Module:
    """Every BatchNorm's running_var set so that sqrt(mean(running_var)) == sigma(name)."""
    gen = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            pattern = torch.rand(m.num_features, generator=gen) + 0.5
            assert m.running_var is not None and m.running_mean is not None
            m.running_var.copy_(sigma(name) ** 2 * pattern / pattern.mean())
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.num_batches_tracked.fill_(1000)
    return model


class DenseNetLayout(nn.Module):
    """torchvision's DenseNet key layout (features.conv0/norm0, denseblockK.denselayerJ.
    norm1/conv1/norm2/conv2, transitionK.norm/conv, norm5), small."""

    def __init__(self, blocks: tuple[int, ...] = (2, 3, 2), growth: int = 4) -> None:
        super().__init__()
        f: OrderedDict[str, nn.Module] = OrderedDict()
        c = 2 * growth
        f["conv0"] = nn.Conv2d(3, c, 7, 2, 3, bias=False)
        f["norm0"] = nn.BatchNorm2d(c)
        f["relu0"] = nn.ReLU(inplace=True)
        f["pool0"] = nn.MaxPool2d(3, 2, 1)
        for k, n in enumerate(blocks, start=1):
            block = nn.Module()
            for j in range(1, n + 1):
                layer = nn.Module()
                layer.norm1 = nn.BatchNorm2d(c)
                layer.relu1 = nn.ReLU(inplace=True)
                layer.conv1 = nn.Conv2d(c, 2 * growth, 1, bias=False)
                layer.norm2 = nn.BatchNorm2d(2 * growth)
                layer.relu2 = nn.ReLU(inplace=True)
                layer.conv2 = nn.Conv2d(2 * growth, growth, 3, 1, 1, bias=False)
                setattr(block, f"denselayer{j}", layer)
                c += growth
            f[f"denseblock{k}"] = block
            if k < len(blocks):
                f[f"transition{k}"] = nn.Sequential(
                    OrderedDict(
                        norm=nn.BatchNorm2d(c), relu=nn.ReLU(inplace=True),
                        conv=nn.Conv2d(c, c // 2, 1, bias=False), pool=nn.AvgPool2d(2, 2),
                    )
                )  # fmt: skip
                c //= 2
        f["norm5"] = nn.BatchNorm2d(c)
        self.features = nn.Sequential(f)
        self.classifier = nn.Linear(c, 10)


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, k: int = 3) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: .0 conv, .1 BatchNorm, .2 ReLU6."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        layers: list[nn.Module] = [_conv_bn(cin, hidden, k=1)] if t != 1 else []
        layers += [
            _conv_bn(hidden, hidden, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)


# torchvision's MobileNetV2 table (t, c, n, s), channels c here divided to stay small.
MOBILENET_V2_SETTING = [
    (1, 4, 1, 1), (2, 6, 2, 2), (2, 8, 3, 2), (2, 10, 4, 2), (2, 12, 3, 1), (2, 14, 3, 2),
    (2, 16, 1, 1),
]  # fmt: skip


class MobileNetV2Layout(nn.Module):
    """torchvision's MobileNetV2 key layout (features.0 stem, features.1..17 inverted
    residual blocks, features.18 last conv), small channels, same strides."""

    def __init__(self) -> None:
        super().__init__()
        features: list[nn.Module] = [_conv_bn(3, 4, 2)]
        cin = 4
        for t, c, n, s in MOBILENET_V2_SETTING:
            for i in range(n):
                features.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn(cin, 32, k=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, 10))
