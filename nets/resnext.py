"""CIFAR ResNeXt-29 (cardinality 8, widen factor 4: stages 64-256-512-1024), `resnext29`.

Adaptive average pooling before the classifier makes it work on 32x32 and 64x64 inputs.
"""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register


class ResNeXtBottleneck(nn.Module):
    """1x1 reduce -> grouped 3x3 -> 1x1 expand, with a projection shortcut on width change."""

    def __init__(self, in_channels, out_channels, stride, cardinality, widen_factor):
        super().__init__()
        width = cardinality * out_channels // widen_factor
        self.conv_reduce = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn_reduce = nn.BatchNorm2d(width)
        self.conv_conv = nn.Conv2d(width, width, 3, stride=stride, padding=1,
                                   groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.conv_expand = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        # as the original: the projection depends on the width only (stride-2 stages change it too)
        if in_channels != out_channels:
            self.shortcut.add_module("shortcut_conv", nn.Conv2d(in_channels, out_channels, 1,
                                                                stride=stride, bias=False))
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        return F.relu(self.shortcut(x) + out)


class CifarResNeXt(nn.Module):
    stages = ("stage_1", "stage_2", "stage_3")

    def __init__(self, num_classes, cardinality=8, depth=29, widen_factor=4):
        super().__init__()
        self.cardinality, self.widen_factor = cardinality, widen_factor
        self.block_depth = (depth - 2) // 9
        widths = (64, 64 * widen_factor, 128 * widen_factor, 256 * widen_factor)
        self.conv_1_3x3 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn_1 = nn.BatchNorm2d(64)
        self.stage_1 = self._stage("stage_1", widths[0], widths[1], 1)
        self.stage_2 = self._stage("stage_2", widths[1], widths[2], 2)
        self.stage_3 = self._stage("stage_3", widths[2], widths[3], 2)
        self.classifier = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _stage(self, name, in_channels, out_channels, stride):
        stage = nn.Sequential()
        for i in range(self.block_depth):
            block = ResNeXtBottleneck(in_channels if i == 0 else out_channels, out_channels,
                                      stride if i == 0 else 1, self.cardinality, self.widen_factor)
            stage.add_module(f"{name}_bottleneck_{i}", block)
        return stage

    def _init_weights(self):
        # the original's scheme: He-normal classifier (fan-in) and convs (fan-out),
        # batch-norm scales 1, every bias 0 (the classifier's included)
        nn.init.kaiming_normal_(self.classifier.weight)
        for key, tensor in self.state_dict().items():
            leaf = key.split(".")[-1]
            if leaf == "weight" and "conv" in key:
                nn.init.kaiming_normal_(tensor, mode="fan_out")
            elif leaf == "weight" and "bn" in key:
                tensor.fill_(1)
            elif leaf == "bias":
                tensor.zero_()

    def forward(self, x):
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        x = self.stage_3(self.stage_2(self.stage_1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


@register("resnext29")
def resnext29(num_classes):
    return CifarResNeXt(num_classes, cardinality=8, depth=29, widen_factor=4)
