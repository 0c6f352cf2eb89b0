"""Secrets never leave the server: not in pages, logs, reprs nor exception messages."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
import pytest
import respx

from rai_middleware import ConfigurationError, ReturningAIMiddleware, TokenError
from rai_middleware._identity import Identity
from tests.conftest import (
    ACCESS_ID,
    ACCESS_KEY,
    SECRET_KEY,
    SecretSpy,
    body_of,
    call_asgi,
    headers_of,
    html_app,
    http_scope,
    wrap,
)

pytestmark = pytest.mark.anyio

PAGE = b'<rai-placeholder widget="store">fallback</rai-placeholder>'
SECRETS = (ACCESS_ID, ACCESS_KEY, SECRET_KEY)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


async def test_no_secret_in_page_or_headers(upstream: respx.MockRouter) -> None:
    middleware = wrap(html_app(PAGE), secret_key=SECRET_KEY)
    messages = await call_asgi(middleware, http_scope())
    assert_no_secret(body_of(messages).decode())
    assert_no_secret(repr(headers_of(messages)))


async def test_no_secret_in_any_log_record_at_debug_for_success_and_failure(
    upstream: respx.MockRouter, all_logs: SecretSpy
) -> None:
    def fresh() -> Any:
        return wrap(html_app(PAGE), secret_key=SECRET_KEY, failure_threshold=1)

    await call_asgi(fresh(), http_scope())  # success: httpx logs its request
    upstream["token"].mock(return_value=httpx.Response(401, json={"message": ACCESS_KEY}))
    await call_asgi(fresh(), http_scope())  # a 401 whose body echoes the key
    upstream["token"].mock(side_effect=httpx.ConnectError("refused"))
    await call_asgi(fresh(), http_scope())
    assert any("HTTP Request" in line for line in all_logs.lines)  # httpx did log
    assert any("HTTP 401" in line for line in all_logs.lines)
    assert any("ConnectError" in line for line in all_logs.lines)
    for line in all_logs.lines:
        assert_no_secret(line)


async def test_no_secret_in_reprs(upstream: respx.MockRouter) -> None:
    middleware = wrap(html_app(PAGE), secret_key=SECRET_KEY)
    await call_asgi(middleware, http_scope())
    for obj in (
        middleware,
        middleware.settings,
        middleware.settings.access_key,
        middleware.settings.secret_key,
        middleware.tokens,
        middleware.tickets,
        *middleware.tokens.policy._cache.values(),
    ):
        assert_no_secret(repr(obj))
        assert_no_secret(str(obj))
    assert "tok-1" not in repr(middleware.tokens) + repr(
        list(middleware.tokens.policy._cache.values())
    )


def test_no_secret_in_configuration_errors() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    for options in (
        {"access_key": ACCESS_KEY, "access_id": ACCESS_ID},
        {"access_key": ACCESS_KEY, "access_id": ACCESS_ID, "community_id": "c", "timeout": -1},
    ):
        with pytest.raises(ConfigurationError) as caught:
            wrap(app, **options) if "community_id" in options else _bare(app, **options)
        assert_no_secret(str(caught.value))


def _bare(app: Any, **options: Any) -> Any:
    return ReturningAIMiddleware(app, **options)


async def test_no_secret_in_token_errors(upstream: respx.MockRouter) -> None:
    middleware = wrap(html_app(PAGE))
    identity = Identity.create({"data-x": "1"}, b"k")
    for answer in (
        httpx.Response(500, text=ACCESS_KEY),
        httpx.Response(200, text=f"not json {ACCESS_KEY}"),
        httpx.ConnectError("refused"),
    ):
        if isinstance(answer, Exception):
            upstream["token"].mock(side_effect=answer)
        else:
            upstream["token"].mock(return_value=answer)
        with pytest.raises(TokenError) as caught:
            await middleware.tokens.get(identity)
        assert_no_secret(str(caught.value))
        assert caught.value.__cause__ is None


async def test_access_key_only_in_the_request_body_never_in_url_or_headers(
    upstream: respx.MockRouter,
) -> None:
    await call_asgi(wrap(html_app(PAGE)), http_scope())
    request = upstream["token"].calls.last.request
    assert ACCESS_KEY not in str(request.url)
    assert_no_secret(repr(request.headers.raw))
    assert ACCESS_KEY.encode() in request.content


async def test_upstream_cookies_are_not_sent_back(upstream: respx.MockRouter) -> None:
    upstream["token"].mock(
        return_value=httpx.Response(
            200,
            json={"data": {"embedToken": "t"}},
            headers={"set-cookie": "tracker=1; Path=/"},
        )
    )
    users = iter(["u1", "u2"])
    middleware = wrap(html_app(PAGE), identify=lambda s: {"data-x": next(users)})
    await call_asgi(middleware, http_scope())
    await call_asgi(middleware, http_scope())
    assert upstream["token"].call_count == 2
    assert "cookie" not in upstream["token"].calls.last.request.headers


async def test_one_user_never_sees_another_users_token(upstream: respx.MockRouter) -> None:
    async def per_user(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.001)
        user = json.loads(request.content)["userIdentifiers"]["data-customer-id"]
        return httpx.Response(200, json={"data": {"embedToken": f"for-{user}"}})

    upstream["token"].mock(side_effect=per_user)
    middleware = wrap(html_app(PAGE), identify=lambda s: {"data-customer-id": s["path"].strip("/")})
    scopes = [http_scope(f"/{'alice' if n % 2 else 'bob'}") for n in range(1000)]
    results = await asyncio.gather(*(call_asgi(middleware, scope) for scope in scopes))
    for scope, messages in zip(scopes, results, strict=True):
        tokens = re.findall(rb'embed-token="([^"]*)"', body_of(messages))
        assert tokens == [f"for-{scope['path'].strip('/')}".encode()]
    assert upstream["token"].call_count == 2


async def test_a_renewed_token_replaces_the_remembered_widget_markup(
    upstream: respx.MockRouter,
) -> None:
    # The markup of a visitor's widget is remembered per token: a new token is a new key.
    now = [1000.0]
    middleware = wrap(html_app(PAGE), clock=lambda: now[0])
    first = body_of(await call_asgi(middleware, http_scope()))
    now[0] += 900  # tok-1 has expired: the next page mints tok-2
    second = body_of(await call_asgi(middleware, http_scope()))
    assert re.findall(rb'embed-token="([^"]*)"', first) == [b"tok-1"]
    assert re.findall(rb'embed-token="([^"]*)"', second) == [b"tok-2"]
    assert b"tok-1" not in second
    assert upstream["token"].call_count == 2


async def test_what_is_remembered_between_pages_stays_bounded(upstream: respx.MockRouter) -> None:
    # A hostile page of 1,000 different placeholders, and one with long attributes: every
    # one is rendered, and what is kept for the next page stays within its bounds.
    spots = b"".join(
        b'<rai-placeholder widget="store" data-n="%d">f</rai-placeholder>' % n for n in range(1000)
    )
    long = b'<rai-placeholder widget="store" title="' + b"x" * 600 + b'">f</rai-placeholder>'
    middleware = wrap(html_app(spots + long))
    body = body_of(await call_asgi(middleware, http_scope()))
    assert body.count(b'embed-token="tok-1"') == 1001
    assert b'title="' + b"x" * 600 + b'"' in body
    assert 0 < len(middleware.core._specs) <= 512
    kept = middleware.core.mode._elements  # type: ignore[attr-defined]
    assert 0 < len(kept) <= 1024
    assert not any("x" * 600 in markup for markup in kept._entries.values())
