"""compress: distil a small student from a teacher, export it to ONNX, and prove it is better.

    from compress import distill, export, quantize, bench

The stage functions (``compress.api``) are loaded on first use, so ``import compress`` stays
light (the command line imports only what a command needs).
"""

import importlib
import sys
import types

from .errors import CompressError

__version__ = "0.1.0"
_API = ("train", "distill", "export", "prune", "quantize", "bench", "run")
__all__ = [*_API, "CompressError"]


def __getattr__(name):
    if name in _API:
        function = getattr(importlib.import_module(".api", __name__), name)
        globals()[name] = function
        return function
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Package(types.ModuleType):
    """Keeps ``compress.export`` & co. the API functions when their stage modules are imported.

    Importing the module ``compress.export`` would otherwise rebind the package attribute
    ``export`` to that module (the import system sets it), and ``from compress import export``
    would then give a module instead of the function. What the modules hold stays importable
    by name (``from compress.export import ExportConfig``); the module object itself is
    ``importlib.import_module("compress.export")``.
    """

    def __setattr__(self, name, value):
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
