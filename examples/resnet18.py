"""ResNet-18 (torchvision's layout and size: 11.7 M parameters) from plain torch.nn.

A 7×7 stride-2 stem and a max-pool, then four stages of two basic blocks (64, 128, 256, 512
channels; conv-BN-ReLU-conv-BN + skip, then ReLU), average pool and a linear classifier. It
takes any image size from 32×32 up. No torchvision needed.

Gate it: gradscope simulate --model examples/resnet18.py:make_model --input-shape 3,32,32 \
    --repeats 16 --fail-if-rate-above 1.15
"""

from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(channels_in, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


def make_model(classes: int = 1000, width: int = 64, zero_init_residual: bool = False):
    """ResNet-18; ``zero_init_residual`` starts each block's last BatchNorm at γ = 0 (the
    residual branch off at initialisation, as torchvision's option of the same name)."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    channels_in = width
    for stage in range(4):
        channels = width * 2**stage
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(channels_in, channels, stride))
            channels_in = channels
    model = nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels_in, classes)
    )
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual and isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)
    return model
