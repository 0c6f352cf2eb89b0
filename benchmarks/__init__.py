"""Benchmarks of rai-middleware: ``python -m benchmarks`` (see ``benchmarks/README.md``).

Every figure is a ratio or a count measured within one run, so that it holds on a noisy
machine; absolute times are printed alongside for information only.
"""

from __future__ import annotations
