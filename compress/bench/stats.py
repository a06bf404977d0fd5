"""Confidence intervals for latency figures, and the words for a difference inside the noise.

Both intervals are distribution-free (latency distributions are skewed and drift): order
statistics around the median, whose coverage follows from the binomial distribution.
"""

from __future__ import annotations

import math

import numpy as np

Z = {0.90: 1.6449, 0.95: 1.9600, 0.99: 2.5758}
EXACT_UP_TO = 1000  # samples; above this the normal approximation of the binomial is exact enough


def median_ci(samples, confidence: float = 0.95) -> tuple[float, float]:
    """Interval ``[x(k), x(n+1-k)]`` (1-based order statistics) that holds the median with at
    least ``confidence``: the largest k with ``2·P(Bin(n, ½) ≤ k-1) ≤ 1 - confidence``.

    Too few samples for that confidence give the whole range (5 samples: 93.75%).
    """
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("no samples")
    alpha = 1 - confidence
    if n > EXACT_UP_TO:
        k = max(1, math.floor((n - Z[confidence] * math.sqrt(n)) / 2))
    else:
        k, tail = 0, 0.0
        while k < n // 2:
            tail += math.comb(n, k) / 2**n  # P(Bin(n, 1/2) = k)
            if 2 * tail > alpha:
                break
            k += 1
        k = max(k, 1)
    return float(x[k - 1]), float(x[n - k])


def speedup_ci(round_ratios, confidence: float = 0.95) -> tuple[float, float, float]:
    """Speed-up as the median of per-round ratios (baseline p50 / model p50, measured in the same
    round), with the order-statistic interval over rounds: drift between rounds widens it."""
    ratios = np.asarray(round_ratios, dtype=np.float64)
    low, high = median_ci(ratios, confidence)
    return float(np.median(ratios)), low, high


def verdict(low: float, high: float) -> str:
    """How to read a speed-up interval: only one that excludes 1 is a real difference."""
    if low > 1:
        return "faster"
    if high < 1:
        return "slower"
    return "within noise"
