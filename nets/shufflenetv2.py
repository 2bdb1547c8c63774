"""ShuffleNetV2 (ratio 1: 116-232-464-1024 channels), `shufflenetv2`.

Adaptive pooling before `fc`: works on 32x32 and 64x64. Every convolution has a bias
and the stem has no ReLU, as the original.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register


def channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _pointwise_dw_pointwise(channels, out_half, stride):
    """1x1 -> BN -> ReLU -> depthwise 3x3 -> BN -> 1x1 -> BN -> ReLU (the unit's residual branch)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels),
        nn.BatchNorm2d(channels),
        nn.Conv2d(channels, out_half, 1), nn.BatchNorm2d(out_half), nn.ReLU(inplace=True))


class ShuffleUnit(nn.Module):
    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.split = stride == 1 and in_channels == out_channels
        if self.split:
            # half of the channels pass through untouched, the other half is transformed
            self.residual = _pointwise_dw_pointwise(in_channels // 2, in_channels // 2, stride)
            self.shortcut = nn.Sequential()
        else:
            half = out_channels // 2
            self.residual = _pointwise_dw_pointwise(in_channels, half, stride)
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, half, 1), nn.BatchNorm2d(half), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.split:
            shortcut, residual = x.chunk(2, dim=1)
        else:
            shortcut, residual = x, x
        out = torch.cat([self.shortcut(shortcut), self.residual(residual)], dim=1)
        return channel_shuffle(out, 2)


def _stage(in_channels, out_channels, repeat):
    units = [ShuffleUnit(in_channels, out_channels, 2)]
    units += [ShuffleUnit(out_channels, out_channels, 1) for _ in range(repeat)]
    return nn.Sequential(*units)


class ShuffleNetV2(nn.Module):
    stages = ("stage2", "stage3", "stage4")  # the paper's names (stage1 is the stem)

    def __init__(self, num_classes, widths=(116, 232, 464, 1024)):
        super().__init__()
        self.pre = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24))
        self.stage2 = _stage(24, widths[0], 3)
        self.stage3 = _stage(widths[0], widths[1], 7)
        self.stage4 = _stage(widths[1], widths[2], 3)
        self.conv5 = nn.Sequential(nn.Conv2d(widths[2], widths[3], 1),
                                   nn.BatchNorm2d(widths[3]), nn.ReLU(inplace=True))
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.pre(x))))
        x = F.adaptive_avg_pool2d(self.conv5(x), 1).flatten(1)
        return self.fc(x)


@register("shufflenetv2")
def shufflenetv2(num_classes):
    return ShuffleNetV2(num_classes)
