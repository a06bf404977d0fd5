"""Confidence intervals for latency figures, and the words for a difference inside the noise.

Both intervals are distribution-free (latency distributions are skewed and drift): order
statistics around the median, whose coverage follows from the binomial distribution.
"""

from __future__ import annotations

import numpy as np


def median_rank(n: int, confidence: float = 0.95) -> int:
    """The largest k with ``2·P(Bin(n, ½) ≤ k-1) ≤ 1 - confidence``, at least 1: ``[x(k), x(n+1-k)]``
    holds the median with at least ``confidence``. Exact for every n, in constant time."""
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be between 0.5 and 1 (0.5 < confidence < 1), got {confidence!r}")
    if n < 1:
        raise ValueError("no samples")
    from scipy.stats import binom  # half a second to import: only when measuring

    half_alpha = (1 - confidence) / 2

    def fits(k: int) -> bool:  # the interval [x(k), x(n+1-k)] has the coverage asked for
        return k == 1 or binom.cdf(k - 1, n, 0.5) <= half_alpha

    # the quantile gives k within one of the answer; the checks settle it exactly
    k = max(1, int(binom.ppf(half_alpha, n, 0.5)))
    while k > 1 and not fits(k):
        k -= 1
    while k < (n + 1) // 2 and fits(k + 1):
        k += 1
    return k


def median_ci(samples, confidence: float = 0.95) -> tuple[float, float]:
    """Interval ``[x(k), x(n+1-k)]`` (1-based order statistics) that holds the median with at
    least ``confidence``: the largest k with ``2·P(Bin(n, ½) ≤ k-1) ≤ 1 - confidence``
    (:func:`median_rank`); 100 samples at 95% give x(40) to x(61).

    Too few samples for that confidence give the whole range (5 samples: 93.75%).
    """
    x = np.asarray(samples, dtype=np.float64).ravel()
    n = len(x)
    if n == 0:
        raise ValueError("no samples")
    k = median_rank(n, confidence)
    low, high = np.partition(x, [k - 1, n - k])[[k - 1, n - k]]  # O(n): no full sort
    return float(low), float(high)


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
