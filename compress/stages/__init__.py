"""The stages, one module each (its typed config, its function, what it prints), and the one
registry of them that the command line, recipes, the pipeline and the Python API read.

A new stage is a module here with a ``STAGE`` record, added to ``STAGES``. Stage modules load
PyTorch and ONNX Runtime only when they run, so that reading the registry (``compress --help``)
stays fast.
"""

from __future__ import annotations

from . import bench, distill, export, prune, quantize, train
from .base import Stage

STAGES: dict[str, Stage] = {
    module.STAGE.name: module.STAGE for module in (train, distill, prune, export, quantize, bench)
}

__all__ = ["STAGES", "Stage"]
