"""Running one model on one execution provider: sessions, IOBinding, node placement, memory."""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from ..errors import CompressError, first_line, foreign_errors
from ..feeds import Samples
from ..onnx_io import OnnxModel, open_session

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


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
                "for cuda/tensorrt, or drop it from --providers"
            )


def provider_chain(provider: str) -> list[str]:
    """The provider first, CPU behind it for the nodes it cannot run (reported by placement)."""
    chain = [PROVIDERS[provider]]
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
    start = time.perf_counter()
    session = open_session(
        path, role="model", threads=threads, optimization=optimization, providers=provider_chain(provider)
    )
    create_s = time.perf_counter() - start
    if provider != "cpu" and session.get_providers()[0] != PROVIDERS[provider]:
        raise CompressError(
            f"{path}: onnxruntime could not start {PROVIDERS[provider]} (it fell back "
            "to CPU for the whole model); check the GPU driver and CUDA libraries"
        )
    return Loaded(OnnxModel(session, f"model {path}"), provider, create_s)


def make_call(loaded: Loaded, batch: Samples, include_copies: bool) -> Callable[[], object]:
    """The timed call. On a GPU, inputs and outputs stay on the device (IOBinding) unless
    ``include_copies``, so host-device copies are not silently part of the figure."""
    runner = loaded.runner
    if loaded.provider == "cpu" or include_copies:
        return runner.call(batch)
    import onnxruntime as ort

    device = "cuda"
    session = runner.session
    with foreign_errors(f"onnxruntime cannot place a batch for {runner.name} on the GPU", "check the GPU's memory"):
        binding = session.io_binding()
        values = {
            name: ort.OrtValue.ortvalue_from_numpy(array, device, 0)
            for name, array in batch.feeds(runner.inputs).items()
        }
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for output in runner.outputs:
            binding.bind_output(output.name, device)

    def run_bound():
        try:
            session.run_with_iobinding(binding)
        except Exception as exc:
            raise runner.failure(batch, exc) from None
        binding.synchronize_outputs()  # the kernels have finished when the clock stops

    return run_bound


def first_run_s(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def node_placement(path: Path, provider: str, threads: int | None, optimization: str, batch: Samples) -> dict[str, int]:
    """How many nodes each provider ran, from one profiled run (a GPU provider may silently leave
    some nodes to the CPU)."""
    import onnxruntime as ort

    from ..onnx_io import session_options

    with tempfile.TemporaryDirectory() as folder:
        options = session_options(threads, optimization)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=provider_chain(provider))
            runner = OnnxModel(session, f"model {path}")
            runner.run(batch)
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
    path: Path, provider: str, threads: int | None, optimization: str, batch: Samples, runs: int = 10
) -> tuple[float, float]:
    """Peak resident memory (MiB) of a fresh process that loads the model and runs it, and what
    the same process held before loading it (the runtime and libraries alone).

    An executor rather than a Pool: a worker killed by the system (out of memory) breaks the
    executor, where a Pool would wait for it forever."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(_measure_peak_memory, str(path), provider, threads, optimization, batch, runs)
        try:
            return future.result()
        except BrokenProcessPool:
            raise CompressError(
                f"measuring the peak memory of {path}: its process was killed (out of memory?); "
                "pass --no-memory to skip the measurement"
            ) from None


def _measure_peak_memory(
    path: str, provider: str, threads: int | None, optimization: str, batch: Samples, runs: int
) -> tuple[float, float]:
    import importlib

    importlib.import_module("onnxruntime")  # the runtime counts as the process's, not the model's
    before = _memory_mb("VmRSS")
    loaded = load(Path(path), provider, threads, optimization)
    for _ in range(runs):
        loaded.runner.run(batch)
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
