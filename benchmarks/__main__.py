"""``python -m benchmarks [--quick]``: run every case, print the table, write the results.

The full run takes two to three minutes on 2 cores and writes
``benchmarks/results/latest.json`` and ``latest.svg``; ``--quick`` is a smoke run of a
few seconds for CI (every case, tiny counts, ``quick.json`` / ``quick.svg``). Neither
fails on a missed target: the exit status is 0 unless a case could not run or an app
did not produce what the case measures. Case 5 needs redis-py and redis-server; without
them its figures are reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from . import inprocess, scan, server, shared_store, upstream
from .plan import FULL, QUICK, Plan
from .report import Figure, format_table, to_json, to_svg, write_atomically

RESULTS = Path(__file__).resolve().parent / "results"
CASES = ("1", "2", "3", "4", "5")


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("rai-middleware", "starlette", "httpx", "uvicorn", "jinja2", "redis"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _revision() -> str | None:
    """The commit measured, ``+dirty`` if the package has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--", "rai_middleware"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if changes else "")


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(plan: Plan, cases: Sequence[str]) -> tuple[list[Figure], dict[str, float]]:
    """Figures in case order, and the seconds each case took."""
    figures: list[Figure] = []
    timings: dict[str, float] = {}
    # In-process cases first, while no server process competes for the cores.
    steps: list[tuple[str, Callable[[], list[Figure]]]] = [
        ("1", lambda: asyncio.run(inprocess.measure(plan))),
        ("2", lambda: asyncio.run(scan.measure(plan))),
        ("4", lambda: asyncio.run(upstream.measure(plan))),
        # Its own redis-server and worker processes, all stopped before case 3 starts.
        ("5", lambda: shared_store.measure(plan)),
        ("3", lambda: server.measure(plan)),
    ]
    for case, step in steps:
        if case not in cases:
            continue
        print(f"case {case}...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        figures += step()
        timings[case] = round(time.perf_counter() - started, 2)
    order = {case: number for number, case in enumerate(CASES)}
    figures.sort(key=lambda figure: order[figure.case[0]])
    return figures, timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run for CI: every case, tiny counts"
    )
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help="comma-separated subset of 1,2,3,4,5 (default: all); case 2's figures for "
        "the pages of 1d are measured with case 1",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    parser.add_argument(
        "--name", help="file name stem of the results (default: latest, or quick with --quick)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")

    started = time.perf_counter()
    load_before = _load()
    figures, timings = run(plan, cases)
    elapsed = time.perf_counter() - started

    meta: dict[str, Any] = {
        "plan": plan.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1min": {"before": load_before, "after": _load()},
        "versions": _versions(),
        "revision": _revision(),
        "seconds": {"total": round(elapsed, 2), **{f"case {k}": v for k, v in timings.items()}},
    }
    table = format_table(figures)
    print(table)
    summary = {
        status: sum(f.status == status for f in figures) for status in ("pass", "miss", "skipped")
    }
    skipped = f", {summary['skipped']} figures skipped" if summary["skipped"] else ""
    print(
        f"\n{summary['pass']} targets met, {summary['miss']} missed{skipped}; "
        f"{plan.name} run in {elapsed:.1f} s on {os.cpu_count()} CPUs "
        f"(load average {load_before} before, {_load()} after)"
    )
    stem = args.name or ("quick" if args.quick else "latest")
    out_dir: Path = args.output_dir
    write_atomically(out_dir / f"{stem}.json", to_json(figures, meta))
    versions = meta["versions"]
    revision = f" ({meta['revision']})" if meta["revision"] else ""
    subtitle = (
        f"rai-middleware {versions['rai-middleware']}{revision}, Python {versions['python']}, "
        f"{os.cpu_count()} CPUs, {plan.name} run of {meta['date'][:10]}; "
        "ratios measured within one run"
    )
    write_atomically(
        out_dir / f"{stem}.svg",
        to_svg(figures, title="rai-middleware benchmarks", subtitle=subtitle),
    )
    print(f"wrote {out_dir / stem}.json and .svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
