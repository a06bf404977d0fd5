"""int8 through NNCF: an fp32 ONNX model in, a QDQ model that ONNX Runtime runs out.

NNCF's ONNX post-training quantization (``nncf.quantize``): min/max ranges from the calibration
batches, per-channel symmetric int8 weights stored quantized (``DequantizeLinear`` on int8
initializers), activation quantizers placed where NNCF's hardware rules say the next op can
use them, then fast bias correction. NNCF is optional (``pip install 'compress[nncf]'``).

What NNCF does on import and on every call that compress does not want:

* it reports each ``nncf.quantize`` to Google Analytics through openvino-telemetry (opt-out) and
  writes a client id under ``~/intel`` when imported: compress imports it with telemetry off;
* it logs to a stdout handler of its own, draws rich progress bars, warns, and the ONNX Runtime
  sessions it opens log straight to file descriptor 2: all silenced during the call.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CompressError, first_line
from .onnx_io import quiet, session_options

NNCF_PRESETS = ("performance", "mixed")  # nncf.QuantizationPreset.PERFORMANCE / MIXED
MISSING = "the nncf backend needs NNCF; install it with pip install 'compress[nncf]'"
REINSTALL = "reinstall it with pip install 'compress[nncf]', or try --backend onnxruntime"

# ONNX op types whose inputs NNCF 3.4 quantizes (its CPU hardware config less the quantize-agnostic
# ops, Flatten, Reshape, Transpose, MaxPool, Concat, ..., which only pass quantizers through).
# Read from NNCF itself when its (private) hardware config can be; this list is the fallback.
NNCF_QUANTIZED_TYPES = frozenset(
    {
        "Add",
        "And",
        "Attention",
        "AveragePool",
        "Conv",
        "ConvTranspose",
        "Div",
        "Equal",
        "Gemm",
        "GlobalAveragePool",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "MatMul",
        "Max",
        "Min",
        "Mod",
        "Mul",
        "Not",
        "Or",
        "Pow",
        "Reciprocal",
        "ReduceMean",
        "ReduceSum",
        "Resize",
        "Sqrt",
        "Sub",
        "Sum",
        "Xor",
    }
)
ORT_DEFAULT_LOG_SEVERITY = 2  # onnxruntime's own default (warnings); it offers no getter to restore from
# Telemetry off while NNCF is imported: NNCF_CI swaps its telemetry for a stub, CI=true keeps
# openvino-telemetry from writing its client id under ~/intel.
QUIET_IMPORT_ENV = {"NNCF_CI": "1", "CI": "true"}


def quantize_with_nncf(
    float_path: Path,
    out: Path,
    calibration: list[dict[str, np.ndarray]],
    preset: str = "mixed",
    exclude: Sequence[str] = (),
    op_types: Sequence[str] | None = None,
) -> None:
    """Quantize ``float_path`` to int8 QDQ with ``nncf.quantize`` and save it, weights inline, to ``out``.

    ``calibration``: batches, each input name -> array, fed to ONNX Runtime as they are; every
    batch is used (NNCF's ``subset_size`` counts batches: one inference each). ``preset``:
    ``performance`` (symmetric activations) or ``mixed`` (asymmetric activations); weights are
    symmetric per-channel either way. ``exclude``: node names kept in float (names not in the graph
    are ignored). ``op_types``: only these op types quantized (every other type NNCF would quantize
    is ignored), ``None`` for NNCF's default.

    Any failure is one ``CompressError`` line.
    """
    if preset not in NNCF_PRESETS:
        raise CompressError(f"unknown NNCF preset {preset!r}; choose one of {', '.join(NNCF_PRESETS)}")
    nncf = _import_nncf()
    import onnx

    float_path, out = Path(float_path), Path(out)
    try:
        with _silenced():
            model = onnx.load(str(float_path))
            quantized = nncf.quantize(
                model,
                nncf.Dataset(calibration),
                preset=nncf.QuantizationPreset(preset),
                subset_size=max(1, len(calibration)),  # 0 would be refused before the empty dataset is
                ignored_scope=_ignored_scope(nncf, model, exclude, op_types),
            )
    except CompressError:
        raise
    except Exception as exc:  # nncf.errors.*, onnxruntime's, ValueError for a missing input, ...
        raise CompressError(
            f"NNCF could not quantize {float_path.name} ({first_line(exc)}); try --backend onnxruntime"
        ) from None
    onnx.save(quantized, str(out), save_as_external_data=False)
    _check_loads(out)


def _check_loads(path: Path) -> None:
    """CompressError (and ``path`` removed) unless ONNX Runtime loads what NNCF wrote."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types
        path.unlink(missing_ok=True)
        raise CompressError(
            f"NNCF wrote an int8 model onnxruntime cannot load ({first_line(exc, 160)}); use --backend "
            "onnxruntime, or re-export the model at a lower opset (NNCF 3.4 mis-types some QuantizeLinear nodes "
            "from opset 21)"
        ) from None


def _import_nncf() -> Any:
    """``nncf``, imported with its telemetry off, or the CompressError that says how to install it."""
    saved = {name: os.environ.get(name) for name in QUIET_IMPORT_ENV}
    os.environ.update(QUIET_IMPORT_ENV)
    try:
        with quiet():
            import nncf
    except ImportError as exc:
        if exc.name == "nncf":  # not installed (or blocked: None in sys.modules)
            raise CompressError(MISSING) from None
        raise CompressError(f"NNCF could not be imported ({first_line(exc)}); {REINSTALL}") from None
    except Exception as exc:  # an NNCF that does not fit the installed torch, numpy, onnx, ...
        raise CompressError(f"NNCF could not be imported ({first_line(exc)}); {REINSTALL}") from None
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return nncf


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """compress's ``quiet()`` (Python logging, warnings, prints, rich's bars: they write to
    ``sys.stdout`` at the time) plus NNCF's own logger, whose handler holds the stdout of import
    time, and ONNX Runtime's default logger, which the sessions NNCF opens write to stderr with."""
    import onnxruntime as ort

    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.CRITICAL + 1)
    ort.set_default_logger_severity(4)  # fatal only; errors arrive as exceptions
    try:
        with quiet():
            yield
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)
        nncf_logger.setLevel(level)


def _ignored_scope(nncf: Any, model: Any, exclude: Sequence[str], op_types: Sequence[str] | None) -> Any:
    """The nodes NNCF leaves in float: those named in ``exclude``, and with ``op_types`` every node of a
    type NNCF would quantize that is not among them. Only types NNCF quantizes are ignored: ignoring
    a pass-through op (Flatten, Reshape) would move the quantizers around it.

    ``validate=False``: NNCF raises for names or types that match nothing."""
    types: list[str] = []
    if op_types is not None:
        present = {node.op_type for node in model.graph.node}
        types = sorted((present & quantized_types(nncf)) - set(op_types))
    return nncf.IgnoredScope(names=list(exclude), types=types, validate=False)


def quantized_types(nncf: Any) -> frozenset[str]:
    """The ONNX op types whose inputs NNCF quantizes (with a quantizer configuration of their own in
    NNCF's hardware config for ``TargetDevice.ANY``), or ``NNCF_QUANTIZED_TYPES`` if that private API moved."""
    try:
        from nncf.onnx.hardware.config import ONNXHWConfig

        configs = ONNXHWConfig(nncf.TargetDevice.ANY).get_metatype_vs_quantizer_configs_map()
        types = frozenset(
            alias for metatype, qconfs in configs.items() if qconfs for alias in metatype.get_all_aliases()
        )
    except Exception:
        return NNCF_QUANTIZED_TYPES
    return types or NNCF_QUANTIZED_TYPES
