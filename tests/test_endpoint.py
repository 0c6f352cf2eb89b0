"""``POST /_rai/embed-token``: every status code, and the ticket that guards it."""

from __future__ import annotations

import json
import re
import time
from typing import Any
from unittest import mock

import httpx
import pytest
import respx
from itsdangerous import URLSafeTimedSerializer

from rai_middleware._identity import Identity
from rai_middleware._tickets import TicketSigner
from tests.conftest import USER, Message, body_of, call_asgi, headers_of, html_app, http_scope, wrap

pytestmark = pytest.mark.anyio

PAGE = b'<rai-placeholder widget="store"/>'
URL = "/_rai/embed-token"


async def page_ticket(middleware: Any, scope: dict[str, Any] | None = None) -> str:
    body = body_of(await call_asgi(middleware, scope or http_scope()))
    match = re.search(rb'data-rai-ticket="([^"]+)"', body)
    assert match is not None
    return match.group(1).decode()


def refresh_scope(
    ticket: str | None,
    *,
    method: str = "POST",
    extra: list[tuple[bytes, bytes]] | None = None,
    path: str = URL,
) -> dict[str, Any]:
    headers = [(b"host", b"testserver")]
    if ticket is not None:
        headers.append((b"x-rai-ticket", ticket.encode()))
    return http_scope(path, method=method, headers=headers + (extra or []))


def status_and_json(messages: list[Message]) -> tuple[int, Any]:
    return messages[0]["status"], json.loads(body_of(messages))


async def test_refresh_answers_the_cached_token_for_the_same_user(
    upstream: respx.MockRouter,
) -> None:
    middleware = wrap(html_app(PAGE))
    ticket = await page_ticket(middleware)
    messages = await call_asgi(
        middleware,
        refresh_scope(
            ticket,
            extra=[(b"sec-fetch-site", b"same-origin"), (b"origin", b"http://testserver")],
        ),
    )
    status, payload = status_and_json(messages)
    assert status == 200
    assert payload["embedToken"] == "tok-1"
    assert 890 <= payload["expiresIn"] <= 900
    headers = dict(headers_of(messages))
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"x-content-type-options"] == b"nosniff"
    assert headers[b"content-length"] == str(len(body_of(messages))).encode()
    assert not any(name.startswith(b"access-control-") for name in headers)
    assert upstream["token"].call_count == 1


async def test_refresh_mints_when_the_cached_token_is_too_old(upstream: respx.MockRouter) -> None:
    now = [0.0]
    middleware = wrap(html_app(PAGE), clock=lambda: now[0])
    ticket = await page_ticket(middleware)
    now[0] = 700.0
    status, payload = status_and_json(await call_asgi(middleware, refresh_scope(ticket)))
    assert (status, payload) == (200, {"embedToken": "tok-2", "expiresIn": 900})


async def test_hammering_refresh_causes_no_extra_upstream_calls(
    upstream: respx.MockRouter,
) -> None:
    middleware = wrap(html_app(PAGE))
    ticket = await page_ticket(middleware)
    for _ in range(100):
        messages = await call_asgi(middleware, refresh_scope(ticket))
        assert messages[0]["status"] == 200
    assert upstream["token"].call_count == 1


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS"])
async def test_refresh_other_methods_get_405(upstream: respx.MockRouter, method: str) -> None:
    middleware = wrap(html_app(PAGE))
    messages = await call_asgi(middleware, refresh_scope("x", method=method))
    assert messages[0]["status"] == 405
    assert (b"allow", b"POST") in headers_of(messages)


async def test_refresh_anonymous_gets_401(upstream: respx.MockRouter) -> None:
    middleware = wrap(html_app(PAGE), identify=lambda scope: None)
    status, payload = status_and_json(await call_asgi(middleware, refresh_scope("x")))
    assert (status, payload) == (401, {"error": "not_signed_in"})
    assert upstream["token"].call_count == 0


@pytest.mark.parametrize(
    "extra",
    [
        [(b"sec-fetch-site", b"cross-site")],
        [(b"sec-fetch-site", b"same-site")],
        [(b"sec-fetch-site", b"none")],
        [(b"origin", b"http://evil.example")],
        [(b"origin", b"https://testserver")],
        [(b"origin", b"http://testserver:8080")],
        [(b"origin", b"null")],
        [(b"sec-fetch-site", b"same-origin"), (b"origin", b"http://evil.example")],
    ],
)
async def test_refresh_cross_origin_gets_403(
    upstream: respx.MockRouter, extra: list[tuple[bytes, bytes]]
) -> None:
    middleware = wrap(html_app(PAGE))
    ticket = await page_ticket(middleware)
    status, payload = status_and_json(
        await call_asgi(middleware, refresh_scope(ticket, extra=extra))
    )
    assert (status, payload) == (403, {"error": "cross_origin"})
    assert upstream["token"].call_count == 1  # the page's mint only


async def test_refresh_origin_with_default_port_is_same_origin(upstream: respx.MockRouter) -> None:
    middleware = wrap(html_app(PAGE))
    ticket = await page_ticket(middleware)
    scope = refresh_scope(ticket, extra=[(b"origin", b"http://TestServer:80")])
    assert (await call_asgi(middleware, scope))[0]["status"] == 200


@pytest.mark.parametrize("ticket", [None, "", "garbage", "a" * 2000])
async def test_refresh_without_valid_ticket_gets_403(
    upstream: respx.MockRouter, ticket: str | None
) -> None:
    middleware = wrap(html_app(PAGE))
    status, payload = status_and_json(await call_asgi(middleware, refresh_scope(ticket)))
    assert (status, payload) == (403, {"error": "invalid_ticket"})
    assert upstream["token"].call_count == 0


async def test_refresh_ticket_of_another_user_gets_403(upstream: respx.MockRouter) -> None:
    users = {"/": {"data-customer-id": "alice"}, URL: {"data-customer-id": "bob"}}
    middleware = wrap(html_app(PAGE), identify=lambda scope: users[scope["path"]])
    alice_ticket = await page_ticket(middleware)
    status, _ = status_and_json(await call_asgi(middleware, refresh_scope(alice_ticket)))
    assert status == 403


async def test_refresh_expired_ticket_gets_403(upstream: respx.MockRouter) -> None:
    middleware = wrap(html_app(PAGE), ticket_max_age=60)
    ticket = await page_ticket(middleware)
    signer: TicketSigner = middleware.tickets
    assert signer.verify(ticket, _identity_key(middleware))
    # The same payload, signed 61 s in the past.
    serializer = signer._serializer
    old = URLSafeTimedSerializer(
        serializer.secret_keys[-1], salt=serializer.salt, signer_kwargs=serializer.signer_kwargs
    )
    with mock.patch("itsdangerous.timed.time.time", return_value=time.time() - 61):
        stale = old.dumps({"i": _identity_key(middleware)})
    assert not signer.verify(stale, _identity_key(middleware))
    status, _ = status_and_json(await call_asgi(middleware, refresh_scope(stale)))
    assert status == 403


async def test_ticket_signed_with_another_salt_or_key_is_refused(
    upstream: respx.MockRouter,
) -> None:
    middleware = wrap(html_app(PAGE), secret_key="s" * 32)
    key = _identity_key(middleware)
    other_salt = URLSafeTimedSerializer("s" * 32, salt="other").dumps({"i": key})
    other_key = TicketSigner("t" * 32, max_age=60).issue(key)
    for forged in (other_salt, other_key):
        status, _ = status_and_json(await call_asgi(middleware, refresh_scope(forged)))
        assert status == 403


async def test_refresh_upstream_failure_gets_503_without_detail(
    upstream: respx.MockRouter,
) -> None:
    now = [0.0]
    middleware = wrap(html_app(PAGE), clock=lambda: now[0])
    ticket = await page_ticket(middleware)
    now[0] = 800.0
    upstream["token"].mock(return_value=httpx.Response(500, text="internal detail"))
    messages = await call_asgi(middleware, refresh_scope(ticket))
    status, payload = status_and_json(messages)
    assert (status, payload) == (503, {"error": "token_unavailable"})
    assert b"internal detail" not in body_of(messages)
    assert dict(headers_of(messages))[b"cache-control"] == b"no-store"


async def test_refresh_endpoint_respects_endpoint_prefix(upstream: respx.MockRouter) -> None:
    middleware = wrap(html_app(PAGE), endpoint_prefix="/widgets")
    body = body_of(await call_asgi(middleware, http_scope()))
    assert b'data-rai-endpoint="/widgets/embed-token"' in body
    ticket = re.search(rb'data-rai-ticket="([^"]+)"', body)
    assert ticket is not None
    scope = refresh_scope(ticket.group(1).decode(), path="/widgets/embed-token")
    assert (await call_asgi(middleware, scope))[0]["status"] == 200
    # The default path is now the app's: it answers with its page.
    old = await call_asgi(middleware, refresh_scope("x"))
    assert body_of(old).startswith(b'<div id="returning-ai-widget-2">')  # the second page


async def test_refresh_endpoint_under_root_path(upstream: respx.MockRouter) -> None:
    middleware = wrap(html_app(PAGE))
    scope = http_scope()
    scope["root_path"] = "/app"
    body = body_of(await call_asgi(middleware, scope))
    assert b'data-rai-endpoint="/app/_rai/embed-token"' in body


def _identity_key(middleware: Any) -> str:
    return Identity.create(USER, middleware.core.identity_secret).key
