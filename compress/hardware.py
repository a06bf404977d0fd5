"""What the machine is: CPU model, cores and the instruction-set flags that decide int8 speed."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass, field

# Flags that change which int8/fp32 kernels ONNX Runtime can use, by their /proc/cpuinfo names.
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
)


@dataclass(frozen=True)
class CpuInfo:
    model: str
    architecture: str
    logical_cores: int
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_x86(self) -> bool:
        return self.architecture in ("x86_64", "amd64", "i686", "x86")

    @property
    def has_vnni(self) -> bool:
        """int8 dot-product instructions (AVX512-VNNI or AVX-VNNI): fast u8·s8 accumulation."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    def describe(self) -> dict:
        return {
            "model": self.model,
            "architecture": self.architecture,
            "logical_cores": self.logical_cores,
            "flags": sorted(f for f in RELEVANT_FLAGS if f in self.flags),
        }


@functools.cache
def cpu_info() -> CpuInfo:
    """Read once per process; on systems without /proc/cpuinfo the flags are unknown (empty)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("unknown", "", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return CpuInfo(
        model=model, architecture=platform.machine().lower(), logical_cores=os.cpu_count() or 1, flags=frozenset(flags)
    )


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory_bytes() -> int | None:
    """Bytes the system can give without swapping (MemAvailable), else the physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return memory_bytes()


# What nvidia-smi is asked of each GPU; compute_cap needs a driver from 2022 (510) on, so without it the rest is asked
GPU_FIELDS = ("name", "driver_version", "memory.total", "compute_cap")
GPU_KEYS = ("name", "driver", "memory", "compute_capability")


def gpus() -> list[dict]:
    """Name, driver, memory and compute capability of each NVIDIA GPU (empty when nvidia-smi is absent)."""
    import shutil

    if not shutil.which("nvidia-smi"):
        return []
    for count in (len(GPU_FIELDS), len(GPU_FIELDS) - 1):
        out = _nvidia_smi(GPU_FIELDS[:count])
        if out is not None:
            break
    else:
        return []
    found = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == count:
            found.append(dict(zip(GPU_KEYS, parts)))
    return found


def _nvidia_smi(fields: tuple[str, ...]) -> str | None:
    """nvidia-smi's CSV lines for ``fields``, or None when it fails (an older driver lacks a field)."""
    import subprocess

    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def torch_cuda_version() -> str | None:
    """The CUDA version torch was built with; None without torch or for a CPU build of it."""
    try:
        import torch
    except (ImportError, OSError):  # OSError: a CUDA build whose libraries do not load
        return None
    return torch.version.cuda


def onnxruntime_cuda_version() -> str | None:
    """The CUDA version onnxruntime was built with (onnxruntime-gpu); None for a CPU build."""
    from onnxruntime.capi import build_and_package_info

    return getattr(build_and_package_info, "cuda_version", None) or None


def cuda_mismatch(torch_cuda: str | None, onnxruntime_cuda: str | None) -> str | None:
    """One line when torch and onnxruntime are built for different CUDA major versions (both versions named,
    and what to do), else None; None too when either has no CUDA build to compare."""
    if not torch_cuda or not onnxruntime_cuda:
        return None
    torch_major, ort_major = torch_cuda.split(".")[0], onnxruntime_cuda.split(".")[0]
    if torch_major == ort_major:
        return None
    return (
        f"torch is built for CUDA {torch_cuda} but onnxruntime for CUDA {onnxruntime_cuda}: in one process the CUDA "
        f"provider may fail to load its libraries beside torch's; install builds for one CUDA major version "
        f"(onnxruntime-gpu for CUDA {torch_major}, or torch for CUDA {ort_major})"
    )


def machine_info(with_gpus: bool) -> dict:
    """Hardware and software a latency figure depends on, for reports."""
    import numpy
    import onnx
    import onnxruntime

    from . import __version__

    software = {
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": numpy.__version__,
        "compress": __version__,
    }
    try:
        import torch

        software["torch"] = torch.__version__
    except ImportError:
        pass
    cuda = {"torch_cuda": torch_cuda_version(), "onnxruntime_cuda": onnxruntime_cuda_version()}
    software.update({key: version for key, version in cuda.items() if version})
    return {
        "cpu": cpu_info().describe(),
        "memory_bytes": memory_bytes(),
        "gpus": gpus() if with_gpus else [],
        "software": software,
    }
