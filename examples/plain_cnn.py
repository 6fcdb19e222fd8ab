"""A small VGG-style plain CNN: 3x3 conv (no bias) -> BatchNorm -> ReLU, max-pool every two.

Try it: gradscope simulate --model examples/plain_cnn.py:make_model --input-shape 3,32,32
"""

from torch import nn


def make_model(width: int = 32, blocks: int = 3, convs_per_block: int = 2, classes: int = 10):
    layers: list[nn.Module] = []
    channels_in, channels = 3, width
    for block in range(blocks):
        for _ in range(convs_per_block):
            layers += [
                nn.Conv2d(channels_in, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            channels_in = channels
        layers.append(nn.MaxPool2d(2))
        if block < blocks - 1:
            channels *= 2
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels_in, classes)
    )
