"""Cases 4 and 5: how often the middleware calls Returning.AI, and the shared Redis store.

Case 4 counts upstream calls through the in-process wrapped app: a burst of concurrent
first requests of one user (single flight: one call), and an hour of requests replayed
on a fake clock given to the middleware (``clock=``), with and without ``keep_warm``.

Case 5 starts its own redis-server (skipped, with the reason, without redis-server or
redis-py): 5a/5b time a page whose token comes from the local cache or from Redis, in
interleaved rounds with the bare app; 5c counts upstream calls when worker processes
each serve every user's first page at once, without and with the shared store.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import multiprocessing
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

import httpx

from rai_middleware import ReturningAIMiddleware
from rai_middleware._identity import resolve_identity
from rai_middleware.testing import FakeReturningAI

from .harness import Batch, Figure, Plan, interleave, us
from .site import USER, USER_HEADER, Client, build_app, wrap

TOKEN_LIFETIME, MIN_TOKEN_TTL = 900.0, 300.0  # a token is kept while 300 s remain
WINDOW = TOKEN_LIFETIME - MIN_TOKEN_TTL  # so one call per identity per 600 s at most
SIM_LATENCY = 0.005  # real seconds: tells a request that waited for a mint
SIM_START = 1_000.0
WARM_INTERVAL = 5.0  # the keep-warm check interval (rai_middleware._tokens._WARM_INTERVAL)
KEEP_WARM = 3600.0
SECRET_KEY = "benchmarks-shared-store-secret"  # keys identities in Redis: shared by all
_TOKEN = re.compile(rb'embed-token="([^"]+)"')


# -- case 4 ----------------------------------------------------------------------------------


async def _burst(plan: Plan) -> Figure:
    fake = FakeReturningAI(latency=plan.upstream_latency)
    async with fake.client() as http:
        app = wrap(build_app(), api_base_url=fake.base_url, http_client=http)
        client = Client(app, "/widget", user="burst-user")
        pages = await asyncio.gather(*(client.fetch() for _ in range(plan.burst)))
    assert all(b"embed-token=" in page.body for page in pages), "a page without its widget"
    return Figure(
        "4",
        f"burst of {plan.burst} first requests of one user: upstream calls",
        fake.calls,
        "count",
        ("==", 1),
        f"upstream latency {plan.upstream_latency * 1e3:.0f} ms",
    )


async def _hour(plan: Plan, keep_warm: float) -> list[Figure]:
    """``sim_requests`` requests of ``sim_users`` users at random moments of an hour
    (seeded), on the fake clock; with ``keep_warm``, the middleware's periodic check is
    replayed on the same clock. A request waited for a mint if a call was made while it
    was handled and it took the fake's latency."""
    rng = random.Random(2024)
    users = [f"user-{number:03d}" for number in range(plan.sim_users)]
    picks = users + [rng.choice(users) for _ in range(plan.sim_requests - len(users))]
    schedule = sorted((rng.uniform(0, 3600), user) for user in picks)
    now = [SIM_START]
    fake = FakeReturningAI(token_lifetime=TOKEN_LIFETIME, latency=SIM_LATENCY)
    waited, next_check = 0, SIM_START + WARM_INTERVAL
    async with fake.client() as http:
        app = wrap(
            build_app(),
            api_base_url=fake.base_url,
            http_client=http,
            clock=lambda: now[0],
            keep_warm=keep_warm,
        )
        for at, user in schedule:
            while keep_warm and next_check < SIM_START + at:
                now[0] = next_check
                if app.tokens.refresh_due():  # let those mints land at this moment
                    while app.tokens.policy.in_flight():
                        await asyncio.sleep(SIM_LATENCY)
                next_check += WARM_INTERVAL
            now[0] = SIM_START + at
            before, started = fake.calls, time.perf_counter()
            response = await Client(app, "/widget", user=user).fetch()
            assert b"embed-token=" in response.body, "a request got no widget"
            waited += fake.calls > before and time.perf_counter() - started >= SIM_LATENCY
        await asyncio.sleep(SIM_LATENCY * 4)  # let background refreshes land
    # An ideal cache: mint only when the identity has no token or it is WINDOW old.
    minted: dict[str, float] = {}
    ideal = 0
    for at, user in schedule:
        if at - minted.get(user, -math.inf) >= WINDOW:
            minted[user], ideal = at, ideal + 1
    bound = len(users) * math.ceil(3600 / WINDOW)
    name = f"hour, {plan.sim_requests} requests of {len(users)} users" + (
        f", keep_warm={keep_warm:g} s" if keep_warm else ""
    )
    return [
        Figure(
            "4",
            f"{name}: upstream calls",
            fake.calls,
            "count",
            ("<=", bound),
            f"bound: users x 6 windows of 10 min; an ideal cache: {ideal}",
        ),
        Figure(
            "4",
            f"{name}: requests that waited for a mint",
            waited,
            "count",
            ("<=", len(users)) if keep_warm else None,
            "each user's first page must" + (", no other" if keep_warm else ""),
        ),
    ]


async def case4(plan: Plan) -> list[Figure]:
    return [await _burst(plan), *await _hour(plan, 0.0), *await _hour(plan, KEEP_WARM)]


# -- case 5 ----------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of our own on a free 127.0.0.1 port, no persistence; its URL."""
    import redis

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    process = subprocess.Popen([*command, "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        with redis.Redis(port=port) as client:
            for _ in range(500):
                with contextlib.suppress(redis.exceptions.ConnectionError):
                    if int(client.info("server")["process_id"]) == process.pid:  # ours
                        break
                time.sleep(0.02)
            else:
                raise RuntimeError(f"redis-server did not start on port {port}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(5)


def _gets(url: str) -> int:
    import redis

    with redis.Redis.from_url(url) as client:
        stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def _hits(plan: Plan, url: str) -> list[Figure]:
    from rai_middleware.redis import RedisTokenStore

    fake = FakeReturningAI()
    bare = build_app()
    async with fake.client() as http:
        local = wrap(bare, api_base_url=fake.base_url, http_client=http)
        store = RedisTokenStore(url, prefix="bench:hits:")
        shared = wrap(
            bare,
            api_base_url=fake.base_url,
            http_client=http,
            token_store=store,
            secret_key=SECRET_KEY,
        )
        try:
            for app in (local, shared):  # one mint each; shared's token goes to Redis
                assert b"embed-token=" in (await Client(app, "/widget").fetch()).body
            minted = fake.calls
            scope = {"type": "http", "headers": [(USER_HEADER, USER.encode())]}
            identity = await resolve_identity(shared.identify, scope, shared.core.identity_secret)
            assert identity is not None
            from_redis, requests = Client(shared, "/widget"), 0

            async def redis_hit(n: int) -> None:
                nonlocal requests
                for _ in range(n):
                    shared.tokens.forget(identity)  # cold local cache: the token is in Redis
                    await from_redis.batch(1)
                requests += n

            subjects: dict[str, Batch] = {
                "bare": Client(bare, "/widget").batch,
                "local": Client(local, "/widget").batch,
                "redis": redis_hit,
            }
            gets = _gets(url)
            samples = await interleave(subjects, rounds=plan.rounds, seconds=plan.batch_seconds)
            gets = _gets(url) - gets
            assert fake.calls == minted, "a timed request called upstream"
            assert gets >= requests, f"{requests} Redis-hit requests, only {gets} GETs"
        finally:
            await shared.tokens.aclose()  # closes the store's connections too
            await local.tokens.aclose()
    redis_extra = [x * 1e6 for x in samples.differences("redis", "local")]
    return [
        Figure(
            "5a",
            "widget page, token in the local cache: wrapped / bare",
            samples.ratio("local", "bare"),
            "ratio",
            detail=f"bare {us(samples.median('bare'))}, +{us(samples.difference('local', 'bare'))}",
            rounds=samples.ratios("local", "bare"),
        ),
        Figure(
            "5b",
            "same, token from Redis (local cache cold): µs more than 5a",
            samples.difference("redis", "local") * 1e6,
            "µs",
            detail=f"wrapped / bare {samples.ratio('redis', 'bare'):.2f}; "
            f"{requests} requests read Redis ({gets} GETs), none called upstream",
            rounds=redis_extra,
        ),
    ]


def _worker(
    upstream: str, redis_url: str | None, users: list[str], barrier: Barrier, out: Queue[Any]
) -> None:
    """A worker process: built before its loop starts (a server's startup), then every
    user's first page at once, after the common barrier."""

    async def serve(app: ReturningAIMiddleware, http: httpx.AsyncClient) -> list[Any]:
        try:
            pages = await asyncio.gather(*(Client(app, "/widget", user=u).fetch() for u in users))
        finally:
            await app.tokens.aclose()
            await http.aclose()
        tokens = [_TOKEN.search(page.body) for page in pages]
        return [(user, token and token.group(1)) for user, token in zip(users, tokens, strict=True)]

    try:
        store = None
        if redis_url is not None:
            from rai_middleware.redis import RedisTokenStore

            store = RedisTokenStore(redis_url, prefix="bench:procs:")
        http = httpx.AsyncClient(limits=httpx.Limits(max_connections=100))
        app = wrap(
            build_app(),
            api_base_url=upstream,
            http_client=http,
            token_store=store,
            secret_key=SECRET_KEY,
        )
        barrier.wait(60)
        out.put(("ok", asyncio.run(serve(app, http))))
    except BaseException as exc:
        barrier.abort()  # the others must not wait for this one
        out.put(("error", repr(exc)))


def _processes(plan: Plan, fake: FakeReturningAI, upstream: str, redis_url: str | None) -> Figure:
    context = multiprocessing.get_context("spawn")
    users = [f"user-{number:03d}" for number in range(plan.store_users)]
    barrier, out = context.Barrier(plan.store_processes), context.Queue()
    args = (upstream, redis_url, users, barrier, out)
    processes = [context.Process(target=_worker, args=args) for _ in range(plan.store_processes)]
    before = fake.calls
    tokens: dict[str, set[bytes]] = {}
    try:
        for process in processes:
            process.start()
        for _ in processes:
            status, pages = out.get(timeout=60)
            if status != "ok":
                raise RuntimeError(f"a worker process failed: {pages}")
            for user, token in pages:
                assert token, f"{user}'s page came back without a widget token"
                tokens.setdefault(user, set()).add(token)
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
    calls = fake.calls - before
    count, size = plan.store_processes, plan.store_users
    distinct = sum(len(found) for found in tokens.values())
    store = "no shared store" if redis_url is None else "shared Redis store"
    return Figure(
        "5c",
        f"{count} processes x {size} users, {store}: upstream calls",
        calls,
        "count",
        None if redis_url is None else ("==", size),
        f"{distinct} distinct tokens for {size} users",
    )


def case5(plan: Plan) -> list[Figure]:
    reason = None
    if importlib.util.find_spec("redis") is None:
        reason = "redis-py is not installed (pip install 'rai-middleware[redis]')"
    elif shutil.which("redis-server") is None:
        reason = "redis-server is not installed (Debian: apt-get install redis-server)"
    if reason is not None:
        return [
            Figure("5", "shared token store on Redis", math.nan, "", None, reason, skipped=True)
        ]
    with redis_server() as url:
        figures = asyncio.run(_hits(plan, url))
        fake = FakeReturningAI(latency=plan.upstream_latency)
        with fake.run_in_thread() as upstream:
            figures.append(_processes(plan, fake, upstream, None))
            figures.append(_processes(plan, fake, upstream, url))
    return figures
