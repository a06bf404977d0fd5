"""Running one model on one execution provider: sessions, IOBinding, CUDA graphs, node placement, memory."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import multiprocessing
import re
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CompressError, first_line, foreign_errors
from ..feeds import NUMPY_TYPES, Samples
from ..hardware import cuda_mismatch, onnxruntime_cuda_version, torch_cuda_version
from ..onnx_io import OnnxModel, open_session, session_options

# bench's provider keys; cuda-graph is the CUDA provider with enable_cuda_graph (GraphModel)
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cuda-graph": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
DEVICE = "cuda"  # where IOBinding keeps inputs and outputs (a test binds them on "cpu" to run GraphModel without a GPU)
# onnxruntime's refusal of a session with enable_cuda_graph (control flow, or compute nodes left to another provider)
GRAPH_REFUSED = re.compile(r"graph capture|CUDA Graph", re.IGNORECASE)
log = logging.getLogger(__name__)


def check_available(providers: list[str]) -> None:
    """A provider this onnxruntime build lacks is an error (the names are checked by BenchConfig)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    for key in providers:
        if PROVIDERS[key] not in available:
            have = ", ".join(k for k, v in PROVIDERS.items() if v in available)
            raise CompressError(
                f"provider {key} ({PROVIDERS[key]}) is not available in this "
                f"onnxruntime build (available: {have}); install onnxruntime-gpu "
                "for cuda/cuda-graph/tensorrt, or drop it from --providers"
            )


def check_gpu(providers: list[str]) -> None:
    """Before timing: every provider is available, and with a GPU provider, torch and onnxruntime built for one
    CUDA major version (a warning naming both otherwise: the session says whether it matters, see :func:`load`)."""
    check_available(providers)
    if any(p != "cpu" for p in providers):
        mismatch = cuda_mismatch(torch_cuda_version(), onnxruntime_cuda_version())
        if mismatch:
            log.warning(mismatch)


@functools.cache
def prepare_cuda() -> None:
    """Before the first CUDA session of a process: torch imported first (a CUDA build loads its CUDA libraries,
    which onnxruntime then shares), then ``onnxruntime.preload_dlls()`` for those the nvidia-* wheels bring.
    What preload_dlls prints of a library it could not load becomes one warning."""
    import onnxruntime as ort

    torch_cuda_version()  # imports torch
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ort.preload_dlls()
    failed = [line for line in printed.getvalue().splitlines() if line.startswith("Failed to load")]
    if failed:
        log.warning(
            f"onnxruntime could not preload {len(failed)} CUDA librar{'y' if len(failed) == 1 else 'ies'} "
            f"({failed[0][:200]}); if the CUDA provider does not start, "
            "pip install 'onnxruntime-gpu[cuda,cudnn]' brings them"
        )


def provider_chain(provider: str) -> list:
    """The provider first (with its options), CPU behind it for the nodes it cannot run (reported by placement)."""
    chain: list = [
        (PROVIDERS[provider], {"enable_cuda_graph": "1"}) if provider == "cuda-graph" else PROVIDERS[provider]
    ]
    if provider == "tensorrt":
        chain.append(PROVIDERS["cuda"])
    if provider != "cpu":
        chain.append(PROVIDERS["cpu"])
    return chain


@dataclass
class Loaded:
    """A session ready to time, with what it cost to get there."""

    runner: OnnxModel
    provider: str
    create_s: float


def load(path: Path, provider: str, threads: int | None, optimization: str) -> Loaded:
    if provider != "cpu":
        prepare_cuda()
    start = time.perf_counter()
    session = _session(path, provider, threads, optimization)
    create_s = time.perf_counter() - start
    if provider != "cpu" and session.get_providers()[0] != PROVIDERS[provider]:
        advice = cuda_mismatch(torch_cuda_version(), onnxruntime_cuda_version()) or (
            "check the GPU driver and the CUDA libraries (pip install 'onnxruntime-gpu[cuda,cudnn]' brings those "
            "onnxruntime needs)"
        )
        raise CompressError(
            f"{path}: onnxruntime could not start {PROVIDERS[provider]} (it fell back to CPU for the whole model); "
            + advice
        )
    model = GraphModel if provider == "cuda-graph" else OnnxModel
    return Loaded(model(session, f"model {path}"), provider, create_s)


def _session(path: Path, provider: str, threads: int | None, optimization: str):
    """A session of ``path`` on ``provider``'s chain; a model that cannot run as a CUDA graph is said so, with
    the provider to bench it on instead."""
    if provider != "cuda-graph":
        return open_session(
            path, role="model", threads=threads, optimization=optimization, providers=provider_chain(provider)
        )
    import onnxruntime as ort

    with foreign_errors(
        f"onnxruntime cannot load model {path}", "re-export it or check that its operators are supported"
    ):
        try:
            return ort.InferenceSession(
                str(path), sess_options=session_options(threads, optimization), providers=provider_chain(provider)
            )
        except Exception as exc:
            if not GRAPH_REFUSED.search(str(exc)):
                raise
            raise CompressError(
                f"{path} cannot run as one CUDA graph ({first_line(exc)}): onnxruntime captures only models "
                "without control flow whose compute nodes all run on CUDAExecutionProvider; bench it on the "
                "CUDA provider without a graph instead (--providers cuda)"
            ) from None


def regular_run() -> object:
    """Run options for a run outside the CUDA graph: neither captured nor replayed (``gpu_graph_id`` -1)."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("gpu_graph_id", "-1")
    return options


class GraphModel(OnnxModel):
    """A session with ``enable_cuda_graph``: onnxruntime captures the model's CUDA kernels as one graph on its
    first run and replays the graph on every later one, with no per-kernel launch cost.

    A graph reads and writes the device addresses it was captured with, so inputs and outputs are bound once,
    for batches of one size (:meth:`bind`); every later batch is copied into the bound inputs. Predictions
    (:meth:`run`, and ``predict`` through it, padded to the bound size) come from replays too."""

    binding = None  # the IOBinding, once bound

    def bind(self, samples: Samples) -> float:
        """Bind ``samples`` and capture the graph on them; returns the seconds that took: one regular run that
        sizes the outputs (and allocates what the capture needs), then the run that captures the graph."""
        import onnxruntime as ort

        if self.binding is not None:
            raise ValueError(f"{self.name}: a CUDA graph is bound once; open another session for another batch")
        start = time.perf_counter()
        binding = self.session.io_binding()
        with foreign_errors(f"onnxruntime cannot place a batch for {self.name} on the GPU", "check the GPU's memory"):
            self._inputs = {
                name: ort.OrtValue.ortvalue_from_numpy(array, DEVICE, 0)
                for name, array in samples.feeds(self.inputs).items()
            }
        for name, value in self._inputs.items():
            binding.bind_ortvalue_input(name, value)
        for output in self.outputs:
            binding.bind_output(output.name, DEVICE)
        try:
            self.session.run_with_iobinding(binding, regular_run())
        except Exception as exc:
            raise self.failure(samples, exc) from None
        self._outputs = [
            ort.OrtValue.ortvalue_from_shape_and_type(value.shape(), NUMPY_TYPES[value.data_type()], DEVICE, 0)
            for value in binding.get_outputs()
        ]
        binding.clear_binding_outputs()
        for output, value in zip(self.outputs, self._outputs):
            binding.bind_ortvalue_output(output.name, value)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise CompressError(
                f"onnxruntime could not capture {self.name} as a CUDA graph on {samples.describe()} "
                f"({first_line(exc)}); bench it on the CUDA provider without a graph instead (--providers cuda)"
            ) from None
        binding.synchronize_outputs()
        self.binding, self.fixed_batch = binding, len(samples)
        return time.perf_counter() - start

    def run(self, samples: Samples) -> list:
        """Every output for one batch of the bound size: copied into the bound inputs, the graph replayed."""
        feeds = samples.feeds(self.inputs)
        for spec in self.inputs:
            if spec.batch_axis is not None:  # inputs fed whole stay as bound
                self._inputs[spec.name].update_inplace(np.ascontiguousarray(feeds[spec.name]))
        try:
            self.session.run_with_iobinding(self.binding)
        except Exception as exc:
            raise self.failure(samples, exc) from None
        # copies: the bound outputs are overwritten by the next replay
        return [self._samples_first(i, value.numpy().copy(), len(samples)) for i, value in enumerate(self._outputs)]


def make_call(loaded: Loaded, batch: Samples, include_copies: bool) -> Callable[[], object]:
    """The timed call. On a GPU, inputs and outputs stay on the device (IOBinding) unless
    ``include_copies``, so host-device copies are not silently part of the figure; on cuda-graph the
    graph is captured here (:meth:`GraphModel.bind`) and the call replays it."""
    runner = loaded.runner
    if isinstance(runner, GraphModel):
        runner.bind(batch)
        binding = runner.binding
    elif loaded.provider == "cpu" or include_copies:
        return runner.call(batch)
    else:
        binding = _bind(runner, batch)
    session = runner.session

    def run_bound():
        try:
            session.run_with_iobinding(binding)
        except Exception as exc:
            raise runner.failure(batch, exc) from None
        binding.synchronize_outputs()  # the kernels have finished when the clock stops

    return run_bound


def _bind(runner: OnnxModel, batch: Samples):
    """An IOBinding of ``batch`` on the device, outputs left to onnxruntime to allocate there."""
    import onnxruntime as ort

    session = runner.session
    with foreign_errors(f"onnxruntime cannot place a batch for {runner.name} on the GPU", "check the GPU's memory"):
        binding = session.io_binding()
        values = {
            name: ort.OrtValue.ortvalue_from_numpy(array, DEVICE, 0)
            for name, array in batch.feeds(runner.inputs).items()
        }
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for output in runner.outputs:
            binding.bind_output(output.name, DEVICE)
    return binding


def first_run_s(loaded: Loaded, batch: Samples, include_copies: bool) -> float:
    """Seconds of the very first run of a fresh session; on cuda-graph, of the runs that capture its graph."""
    if isinstance(loaded.runner, GraphModel):
        return loaded.runner.bind(batch)
    call = make_call(loaded, batch, include_copies)
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def node_placement(path: Path, provider: str, threads: int | None, optimization: str, batch: Samples) -> dict[str, int]:
    """How many nodes each provider ran, from one profiled run (a GPU provider may silently leave
    some nodes to the CPU); on cuda-graph a run outside the graph, of the same session settings."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = session_options(threads, optimization)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=provider_chain(provider))
            runner = OnnxModel(session, f"model {path}")
            session.run(None, batch.feeds(runner.inputs), regular_run() if provider == "cuda-graph" else None)
            events = json.loads(Path(session.end_profiling()).read_text())
        except CompressError:
            raise
        except Exception as exc:
            raise CompressError(f"{path}: profiling the node placement failed ({first_line(exc)})") from None
    counts: dict[str, int] = {}
    seen = set()
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "provider" in args and event.get("name") not in seen:
            seen.add(event.get("name"))
            counts[args["provider"]] = counts.get(args["provider"], 0) + 1
    return counts


def peak_memory_mb(
    path: Path,
    provider: str,
    threads: int | None,
    optimization: str,
    batch: Samples,
    include_copies: bool,
    runs: int = 10,
) -> tuple[float, float]:
    """Peak resident memory (MiB) of a fresh process that loads the model and runs it as it is timed
    (:func:`make_call`), and what the same process held before loading it (the runtime and libraries alone).

    An executor rather than a Pool: a worker killed by the system (out of memory) breaks the
    executor, where a Pool would wait for it forever."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(
            _measure_peak_memory, str(path), provider, threads, optimization, batch, include_copies, runs
        )
        try:
            return future.result()
        except BrokenProcessPool:
            raise CompressError(
                f"measuring the peak memory of {path}: its process was killed (out of memory?); "
                "pass --no-memory to skip the measurement"
            ) from None


def _measure_peak_memory(
    path: str, provider: str, threads: int | None, optimization: str, batch: Samples, include_copies: bool, runs: int
) -> tuple[float, float]:
    import importlib

    importlib.import_module("onnxruntime")  # the runtime counts as the process's, not the model's
    if provider != "cpu":
        prepare_cuda()  # so do torch and the CUDA libraries
    before = _memory_mb("VmRSS")
    call = make_call(load(Path(path), provider, threads, optimization), batch, include_copies)
    for _ in range(runs):
        call()
    return _memory_mb("VmHWM"), before


def _memory_mb(field: str) -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of this process, in MiB.

    Read from /proc: getrusage's maxrss survives exec on Linux, so a spawned child would report
    the peak of the parent it was forked from.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
