"""Interleaved timing: every subject runs in every round, in a rotating order, so that a
machine that slows down or speeds up during the run affects all subjects alike.

Figures are taken per round (a ratio or a difference of two subjects timed within the same
round) and summarised by their median across rounds.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Batch", "Samples", "calibrate", "interleave", "percentile"]

#: Runs the subject ``n`` times in a row (so that a sync subject pays no per-call await).
Batch = Callable[[int], Awaitable[None]]


@dataclass
class Samples:
    """Seconds per call of each subject, one value per round."""

    per_call: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str) -> float:
        return statistics.median(self.per_call[name])

    def ratio(self, numerator: str, denominator: str) -> float:
        """Median over rounds of ``numerator / denominator`` timed in the same round."""
        pairs = zip(self.per_call[numerator], self.per_call[denominator], strict=True)
        return statistics.median(a / b for a, b in pairs)

    def ratios(self, numerator: str, denominator: str) -> list[float]:
        """The per-round ratios, for the record."""
        pairs = zip(self.per_call[numerator], self.per_call[denominator], strict=True)
        return [round(a / b, 4) for a, b in pairs]

    def difference(self, minuend: str, subtrahend: str) -> float:
        """Median over rounds of ``minuend - subtrahend`` (seconds per call)."""
        pairs = zip(self.per_call[minuend], self.per_call[subtrahend], strict=True)
        return statistics.median(a - b for a, b in pairs)


async def calibrate(batch: Batch, seconds: float) -> int:
    """How many calls of ``batch`` take about ``seconds`` (at least 1)."""
    await batch(1)  # warm-up: first-call costs (imports, caches) are not what we measure
    n = 1
    while True:
        started = time.perf_counter()
        await batch(n)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds / 4 or n >= 1 << 20:
            return max(1, math.ceil(n * seconds / max(elapsed, 1e-9)))
        n *= 4


async def interleave(
    subjects: Mapping[str, Batch],
    *,
    rounds: int,
    seconds_per_batch: float,
    sizes: Mapping[str, int] | None = None,
) -> Samples:
    """Time each subject ``rounds`` times, rotating the order every round.

    Each subject's batch size is calibrated to last about ``seconds_per_batch`` unless
    ``sizes`` gives it. The garbage collector runs between rounds, never inside a batch's
    timing window by our doing.
    """
    names: Sequence[str] = list(subjects)
    counts = dict(sizes or {})
    for name in names:
        if name not in counts:
            counts[name] = await calibrate(subjects[name], seconds_per_batch)
    samples = Samples({name: [] for name in names})
    for number in range(rounds):
        shift = number % len(names)
        order = [*names[shift:], *names[:shift]]
        if number % 2:
            order.reverse()
        gc.collect()
        for name in order:
            n = counts[name]
            started = time.perf_counter()
            await subjects[name](n)
            samples.per_call[name].append((time.perf_counter() - started) / n)
    return samples


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1) of unsorted values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
