"""The one timer of the kernel benchmarks: a warm-up call, then the median of a few timed calls."""

from __future__ import annotations

import time
from collections.abc import Callable


def median_s(fn: Callable[..., object], repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds, after one untimed call (caches, lazy init)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]
