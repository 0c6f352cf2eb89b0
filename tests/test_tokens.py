"""The token service on its own: cache, single flight, cancellation, lifecycle."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import respx

from rai_middleware import TokenError
from rai_middleware._async_tokens import TokenService
from rai_middleware._config import Settings, build_settings
from rai_middleware._identity import Identity
from tests.conftest import ACCESS_ID, ACCESS_KEY, TOKEN_URL


def settings(**overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "community_id": "c",
        "access_id": ACCESS_ID,
        "access_key": ACCESS_KEY,
        "secret_key": None,
        "api_base_url": None,
        "token_path": "/v2/api/widget-access-keys/token",
        "sdk_url": "https://sdk.example/x.js",
        "endpoint_prefix": "/_rai",
        "placeholder_tag": "rai-placeholder",
        "widgets": None,
        "timeout": 3.0,
        "min_token_ttl": 300,
        "cache_maxsize": 100,
        "ticket_max_age": 60,
        "max_placeholder_size": 1024,
        "failure_threshold": 5,
        "failure_cooldown": 30.0,
    }
    options.update(overrides)
    return build_settings(options, environ={})


def is_closed(client: httpx.AsyncClient) -> bool:
    # A call, so that mypy does not keep its narrowing of ``is_closed`` from before aclose().
    return client.is_closed


def user(n: int | str) -> Identity:
    return Identity.create({"data-customer-id": str(n)}, b"secret")


@pytest.mark.anyio
async def test_cancelled_waiter_does_not_cancel_the_shared_mint(
    upstream: respx.MockRouter,
) -> None:
    started = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(0.05)
        return httpx.Response(200, json={"data": {"embedToken": "shared"}})

    upstream["token"].mock(side_effect=slow)
    service = TokenService(settings())
    first = asyncio.create_task(service.get(user(1)))
    await started.wait()
    others = [asyncio.create_task(service.get(user(1))) for _ in range(99)]
    first.cancel()
    results = await asyncio.gather(*others)
    assert {token.value for token in results} == {"shared"}
    assert upstream["token"].call_count == 1
    assert first.cancelled()
    assert service.policy.in_flight() == 0
    await service.aclose()


@pytest.mark.anyio
async def test_failure_reaches_every_waiter_once(upstream: respx.MockRouter) -> None:
    async def failing(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        raise httpx.ConnectError("refused")

    upstream["token"].mock(side_effect=failing)
    service = TokenService(settings())
    results = await asyncio.gather(
        *(service.get(user(1)) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(result, TokenError) for result in results)
    assert upstream["token"].call_count == 1
    assert service.policy.in_flight() == 0
    await service.aclose()


@pytest.mark.anyio
async def test_cache_is_bounded_by_cache_maxsize(upstream: respx.MockRouter) -> None:
    service = TokenService(settings(cache_maxsize=10))
    for n in range(11):
        await service.get(user(n))
    assert len(service.policy._cache) == 10
    assert service.cached(user(0)) is None  # least recently used went first
    assert service.cached(user(10)) is not None
    await service.aclose()


@pytest.mark.anyio
async def test_forget_drops_the_identitys_token(upstream: respx.MockRouter) -> None:
    service = TokenService(settings())
    first = await service.get(user(1))
    service.forget(user(1))
    second = await service.get(user(1))
    assert (first.value, second.value) == ("tok-1", "tok-2")
    await service.aclose()


@pytest.mark.anyio
async def test_missing_expires_in_means_900_seconds(upstream: respx.MockRouter) -> None:
    upstream["token"].mock(return_value=httpx.Response(200, json={"data": {"embedToken": "t"}}))
    now = [50.0]
    service = TokenService(settings(), clock=lambda: now[0])
    token = await service.get(user(1))
    assert token.expires_at == 950.0
    await service.aclose()


@pytest.mark.anyio
async def test_expiry_counts_from_when_the_request_was_sent(upstream: respx.MockRouter) -> None:
    now = [0.0]

    def answer(request: httpx.Request) -> httpx.Response:
        now[0] = 2.0  # the answer takes two seconds to arrive
        return httpx.Response(200, json={"data": {"embedToken": "t", "expiresIn": 900}})

    upstream["token"].mock(side_effect=answer)
    service = TokenService(settings(), clock=lambda: now[0])
    assert (await service.get(user(1))).expires_at == 900.0
    await service.aclose()


@pytest.mark.anyio
async def test_startup_creates_and_aclose_closes_the_own_client(
    upstream: respx.MockRouter,
) -> None:
    service = TokenService(settings())
    before = service.http_client
    assert before is None
    await service.startup()
    client = service.http_client
    assert client is not None
    assert not client.is_closed
    await service.get(user(1))
    assert service.http_client is client  # reused, not one per request
    await service.aclose()
    assert is_closed(client)
    after = service.http_client
    assert after is None


@pytest.mark.anyio
async def test_aclose_cancels_inflight_mints(upstream: respx.MockRouter) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)  # pragma: no cover

    upstream["token"].mock(side_effect=hang)
    service = TokenService(settings())
    waiter = asyncio.create_task(service.get(user(1)))
    await asyncio.sleep(0.01)
    await service.aclose()
    with pytest.raises(TokenError, match="closing"):  # the page renders its fallback
        await waiter
    assert service.policy.in_flight() == 0


def test_service_survives_a_new_event_loop() -> None:
    """Two event loops in a row (as two tests, or a restarted server) both work."""
    service = TokenService(settings())
    with respx.mock:
        respx.post(TOKEN_URL).mock(
            return_value=httpx.Response(200, json={"data": {"embedToken": "t"}})
        )
        clients = []
        for n in range(2):

            async def run(n: int = n) -> None:
                await service.get(user(n))
                clients.append(service.http_client)

            asyncio.run(run())
        asyncio.run(service.aclose())
    assert clients[0] is not clients[1]


@pytest.mark.anyio
async def test_refresh_ahead_mints_once_in_background_while_serving_the_old_token(
    upstream: respx.MockRouter,
) -> None:
    now = [0.0]
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json={"data": {"embedToken": "new", "expiresIn": 900}})

    service = TokenService(settings(refresh_ahead=120), clock=lambda: now[0])
    first = await service.get(user(1))  # tok-1, expires at 900
    upstream["token"].mock(side_effect=slow)
    now[0] = 481.0  # 419 s left: inside min_token_ttl (300) + refresh_ahead (120)
    served = await asyncio.gather(*(service.get(user(1)) for _ in range(100)))
    assert {token.value for token in served} == {first.value}  # nobody waited
    await asyncio.sleep(0.01)  # let the background refresh reach the upstream
    assert service.mint_count == 2  # the first mint and one background refresh, in flight
    release.set()
    await asyncio.sleep(0.01)
    assert (await service.get(user(1))).value == "new"
    assert upstream["token"].call_count == 2
    await service.aclose()


@pytest.mark.anyio
async def test_failed_background_refresh_keeps_serving_the_valid_token(
    upstream: respx.MockRouter,
) -> None:
    now = [0.0]
    service = TokenService(settings(), clock=lambda: now[0])
    first = await service.get(user(1))
    upstream["token"].mock(return_value=httpx.Response(500))
    now[0] = 500.0
    assert (await service.get(user(1))).value == first.value
    await asyncio.sleep(0.01)
    assert (await service.get(user(1))).value == first.value
    await service.aclose()


def test_sync_service_refreshes_ahead_in_a_thread() -> None:
    import threading

    from rai_middleware._sync_tokens import SyncTokenService

    now = [0.0]
    calls = []
    gate = threading.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) > 1:
            gate.wait(5)
        return httpx.Response(200, json={"data": {"embedToken": f"t{len(calls)}"}})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    service = SyncTokenService(settings(), http_client=client, clock=lambda: now[0])
    assert service.get(user(1)).value == "t1"
    now[0] = 500.0
    assert [service.get(user(1)).value for _ in range(20)] == ["t1"] * 20
    gate.set()
    for _ in range(100):
        if service.cached(user(1)) and service.cached(user(1)).value == "t2":  # type: ignore[union-attr]
            break
        time.sleep(0.01)
    assert service.get(user(1)).value == "t2"
    assert len(calls) == 2
    client.close()


@pytest.mark.anyio
async def test_keep_warm_refreshes_active_identities_before_their_token_lapses(
    upstream: respx.MockRouter,
) -> None:
    now = [0.0]
    service = TokenService(settings(keep_warm=900, refresh_ahead=0), clock=lambda: now[0])
    first = await service.get(user(1))
    now[0] = 100.0
    assert service.refresh_due() == 0  # 800 s left: nothing to do
    now[0] = 590.0  # 310 s left: within the horizon, the token would lapse before long
    assert service.refresh_due() == 1
    assert service.refresh_due() == 0  # already in flight: not twice
    await asyncio.sleep(0.01)
    second = await service.get(user(1))  # no wait: the fresh token is there
    assert (first.value, second.value) == ("tok-1", "tok-2")
    assert upstream["token"].call_count == 2
    now[0] = 590.0 + 901  # quiet for longer than keep_warm: its token is let go
    assert service.refresh_due() == 0
    assert upstream["token"].call_count == 2
    await service.aclose()


@pytest.mark.anyio
async def test_keep_warm_off_by_default_and_its_task_stops_on_aclose(
    upstream: respx.MockRouter,
) -> None:
    service = TokenService(settings())
    await service.get(user(1))
    assert service._warmer is None
    warm = TokenService(settings(keep_warm=60))
    await warm.get(user(1))
    task = warm._warmer
    assert task is not None and not task.done()
    await warm.aclose()
    await asyncio.sleep(0)
    assert task.cancelled()
    await service.aclose()


@pytest.mark.anyio
async def test_short_lived_tokens_are_not_renewed_on_every_page(
    upstream: respx.MockRouter,
) -> None:
    upstream["token"].mock(
        side_effect=lambda request: httpx.Response(
            200, json={"data": {"embedToken": f"t{len(upstream.calls)}", "expiresIn": 420}}
        )
    )
    now = [0.0]
    service = TokenService(settings(min_token_ttl=120), clock=lambda: now[0])
    for second in range(0, 100, 5):  # a page every 5 s; the token is servable for 300 s
        now[0] = float(second)
        await service.get(user(1))
        await asyncio.sleep(0)
    assert upstream["token"].call_count == 1  # not one per page
    now[0] = 200.0  # inside the window (220 s left) and past half its life: renewed once
    await service.get(user(1))
    await asyncio.sleep(0.01)
    assert upstream["token"].call_count == 2
    await service.aclose()
