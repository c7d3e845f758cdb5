"""Statistics of repeated timings: pure functions, so they can be tested on synthetic data.

A measurement is several *repeats* (rounds of the interleaved schedule), each a list of per-inference times.
Percentiles pool every inference; the spread compares the repeats' medians, which is what exposes drift on
a shared host (another process, thermal throttling) rather than the inference's own jitter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SPREAD_WARN = 0.10


@dataclass
class LatencyStats:
    p50: float
    p90: float
    p99: float
    max: float
    mean: float
    n: int
    repeats: int
    spread: float          # (max - min) / median of the repeats' medians
    warning: str | None

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(repeats: list[list[float]], warn_above: float = SPREAD_WARN) -> LatencyStats:
    """``repeats``: per-repeat lists of times (any unit; the result keeps it)."""
    repeats = [list(r) for r in repeats if len(r)]
    if not repeats:
        raise ValueError("no timings to summarize")
    pooled = np.concatenate([np.asarray(r, dtype=np.float64) for r in repeats])
    medians = np.array([np.median(r) for r in repeats])
    spread = float((medians.max() - medians.min()) / np.median(medians)) if len(medians) > 1 else 0.0
    warning = None
    if spread > warn_above:
        warning = (f"repeat medians differ by {100 * spread:.0f}% (> {100 * warn_above:.0f}%): the host was busy "
                   f"or throttling; rerun, or raise --duration")
    return LatencyStats(float(np.percentile(pooled, 50)), float(np.percentile(pooled, 90)),
                        float(np.percentile(pooled, 99)), float(pooled.max()), float(pooled.mean()),
                        int(pooled.size), len(repeats), spread, warning)
