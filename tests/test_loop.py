"""Pieces of the shared training loop."""

import math

import torch

from compress.loop import accuracy, random_shift


def test_random_shift_moves_each_image_by_at_most_the_limit_and_fills_the_border():
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0  # one bright pixel in the centre
    shifted = random_shift(x, 2, torch.tensor([-0.5]), torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    positions = set()
    for image in shifted[:, 0]:
        bright = (image == 1.0).nonzero().tolist()
        assert len(bright) == 1
        row, col = bright[0]
        assert abs(row - 4) <= 2 and abs(col - 4) <= 2
        positions.add((row, col))
        # everything else is either the old background (0) or the fill coming in from the border
        assert set(image[image != 1.0].unique().tolist()) <= {0.0, -0.5}
    assert len(positions) > 10  # the shifts really vary


def test_random_shift_is_reproducible_from_the_generator_seed():
    x = torch.randn(8, 3, 6, 6)
    first = random_shift(x, 1, torch.zeros(3), torch.Generator().manual_seed(5))
    second = random_shift(x, 1, torch.zeros(3), torch.Generator().manual_seed(5))
    assert torch.equal(first, second)


def test_accuracy_of_a_callable_and_of_an_empty_set():
    x = torch.eye(4)
    y = torch.tensor([0, 1, 2, 0])
    assert accuracy(lambda batch: batch, x, y) == 0.75
    assert math.isnan(accuracy(lambda batch: batch, x[:0], y[:0]))
