"""One deadline per page, on both drivers: a slow upstream, a slow store, followers, saving
after delivery, and one policy shared by an asyncio and a thread driver.

Real waits only where a real socket or a slow store is the point; ``timeout=0.5``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rai_middleware import ConfigurationError, TokenError
from rai_middleware._async_tokens import TokenService
from rai_middleware._store import StoredToken
from rai_middleware._sync_tokens import SyncTokenService
from rai_middleware._tokens import TokenPolicy
from tests.test_tokens import settings, user

TIMEOUT = 0.5
# Scheduling noise allowed on top of a deadline (threads, a loaded CI machine).
SLACK = 0.25
ANSWER = {"data": {"embedToken": "fresh", "expiresIn": 900}}


def _answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=ANSWER)


class SlowHeadServer:
    """A real HTTP server on 127.0.0.1 that accepts, reads the request, then trickles its
    status line and headers a byte at a time so that they are complete only after
    ``timeout`` + 2 s. No single read waits long enough for httpx's per-read timeout."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # so that the accept loop notices ``stop``
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> SlowHeadServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            connection.settimeout(5)
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, connection: socket.socket) -> None:
        body = b'{"data": {"embedToken": "late", "expiresIn": 900}}'
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            pause = self.delay / len(head)
            for byte in head:
                if self.stop.wait(pause):
                    return  # the test is over: hang up
                connection.sendall(bytes([byte]))
            connection.sendall(body)


@pytest.fixture
def slow_head() -> Iterator[SlowHeadServer]:
    with SlowHeadServer(TIMEOUT + 2.0) as server:
        yield server


class SlowStore:
    """A SyncTokenStore in memory whose every operation takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.data: dict[str, StoredToken] = {}
        self.locks: dict[str, str] = {}
        self.log: list[str] = []
        self.saving = threading.Event()  # cleared: save() blocks until it is set
        self.saving.set()

    def _op(self, name: str) -> None:
        time.sleep(self.delay)
        self.log.append(name)

    def load(self, key: str) -> StoredToken | None:
        self._op("load")
        return self.data.get(key)

    def save(self, key: str, token: StoredToken) -> None:
        self.saving.wait(5)
        self._op("save")
        self.data[key] = token

    def acquire(self, key: str, lease: float) -> str | None:
        self._op("acquire")
        return None if self.locks.setdefault(key, "me") != "me" else "me"

    def release(self, key: str, owner: str) -> None:
        self._op("release")
        if self.locks.get(key) == owner:
            del self.locks[key]

    def close(self) -> None:
        pass


class AsyncSlowStore:
    """The same as a TokenStore, waiting with asyncio."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.data: dict[str, StoredToken] = {}
        self.locks: dict[str, str] = {}
        self.log: list[str] = []
        self.saving = asyncio.Event()
        self.saving.set()

    async def _op(self, name: str) -> None:
        await asyncio.sleep(self.delay)
        self.log.append(name)

    async def load(self, key: str) -> StoredToken | None:
        await self._op("load")
        return self.data.get(key)

    async def save(self, key: str, token: StoredToken) -> None:
        await self.saving.wait()
        await self._op("save")
        self.data[key] = token

    async def acquire(self, key: str, lease: float) -> str | None:
        await self._op("acquire")
        return None if self.locks.setdefault(key, "me") != "me" else "me"

    async def release(self, key: str, owner: str) -> None:
        await self._op("release")
        if self.locks.get(key) == owner:
            del self.locks[key]

    async def aclose(self) -> None:
        pass


def timed_sync(call: Any) -> tuple[Any, float]:
    """``call()``'s token or TokenError, and how long it took."""
    started = time.monotonic()
    try:
        outcome = call()
    except TokenError as exc:
        outcome = exc
    return outcome, time.monotonic() - started


async def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    try:
        outcome = await call
    except TokenError as exc:
        outcome = exc
    return outcome, time.monotonic() - started


# -- a slow status line ----------------------------------------------------------------


def test_sync_get_gives_up_on_a_slow_status_line_within_the_timeout(
    slow_head: SlowHeadServer,
) -> None:
    service = SyncTokenService(settings(timeout=TIMEOUT, api_base_url=slow_head.url))
    outcome, elapsed = timed_sync(lambda: service.get(user(1)))
    assert isinstance(outcome, TokenError) and "timed out" in str(outcome)
    assert elapsed < TIMEOUT + SLACK
    slow_head.stop.set()  # hang up: the mint thread ends with a transport error
    service.close()
    assert service.policy._consecutive_failures == 1  # the timeout, counted once


@pytest.mark.anyio
async def test_async_get_gives_up_on_a_slow_status_line_within_the_timeout(
    slow_head: SlowHeadServer,
) -> None:
    service = TokenService(settings(timeout=TIMEOUT, api_base_url=slow_head.url))
    outcome, elapsed = await timed(service.get(user(1)))
    assert isinstance(outcome, TokenError) and "timed out" in str(outcome)
    assert elapsed < TIMEOUT + SLACK
    await service.aclose()
    assert service.policy._consecutive_failures == 1


# -- followers share the leader's deadline -------------------------------------------


def test_sync_followers_wait_until_the_leaders_deadline_not_their_own() -> None:
    gate = threading.Event()

    def hanging(request: httpx.Request) -> httpx.Response:
        gate.wait(5)
        return _answer(request)

    client = httpx.Client(transport=httpx.MockTransport(hanging))
    service = SyncTokenService(settings(timeout=TIMEOUT), http_client=client)
    started = time.monotonic()
    outcomes: list[tuple[Any, float]] = []
    leader = threading.Thread(
        target=lambda: outcomes.append(timed_sync(lambda: service.get(user(1))))
    )
    leader.start()
    time.sleep(0.3)
    follower, _ = timed_sync(lambda: service.get(user(1)))
    assert isinstance(follower, TokenError)
    assert time.monotonic() - started < TIMEOUT + SLACK  # not 0.3 s + its own timeout
    leader.join(5)
    assert isinstance(outcomes[0][0], TokenError)
    gate.set()
    service.close()
    client.close()
    assert service.policy._consecutive_failures == 1


@pytest.mark.anyio
async def test_async_followers_wait_until_the_leaders_deadline_not_their_own() -> None:
    async def hanging(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return _answer(request)  # pragma: no cover

    async with httpx.AsyncClient(transport=httpx.MockTransport(hanging)) as client:
        service = TokenService(settings(timeout=TIMEOUT), http_client=client)
        started = time.monotonic()
        leader = asyncio.create_task(timed(service.get(user(1))))
        await asyncio.sleep(0.3)
        follower, _ = await timed(service.get(user(1)))
        assert isinstance(follower, TokenError)
        assert time.monotonic() - started < TIMEOUT + SLACK
        assert isinstance((await leader)[0], TokenError)
        assert service.mint_count == 1
        await service.aclose()


# -- a slow store ----------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.15, 0.3])
def test_sync_get_with_a_slow_store_answers_within_one_and_a_half_timeouts(delay: float) -> None:
    store = SlowStore(delay)
    client = httpx.Client(transport=httpx.MockTransport(_answer))
    service = SyncTokenService(settings(timeout=TIMEOUT), http_client=client, store=store)
    outcome, elapsed = timed_sync(lambda: service.get(user(1)))
    done_by_then = list(store.log)
    assert elapsed < 1.5 * TIMEOUT + SLACK
    # The lookup has half the timeout (0.25 s): the op that ends past it ends the lookup
    # (a thread cannot stop waiting for it), and the mint still has its time.
    assert outcome.value == "fresh"
    assert done_by_then == (["load", "acquire"] if delay == 0.15 else ["load"])
    assert service.mint_count == 1
    assert not service.policy.store_in_use()  # too slow: minting per process for a while
    service.close()
    client.close()


@pytest.mark.anyio
@pytest.mark.parametrize("delay", [0.15, 0.3])
async def test_async_get_with_a_slow_store_answers_within_one_and_a_half_timeouts(
    delay: float,
) -> None:
    store = AsyncSlowStore(delay)
    async with httpx.AsyncClient(transport=httpx.MockTransport(_answer)) as client:
        service = TokenService(settings(timeout=TIMEOUT), http_client=client, store=store)
        outcome, elapsed = await timed(service.get(user(1)))
        done_by_then = list(store.log)
        # asyncio stops waiting for the store at half the timeout: the page is that late.
        assert elapsed < 0.5 * TIMEOUT + SLACK
        assert outcome.value == "fresh"
        assert done_by_then == (["load"] if delay == 0.15 else [])
        assert service.mint_count == 1
        assert not service.policy.store_in_use()
        await service.aclose()


# -- saving after delivery -------------------------------------------------------------


def test_sync_page_has_its_token_before_the_store_saves_it() -> None:
    store = SlowStore()
    store.saving.clear()
    client = httpx.Client(transport=httpx.MockTransport(_answer))
    service = SyncTokenService(settings(timeout=TIMEOUT), http_client=client, store=store)
    got: list[str] = []
    page = threading.Thread(target=lambda: got.append(service.get(user(1)).value))
    page.start()
    page.join(2)
    assert got == ["fresh"]
    assert store.data == {} and store.locks  # not saved, still locked: the thread goes on
    store.saving.set()
    service.close()  # waits for the mint thread
    assert store.log == ["load", "acquire", "load", "save", "release"]
    assert store.data[user(1).key].value == "fresh" and store.locks == {}
    client.close()


@pytest.mark.anyio
async def test_async_page_has_its_token_before_the_store_saves_it() -> None:
    store = AsyncSlowStore()
    store.saving.clear()
    async with httpx.AsyncClient(transport=httpx.MockTransport(_answer)) as client:
        service = TokenService(settings(timeout=TIMEOUT), http_client=client, store=store)
        token = await asyncio.wait_for(service.get(user(1)), 2)
        assert token.value == "fresh"
        assert store.data == {} and store.locks
        store.saving.set()
        await service.aclose()  # lets the delivered mint save and release
    assert store.log == ["load", "acquire", "load", "save", "release"]
    assert store.data[user(1).key].value == "fresh" and store.locks == {}


# -- one policy, two drivers -----------------------------------------------------------


@pytest.mark.anyio
async def test_one_policy_serves_an_async_and_a_sync_driver() -> None:
    calls: list[str] = []
    gate = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append("sync")
        gate.wait(5)
        return httpx.Response(200, json={"data": {"embedToken": f"t{len(calls)}"}})

    async def async_answer(request: httpx.Request) -> httpx.Response:
        calls.append("async")
        return httpx.Response(200, json={"data": {"embedToken": f"t{len(calls)}"}})

    shared = settings(timeout=2.0)
    policy = TokenPolicy(shared)
    sync_client = httpx.Client(transport=httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=httpx.MockTransport(async_answer)) as async_client:
        sync_service = SyncTokenService(shared, http_client=sync_client, policy=policy)
        async_service = TokenService(shared, http_client=async_client, policy=policy)
        # A thread's mint is under way; the event loop's page joins it, not a second mint.
        got: list[str] = []
        page = threading.Thread(target=lambda: got.append(sync_service.get(user(1)).value))
        page.start()
        while policy.in_flight() == 0:
            await asyncio.sleep(0.005)
        waiting = asyncio.create_task(async_service.get(user(1)))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        gate.set()
        assert (await asyncio.wait_for(waiting, 2)).value == "t1"
        page.join(2)
        assert got == ["t1"] and calls == ["sync"]
        # One cache: what one driver forgets, the other mints again.
        sync_service.forget(user(1))
        assert async_service.cached(user(1)) is None
        assert (await async_service.get(user(1))).value == "t2"
        assert sync_service.get(user(1)).value == "t2"
        assert sync_service.mint_count == async_service.mint_count == 2
        await async_service.aclose()
    sync_service.close()
    sync_client.close()


def test_a_shared_policy_must_come_from_the_same_settings() -> None:
    policy = TokenPolicy(settings())
    with pytest.raises(ConfigurationError, match="same settings"):
        SyncTokenService(settings(timeout=1.0), policy=policy)
    with pytest.raises(ConfigurationError, match="same settings"):
        TokenService(settings(timeout=1.0), policy=policy)
