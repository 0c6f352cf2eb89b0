"""Where the middleware spends its time in case 1: ``python -m benchmarks.profiling 1b``.

Runs the wrapped app of one in-process case (1a, 1b, 1c, 1d100k, 1d5m) under cProfile,
and the bare app the same number of times, then prints the functions with the most own
time and the share of the wrapped run spent in ``rai_middleware`` code itself.
With ``--pyinstrument`` (if installed) prints a pyinstrument call tree instead.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import time
from collections.abc import Sequence

from .inprocess import Client, middleware_stack

__all__ = ["main"]

PATHS = {
    "1a": "/json",
    "1b": "/page",
    "1c": "/stream",
    "1d100k": "/static/100k",
    "1d5m": "/static/5m",
}
DEFAULT_REQUESTS = {"1a": 20_000, "1b": 500, "1c": 500, "1d100k": 5_000, "1d5m": 100}


def _own_time_in(stats: pstats.Stats, fragment: str) -> tuple[float, float]:
    """(own time of functions whose file contains ``fragment``, total own time)."""
    inside = total = 0.0
    for (filename, _, _), row in stats.stats.items():  # type: ignore[attr-defined]
        own = row[2]
        total += own
        if fragment in filename:
            inside += own
    return inside, total


async def _profile(case: str, requests: int, top: int, tree: bool) -> str:
    stack = middleware_stack()
    path = PATHS[case]
    wrapped, bare = Client(stack.wrapped, path), Client(stack.bare, path)
    await wrapped.batch(10)  # warm the token cache and the imports
    await bare.batch(10)

    started = time.perf_counter()
    await bare.batch(requests)
    bare_time = time.perf_counter() - started
    started = time.perf_counter()
    await wrapped.batch(requests)
    wrapped_time = time.perf_counter() - started
    header = (
        f"{case} {path}: {requests} requests, unprofiled: bare {bare_time / requests * 1e6:.1f}"
        f" µs, wrapped {wrapped_time / requests * 1e6:.1f} µs per request "
        f"(ratio {wrapped_time / bare_time:.3f})\n"
    )
    if tree:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0001, async_mode="disabled")
        profiler.start()
        await wrapped.batch(requests)
        profiler.stop()
        text: str = profiler.output_text(unicode=True, color=False, show_all=False)
        return header + text

    profile = cProfile.Profile()
    profile.enable()
    await wrapped.batch(requests)
    profile.disable()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    inside, total = _own_time_in(stats, "rai_middleware")
    stats.sort_stats("tottime").print_stats(top)
    share = (
        f"own time in rai_middleware: {inside / requests * 1e6:.1f} µs per request, "
        f"{inside / total:.0%} of the profiled wrapped run\n"
    )
    return header + share + out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling")
    parser.add_argument("case", choices=sorted(PATHS))
    parser.add_argument("--requests", type=int, help="default depends on the case")
    parser.add_argument("--top", type=int, default=25, help="functions to list")
    parser.add_argument("--pyinstrument", action="store_true", help="call tree instead")
    args = parser.parse_args(argv)
    requests = args.requests or DEFAULT_REQUESTS[args.case]
    print(asyncio.run(_profile(args.case, requests, args.top, args.pyinstrument)))


if __name__ == "__main__":
    main()
