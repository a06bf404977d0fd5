"""Model factories for the export tests: ``factory(in_shape, num_classes, **args)``."""

import torch
from torch import nn


class TinyTransformer(nn.Module):
    """Rows of an image as tokens through one Transformer encoder layer."""

    def __init__(self, in_shape, num_classes, dim=32, heads=4):
        super().__init__()
        channels, height, width = in_shape
        self.embed = nn.Linear(channels * width, dim)
        self.position = nn.Parameter(torch.zeros(1, height, dim))
        self.encoder = nn.TransformerEncoderLayer(
            dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True, activation="gelu"
        )
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        tokens = x.permute(0, 2, 1, 3).flatten(2)  # (N, H, C*W)
        h = self.encoder(self.embed(tokens) + self.position)
        return self.head(h.mean(dim=1))


class BranchOnMean(nn.Module):
    """Data-dependent control flow: a tracer records one branch only, so the export is wrong."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(in_shape).prod()), num_classes)

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        if logits[0].argmax() % 2 == 0:  # decided by the first sample's class
            return logits
        return -logits


class FixedBatchView(nn.Module):
    """Reads the batch size as a Python int: the tracer bakes it into the graph."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.fc = nn.Linear(int(torch.tensor(in_shape).prod()), num_classes)

    def forward(self, x):
        return self.fc(x.reshape(int(x.shape[0]), -1))


def tiny_transformer(in_shape, num_classes, dim=32, heads=4):
    return TinyTransformer(in_shape, num_classes, dim, heads)


def branch_on_mean(in_shape, num_classes):
    return BranchOnMean(in_shape, num_classes)


def fixed_batch_view(in_shape, num_classes):
    return FixedBatchView(in_shape, num_classes)


class FixedChannelView(nn.Module):
    """Reshapes with a hard-coded channel count: pruning its convolution breaks the forward."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        channels, height, width = in_shape
        self.conv = nn.Conv2d(channels, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return self.fc(h.reshape(x.shape[0], 16, -1).mean(dim=2))


def fixed_channel_view(in_shape, num_classes):
    return FixedChannelView(in_shape, num_classes)
