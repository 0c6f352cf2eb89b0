"""Case 3: a real server on loopback, driven by a load generator in this process.

One uvicorn process (h11, no access log) per variant: (i) the bare app, (ii) the app
behind the middleware, (iii) the docs' recipe by hand (``/recipe``: an httpx POST for a
token on every page load); the fake Returning.AI (30 ms latency) in a fourth. The load
generator: ``httpx.AsyncClient``, 16 connections kept alive, 20 users in turn. Variants
take turns in every round (rotating order), each with a warm-up and a measured window;
each server reports its own CPU time (``time.process_time``) before and after the
window. Ratios are medians of per-round ratios.

``python -m benchmarks.server app VARIANT`` and ``python -m benchmarks.server upstream
LATENCY`` are the child processes: they talk over stdin/stdout (``PORT n`` / ``URL u``
first, then one answer per ``cpu`` or ``calls`` line) and stop at the end of stdin.
"""

from __future__ import annotations

import asyncio
import itertools
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .harness import Figure, Plan, percentile
from .site import USER_HEADER

VARIANTS = {"bare": "/page", "wrapped": "/page", "recipe": "/recipe"}
MARKERS = {"bare": b"<rai-placeholder", "wrapped": b"embed-token=", "recipe": b"embed-token="}


class Child:
    """``python -m benchmarks.server ARGS``, spoken to line by line."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.server", *args],
            cwd=Path(__file__).resolve().parent.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, line: str | None = None, timeout: float = 30.0) -> str:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        if line is not None:
            stdin.write(line + "\n")
            stdin.flush()
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(timeout) or not (answer := stdout.readline()):
                raise RuntimeError(f"{self.process.args!r} died or said nothing")
        return answer.split()[-1]

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()  # the child's signal to stop
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def child(*args: str) -> Iterator[Child]:
    process = Child(*args)
    try:
        yield process
    finally:
        process.stop()


@dataclass
class Window:
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    upstream_calls: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def cpu(self) -> float:
        """Server CPU seconds per request."""
        return self.server_cpu / max(len(self.latencies), 1)


async def load(client: httpx.AsyncClient, name: str, seconds: float, plan: Plan) -> Window:
    """``concurrency`` workers send requests back to back for ``seconds``; only requests
    that start and finish inside the window count."""
    result = Window(seconds)
    users = itertools.cycle(f"user-{number:02d}" for number in range(plan.server_users))
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while (started := time.perf_counter()) < deadline:
            headers = {USER_HEADER.decode(): next(users)}
            try:
                response = await client.get(VARIANTS[name], headers=headers)
                ok = response.status_code == 200 and MARKERS[name] in response.content
            except httpx.HTTPError:
                ok = False
            if not ok:
                result.errors += 1
            elif (finished := time.perf_counter()) <= deadline:
                result.latencies.append(finished - started)

    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(plan.concurrency)))
    result.client_cpu = time.process_time() - cpu
    return result


async def _drive(
    plan: Plan, servers: dict[str, tuple[Child, str]], upstream: Child
) -> dict[str, list[Window]]:
    results: dict[str, list[Window]] = {name: [] for name in servers}
    limits = httpx.Limits(max_connections=plan.concurrency)
    clients = {
        name: httpx.AsyncClient(base_url=url, limits=limits, timeout=30)
        for name, (_, url) in servers.items()
    }
    names = list(servers)
    try:
        for number in range(plan.server_rounds):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                server, client = servers[name][0], clients[name]
                # A long first warm-up mints the middleware's tokens outside the windows.
                await load(client, name, plan.server_warmup * (4 if number == 0 else 1), plan)
                calls, cpu = int(upstream.ask("calls")), float(server.ask("cpu"))
                window = await load(client, name, plan.server_seconds, plan)
                window.server_cpu = float(server.ask("cpu")) - cpu
                window.upstream_calls = int(upstream.ask("calls")) - calls
                if window.errors or not window.latencies:
                    raise RuntimeError(f"{name}: {window.errors} failed requests")
                results[name].append(window)
    finally:
        for client in clients.values():
            await client.aclose()
    return results


def case3(plan: Plan) -> list[Figure]:
    with ExitStack() as stack:
        upstream = stack.enter_context(child("upstream", str(plan.upstream_latency)))
        apps = {name: stack.enter_context(child("app", name)) for name in VARIANTS}
        upstream_url = upstream.ask()
        servers = {
            name: (app, f"http://127.0.0.1:{app.ask(upstream_url)}") for name, app in apps.items()
        }
        for _, url in servers.values():
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
        return _figures(plan, asyncio.run(_drive(plan, servers, upstream)))


def _figures(plan: Plan, results: dict[str, list[Window]]) -> list[Figure]:
    def ratios(a: str, b: str, value: str) -> list[float]:
        pairs = zip(results[a], results[b], strict=True)
        return [getattr(x, value) / getattr(y, value) for x, y in pairs]

    def p50(window: Window) -> float:
        return percentile(window.latencies, 0.5)

    def p99(window: Window) -> float:
        return percentile(window.latencies, 0.99)

    figures = []
    for label, name in (
        ("(i) bare", "bare"),
        ("(ii) wrapped", "wrapped"),
        ("(iii) recipe", "recipe"),
    ):
        windows = results[name]
        per_request = statistics.median(x.cpu for x in windows)
        busy = statistics.median(x.server_cpu / x.seconds for x in windows)
        client = statistics.median(x.client_cpu / x.seconds for x in windows)
        figures.append(
            Figure(
                "3",
                f"{label}: requests per second",
                statistics.median(x.rps for x in windows),
                "req/s",
                detail=f"server CPU {per_request * 1e3:.2f} ms per request; "
                f"p50 {statistics.median(map(p50, windows)) * 1e3:.1f} ms, p99 "
                f"{statistics.median(p99(x) for x in windows) * 1e3:.1f} ms; "
                f"busy: server {busy:.0%}, load generator {client:.0%}",
                rounds=[x.rps for x in windows],
            )
        )
    latency = [p50(r) - p50(w) for r, w in zip(results["recipe"], results["wrapped"], strict=True)]
    p50_ratios = [p50(w) / p50(b) for w, b in zip(results["wrapped"], results["bare"], strict=True)]
    recipe_calls = sum(x.upstream_calls for x in results["recipe"])
    recipe_requests = sum(len(x.latencies) for x in results["recipe"])
    rps = ratios("wrapped", "bare", "rps")
    cpu = ratios("wrapped", "bare", "cpu")
    return [
        *figures,
        Figure(
            "3",
            "(ii) / (i): requests per second",
            statistics.median(rps),
            "ratio",
            (">=", 0.90),
            rounds=rps,
        ),
        Figure(
            "3",
            "(ii) / (i): p50 latency",
            statistics.median(p50_ratios),
            "ratio",
            ("<=", 1.10),
            rounds=p50_ratios,
        ),
        Figure(
            "3",
            "(ii) / (i): server CPU time per request",
            statistics.median(cpu),
            "ratio",
            detail="steadier than req/s: it does not depend on how much CPU the server gets",
            rounds=cpu,
        ),
        Figure(
            "3",
            "(iii) - (ii) p50, in upstream latencies",
            statistics.median(latency) / plan.upstream_latency,
            "ratio",
            (">=", 1.0),
            f"recipe: {recipe_calls} upstream calls for {recipe_requests} requests",
            [x / plan.upstream_latency for x in latency],
        ),
        Figure(
            "3",
            "(ii) wrapped: upstream calls in the measured windows",
            sum(x.upstream_calls for x in results["wrapped"]),
            "count",
            ("==", 0),
            f"the {plan.server_users} users' tokens are minted in the first warm-up",
        ),
    ]


# -- the child processes --------------------------------------------------------------------


def _serve_app(variant: str) -> None:
    import uvicorn

    from .site import build_app, wrap

    upstream = sys.stdin.readline().strip()
    app = build_app(upstream_url=upstream)
    asgi = wrap(app, api_base_url=upstream) if variant == "wrapped" else app
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        asgi, host="127.0.0.1", port=port, http="h11", access_log=False, log_level="warning"
    )
    server = uvicorn.Server(config)

    def answer() -> None:
        print(f"PORT {port}", flush=True)
        for _ in sys.stdin:  # "cpu"
            print(time.process_time(), flush=True)
        server.should_exit = True

    threading.Thread(target=answer, daemon=True).start()
    server.run(sockets=[sock])


def _serve_upstream(latency: float) -> None:
    from rai_middleware.testing import FakeReturningAI

    fake = FakeReturningAI(latency=latency)
    with fake.run_in_thread() as url:
        print(f"URL {url}", flush=True)
        for _ in sys.stdin:  # "calls"
            print(fake.calls, flush=True)


def main(argv: Sequence[str]) -> None:
    command, argument = argv
    if command == "app":
        _serve_app(argument)
    else:
        _serve_upstream(float(argument))


if __name__ == "__main__":
    main(sys.argv[1:])
