"""Issue 15, item 7: a client from ``httpx`` or from ``httpx2`` (its maintained fork, the
same API) is accepted wherever a client is, typed as the protocol of what the middleware
calls (``rai_middleware._clients``); so is any object with those methods.

httpx2 is a test dependency (Python 3.11+); without it its tests skip with the reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rai_middleware import ConfigurationError, ReturningAIMiddleware, ReturningAIWSGIMiddleware
from rai_middleware._clients import (
    AsyncHTTPClient,
    SyncHTTPClient,
    is_async_client,
    is_http_error,
    is_network_error,
    is_sync_client,
    is_timeout,
)
from rai_middleware.testing import FakeReturningAI
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID, body_of, call_asgi, html_app
from tests.conftest import http_scope as scope_of

try:
    import httpx2
except ImportError:  # Python 3.10, or not installed
    httpx2 = None  # type: ignore[assignment]

needs_httpx2 = pytest.mark.skipif(httpx2 is None, reason="httpx2 is not installed (Python 3.11+)")

PAGE = b'<html><body><rai-placeholder widget="store">fallback</rai-placeholder></body></html>'
FALLBACK = b"<html><body>fallback</body></html>"
OPTIONS: dict[str, Any] = {
    "community_id": COMMUNITY_ID,
    "access_id": ACCESS_ID,
    "access_key": ACCESS_KEY,
    "api_base_url": FakeReturningAI.base_url,
}


def identify(request: object) -> dict[str, str]:
    return {"data-customer-id": "c-1"}


def token_of(body: bytes) -> str:
    return body.split(b'embed-token="')[1].split(b'"')[0].decode()


def wsgi_get(app: Any) -> bytes:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SCRIPT_NAME": ""}
    return b"".join(app(environ, lambda status, headers, exc_info=None: None))


def wsgi_page(environ: Any, start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/html")])
    return [PAGE]


# -- httpx2 ---------------------------------------------------------------------------------


@needs_httpx2
@pytest.mark.anyio
async def test_asgi_mints_through_an_httpx2_async_client() -> None:
    fake = FakeReturningAI(access_id=ACCESS_ID, access_key=ACCESS_KEY)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=fake), base_url=FakeReturningAI.base_url
    ) as client:
        assert isinstance(client, AsyncHTTPClient) and is_async_client(client)
        app = ReturningAIMiddleware(
            html_app(PAGE), identify=identify, http_client=client, **OPTIONS
        )
        body = body_of(await call_asgi(app, scope_of("/")))
        again = body_of(await call_asgi(app, scope_of("/")))
        await app.aclose()
        assert not client.is_closed  # the site's client: the middleware does not close it
    assert fake.decode(token_of(body))["data-customer-id"] == "c-1"
    assert token_of(again) == token_of(body)
    assert fake.calls == 1


@needs_httpx2
def test_wsgi_mints_through_an_httpx2_client_over_a_real_socket() -> None:
    fake = FakeReturningAI(access_id=ACCESS_ID, access_key=ACCESS_KEY)
    with fake.run_in_thread() as base_url, httpx2.Client() as client:
        assert isinstance(client, SyncHTTPClient) and is_sync_client(client)
        app = ReturningAIWSGIMiddleware(
            wsgi_page,
            identify=identify,
            http_client=client,
            **{**OPTIONS, "api_base_url": base_url},
        )
        body = wsgi_get(app)
        app.close()
    assert fake.decode(token_of(body))["data-customer-id"] == "c-1"
    assert fake.calls == 1


def _failing_transport(exc: Exception) -> Any:
    def handler(request: Any) -> Any:
        raise exc

    return handler


@needs_httpx2
@pytest.mark.parametrize(
    ("error", "logged"),
    [
        ("ReadTimeout", "timed out after 3 s"),
        ("ConnectError", "ConnectError: connection refused"),
        ("RemoteProtocolError", "(RemoteProtocolError)"),
    ],
)
def test_httpx2_failures_serve_the_fallback_and_count_towards_the_breaker(
    error: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def handler(request: Any) -> Any:
        calls.append(1)
        message = "connection refused" if error == "ConnectError" else "a header quoted"
        raise getattr(httpx2, error)(message, request=request)

    with httpx2.Client(transport=httpx2.MockTransport(handler)) as client:
        app = ReturningAIWSGIMiddleware(
            wsgi_page, identify=identify, http_client=client, failure_threshold=1, **OPTIONS
        )
        with caplog.at_level(logging.WARNING, logger="rai_middleware"):
            assert wsgi_get(app) == FALLBACK
            assert wsgi_get(app) == FALLBACK  # the breaker is open: no second call
    assert calls == [1]
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert logged in text
    assert "a header quoted" not in text and ACCESS_KEY not in text


@needs_httpx2
def test_the_error_families_are_told_apart_without_importing_httpx2() -> None:
    request = httpx2.Request("POST", "https://x.invalid/")
    assert is_timeout(httpx2.ReadTimeout("t", request=request))
    assert is_network_error(httpx2.ConnectError("c", request=request))
    assert is_http_error(httpx2.RemoteProtocolError("p", request=request))
    assert not is_network_error(httpx2.RemoteProtocolError("p", request=request))
    assert is_timeout(httpx.ReadTimeout("t")) and is_timeout(TimeoutError())
    assert not is_http_error(RuntimeError("x")) and not is_timeout(OSError())


@needs_httpx2
@pytest.mark.anyio
async def test_the_wrong_kind_of_httpx2_client_is_refused_by_name() -> None:
    with httpx2.Client() as sync_client, pytest.raises(ConfigurationError) as raised:
        ReturningAIMiddleware(html_app(PAGE), http_client=sync_client, **OPTIONS)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "http_client must be an asynchronous client such as httpx.AsyncClient or "
        "httpx2.AsyncClient, got Client"
    )
    async with httpx2.AsyncClient() as async_client:
        with pytest.raises(ConfigurationError) as raised:
            ReturningAIWSGIMiddleware(wsgi_page, http_client=async_client, **OPTIONS)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "http_client must be a synchronous client such as httpx.Client or httpx2.Client, "
        "got AsyncClient"
    )


@needs_httpx2
def test_django_and_flask_take_httpx2_clients() -> None:
    pytest.importorskip("django")
    pytest.importorskip("flask")
    from django.test import override_settings
    from flask import Flask

    from rai_middleware.django import ReturningAIMiddleware as DjangoMiddleware
    from rai_middleware.flask import ReturningAI
    from tests.test_django import configure_django

    configure_django()
    with httpx2.Client() as sync_client:
        with override_settings(RETURNING_AI={**OPTIONS, "http_client": sync_client}):
            middleware = DjangoMiddleware(lambda request: None)
        assert middleware.tokens.http_client is sync_client
        app = Flask(__name__)
        ReturningAI(app, http_client=sync_client, **OPTIONS)
        assert ReturningAI.core(app).tokens.http_client is sync_client


# -- any client with the protocol's methods --------------------------------------------------


class DuckResponse:
    def __init__(self, status_code: int, payload: object) -> None:
        self.status_code = status_code
        self.is_success = 200 <= status_code < 300
        self._payload = payload
        self.headers = {"content-type": "application/json"}

    def json(self, **kwargs: Any) -> Any:
        return self._payload

    def iter_bytes(self) -> Iterator[bytes]:
        yield json.dumps(self._payload).encode()


class DuckAsyncClient:
    """An asynchronous client of another library, reduced to what the middleware calls."""

    def __init__(self, fake: FakeReturningAI) -> None:
        self.fake = fake
        self.posts: list[str] = []

    async def post(
        self, url: str, *, content: bytes | None, headers: Any, timeout: float
    ) -> DuckResponse:
        self.posts.append(url)
        payload = json.loads(content or b"{}")
        token = self.fake.encode(payload["userIdentifiers"])
        return DuckResponse(200, {"data": {"embedToken": token, "expiresIn": 900}})

    async def aclose(self) -> None:
        raise AssertionError("the site's client is never closed by the middleware")


class DuckSyncClient:
    def __init__(self, fake: FakeReturningAI) -> None:
        self.fake = fake

    @contextlib.contextmanager
    def stream(
        self, method: str, url: str, *, content: bytes | None, headers: Any, timeout: float
    ) -> Iterator[DuckResponse]:
        payload = json.loads(content or b"{}")
        token = self.fake.encode(payload["userIdentifiers"])
        yield DuckResponse(200, {"data": {"embedToken": token, "expiresIn": 900}})

    def close(self) -> None:
        raise AssertionError("the site's client is never closed by the middleware")


@pytest.mark.anyio
async def test_a_duck_typed_async_client_is_accepted() -> None:
    fake = FakeReturningAI()
    client = DuckAsyncClient(fake)
    app = ReturningAIMiddleware(html_app(PAGE), identify=identify, http_client=client, **OPTIONS)
    body = body_of(await call_asgi(app, scope_of("/")))
    await app.aclose()
    assert fake.decode(token_of(body)) == {"data-customer-id": "c-1"}
    assert client.posts == [FakeReturningAI.base_url + "/v2/api/widget-access-keys/token"]


def test_a_duck_typed_sync_client_is_accepted() -> None:
    fake = FakeReturningAI()
    app = ReturningAIWSGIMiddleware(
        wsgi_page, identify=identify, http_client=DuckSyncClient(fake), **OPTIONS
    )
    assert fake.decode(token_of(wsgi_get(app))) == {"data-customer-id": "c-1"}
    app.close()
