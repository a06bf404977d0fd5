"""The model zoo: factories ``f(in_shape, num_classes, **kwargs) -> nn.Module`` by name.

Every model maps a float tensor (N, *in_shape) to logits (N, num_classes) and exports to ONNX
with a dynamic batch. Top-level children have stable names for picking hint layers.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from . import cnn, mlp, resnet

ZOO: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp.mlp,
    "mlp-1200": mlp.mlp_1200,
    "cnn": cnn.cnn,
    "resnet": resnet.resnet,
    "resnet8": resnet.resnet8,
    "resnet14": resnet.resnet14,
    "resnet20": resnet.resnet20,
}
