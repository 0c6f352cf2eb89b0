"""Against real sockets: uvicorn serving the app (it enforces Content-Length and message
order), and the fake Returning.AI on its own port, failing in every way we can make it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rai_middleware import ReturningAIMiddleware
from rai_middleware.testing import FakeReturningAI
from tests.conftest import free_port, serve
from tests.test_tokens import is_closed

pytestmark = pytest.mark.server

PAGE = (
    "<html><body><h1>Chat</h1>"
    '<rai-placeholder widget="channel" channel-id="abc">please sign in</rai-placeholder>'
    + "<p>filler</p>" * 2000
    + '<rai-placeholder widget="store"/></body></html>'
)
FALLBACK_PAGE = PAGE.replace(
    '<rai-placeholder widget="channel" channel-id="abc">please sign in</rai-placeholder>',
    "please sign in",
).replace('<rai-placeholder widget="store"/>', "")


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE)


async def streamed(request: Request) -> Response:
    async def chunks() -> Any:
        data = PAGE.encode()
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    return StreamingResponse(chunks(), media_type="text/html")


async def data(request: Request) -> Response:
    return JSONResponse({"ok": True})


def site(api_base_url: str, **options: Any) -> ReturningAIMiddleware:
    app = Starlette(
        routes=[
            Route("/", page, methods=["GET", "HEAD"]),
            Route("/stream", streamed),
            Route("/data", data),
        ]
    )
    options.setdefault("identify", lambda scope: {"data-customer-id": "c-1"})
    return ReturningAIMiddleware(
        app,
        community_id="community",
        access_id="demo-access-id",
        access_key="demo-access-key",
        api_base_url=api_base_url,
        **options,
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeReturningAI, str]]:
    upstream = FakeReturningAI()
    with upstream.run_in_thread() as url:
        yield upstream, url


@pytest.fixture
def fresh_fake(fake: tuple[FakeReturningAI, str]) -> tuple[FakeReturningAI, str]:
    upstream, url = fake
    upstream.reset()
    upstream.latency = 0.0
    return upstream, url


def test_uvicorn_serves_rewritten_pages_with_exact_content_length(
    fresh_fake: tuple[FakeReturningAI, str],
) -> None:
    upstream, url = fresh_fake
    with serve(site(url)) as base, httpx.Client(base_url=base) as client:
        one = client.get("/")
        streamed_response = client.get("/stream")
        head = client.head("/")
        json_response = client.get("/data")
    assert one.status_code == 200
    assert one.headers["content-length"] == str(len(one.content))
    assert one.text.count("<rai-channel-widget") == 1
    token = one.text.split('embed-token="')[1].split('"')[0]
    assert upstream.decode(token)["data-customer-id"] == "c-1"
    assert streamed_response.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in streamed_response.headers

    # The same page but for what differs per response: the ticket (timestamped), the
    # runtime's configuration (ticket, seconds left) and the container id.
    def same(text: str) -> str:
        text = re.sub(r'data-rai(-ticket)?="[^"]*"', 'data-rai\\1="..."', text)
        return re.sub(r"returning-ai-widget-[0-9]+", "returning-ai-widget-N", text)

    assert same(streamed_response.text) == same(one.text)
    assert '"returning-ai-widget-3"' in streamed_response.text  # the second page's first
    assert head.status_code == 200 and head.content == b""
    assert json_response.json() == {"ok": True}
    assert upstream.calls == 1


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        ("status", 500),
        ("status", 503),
        ("status", 401),
        ("garbage", 200),
        ("missing_token", 200),
        ("disconnect", 200),
    ],
)
def test_upstream_fault_still_serves_the_page_with_fallback(
    fresh_fake: tuple[FakeReturningAI, str], mode: str, status: int
) -> None:
    upstream, url = fresh_fake
    upstream.fail_next(1, mode=mode, status=status)  # type: ignore[arg-type]
    with serve(site(url)) as base, httpx.Client(base_url=base) as client:
        response = client.get("/")
        second = client.get("/")
    assert response.status_code == 200
    assert response.text == FALLBACK_PAGE
    assert "<rai-channel-widget" in second.text  # a failure is not cached
    assert upstream.calls == 2


def test_wrong_credentials_serve_fallback(fresh_fake: tuple[FakeReturningAI, str]) -> None:
    upstream, url = fresh_fake
    bad = ReturningAIMiddleware(
        site(url).app,
        community_id="community",
        access_id="demo-access-id",
        access_key="wrong",
        api_base_url=url,
        identify=lambda scope: {"data-customer-id": "c-1"},
    )
    with serve(bad) as base, httpx.Client(base_url=base) as client:
        response = client.get("/")
    assert response.text == FALLBACK_PAGE
    assert upstream.calls == 1


def test_hanging_upstream_costs_at_most_the_timeout(
    fresh_fake: tuple[FakeReturningAI, str],
) -> None:
    upstream, url = fresh_fake
    upstream.fail_next(1, mode="hang")
    with serve(site(url, timeout=0.5)) as base, httpx.Client(base_url=base) as client:
        started = time.monotonic()
        response = client.get("/")
        elapsed = time.monotonic() - started
    assert response.text == FALLBACK_PAGE
    assert elapsed < 2.0


def test_slow_upstream_within_timeout_still_gives_widgets(
    fresh_fake: tuple[FakeReturningAI, str],
) -> None:
    upstream, url = fresh_fake
    upstream.latency = 0.2
    with serve(site(url, timeout=2)) as base, httpx.Client(base_url=base) as client:
        response = client.get("/")
    assert "<rai-channel-widget" in response.text


def test_connection_refused_serves_fallback_and_breaker_stops_calls() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        serve(site(url, failure_threshold=2, failure_cooldown=60)) as base,
        httpx.Client(base_url=base) as client,
    ):
        timings = []
        for _ in range(6):
            started = time.monotonic()
            assert client.get("/").text == FALLBACK_PAGE
            timings.append(time.monotonic() - started)
    assert max(timings) < 2.0


def test_lifespan_under_uvicorn_creates_and_closes_the_client(
    fresh_fake: tuple[FakeReturningAI, str],
) -> None:
    _, url = fresh_fake
    middleware = site(url)
    with serve(middleware) as base, httpx.Client(base_url=base) as client:
        client.get("/")
        live = middleware.tokens.http_client
        assert live is not None
        assert not live.is_closed
    assert is_closed(live)
    assert middleware.tokens.http_client is None
