"""Datasets named by one ``--data`` string, normalised the same way at every stage.

``load_dataset("mnist:/data/mnist")`` reads the source, carves a seeded validation split off
train, fits (or reuses) a :class:`Preprocessing` on the training split, and returns float32
arrays ready to feed a model.
"""

from .dataset import PREPROCESSING_HELP, Dataset, PreprocessingChoice, load_dataset, load_dataset_for
from .preprocessing import Preprocessing
from .sources import DATA_SOURCES_HELP

__all__ = [
    "DATA_SOURCES_HELP",
    "PREPROCESSING_HELP",
    "PreprocessingChoice",
    "Dataset",
    "Preprocessing",
    "load_dataset",
    "load_dataset_for",
]
