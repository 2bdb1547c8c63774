"""The original's small baselines: `net` (3 conv blocks + 2 FC) and `mlp` (3 FC layers).

Both flatten a fixed 32x32 feature map, so they are registered for 32x32 inputs only.
"""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register


class Net(nn.Module):
    """conv-bn-maxpool-relu x3, then fc-bn-relu-dropout and the classifier."""

    # the conv blocks, taken at their batch norm: pooling and ReLU are functional calls in
    # forward (no module to hook), and adding modules would change the forward code
    stages = ("bn1", "bn2", "bn3")

    def __init__(self, num_classes, num_channels, dropout_rate):
        super().__init__()
        c = num_channels
        self.conv1 = nn.Conv2d(3, c, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.conv3 = nn.Conv2d(2 * c, 4 * c, 3, stride=1, padding=1)
        self.bn3 = nn.BatchNorm2d(4 * c)
        self.fc1 = nn.Linear(4 * 4 * 4 * c, 4 * c)
        self.fcbn1 = nn.BatchNorm1d(4 * c)
        self.fc2 = nn.Linear(4 * c, num_classes)
        self.dropout_rate = dropout_rate

    def forward(self, x):
        # pooling before the ReLU, as in the original (same result: both are monotone)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(F.max_pool2d(bn(conv(x)), 2))
        x = x.flatten(1)
        x = F.relu(self.fcbn1(self.fc1(x)))
        x = F.dropout(x, p=self.dropout_rate, training=self.training)
        return self.fc2(x)


class MLP(nn.Module):
    """3072-512-512-classes perceptron.

    The original applies a ReLU to the output layer too, so its logits are never
    negative; kept, because released `mlp` checkpoints were trained that way.
    """

    stages = ("fc1", "fc2")  # the hidden layers, before their (functional) ReLU

    def __init__(self, num_classes):
        super().__init__()
        self.fc1 = nn.Linear(32 * 32 * 3, 512)
        self.fc2 = nn.Linear(512, 512)
        self.fc3 = nn.Linear(512, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return F.relu(self.fc3(x))


@register("net", input_sizes=(32,), optimizer="adam")
def net(num_classes, num_channels, dropout_rate):
    return Net(num_classes, num_channels, dropout_rate)


@register("mlp", input_sizes=(32,), optimizer="adam")
def mlp(num_classes):
    return MLP(num_classes)
