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
import select
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .harness import Figure, Plan, percentile
from .site import USER_HEADER

VARIANTS = {"bare": "/page", "wrapped": "/page", "recipe": "/recipe"}
Ask = Callable[..., str]
MARKERS = {"bare": b"<rai-placeholder", "wrapped": b"embed-token=", "recipe": b"embed-token="}


@contextmanager
def child(*args: str) -> Iterator[Ask]:
    """``python -m benchmarks.server ARGS``, as ``ask(line=None)``: send a line, return
    the last word of the child's next line. Stopped by closing its stdin."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.server", *args],
        cwd=Path(__file__).resolve().parent.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stdin, stdout = process.stdin, process.stdout
    assert stdin is not None and stdout is not None

    def ask(line: str | None = None) -> str:
        if line is not None:
            stdin.write(line + "\n")
            stdin.flush()
        answer = stdout.readline() if select.select([stdout], [], [], 30)[0] else ""
        if not answer:
            raise RuntimeError(f"{args!r} died or said nothing")
        return answer.split()[-1]

    try:
        yield ask
    finally:
        stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)


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


async def _drive(plan: Plan, servers: dict[str, Ask], upstream: Ask) -> dict[str, list[Window]]:
    results: dict[str, list[Window]] = {name: [] for name in servers}
    limits = httpx.Limits(max_connections=plan.concurrency)
    clients = {
        name: httpx.AsyncClient(base_url=f"http://127.0.0.1:{ask('port')}", limits=limits)
        for name, ask in servers.items()
    }
    names = list(servers)
    try:
        for number in range(plan.server_rounds):
            for name in names[number % 3 :] + names[: number % 3]:
                ask, client = servers[name], clients[name]
                # A long first warm-up mints the middleware's tokens outside the windows.
                await load(client, name, plan.server_warmup * (4 if number == 0 else 1), plan)
                calls, cpu = int(upstream("calls")), float(ask("cpu"))
                window = await load(client, name, plan.server_seconds, plan)
                window.server_cpu = float(ask("cpu")) - cpu
                window.upstream_calls = int(upstream("calls")) - calls
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
        url = upstream()
        servers = {name: stack.enter_context(child("app", name, url)) for name in VARIANTS}
        results = asyncio.run(_drive(plan, servers, upstream))
    figures = []
    for label, (name, windows) in zip(("(i)", "(ii)", "(iii)"), results.items(), strict=True):
        busy = statistics.median(x.server_cpu / x.seconds for x in windows)
        client = statistics.median(x.client_cpu / x.seconds for x in windows)
        figures.append(
            Figure(
                "3",
                f"{label} {name}: requests per second",
                statistics.median(x.rps for x in windows),
                "req/s",
                detail=f"server CPU {statistics.median(x.cpu for x in windows) * 1e3:.2f} ms "
                f"per request; p50 {statistics.median(x.p50 for x in windows) * 1e3:.1f} ms, "
                f"p99 {statistics.median(x.p99 for x in windows) * 1e3:.1f} ms; "
                f"busy: server {busy:.0%}, load generator {client:.0%}",
                rounds=[x.rps for x in windows],
            )
        )
    pairs = list(zip(results["bare"], results["wrapped"], results["recipe"], strict=True))
    rps = [w.rps / b.rps for b, w, _ in pairs]
    p50 = [w.p50 / b.p50 for b, w, _ in pairs]
    cpu = [w.cpu / b.cpu for b, w, _ in pairs]
    extra = [(r.p50 - w.p50) / plan.upstream_latency for _, w, r in pairs]
    recipe_calls = sum(r.upstream_calls for _, _, r in pairs)
    recipe_requests = sum(len(r.latencies) for _, _, r in pairs)
    median = statistics.median
    return [
        *figures,
        Figure("3", "(ii) / (i): requests per second", median(rps), "ratio", (">=", 0.9), "", rps),
        Figure("3", "(ii) / (i): p50 latency", median(p50), "ratio", ("<=", 1.1), "", p50),
        Figure("3", "(ii) / (i): server CPU time per request", median(cpu), "ratio", rounds=cpu),
        Figure(
            "3",
            "(iii) - (ii) p50, in upstream latencies",
            median(extra),
            "ratio",
            (">=", 1.0),
            f"recipe: {recipe_calls} upstream calls, {recipe_requests} requests in the windows",
            extra,
        ),
        Figure(
            "3",
            "(ii): upstream calls in the measured windows",
            sum(w.upstream_calls for _, w, _ in pairs),
            "count",
            ("==", 0),
            f"the {plan.server_users} users' tokens are minted in the first warm-up",
        ),
    ]


# -- the child processes --------------------------------------------------------------------


def _serve_app(variant: str, upstream: str) -> None:
    import uvicorn

    from .site import build_app, wrap

    app = build_app(upstream_url=upstream)
    asgi = wrap(app, api_base_url=upstream) if variant == "wrapped" else app
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(asgi, http="h11", access_log=False, log_level="warning")
    server = uvicorn.Server(config)

    def answer() -> None:
        for line in sys.stdin:  # "port" (once the server listens), then "cpu"
            while not server.started:
                time.sleep(0.01)
            port = sock.getsockname()[1]
            print(port if line.strip() == "port" else time.process_time(), flush=True)
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


if __name__ == "__main__":
    if sys.argv[1] == "app":
        _serve_app(*sys.argv[2:])
    else:
        _serve_upstream(float(sys.argv[2]))
