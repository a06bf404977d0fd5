"""compress: distil a small student from a teacher, export it to ONNX, and prove it is better.

    from compress import distill, export, quantize, bench

The stage functions (``compress.api``) are loaded on first use, so ``import compress`` stays
light. Progress goes to the ``compress`` logger: ``logging.basicConfig(level=logging.INFO)``
shows it, and nothing is printed otherwise.
"""

import importlib
import logging

from .errors import CompressError

__version__ = "0.1.0"
__all__ = ["train", "distill", "prune", "export", "quantize", "bench", "run", "CompressError"]

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name):
    if name in __all__:
        function = getattr(importlib.import_module(".api", __name__), name)
        globals()[name] = function
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
