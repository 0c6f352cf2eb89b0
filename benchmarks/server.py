"""Case 3: a real server on loopback, driven by a Python load generator.

Processes (the machine has 2 cores, so they compete; the table reports how busy the
server and the load generator were, to show which one bounds the rates):

* this process: the load generator, ``httpx.AsyncClient`` with ``concurrency``
  connections kept alive, users taken in turn from ``server_users`` names sent in the
  ``x-bench-user`` header;
* one uvicorn process per variant: (i) the bare app, (ii) the app behind the middleware
  (its own httpx client, token cache, ``identify`` reading the header), (iii) the docs'
  recipe by hand (``/recipe``: an httpx POST to the token endpoint on every page load);
* the fake Returning.AI, ``run_in_thread`` in its own process, with 30 ms latency.

Variants take turns in every round (rotating order), each with a short warm-up (the
first also mints the middleware's tokens, one request per user) and a measured window of
fixed length. Rates and latencies compare each variant's best window (the highest rate,
the lowest latencies over the rounds): on a shared machine other processes only ever
slow a window down. Server CPU time per request, which does not depend on how much CPU
the server gets, is the median of per-round ratios; the JSON keeps every round.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from .apps import USER_HEADER
from .plan import Plan
from .report import SERVER, SERVER_CALLS, Figure, Target
from .timing import percentile

__all__ = ["Load", "load", "measure"]

_ROOT = Path(__file__).resolve().parent.parent
_PATHS = {"bare": "/page", "wrapped": "/page", "recipe": "/recipe"}
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# -- child processes ----------------------------------------------------------------------


@dataclass
class Child:
    process: subprocess.Popen[str]
    log: IO[str]

    def read_line(self, timeout: float = 30.0) -> str:
        """The child's next stdout line; fails with its stderr if it died or hangs."""
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise RuntimeError(f"{self.process.args!r} said nothing in {timeout} s")
        line = stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"{self.process.args!r} exited:\n{self.log.read()[-2000:]}")
        return line.strip()

    def send_line(self, line: str) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(line + "\n")
        stdin.flush()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the child so far (Linux /proc; NaN elsewhere)."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / _TICKS


@contextmanager
def child(*args: str) -> Iterator[Child]:
    """``python -m benchmarks.serve ARGS`` with stdin/stdout pipes; stopped on exit by
    closing its stdin (then SIGTERM, then SIGKILL, by its own pid, if it lingers)."""
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.serve", *args],
            cwd=_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            yield Child(process, log)
        finally:
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()


def upstream_calls(upstream: Child) -> int:
    upstream.send_line("calls")
    return int(upstream.read_line())


# -- the load generator -------------------------------------------------------------------


@dataclass
class Load:
    """One measured window."""

    seconds: float
    latencies: list[float] = field(default_factory=list)
    #: Requests sent in the window and answered, including those answered after it.
    completed: int = 0
    errors: int = 0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    upstream_calls: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)


async def load(
    client: httpx.AsyncClient,
    path: str,
    *,
    seconds: float,
    concurrency: int,
    users: Sequence[str],
    marker: bytes,
) -> Load:
    """``concurrency`` workers send GET ``path`` back to back for ``seconds``; only
    requests that started and finished inside the window count."""
    result = Load(seconds)
    deadline = time.perf_counter() + seconds
    turn = itertools.count()

    async def worker() -> None:
        while True:
            started = time.perf_counter()
            if started >= deadline:
                return
            user = users[next(turn) % len(users)]
            try:
                response = await client.get(path, headers={USER_HEADER.decode(): user})
                ok = response.status_code == 200 and marker in response.content
            except httpx.HTTPError:
                ok = False
            finished = time.perf_counter()
            if not ok:
                result.errors += 1
                continue
            result.completed += 1
            if finished <= deadline:
                result.latencies.append(finished - started)

    cpu_start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.client_cpu = time.process_time() - cpu_start
    return result


async def prime(
    client: httpx.AsyncClient, path: str, *, users: Sequence[str], marker: bytes
) -> None:
    """One request per user, all at once: the middleware mints every user's token here,
    not in a measured window."""
    responses = await asyncio.gather(
        *(client.get(path, headers={USER_HEADER.decode(): user}) for user in users)
    )
    for response in responses:
        if response.status_code != 200 or marker not in response.content:
            raise RuntimeError(f"{path}: HTTP {response.status_code} while warming up")


# -- the case -----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


async def _drive(
    plan: Plan, urls: dict[str, str], servers: dict[str, Child], upstream: Child
) -> dict[str, list[Load]]:
    users = [f"user-{number:02d}" for number in range(plan.server_users)]
    markers = {"bare": b"<rai-placeholder", "wrapped": b"embed-token=", "recipe": b"embed-token="}
    results: dict[str, list[Load]] = {name: [] for name in urls}
    limits = httpx.Limits(
        max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency
    )
    clients = {
        name: httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0)
        for name, url in urls.items()
    }
    try:
        names = list(urls)
        for number in range(plan.server_rounds):
            shift = number % len(names)
            for name in [*names[shift:], *names[:shift]]:
                client, path, marker = clients[name], _PATHS[name], markers[name]
                if number == 0:
                    await prime(client, path, users=users, marker=marker)
                window = functools.partial(
                    load, client, path, concurrency=plan.concurrency, users=users, marker=marker
                )
                await window(seconds=plan.server_warmup)
                calls = upstream_calls(upstream)
                cpu = servers[name].cpu_seconds()
                result = await window(seconds=plan.server_seconds)
                result.server_cpu = servers[name].cpu_seconds() - cpu
                result.upstream_calls = upstream_calls(upstream) - calls
                if result.errors or not result.latencies:
                    raise RuntimeError(f"{name}: {result.errors} failed requests")
                results[name].append(result)
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def _wait_healthy(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become healthy in {timeout} s")
        time.sleep(0.05)


def measure(plan: Plan) -> list[Figure]:
    with ExitStack() as stack:
        # Start everything at once; the apps wait for the upstream's URL on stdin.
        upstream = stack.enter_context(child("upstream", "--latency", str(plan.upstream_latency)))
        servers = {
            name: stack.enter_context(child("app", "--variant", name))
            for name in ("bare", "wrapped", "recipe")
        }
        upstream_url = upstream.read_line().removeprefix("URL ")
        for server in servers.values():
            server.send_line(upstream_url)
        urls = {
            name: f"http://127.0.0.1:{server.read_line().removeprefix('PORT ')}"
            for name, server in servers.items()
        }
        for url in urls.values():
            _wait_healthy(url)
        results = asyncio.run(_drive(plan, urls, servers, upstream))
    return _figures(plan, results)


def _per_round(
    results: dict[str, list[Load]], a: str, b: str, figure: Callable[[Load], float]
) -> float:
    """Median over rounds of ``figure(a) / figure(b)``, both from the same round."""
    pairs = zip(results[a], results[b], strict=True)
    return statistics.median(figure(x) / figure(y) for x, y in pairs)


def _cpu_per_request(load: Load) -> float:
    return load.server_cpu / load.completed


@dataclass(frozen=True)
class Best:
    """A variant's best windows: the highest rate, the lowest latencies. Other processes
    can only slow a window down, so the best window is the nearest to what the machine
    can do (the reasoning behind ``timeit``'s minimum)."""

    rps: float
    p50: float
    p99: float

    @classmethod
    def of(cls, loads: Sequence[Load]) -> Best:
        return cls(
            rps=max(x.rps for x in loads),
            p50=min(x.p50 for x in loads),
            p99=min(x.p99 for x in loads),
        )


def _figures(plan: Plan, results: dict[str, list[Load]]) -> list[Figure]:
    best = {name: Best.of(loads) for name, loads in results.items()}

    def summary(name: str) -> str:
        loads = results[name]
        server = statistics.median(x.server_cpu / x.seconds for x in loads)
        client = statistics.median(x.client_cpu / x.seconds for x in loads)
        cpu = statistics.median(_cpu_per_request(x) for x in loads)
        return (
            f"{name}: best {best[name].rps:.0f} req/s, p50 {_ms(best[name].p50)}, "
            f"p99 {_ms(best[name].p99)}; server CPU {_ms(cpu)} per request; "
            f"median CPU busy: server {server:.0%}, load generator {client:.0%}"
        )

    rounds: dict[str, list[float] | float] = {
        "median of per-round ratios, wrapped / bare rps": _per_round(
            results, "wrapped", "bare", lambda x: x.rps
        ),
        "median of per-round ratios, wrapped / bare p50": _per_round(
            results, "wrapped", "bare", lambda x: x.p50
        ),
    }
    for name, loads in results.items():
        rounds[f"{name} rps"] = [round(x.rps, 1) for x in loads]
        rounds[f"{name} p50 ms"] = [round(x.p50 * 1e3, 2) for x in loads]
        rounds[f"{name} p99 ms"] = [round(x.p99 * 1e3, 2) for x in loads]
        rounds[f"{name} server CPU ms per request"] = [
            round(_cpu_per_request(x) * 1e3, 3) for x in loads
        ]
        rounds[f"{name} server busy"] = [round(x.server_cpu / x.seconds, 3) for x in loads]
        rounds[f"{name} load generator busy"] = [round(x.client_cpu / x.seconds, 3) for x in loads]
    wrapped_calls = sum(x.upstream_calls for x in results["wrapped"])
    recipe_calls = sum(x.upstream_calls for x in results["recipe"])
    recipe_requests = sum(x.completed for x in results["recipe"])
    bare, wrapped, recipe = best["bare"], best["wrapped"], best["recipe"]
    return [
        Figure(
            "3",
            "(ii) wrapped / (i) bare: requests per second",
            wrapped.rps / bare.rps,
            "ratio",
            SERVER,
            Target(">=", 0.90),
            detail=summary("bare"),
            extra=rounds,
        ),
        Figure(
            "3",
            "(ii) wrapped / (i) bare: p50 latency",
            wrapped.p50 / bare.p50,
            "ratio",
            SERVER,
            Target("<=", 1.10),
            detail=summary("wrapped"),
        ),
        Figure(
            "3", "(ii) wrapped / (i) bare: p99 latency", wrapped.p99 / bare.p99, "ratio", SERVER
        ),
        Figure(
            "3",
            "(ii) wrapped / (i) bare: server CPU per request",
            _per_round(results, "wrapped", "bare", _cpu_per_request),
            "ratio",
            SERVER,
            detail="median of per-round ratios",
        ),
        Figure(
            "3",
            "(iii) recipe - (ii) wrapped p50, in upstream latencies",
            (recipe.p50 - wrapped.p50) / plan.upstream_latency,
            "ratio",
            SERVER,
            Target(">=", 1.0),
            detail=summary("recipe") + f"; upstream latency {_ms(plan.upstream_latency)}",
        ),
        Figure(
            "3",
            "(iii) recipe / (i) bare: requests per second",
            recipe.rps / bare.rps,
            "ratio",
            SERVER,
        ),
        Figure(
            "3",
            "(ii) wrapped: upstream calls in measured windows",
            wrapped_calls,
            "count",
            SERVER_CALLS,
            detail=f"expected 0: the {plan.server_users} users' tokens are minted in the warm-up",
        ),
        Figure(
            "3",
            "(iii) recipe: upstream calls per request",
            recipe_calls / max(recipe_requests, 1),
            "ratio",
            SERVER_CALLS,
            detail=f"{recipe_calls} calls for {recipe_requests} requests",
        ),
    ]
