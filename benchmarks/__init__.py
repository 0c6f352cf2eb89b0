"""Benchmarks of rai-middleware: ``python -m benchmarks`` (see ``benchmarks/README.md``).

Every figure with a target is a ratio or a count measured within one run, so that it
holds on a noisy machine; absolute times (printed alongside, and case 5's added µs per
request) are for information only.
"""

from __future__ import annotations
