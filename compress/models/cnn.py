"""A small, fast convolutional classifier."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from ..errors import CompressError
from .checks import check_num_classes, image_shape, positive_int, positive_ints, probability


def cnn(
    in_shape: tuple[int, ...],
    num_classes: int,
    channels: Sequence[int] = (32, 64),
    hidden: int = 128,
    dropout: float = 0.0,
) -> nn.Module:
    """Conv3x3-BN-ReLU-MaxPool2 blocks, then an MLP head on the flattened feature map.

    Children: ``block1`` .. ``blockK`` (one per entry of ``channels``; each halves H and W) and
    ``head`` (Flatten, Linear to ``hidden``, ReLU, Dropout, Linear to the classes). The head's
    input size is computed here from ``in_shape``, so the model is built for one image size.
    """
    c, h, w = image_shape("cnn", in_shape)
    num_classes = check_num_classes("cnn", num_classes)
    channels = positive_ints("cnn", "channels", channels)
    hidden = positive_int("cnn", "hidden", hidden)
    dropout = probability("cnn", "dropout", dropout)
    if min(h, w) < 2 ** len(channels):
        raise CompressError(
            f"model 'cnn' halves the image {len(channels)} times, too often for "
            f"{h}x{w} input; give fewer channels (e.g. channels={channels[0]})"
        )
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    for i, out in enumerate(channels, start=1):
        blocks[f"block{i}"] = _block(c, out)
        c, h, w = out, h // 2, w // 2
    blocks["head"] = nn.Sequential(
        OrderedDict(
            flatten=nn.Flatten(),
            fc=nn.Linear(c * h * w, hidden),
            relu=nn.ReLU(),
            dropout=nn.Dropout(dropout),
            out=nn.Linear(hidden, num_classes),
        )
    )
    return nn.Sequential(blocks)


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(),
            pool=nn.MaxPool2d(2),
        )
    )
