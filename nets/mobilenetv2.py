"""MobileNetV2 for CIFAR-size inputs, `mobilenetv2` (adaptive pooling: 32x32 and 64x64).

The stem is a 1x1 convolution with padding 1 (so the first feature map is 34x34 on
CIFAR) and every convolution has a bias: both as the original, whose checkpoints load.
"""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register


def _conv_bn(in_channels, out_channels, kernel, stride=1, padding=0, groups=1, relu6=True):
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding,
                        groups=groups),
              nn.BatchNorm2d(out_channels)]
    return layers + [nn.ReLU6(inplace=True)] if relu6 else layers


class LinearBottleneck(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> linear project (1x1); residual when shapes match."""

    def __init__(self, in_channels, out_channels, stride, expansion):
        super().__init__()
        hidden = in_channels * expansion
        self.residual = nn.Sequential(
            *_conv_bn(in_channels, hidden, 1),
            *_conv_bn(hidden, hidden, 3, stride=stride, padding=1, groups=hidden),
            *_conv_bn(hidden, out_channels, 1, relu6=False))
        self.use_identity = stride == 1 and in_channels == out_channels

    def forward(self, x):
        out = self.residual(x)
        return out + x if self.use_identity else out


def _stage(repeat, in_channels, out_channels, stride, expansion):
    blocks = [LinearBottleneck(in_channels, out_channels, stride, expansion)]
    blocks += [LinearBottleneck(out_channels, out_channels, 1, expansion) for _ in range(repeat - 1)]
    return nn.Sequential(*blocks)


class MobileNetV2(nn.Module):
    # the seven bottleneck sequences of the paper's table; stage4 to stage7 share one resolution
    stages = ("stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7")

    def __init__(self, num_classes):
        super().__init__()
        self.pre = nn.Sequential(*_conv_bn(3, 32, 1, padding=1))
        self.stage1 = LinearBottleneck(32, 16, 1, 1)
        self.stage2 = _stage(2, 16, 24, 2, 6)
        self.stage3 = _stage(3, 24, 32, 2, 6)
        self.stage4 = _stage(4, 32, 64, 2, 6)
        self.stage5 = _stage(3, 64, 96, 1, 6)
        self.stage6 = _stage(3, 96, 160, 1, 6)
        self.stage7 = LinearBottleneck(160, 320, 1, 6)
        self.conv1 = nn.Sequential(*_conv_bn(320, 1280, 1))
        self.conv2 = nn.Conv2d(1280, num_classes, 1)

    def forward(self, x):
        x = self.pre(x)
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4, self.stage5,
                      self.stage6, self.stage7):
            x = stage(x)
        x = F.adaptive_avg_pool2d(self.conv1(x), 1)
        return self.conv2(x).flatten(1)


@register("mobilenetv2")
def mobilenetv2(num_classes):
    return MobileNetV2(num_classes)
