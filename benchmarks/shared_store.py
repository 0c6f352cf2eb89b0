"""Case 5: the shared token store on Redis (``rai_middleware.redis.RedisTokenStore``).

The case starts a redis-server of its own on a free 127.0.0.1 port (no persistence) and
stops it at its end. Without redis-server or redis-py, its figures are reported as
skipped, with the reason, and the rest of the run goes on.

* 5a, 5b: the time per request of the small widget page (one placeholder), in-process as
  in case 1, in interleaved rounds: the bare app; the app behind the middleware with its
  default in-process cache, token cached (an in-process hit); and the app behind a
  middleware with ``token_store=RedisTokenStore(url)`` whose local cache loses the
  visitor's token before each request (``tokens.forget``), so that every request finds it
  in Redis (a Redis hit: one GET on loopback, and the token adopted into the local cache).
  The case checks that every timed Redis-hit request read Redis and that none called
  upstream. For information only: absolute times depend on the machine.
* 5c: upstream calls when ``store_processes`` separate processes (multiprocessing spawn,
  as a server's workers) each serve the first page of every one of ``store_users`` users
  at once, after a common barrier, against the fake Returning.AI served over HTTP by this
  process with 30 ms latency. Without the store each process mints its own token per user
  (processes x users calls); with it, one process mints each user's token and the others
  take it from Redis: the target is one call per user.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import multiprocessing
import queue
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import httpx

from rai_middleware import ReturningAIMiddleware
from rai_middleware._identity import resolve_identity
from rai_middleware._store import STORE_POLL
from rai_middleware.testing import FakeReturningAI

from .apps import USER_HEADER, build_app, wrap
from .inprocess import USER, Client
from .plan import Plan
from .report import SHARED_STORE, Figure, Target
from .timing import Batch, Samples, interleave

__all__ = ["measure", "missing", "redis_server"]

#: Every middleware of the case has this secret key: it keys the identities in Redis, so
#: instances (and processes) that share the store must share it.
SECRET_KEY = "benchmarks-shared-store-secret"
#: Key prefix in Redis (the server is the case's own, this only makes the keys readable).
PREFIX = "bench:"
#: Seconds a worker process may take to start, serve its pages and report.
WORKER_TIMEOUT = 60.0
_TOKEN = re.compile(rb'embed-token="([^"]+)"')

LOCAL_HIT = "widget page, in-process hit (token in the local cache): wrapped / bare"
REDIS_HIT = "widget page, Redis hit (local cache cold): wrapped / bare"
REDIS_EXTRA = "Redis hit - in-process hit: µs added per request"


def _calls_name(plan: Plan, *, store: bool) -> str:
    variant = "shared Redis store" if store else "no shared store"
    return f"{plan.store_processes} processes x {plan.store_users} users, {variant}: upstream calls"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} µs"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms"


# -- redis-server ---------------------------------------------------------------------------


def missing() -> str | None:
    """Why the case cannot run here, or None."""
    if importlib.util.find_spec("redis") is None:
        return "redis-py is not installed (pip install 'rai-middleware[redis]')"
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    return None


@dataclass(frozen=True)
class RedisServer:
    url: str
    version: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[RedisServer]:
    """A redis-server on a free 127.0.0.1 port, without persistence, stopped on exit."""
    import redis

    port = _free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=timeout)
            try:
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        info = client.info("server")
                        # Ours, not another server that took the port meanwhile.
                        if int(info["process_id"]) == process.pid:
                            version = str(info["redis_version"])
                            break
                    except redis.exceptions.ConnectionError:
                        pass
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        output = log.read().decode(errors="replace")[-1000:]
                        raise RuntimeError(f"redis-server did not start on port {port}:\n{output}")
                    time.sleep(0.02)
            finally:
                client.close()
            yield RedisServer(url=f"redis://127.0.0.1:{port}/0", version=version)
        finally:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _get_calls(url: str) -> int:
    """GET commands the server has run so far."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


# -- 5a, 5b: time per request ----------------------------------------------------------------


@dataclass
class Hits:
    samples: Samples
    redis_requests: int  # timed (and calibration) requests whose token came from Redis
    redis_gets: int  # GETs Redis answered meanwhile


async def _hits(plan: Plan, redis_url: str) -> Hits:
    from rai_middleware.redis import RedisTokenStore

    fake = FakeReturningAI()
    bare = build_app()
    async with fake.client() as http:
        local = wrap(bare, api_base_url=FakeReturningAI.base_url, http_client=http)
        shared = wrap(
            bare,
            api_base_url=FakeReturningAI.base_url,
            http_client=http,
            token_store=RedisTokenStore(redis_url, prefix=PREFIX + "hits:"),
            secret_key=SECRET_KEY,
        )
        try:
            for app in (local, shared):  # one mint each; shared's token goes to Redis
                assert b"embed-token=" in (await Client(app, "/widget").fetch()).body
            minted = fake.calls
            identity = await resolve_identity(
                shared.identify,
                {"type": "http", "headers": [(USER_HEADER, USER.encode())]},
                shared.core.identity_secret,
            )
            assert identity is not None
            forget = shared.tokens.forget
            from_redis = Client(shared, "/widget")
            requests = 0

            async def redis_hit(n: int) -> None:
                nonlocal requests
                for _ in range(n):
                    forget(identity)  # the local cache is cold: the token comes from Redis
                    await from_redis.batch(1)
                requests += n

            subjects: dict[str, Batch] = {
                "bare": Client(bare, "/widget").batch,
                "local": Client(local, "/widget").batch,
                "store, local hit": Client(shared, "/widget").batch,
                "redis": redis_hit,
            }
            gets_before = _get_calls(redis_url)
            samples = await interleave(
                subjects, rounds=plan.rounds, seconds_per_batch=plan.batch_seconds
            )
            gets = _get_calls(redis_url) - gets_before
            assert fake.calls == minted, "a timed request called upstream"
            assert gets >= requests, f"{requests} Redis-hit requests, only {gets} GETs"
            forget(identity)
            page = await from_redis.fetch()
            assert page.status == 200 and b"embed-token=" in page.body, "no widget from Redis"
        finally:
            await shared.tokens.aclose()  # closes the store's connections too
            await local.tokens.aclose()
    return Hits(samples=samples, redis_requests=requests, redis_gets=gets)


def _hit_figures(hits: Hits, version: str) -> list[Figure]:
    samples = hits.samples
    local_added = samples.difference("local", "bare")
    redis_added = samples.difference("redis", "bare")
    extra = [
        round((redis - local) * 1e6, 2)
        for redis, local in zip(samples.per_call["redis"], samples.per_call["local"], strict=True)
    ]
    return [
        Figure(
            "5a",
            LOCAL_HIT,
            samples.ratio("local", "bare"),
            "ratio",
            SHARED_STORE,
            detail=f"bare {_us(samples.median('bare'))}, wrapped "
            f"{_us(samples.median('local'))}, +{_us(local_added)}; with the Redis store "
            f"configured, a local hit: +{_us(samples.difference('store, local hit', 'bare'))}",
            extra={
                "per round": samples.ratios("local", "bare"),
                "store, local hit / bare per round": samples.ratios("store, local hit", "bare"),
            },
        ),
        Figure(
            "5b",
            REDIS_HIT,
            samples.ratio("redis", "bare"),
            "ratio",
            SHARED_STORE,
            detail=f"wrapped {_us(samples.median('redis'))}, +{_us(redis_added)}; "
            f"{hits.redis_requests} requests read Redis ({hits.redis_gets} GETs), "
            "none called upstream",
            extra={"per round": samples.ratios("redis", "bare")},
        ),
        Figure(
            "5b",
            REDIS_EXTRA,
            samples.difference("redis", "local") * 1e6,
            "µs",
            SHARED_STORE,
            detail=f"redis-server {version} on loopback: one GET, and the token adopted "
            "into the local cache (median of per-round differences)",
            extra={"per round": extra},
        ),
    ]


# -- 5c: upstream calls from separate processes ---------------------------------------------


@dataclass(frozen=True)
class Page:
    user: str
    token: str
    seconds: float


async def _first_page(app: ReturningAIMiddleware, user: str) -> Page:
    started = time.perf_counter()
    response = await Client(app, "/widget", user=user).fetch()
    seconds = time.perf_counter() - started
    match = _TOKEN.search(response.body)
    if response.status != 200 or match is None:
        raise RuntimeError(f"{user}'s page came back without a widget token")
    return Page(user, match.group(1).decode(), seconds)


def _site(upstream_url: str, redis_url: str | None) -> ReturningAIMiddleware:
    """A worker's app behind the middleware, built before its event loop starts (as a
    server's startup would), so that the timed part only serves pages."""
    store = None
    if redis_url is not None:
        from rai_middleware.redis import RedisTokenStore

        store = RedisTokenStore(redis_url, prefix=PREFIX + "procs:")
    return wrap(
        build_app(),
        api_base_url=upstream_url,
        # The middleware's own client would do, but it is created on the event loop; the
        # middleware bounds each mint with its ``timeout`` whatever the client's default.
        http_client=httpx.AsyncClient(
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20)
        ),
        token_store=store,
        secret_key=SECRET_KEY,
    )


async def _serve(app: ReturningAIMiddleware, users: list[str]) -> list[Page]:
    try:
        return list(await asyncio.gather(*(_first_page(app, user) for user in users)))
    finally:
        await app.tokens.aclose()  # closes the store's connections
        if app.tokens.http_client is not None:
            await app.tokens.http_client.aclose()


def _worker(
    upstream_url: str,
    redis_url: str | None,
    users: list[str],
    barrier: Barrier,
    out: Queue[tuple[str, Any]],
) -> None:
    """One worker process: every user's first page at once, after the common start."""
    try:
        app = _site(upstream_url, redis_url)
        barrier.wait(WORKER_TIMEOUT)
        pages = asyncio.run(_serve(app, users))
    except BaseException as exc:
        barrier.abort()  # the others must not wait for this one
        out.put(("error", f"{type(exc).__name__}: {exc}"))
        raise
    out.put(("ok", pages))


@dataclass
class Run:
    calls: int
    pages: list[Page]

    def tokens(self) -> dict[str, set[str]]:
        """The distinct tokens each user was given, over every process."""
        found: dict[str, set[str]] = {}
        for page in self.pages:
            found.setdefault(page.user, set()).add(page.token)
        return found

    def latencies(self) -> str:
        seconds = [page.seconds for page in self.pages]
        return f"first pages p50 {_ms(statistics.median(seconds))}, slowest {_ms(max(seconds))}"


def _run_processes(
    plan: Plan, fake: FakeReturningAI, upstream_url: str, redis_url: str | None
) -> Run:
    context = multiprocessing.get_context("spawn")
    users = [f"user-{number:03d}" for number in range(plan.store_users)]
    barrier = context.Barrier(plan.store_processes)
    out: Queue[tuple[str, Any]] = context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(upstream_url, redis_url, users, barrier, out),
            name=f"bench-worker-{number}",
        )
        for number in range(plan.store_processes)
    ]
    before = fake.calls
    pages: list[Page] = []
    try:
        for process in processes:
            process.start()
        for _ in processes:
            try:
                status, payload = out.get(timeout=WORKER_TIMEOUT)
            except queue.Empty:
                raise RuntimeError(
                    f"a worker process said nothing in {WORKER_TIMEOUT:g} s"
                ) from None
            if status != "ok":
                raise RuntimeError(f"a worker process failed: {payload}")
            pages += payload
        for process in processes:
            process.join(WORKER_TIMEOUT)
            if process.exitcode != 0:
                raise RuntimeError(f"{process.name} exited with status {process.exitcode}")
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
        out.close()
    return Run(calls=fake.calls - before, pages=pages)


def _process_figures(plan: Plan, alone: Run, shared: Run, latency: float) -> list[Figure]:
    count, users = plan.store_processes, plan.store_users
    alone_tokens = alone.tokens()
    shared_tokens = shared.tokens()
    assert len(alone.pages) == len(shared.pages) == count * users, "pages missing"
    several = sum(len(tokens) > 1 for tokens in shared_tokens.values())
    sharing = (
        f"one token per user in all {count} processes"
        if several == 0
        else f"{several} of {users} users got different tokens in different processes"
    )
    return [
        Figure(
            "5c",
            _calls_name(plan, store=False),
            alone.calls,
            "count",
            SHARED_STORE,
            detail=f"expected {count} x {users} = {count * users}: each process mints its own "
            f"(users with {count} different tokens: "
            f"{sum(len(tokens) == count for tokens in alone_tokens.values())}); "
            f"{alone.latencies()} (upstream latency {_ms(latency)})",
        ),
        Figure(
            "5c",
            _calls_name(plan, store=True),
            shared.calls,
            "count",
            SHARED_STORE,
            Target("==", users),
            detail=f"{sharing}; {shared.latencies()} (a process that finds another minting "
            f"looks in Redis every {_ms(STORE_POLL)})",
        ),
    ]


# -- the case ---------------------------------------------------------------------------------


def _skipped(plan: Plan, reason: str) -> list[Figure]:
    detail = f"skipped: {reason}"
    nan = math.nan
    return [
        Figure("5a", LOCAL_HIT, nan, "ratio", SHARED_STORE, detail=detail, skipped=True),
        Figure("5b", REDIS_HIT, nan, "ratio", SHARED_STORE, detail=detail, skipped=True),
        Figure("5b", REDIS_EXTRA, nan, "µs", SHARED_STORE, detail=detail, skipped=True),
        Figure(
            "5c",
            _calls_name(plan, store=False),
            nan,
            "count",
            SHARED_STORE,
            detail=detail,
            skipped=True,
        ),
        Figure(
            "5c",
            _calls_name(plan, store=True),
            nan,
            "count",
            SHARED_STORE,
            Target("==", plan.store_users),
            detail=detail,
            skipped=True,
        ),
    ]


def measure(plan: Plan) -> list[Figure]:
    reason = missing()
    if reason is not None:
        return _skipped(plan, reason)
    with redis_server() as server:
        figures = _hit_figures(asyncio.run(_hits(plan, server.url)), server.version)
        fake = FakeReturningAI(latency=plan.upstream_latency)
        with fake.run_in_thread() as upstream_url:
            alone = _run_processes(plan, fake, upstream_url, None)
            shared = _run_processes(plan, fake, upstream_url, server.url)
    return figures + _process_figures(plan, alone, shared, plan.upstream_latency)
