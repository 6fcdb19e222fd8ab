"""ResNet-18 (torchvision's layout and size: 11.7 M parameters) from plain torch.nn.

A 7×7 stride-2 stem and a max-pool, then four stages of two basic blocks (64, 128, 256, 512
channels; conv-BN-ReLU-conv-BN + skip, then ReLU: examples/resnet.py's block), average pool
and a linear classifier. It takes any image size from 32×32 up. No torchvision needed.

Gate it: gradscope simulate --model examples/resnet18.py:make_model --input-shape 3,32,32 \
    --repeats 16 --fail-if-rate-above 1.15
"""

from resnet import BasicBlock  # examples/resnet.py, beside this file
from torch import nn


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
