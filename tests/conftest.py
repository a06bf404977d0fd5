"""Helpers shared by the test modules."""

import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one worker per core (make test: pytest -n auto): a worker that also spread PyTorch's
    # kernels over every core would fight the others for them
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def wide_npz(tmp_path):
    """npz data of 10x10 images: the wrong shape for models trained on the 8x8 digits."""
    path = tmp_path / "wide.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 255, (20, 1, 10, 10), dtype=np.uint8),
        y_train=np.arange(20) % 10,
        x_test=rng.integers(0, 255, (10, 1, 10, 10), dtype=np.uint8),
        y_test=np.arange(10),
    )
    return path


@pytest.fixture
def digits_npz(tmp_path):
    """Digits with a training split the global batch divides (no sampler padding, equal slices)."""
    x, y = load_digits(return_X_y=True)
    x = (x.reshape(-1, 1, 8, 8) * 16).clip(0, 255).astype(np.uint8)
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=x[:1024], y_train=y[:1024], x_test=x[1024:1536], y_test=y[1024:1536])
    return f"npz:{path}"
