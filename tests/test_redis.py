"""The shared token store on a real Redis (started here on a free 127.0.0.1 port)."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rai_middleware import ConfigurationError, ReturningAIMiddleware
from rai_middleware._store import StoredToken
from rai_middleware.testing import FakeReturningAI
from tests.conftest import body_of, call_asgi, free_port, html_app, http_scope
from tests.services import require

redis = pytest.importorskip("redis", reason="pip install -e '.[dev]' to run the Redis tests")

pytestmark = pytest.mark.server

PAGE = b'<rai-placeholder widget="store">fallback</rai-placeholder>'


class RedisServer:
    def __init__(self, program: str) -> None:
        self.program = program
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.program,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def sync_client(self) -> Any:
        return redis.Redis(host="127.0.0.1", port=self.port)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(require("redis-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    if redis_server.process is None:
        redis_server.start()
    client = redis_server.sync_client()
    client.flushall()
    client.close()
    yield redis_server


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[tuple[FakeReturningAI, str]]:
    fake = FakeReturningAI()
    with fake.run_in_thread() as url:
        yield fake, url


@pytest.fixture
def upstream(fake_upstream: tuple[FakeReturningAI, str]) -> tuple[FakeReturningAI, str]:
    fake, url = fake_upstream
    fake.reset()
    fake.token_lifetime = 900
    return fake, url


def site(api_base_url: str, redis_url: str, **options: Any) -> ReturningAIMiddleware:
    from rai_middleware.redis import RedisTokenStore

    options.setdefault("identify", lambda scope: {"data-customer-id": scope["path"].strip("/")})
    return ReturningAIMiddleware(
        html_app(PAGE),
        community_id="c",
        access_id="demo-access-id",
        access_key="demo-access-key",
        secret_key="shared-secret-for-every-process",
        api_base_url=api_base_url,
        token_store=RedisTokenStore(redis_url, prefix="test:"),
        **options,
    )


def _worker(api_base_url: str, redis_url: str, users: list[str], barrier: Any, out: Any) -> None:
    """One 'worker process': serves each user's page concurrently, after a common start."""

    async def main() -> list[bytes]:
        # A generous timeout: on a loaded machine a waiting process must not give up on the
        # winner's token and mint a second one (that fallback has its own test).
        middleware = site(api_base_url, redis_url, timeout=10)
        barrier.wait()
        try:
            results = await asyncio.gather(
                *(call_asgi(middleware, http_scope(f"/{user}")) for user in users)
            )
            return [body_of(messages) for messages in results]
        finally:
            await middleware.tokens.aclose()

    out.put([body.decode() for body in asyncio.run(main())])


def _run_processes(count: int, url: str, redis_url: str, users: list[str]) -> list[list[str]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(count)
    out = context.Queue()
    processes = [
        context.Process(target=_worker, args=(url, redis_url, users, barrier, out))
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    results = [out.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    return results


@pytest.mark.parametrize("count", [2, 4])
def test_separate_processes_mint_once_per_user(
    fresh_redis: RedisServer, upstream: tuple[FakeReturningAI, str], count: int
) -> None:
    fake, url = upstream
    results = _run_processes(count, url, fresh_redis.url, ["alice", "bob", "carol"])
    assert fake.calls == 3
    tokens: dict[str, set[str]] = {}
    for bodies in results:
        for user, body in zip(["alice", "bob", "carol"], bodies, strict=True):
            token = body.split('embed-token="')[1].split('"')[0]
            assert fake.decode(token)["data-customer-id"] == user
            tokens.setdefault(user, set()).add(token)
    assert all(len(shared) == 1 for shared in tokens.values())  # one token per user


def test_redis_holds_no_identifier_and_expires_entries(
    fresh_redis: RedisServer, upstream: tuple[FakeReturningAI, str]
) -> None:
    _, url = upstream
    middleware = site(
        url, fresh_redis.url, identify=lambda s: {"data-email": "secret.person@example.com"}
    )
    asyncio.run(_page_then_close(middleware))
    client = fresh_redis.sync_client()
    try:
        keys = client.keys("*")
        assert len(keys) == 1 and keys[0].startswith(b"test:tok:")
        value = client.get(keys[0])
        ttl = client.pttl(keys[0])
    finally:
        client.close()
    assert b"secret.person" not in keys[0] and b"secret.person" not in value
    assert 800_000 < ttl <= 900_000
    assert set(json.loads(value)) == {"t", "exp", "m"}  # token, expiry, seal


async def _page_then_close(middleware: ReturningAIMiddleware, path: str = "/") -> bytes:
    try:
        return body_of(await call_asgi(middleware, http_scope(path)))
    finally:
        await middleware.tokens.aclose()


def test_a_second_process_reuses_the_stored_token_then_remints_after_expiry(
    fresh_redis: RedisServer, upstream: tuple[FakeReturningAI, str]
) -> None:
    fake, url = upstream
    fake.token_lifetime = 3
    first = asyncio.run(_page_then_close(site(url, fresh_redis.url, min_token_ttl=1), "/u"))
    second = asyncio.run(_page_then_close(site(url, fresh_redis.url, min_token_ttl=1), "/u"))
    assert fake.calls == 1
    assert first == second
    time.sleep(2.2)  # now less than min_token_ttl is left
    third = asyncio.run(_page_then_close(site(url, fresh_redis.url, min_token_ttl=1), "/u"))
    assert fake.calls == 2
    assert third != first and b"embed-token" in third


def test_malformed_value_is_ignored_and_overwritten(
    fresh_redis: RedisServer, upstream: tuple[FakeReturningAI, str]
) -> None:
    fake, url = upstream
    middleware = site(url, fresh_redis.url)
    key = "test:tok:" + _identity_key(middleware, "mallory")
    client = fresh_redis.sync_client()
    try:
        for garbage in (b"not json", b'{"t": 5}', b"[1]", b'{"t": "x y", "exp": 1e99}'):
            client.set(key, garbage)
            body = asyncio.run(_page_then_close(site(url, fresh_redis.url), "/mallory"))
            assert b"embed-token" in body
            assert json.loads(client.get(key))["t"] in body.decode()
    finally:
        client.close()
    assert fake.calls == 4


def test_redis_down_pages_still_served_with_one_warning(
    fresh_redis: RedisServer,
    upstream: tuple[FakeReturningAI, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, url = upstream
    middleware = site(url, fresh_redis.url)
    fresh_redis.stop()

    async def pages() -> list[bytes]:
        try:
            return [body_of(await call_asgi(middleware, http_scope(f"/user{n}"))) for n in range(5)]
        finally:
            await middleware.tokens.aclose()

    started = time.monotonic()
    with caplog.at_level("WARNING", logger="rai_middleware"):
        bodies = asyncio.run(pages())
    assert all(b"embed-token" in body for body in bodies)
    assert fake.calls == 5
    assert sum("shared token store failed" in r.getMessage() for r in caplog.records) == 1
    assert time.monotonic() - started < 3


def test_lock_of_a_dead_owner_is_taken_over(
    fresh_redis: RedisServer, upstream: tuple[FakeReturningAI, str]
) -> None:
    fake, url = upstream
    middleware = site(url, fresh_redis.url, timeout=1.0)
    client = fresh_redis.sync_client()
    try:  # a process took the lock and died: its lease is 300 ms
        client.set("test:lock:" + _identity_key(middleware, "zoe"), "dead-owner", px=300)
    finally:
        client.close()
    started = time.monotonic()
    body = asyncio.run(_page_then_close(middleware, "/zoe"))
    assert b"embed-token" in body
    assert fake.calls == 1
    assert time.monotonic() - started < 2.0


def test_store_lock_is_released_only_by_its_owner(fresh_redis: RedisServer) -> None:
    from rai_middleware.redis import RedisTokenStore

    async def scenario() -> None:
        store = RedisTokenStore(fresh_redis.url)
        try:
            owner = await store.acquire("k", 5)
            assert owner is not None
            assert await store.acquire("k", 5) is None
            await store.release("k", "someone-else")
            assert await store.acquire("k", 5) is None
            await store.release("k", owner)
            assert await store.acquire("k", 5) is not None
            await store.save("t", StoredToken("tok", time.time() - 1))  # already expired
            assert await store.load("t") is None
        finally:
            await store.aclose()

    asyncio.run(scenario())
    assert "redis://" not in repr(RedisTokenStore(fresh_redis.url))


def test_token_store_option_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="token_store"):
        ReturningAIMiddleware(
            html_app(PAGE),
            community_id="c",
            access_id="i",
            access_key="k",
            token_store=object(),  # type: ignore[arg-type]
        )


def _identity_key(middleware: ReturningAIMiddleware, user: str) -> str:
    from rai_middleware._identity import Identity

    # The middleware's own key: identity hashes are scoped to its mode and community.
    return Identity.create({"data-customer-id": user}, middleware.core.identity_secret).key


def _wsgi_site(api_base_url: str, redis_url: str, **options: Any) -> Any:
    from rai_middleware import ReturningAIWSGIMiddleware
    from rai_middleware.redis import SyncRedisTokenStore
    from tests.test_wsgi import wsgi_page

    options.setdefault(
        "identify", lambda environ: {"data-customer-id": environ["PATH_INFO"].strip("/")}
    )
    return ReturningAIWSGIMiddleware(
        wsgi_page(PAGE),
        community_id="c",
        access_id="demo-access-id",
        access_key="demo-access-key",
        secret_key="shared-secret-for-every-process",
        api_base_url=api_base_url,
        token_store=SyncRedisTokenStore(redis_url, prefix="test:"),
        **options,
    )


def test_wsgi_instances_share_one_mint_per_user(
    fresh_redis: RedisServer, upstream: tuple[FakeReturningAI, str]
) -> None:
    import threading

    from tests.test_wsgi import call

    fake, url = upstream
    # Four "processes"; a generous timeout, so that a loaded machine cannot make a waiting
    # process give up on the winner and mint a second token (that fallback is tested below).
    sites = [_wsgi_site(url, fresh_redis.url, timeout=10) for _ in range(4)]
    barrier = threading.Barrier(12)
    bodies: dict[str, set[bytes]] = {}
    lock = threading.Lock()

    def serve(site: Any, user: str) -> None:
        barrier.wait()
        body = call(site, f"/{user}")[2]
        # The token only: each site signs its own refresh ticket, stamped to the second.
        token = body.split(b'embed-token="')[1].split(b'"')[0] if b"embed-token" in body else body
        with lock:
            bodies.setdefault(user, set()).add(token)

    threads = [
        threading.Thread(target=serve, args=(site, user))
        for site in sites[:4]
        for user in ("ann", "ben", "cat")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for site in sites:
        site.close()
    assert fake.calls == 3
    assert {user: len(found) for user, found in bodies.items()} == {"ann": 1, "ben": 1, "cat": 1}
    for user, found in bodies.items():  # a real token (not a fallback page), the user's own
        assert fake.decode(next(iter(found)).decode())["data-customer-id"] == user


def test_wsgi_redis_down_pages_still_served(
    fresh_redis: RedisServer,
    upstream: tuple[FakeReturningAI, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.test_wsgi import call

    fake, url = upstream
    site = _wsgi_site(url, fresh_redis.url)
    fresh_redis.stop()
    with caplog.at_level("WARNING", logger="rai_middleware"):
        bodies = [call(site, f"/u{n}")[2] for n in range(3)]
    site.close()
    assert all(b"embed-token" in body for body in bodies)
    assert fake.calls == 3
    assert sum("shared token store failed" in r.getMessage() for r in caplog.records) == 1


# -- store values bound to their key (issue 12, item 6) ---------------------------------


def _token_in(body: bytes) -> str:
    return body.split(b'embed-token="')[1].split(b'"')[0].decode()


@pytest.mark.parametrize("entrance", ["asgi", "wsgi"])
def test_a_value_copied_under_another_key_gives_that_visitor_no_token(
    fresh_redis: RedisServer,
    upstream: tuple[FakeReturningAI, str],
    caplog: pytest.LogCaptureFixture,
    entrance: str,
) -> None:
    from tests.test_wsgi import call

    fake, url = upstream

    def page(user: str) -> bytes:
        if entrance == "asgi":
            return asyncio.run(_page_then_close(site(url, fresh_redis.url), f"/{user}"))
        wsgi = _wsgi_site(url, fresh_redis.url)
        try:
            return call(wsgi, f"/{user}")[2]
        finally:
            wsgi.close()

    alice = _token_in(page("alice"))
    client = fresh_redis.sync_client()
    try:
        reader = site(url, fresh_redis.url)  # the processes' configuration, for their keys
        keys = {u: _identity_key(reader, u) for u in ("alice", "bob")}
        client.set("test:tok:" + keys["bob"], client.get("test:tok:" + keys["alice"]), px=60_000)
    finally:
        client.close()
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        bob = _token_in(page("bob"))
    assert bob != alice
    assert fake.decode(bob)["data-customer-id"] == "bob"  # he minted his own
    assert fake.calls == 2
    assert "not sealed for its key" in caplog.text


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[" * 10_000 + b"]" * 10_000, "over 8 KiB"),
        (b"[" * 3_000 + b"]" * 3_000, "nested"),
        (b'{"t": {"t": {"t": "x"}}, "exp": 1}', "nested"),
        (b'{"t": "' + b"a" * 9000 + b'", "exp": 1, "m": ""}', "over 8 KiB"),
        (b'{"t": "tok", "exp": "soon", "m": ""}', "not a token"),
    ],
)
def test_a_value_of_the_wrong_shape_size_or_depth_is_ignored_and_logged_once(
    fresh_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    value: bytes,
    reason: str,
) -> None:
    from rai_middleware.redis import RedisTokenStore, SyncRedisTokenStore

    client = fresh_redis.sync_client()
    try:
        client.set("rai:tok:k", value)
    finally:
        client.close()
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        if kind == "async":

            async def loads() -> list[Any]:
                store = RedisTokenStore(fresh_redis.url)
                try:
                    return [await store.load("k") for _ in range(5)]
                finally:
                    await store.aclose()

            found = asyncio.run(loads())
        else:
            store = SyncRedisTokenStore(fresh_redis.url)
            found = [store.load("k") for _ in range(5)]
            store.close()
    assert found == [None] * 5  # ignored, never raised (before: RecursionError each time)
    said = [r.getMessage() for r in caplog.records if "token value in Redis" in r.getMessage()]
    assert len(said) == 1 and reason in said[0]


def test_a_deeply_nested_value_costs_its_visitor_nothing(
    fresh_redis: RedisServer, upstream: tuple[FakeReturningAI, str]
) -> None:
    fake, url = upstream
    middleware = site(url, fresh_redis.url)
    client = fresh_redis.sync_client()
    try:
        client.set("test:tok:" + _identity_key(middleware, "deep"), b"[" * 10_000 + b"]" * 10_000)
    finally:
        client.close()
    body = asyncio.run(_page_then_close(middleware, "/deep"))
    assert fake.decode(_token_in(body))["data-customer-id"] == "deep"


# -- one deadline with a slow Redis (issue 12, item 4) -----------------------------------


def _kind(command: str, options: dict[str, Any]) -> str:
    """load (GET), lock (SET NX), save (SET), release (EVAL)."""
    if command == "set":
        return "lock" if options.get("nx") else "save"
    return {"get": "load", "eval": "release"}.get(command, command)


class _SlowRedis:
    """A redis-py client (asyncio or not) whose every reply comes just under op_timeout."""

    def __init__(self, client: Any, delay: float, log: list[str], *, asynchronous: bool) -> None:
        self._client, self._delay, self._log, self._async = client, delay, log, asynchronous

    def __getattr__(self, name: str) -> Any:
        command = getattr(self._client, name)
        if name in {"close", "aclose"}:
            return command
        if self._async:

            async def slow_async(*args: Any, **kwargs: Any) -> Any:
                await asyncio.sleep(self._delay)
                result = await command(*args, **kwargs)
                self._log.append(_kind(name, kwargs))
                return result

            return slow_async

        def slow(*args: Any, **kwargs: Any) -> Any:
            time.sleep(self._delay)
            result = command(*args, **kwargs)
            self._log.append(_kind(name, kwargs))
            return result

        return slow


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_slow_redis_does_not_stretch_the_page_past_one_and_a_half_timeouts(
    fresh_redis: RedisServer, kind: str
) -> None:
    """Redis answers each command in 0.27 s (op_timeout 0.3), Returning.AI in 0.2 s,
    timeout 0.6: before, load + lock + load (0.81 s) left 0.09 s to mint, and the page
    had no token (and the breaker counted a timeout). Now the lookup stops at 0.3 s."""
    from redis import Redis as SyncRedis
    from redis.asyncio import Redis as AsyncRedis

    from rai_middleware._async_tokens import TokenService
    from rai_middleware._sync_tokens import SyncTokenService
    from rai_middleware.redis import RedisTokenStore, SyncRedisTokenStore
    from tests.test_tokens import settings, user

    timeout, delay, log = 0.6, 0.27, list[str]()
    config = settings(timeout=timeout)
    answer = {"data": {"embedToken": "fresh", "expiresIn": 900}}

    if kind == "async":

        async def upstream(request: Any) -> Any:
            import httpx

            await asyncio.sleep(0.2)
            return httpx.Response(200, json=answer)

        async def scenario() -> tuple[Any, float, list[str], int]:
            import httpx

            raw = AsyncRedis.from_url(fresh_redis.url)
            store = RedisTokenStore(_SlowRedis(raw, delay, log, asynchronous=True), op_timeout=0.3)
            async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
                service = TokenService(config, http_client=client, store=store)
                started = time.monotonic()
                token = await service.get(user(1))
                elapsed, done = time.monotonic() - started, list(log)
                await service.aclose()
            await raw.aclose()
            return token, elapsed, done, service.policy._consecutive_failures

        token, elapsed, done_by_then, failures = asyncio.run(scenario())
    else:
        import httpx

        def sync_upstream(request: Any) -> Any:
            time.sleep(0.2)
            return httpx.Response(200, json=answer)

        raw = SyncRedis.from_url(fresh_redis.url)
        store = SyncRedisTokenStore(_SlowRedis(raw, delay, log, asynchronous=False))
        client = httpx.Client(transport=httpx.MockTransport(sync_upstream))
        service = SyncTokenService(config, http_client=client, store=store)
        started = time.monotonic()
        token = service.get(user(1))
        elapsed, done_by_then = time.monotonic() - started, list(log)
        failures = service.policy._consecutive_failures
        service.close()
        client.close()
        raw.close()
    assert token.value == "fresh"
    assert elapsed < 1.5 * timeout
    # The lookup stopped at half the timeout; saving and releasing come after the page.
    assert done_by_then == (["load"] if kind == "async" else ["load", "lock"])
    assert failures == 0  # the slow store cost the upstream breaker nothing
