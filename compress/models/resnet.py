"""CIFAR-style ResNets (He et al. 2016): three stages of basic residual blocks.

Depth is 6 * blocks + 2: ``resnet8`` (1 block per stage), ``resnet14`` (2), ``resnet20`` (3).
Stages have ``width``, 2 * ``width`` and 4 * ``width`` channels (default width 16); a wider,
deeper teacher setting is ``resnet20`` with ``width=32``, for a ``resnet8`` student.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .checks import check_num_classes, image_shape, positive_int


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a shortcut (identity, or 1x1 conv-BN on a change), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                OrderedDict(
                    conv=nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    bn=nn.BatchNorm2d(out_channels),
                )
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


def resnet(in_shape: tuple[int, ...], num_classes: int, width: int = 16, blocks: int = 1) -> nn.Module:
    """A ResNet of depth 6 * ``blocks`` + 2 with stage widths ``width``, 2w, 4w.

    Children: ``stem`` (conv3x3-BN-ReLU), ``layer1`` .. ``layer3`` (stride 2 at the start of
    stages 2 and 3, so 32x32 -> 32, 16, 8 and 8x8 -> 8, 4, 2), ``pool`` (global average),
    ``flatten`` and ``fc``.
    """
    c = image_shape("resnet", in_shape)[0]
    num_classes = check_num_classes("resnet", num_classes)
    width = positive_int("resnet", "width", width)
    blocks = positive_int("resnet", "blocks", blocks)
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=nn.Sequential(
            OrderedDict(conv=nn.Conv2d(c, width, 3, padding=1, bias=False), bn=nn.BatchNorm2d(width), relu=nn.ReLU())
        )
    )
    c = width
    for i, out in enumerate((width, 2 * width, 4 * width), start=1):
        stages[f"layer{i}"] = _stage(c, out, blocks, stride=1 if i == 1 else 2)
        c = out
    stages.update(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(c, num_classes))
    return nn.Sequential(stages)


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` basic blocks; the first one changes the stride and the channels."""
    return nn.Sequential(
        BasicBlock(in_channels, out_channels, stride),
        *(BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)),
    )


def resnet8(in_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """ResNet-8: one basic block per stage."""
    return resnet(in_shape, num_classes, width=width, blocks=1)


def resnet14(in_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """ResNet-14: two basic blocks per stage."""
    return resnet(in_shape, num_classes, width=width, blocks=2)


def resnet20(in_shape: tuple[int, ...], num_classes: int, width: int = 16) -> nn.Module:
    """ResNet-20: three basic blocks per stage; ``width=32`` makes a stronger teacher."""
    return resnet(in_shape, num_classes, width=width, blocks=3)
