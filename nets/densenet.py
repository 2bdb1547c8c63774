"""CIFAR DenseNet-BC (3x3 stem, compression 0.5): `densenet121/161/169/201`.

Adaptive average pooling before `linear`: works on 32x32 and 64x64 inputs.
"""
import torch
import torch.nn as nn

from .registry import register


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 (4k) -> BN-ReLU-3x3 (k); its k new maps are appended to the input."""

    def __init__(self, in_channels, growth_rate):
        super().__init__()
        inner = 4 * growth_rate
        self.bottle_neck = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, inner, 1, bias=False),
            nn.BatchNorm2d(inner), nn.ReLU(inplace=True),
            nn.Conv2d(inner, growth_rate, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.bottle_neck(x)], 1)


class Transition(nn.Module):
    """BN -> 1x1 conv -> 2x2 average pooling (no ReLU, as the original)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.down_sample = nn.Sequential(nn.BatchNorm2d(in_channels),
                                         nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                         nn.AvgPool2d(2, stride=2))

    def forward(self, x):
        return self.down_sample(x)


def _dense_block(in_channels, layers, growth_rate):
    block = nn.Sequential()
    for i in range(layers):
        block.add_module(f"bottle_neck_layer_{i}", DenseLayer(in_channels + i * growth_rate,
                                                              growth_rate))
    return block


class DenseNet(nn.Module):
    # the four dense blocks (one per resolution, like ResNet's layers), each before the
    # transition that compresses and halves it; the last one before the final BN-ReLU
    stages = ("features.dense_block_layer_0", "features.dense_block_layer_1",
              "features.dense_block_layer_2", "features.dense_block3")

    def __init__(self, block_layers, growth_rate, num_classes, reduction=0.5):
        super().__init__()
        channels = 2 * growth_rate
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        self.features = nn.Sequential()
        last = len(block_layers) - 1
        for index, layers in enumerate(block_layers[:-1]):
            self.features.add_module(f"dense_block_layer_{index}",
                                     _dense_block(channels, layers, growth_rate))
            channels += growth_rate * layers
            out_channels = int(reduction * channels)
            self.features.add_module(f"transition_layer_{index}", Transition(channels, out_channels))
            channels = out_channels
        self.features.add_module(f"dense_block{last}",
                                 _dense_block(channels, block_layers[-1], growth_rate))
        channels += growth_rate * block_layers[-1]
        self.features.add_module("bn", nn.BatchNorm2d(channels))
        self.features.add_module("relu", nn.ReLU(inplace=True))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.avgpool(self.features(self.conv1(x)))
        return self.linear(x.flatten(1))


_VARIANTS = {121: ((6, 12, 24, 16), 32), 161: ((6, 12, 36, 24), 48),
             169: ((6, 12, 32, 32), 32), 201: ((6, 12, 48, 32), 32)}


def _register_variant(depth):
    block_layers, growth_rate = _VARIANTS[depth]

    @register(f"densenet{depth}")
    def build(num_classes):
        return DenseNet(block_layers, growth_rate, num_classes)
    return build


for _depth in _VARIANTS:
    _register_variant(_depth)
