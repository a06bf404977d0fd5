"""The latency harness: warm-up, then timed calls until a minimum count and time are both reached.

The timed region holds only the call itself (inputs are prepared beforehand), timed with
``perf_counter_ns``. ``compare`` interleaves several models in rounds, so that a slow spell on a
shared machine hits all of them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .stats import speedup_ci


@dataclass
class LatencyStats:
    """Per-call latency in milliseconds over ``runs`` timed calls of ``batch_size`` samples."""

    batch_size: int
    runs: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    cv: float  # coefficient of variation: std / mean
    throughput: float  # samples per second at the median latency

    @classmethod
    def from_times(cls, seconds: np.ndarray, batch_size: int) -> LatencyStats:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise ValueError("no timed runs")
        mean, std = float(ms.mean()), float(ms.std(ddof=1)) if ms.size > 1 else 0.0
        p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        return cls(
            batch_size=batch_size,
            runs=int(ms.size),
            mean_ms=mean,
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            std_ms=std,
            cv=std / mean if mean > 0 else 0.0,
            throughput=batch_size * 1e3 / p50,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def time_calls(
    call: Callable[[], object], warmup: int = 5, min_runs: int = 20, min_seconds: float = 0.5, max_runs: int = 100_000
) -> np.ndarray:
    """Seconds taken by each timed call of ``call`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    clock = time.perf_counter_ns
    deadline = clock() + int(min_seconds * 1e9)
    while len(times) < max_runs and (len(times) < min_runs or clock() < deadline):
        start = clock()
        call()
        times.append(clock() - start)
    return np.asarray(times, dtype=np.float64) * 1e-9


@dataclass
class Comparison:
    """Interleaved timing of several callables: their stats and per-round ratios to a baseline."""

    stats: dict[str, LatencyStats]
    round_p50_ms: dict[str, list[float]]
    baseline: str
    seconds: dict[str, np.ndarray]  # every timed call, per callable

    def speedup(self, name: str) -> tuple[float, float, float]:
        """Baseline p50 / ``name`` p50 per round: the median and its 95% interval over rounds
        (with up to 7 rounds, the lowest and highest round)."""
        return speedup_ci(self.round_ratios(name))

    def round_ratios(self, name: str) -> np.ndarray:
        return np.asarray(self.round_p50_ms[self.baseline]) / np.asarray(self.round_p50_ms[name])


def compare(
    calls: dict[str, Callable[[], object]],
    baseline: str,
    batch_size: int,
    rounds: int = 5,
    seconds_per_round: float = 0.2,
    min_runs_per_round: int = 5,
    warmup: int = 5,
) -> Comparison:
    """Time every callable in ``rounds`` alternating rounds (order rotated each round)."""
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    times: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(
                time_calls(calls[name], warmup=1, min_runs=min_runs_per_round, min_seconds=seconds_per_round)
            )
    stats = {n: LatencyStats.from_times(np.concatenate(times[n]), batch_size) for n in names}
    round_p50 = {n: [float(np.median(t)) * 1e3 for t in times[n]] for n in names}
    return Comparison(
        stats=stats, round_p50_ms=round_p50, baseline=baseline, seconds={n: np.concatenate(times[n]) for n in names}
    )
