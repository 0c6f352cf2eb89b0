"""Case 2 (second part): ``PlaceholderScanner`` against the physical limit, ``bytes.find``.

On a tag-dense 1 MB page with placeholders, fed whole and in 16 KB chunks, each figure is
``find time / scan time`` for the same bytes, where the find is one ``bytes.find`` pass
that locates every ``<rai-placeholder`` (no parsing at all: the fastest a scan can be).
For reference, a plain ``re`` alternation of everything the scanner must recognise, run
with ``finditer`` over the page, gets the same treatment.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from rai_middleware._scanner import Placeholder, PlaceholderScanner

from .inprocess import find_all
from .pages import CHUNK_SIZE, PLACEHOLDER_TAG, dense_page
from .plan import Plan
from .report import SCAN, Figure
from .timing import Batch, interleave

__all__ = ["measure", "regex_reference", "scan_chunks", "scan_whole"]

T = TypeVar("T")

_REFERENCE = re.compile(rb"(?i)<(?:!--|script|style|textarea|rai-placeholder)")


def scan_whole(data: bytes) -> int:
    scanner = PlaceholderScanner()
    items = scanner.feed(data) + scanner.close()
    return sum(1 for item in items if isinstance(item, Placeholder))


def scan_chunks(chunks: list[bytes]) -> int:
    scanner = PlaceholderScanner()
    found = 0
    for chunk in chunks:
        found += sum(1 for item in scanner.feed(chunk) if isinstance(item, Placeholder))
    return found + sum(1 for item in scanner.close() if isinstance(item, Placeholder))


def regex_reference(data: bytes) -> int:
    return sum(1 for _ in _REFERENCE.finditer(data))


def _batch(function: Callable[[T], object], argument: T) -> Batch:
    async def batch(n: int) -> None:
        for _ in range(n):
            function(argument)

    return batch


async def measure(plan: Plan) -> list[Figure]:
    data = dense_page()
    chunks = [data[start : start + CHUNK_SIZE] for start in range(0, len(data), CHUNK_SIZE)]
    expected = data.count(PLACEHOLDER_TAG)
    assert expected > 3 and find_all(data) == expected
    assert scan_whole(data) == expected, "the scanner missed placeholders on the dense page"
    assert scan_chunks(chunks) == expected, "the chunked scanner missed placeholders"

    samples = await interleave(
        {
            "find": _batch(find_all, data),
            "whole": _batch(scan_whole, data),
            "chunked": _batch(scan_chunks, chunks),
            "regex": _batch(regex_reference, data),
        },
        rounds=plan.rounds,
        seconds_per_batch=plan.batch_seconds,
    )
    size = f"{len(data) / 1e6:.2f} MB, {expected} placeholders"

    def speed(name: str) -> str:
        seconds = samples.median(name)
        return f"{name} {seconds * 1e3:.2f} ms ({len(data) / seconds / 1e9:.2f} GB/s)"

    return [
        Figure(
            "2",
            "scanner, dense 1 MB page: find / scan",
            samples.ratio("find", "whole"),
            "ratio",
            SCAN,
            detail=f"{speed('find')}, {speed('whole')}; {size}",
        ),
        Figure(
            "2",
            "scanner, same page in 16 KB chunks: find / scan",
            samples.ratio("find", "chunked"),
            "ratio",
            SCAN,
            detail=speed("chunked"),
        ),
        Figure(
            "2",
            "reference: re alternation finditer: find / re",
            samples.ratio("find", "regex"),
            "ratio",
            SCAN,
            detail=speed("regex"),
        ),
    ]
