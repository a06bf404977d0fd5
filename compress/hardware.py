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


def gpus() -> list[dict]:
    """Name, driver and memory of each NVIDIA GPU (empty when nvidia-smi is absent)."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            found.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return found


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
    return {
        "cpu": cpu_info().describe(),
        "memory_bytes": memory_bytes(),
        "gpus": gpus() if with_gpus else [],
        "software": software,
    }
