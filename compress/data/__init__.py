"""Datasets named by one ``--data`` string, normalised the same way at every stage.

``load_dataset("mnist:/data/mnist")`` reads the source, carves a seeded validation split off
train, fits (or reuses) a :class:`Preprocessing` on the training split, and returns float32
arrays ready to feed a model.
"""

from .dataset import Dataset, load_dataset
from .preprocessing import Preprocessing
from .sources import DATA_SOURCES_HELP

__all__ = ["DATA_SOURCES_HELP", "Dataset", "Preprocessing", "load_dataset"]
