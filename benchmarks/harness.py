"""Paired, interleaved timing, and the figures it produces (table and JSON).

Every subject runs once in every round; the order alternates between rounds, so that a
machine that slows down or speeds up during the run affects all subjects alike. A figure
comparing two subjects is the median over rounds of the ratio (or difference) taken
within each round, never a ratio of medians.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Plan:
    """How long and how hard each case runs."""

    name: str
    rounds: int  # in-process rounds (cases 1, 2, 5)
    batch_seconds: float  # one timed batch
    server_rounds: int  # case 3: rounds, measured and warm-up seconds per variant and round
    server_seconds: float
    server_warmup: float
    burst: int  # case 4: concurrent first requests; simulated hour
    sim_users: int
    sim_requests: int
    store_processes: int  # case 5c: worker processes x users each
    store_users: int
    concurrency: int = 16  # case 3's connections, users, and upstream latency (4, 5 too)
    server_users: int = 20
    upstream_latency: float = 0.030


FULL = Plan("full", 101, 0.02, 15, 1.5, 0.3, 100, 100, 1000, 4, 20)
QUICK = Plan("quick", 3, 0.002, 1, 0.5, 0.2, 10, 10, 100, 2, 5)

#: Runs the subject ``n`` times in a row; the timed unit.
Batch = Callable[[int], Awaitable[None]]


def repeat(function: Callable[[], object]) -> Batch:
    """A batch of calls of a synchronous ``function``."""

    async def batch(n: int) -> None:
        for _ in range(n):
            function()

    return batch


@dataclass
class Samples:
    """Seconds per call of each subject, one value per round."""

    per_call: dict[str, list[float]]

    def median(self, name: str) -> float:
        return statistics.median(self.per_call[name])

    def ratios(self, a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(self.per_call[a], self.per_call[b], strict=True)]

    def ratio(self, a: str, b: str) -> float:
        """Median over rounds of ``a / b``, both timed in the same round."""
        return statistics.median(self.ratios(a, b))

    def differences(self, a: str, b: str) -> list[float]:
        return [x - y for x, y in zip(self.per_call[a], self.per_call[b], strict=True)]

    def difference(self, a: str, b: str) -> float:
        """Median over rounds of ``a - b`` (seconds per call)."""
        return statistics.median(self.differences(a, b))

    def rate(self, name: str, size: int) -> float:
        """GB/s for ``size`` bytes per call: the median over rounds."""
        return statistics.median(size / t / 1e9 for t in self.per_call[name])


async def interleave(subjects: Mapping[str, Batch], *, rounds: int, seconds: float) -> Samples:
    """Time every subject in every round, each batch lasting about ``seconds``; the order
    is reversed every other round and rotated every round (A B, B A, ...)."""
    names = list(subjects)
    counts = {}
    for name in names:  # calibrate: a warm-up call, then grow the batch until it is long
        await subjects[name](1)
        n = 1
        while True:
            started = time.perf_counter()
            await subjects[name](n)
            elapsed = time.perf_counter() - started
            if elapsed >= seconds / 4 or n >= 1 << 20:
                counts[name] = max(1, math.ceil(n * seconds / max(elapsed, 1e-9)))
                break
            n *= 4
    samples = Samples({name: [] for name in names})
    for number in range(rounds):
        shift = number // 2 % len(names)
        order = names[shift:] + names[:shift]
        if number % 2:
            order.reverse()
        gc.collect()
        for name in order:
            started = time.perf_counter()
            await subjects[name](counts[name])
            samples.per_call[name].append((time.perf_counter() - started) / counts[name])
    return samples


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in 0..1)."""
    return sorted(values)[max(1, math.ceil(fraction * len(values))) - 1]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs" if abs(seconds) < 1e-3 else f"{seconds * 1e3:,.2f} ms"


# -- figures ---------------------------------------------------------------------------------

Op = Literal["<=", ">=", "=="]


@dataclass(frozen=True)
class Figure:
    """One measured value, its target if it has one, and context (``detail``: absolute
    times and the like, for information). ``skipped``: could not run here (``detail``
    says why). ``rounds``: the per-round values, kept in the JSON only."""

    case: str
    name: str
    value: float
    unit: str
    target: tuple[Op, float] | None = None
    detail: str = ""
    rounds: list[float] = field(default_factory=list)
    skipped: bool = False

    @property
    def status(self) -> str:
        if self.skipped:
            return "skipped"
        if self.target is None:
            return "info"
        op, bound = self.target
        met = {"<=": self.value <= bound, ">=": self.value >= bound, "==": self.value == bound}
        return "pass" if met[op] else "miss"


def number(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def target_text(figure: Figure) -> str:
    return "" if figure.target is None else f"{figure.target[0]} {figure.target[1]:g}"


def table(figures: Sequence[Figure]) -> str:
    rows = [("case", "figure", "value", "unit", "target", "result", "for information")]
    rows += [
        (
            f.case,
            f.name,
            number(f.value),
            f.unit,
            target_text(f),
            f.status,
            f.detail,
        )
        for f in figures
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(6)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        cells[2] = row[2].rjust(widths[2])
        lines.append("  ".join([*cells, row[6]]).rstrip())
    lines.insert(1, "  ".join("-" * width for width in [*widths, 15]))
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """NaN and infinity as JSON null, at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def write_json(path: Path, figures: Sequence[Figure], meta: dict[str, Any]) -> None:
    items = []
    for figure in figures:
        item = asdict(figure)
        item["rounds"] = [round(x, 6) for x in figure.rounds]
        item["target"] = target_text(figure) or None
        items.append(item | {"status": figure.status})
    statuses = ("pass", "miss", "info", "skipped")
    summary = {status: sum(f.status == status for f in figures) for status in statuses}
    text = json.dumps(_finite({"meta": meta, "summary": summary, "figures": items}), indent=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
