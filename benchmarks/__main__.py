"""``python -m benchmarks [--quick] [--cases 1,2]``: run the cases, print the table, and
write ``benchmarks/results/latest.json`` (``quick.json`` with ``--quick``, CI's smoke run:
every case, tiny counts, numbers that mean nothing). A missed target does not fail the
run; a case that cannot run, or an app that does not do what a case measures, does.
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

from . import inprocess, server, tokens
from .harness import FULL, QUICK, Figure, Plan, table, write_json

RESULTS = Path(__file__).resolve().parent / "results"
#: In-process cases first, while no server process competes for the cores.
CASES: dict[str, Callable[[Plan], list[Figure]]] = {
    "1": lambda plan: asyncio.run(inprocess.case1(plan)),
    "2": lambda plan: asyncio.run(inprocess.case2(plan)),
    "4": lambda plan: asyncio.run(tokens.case4(plan)),
    "5": tokens.case5,
    "3": server.case3,
}


def _meta(plan: Plan, seconds: dict[str, float]) -> dict[str, object]:
    versions = {"python": platform.python_version()}
    for name in ("rai-middleware", "starlette", "httpx", "uvicorn", "jinja2", "redis"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    git = ["git", "-C", str(RESULTS.parent.parent)]
    try:
        revision = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "rai_middleware"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision, dirty = "unknown", ""
    return {
        "plan": plan.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "revision": revision + ("+dirty" if dirty else ""),
        "seconds": seconds,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny counts")
    parser.add_argument("--cases", default="1,2,3,4,5", help="comma-separated subset")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--name", help="file name stem (default: latest, or quick)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    wanted = {case.strip() for case in args.cases.split(",") if case.strip()}
    if wanted - set(CASES):
        parser.error(f"unknown case(s): {', '.join(sorted(wanted - set(CASES)))}")
    figures: list[Figure] = []
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    for case, run in CASES.items():
        if case in wanted:
            print(f"case {case}...", file=sys.stderr, flush=True)
            begun = time.perf_counter()
            figures += run(plan)
            seconds[f"case {case}"] = round(time.perf_counter() - begun, 1)
    seconds["total"] = round(time.perf_counter() - started, 1)
    figures.sort(key=lambda figure: figure.case[0])  # stable: case 3 back in its place
    print(table(figures))
    counts = {s: sum(f.status == s for f in figures) for s in ("pass", "miss", "skipped")}
    print(
        f"\n{counts['pass']} targets met, {counts['miss']} missed, {counts['skipped']} skipped; "
        f"{plan.name} run in {seconds['total']} s on {os.cpu_count()} CPUs"
    )
    path = args.output_dir / f"{args.name or ('quick' if args.quick else 'latest')}.json"
    write_json(path, figures, _meta(plan, seconds))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
