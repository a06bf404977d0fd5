"""Fully connected classifiers, as in Hinton et al. (2015)'s MNIST experiments."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from .checks import check_num_classes, flat_features, positive_ints, probability


def mlp(
    in_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int] = (800, 800),
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> nn.Module:
    """Flatten, then ``fc1``..``fcK`` (Linear-ReLU-Dropout each), then the linear ``out``.

    Children: ``flatten``, ``input_dropout``, ``fc1`` .. ``fcK``, ``out``; a hint layer is
    typically ``fcK`` (the last hidden representation, after ReLU). The default (800, 800) is
    Hinton et al.'s student; ``hidden=(30, 30)`` is a tiny one; ``mlp-1200`` is their teacher.
    """
    features = flat_features("mlp", in_shape)
    num_classes = check_num_classes("mlp", num_classes)
    hidden = positive_ints("mlp", "hidden", hidden, allow_empty=True)
    dropout = probability("mlp", "dropout", dropout)
    input_dropout = probability("mlp", "input_dropout", input_dropout)
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten(), input_dropout=nn.Dropout(input_dropout))
    for i, width in enumerate(hidden, start=1):
        layers[f"fc{i}"] = nn.Sequential(
            OrderedDict(linear=nn.Linear(features, width), relu=nn.ReLU(), dropout=nn.Dropout(dropout))
        )
        features = width
    layers["out"] = nn.Linear(features, num_classes)
    return nn.Sequential(layers)


def mlp_1200(
    in_shape: tuple[int, ...],
    num_classes: int,
    hidden: Sequence[int] = (1200, 1200),
    dropout: float = 0.5,
    input_dropout: float = 0.2,
) -> nn.Module:
    """Hinton et al. (2015)'s MNIST teacher: ``mlp`` with 1200-1200 hidden units and dropout."""
    return mlp(in_shape, num_classes, hidden=hidden, dropout=dropout, input_dropout=input_dropout)
