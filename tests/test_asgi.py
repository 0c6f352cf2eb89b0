"""The ASGI middleware, end to end: through httpx.ASGITransport and a strict raw harness."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from typing import Any

import httpx
import pytest
import respx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from rai_middleware._modes.access_key import REFRESH_SCRIPT
from tests.conftest import (
    COMMUNITY_ID,
    TOKEN_URL,
    USER,
    body_of,
    call_asgi,
    headers_of,
    html_app,
    http_scope,
    runtime_script,
    wrap,
)

pytestmark = pytest.mark.anyio

SDK = "https://unpkg.com/@returningai/widget-sdk@1.5.1/dist/rai-widget.iife.js"

PAGE = (
    b"<html><body>\n"
    b'<rai-placeholder widget="channel" channel-id="abc" theme="dark" height="700px">\n'
    b'  <a href="/login">Sign in to join the chat</a>\n'
    b"</rai-placeholder>\n"
    b'<rai-placeholder widget="store"></rai-placeholder>\n'
    b'<rai-placeholder widget="custom" widget-id="NjlmMzJiZTk3MjMzMzkwZjVhYzQzNzk1" />\n'
    b"</body></html>"
)


def scripts(ticket: str = "TICKET", nonce: str = "", *, fragment: bool = False) -> bytes:
    """What follows a response's first widget: the SDK tag (not in a fragment: the runtime
    loads the SDK once per document), the refresh script and the runtime (with the page's
    token ``tok-1``, 900 s on the tests' fixed clock)."""
    nonce_attr = f' nonce="{nonce}"' if nonce else ""
    sdk = "" if fragment else f'<script src="{SDK}"{nonce_attr} data-turbo-eval="false"></script>'
    return (
        f"{sdk}"
        f'<script{nonce_attr} data-rai-ticket="{ticket}" data-rai-endpoint="/_rai/embed-token">'
        f"{REFRESH_SCRIPT}</script>"
    ).encode() + runtime_script(
        ticket=ticket,
        token="tok-1",
        expires_in=900,
        nonce=html.unescape(nonce),
        sdk_tag=not fragment,
    )


FIXED_CLOCK = {"clock": lambda: 1000.0}


class _FixedTickets:
    def issue(self, key: str) -> str:
        return "TICKET"


def fixed_ticket(middleware: Any) -> None:
    """Tickets carry a timestamp; pin them so that whole pages can be compared."""
    middleware.core.tickets = _FixedTickets()


def signed_in_page(token: bytes = b"tok-1") -> bytes:
    return (
        b"<html><body>\n"
        b'<div id="returning-ai-widget-1"><rai-channel-widget community-id="community-123" '
        b'channel-id="abc" theme="dark" height="700px" embed-token="' + token + b'">'
        b"</rai-channel-widget></div>" + scripts() + b"\n"
        b'<div id="returning-ai-widget-2"><rai-store-widget community-id="community-123" '
        b'embed-token="' + token + b'"></rai-store-widget></div>\n'
        b'<div id="returning-ai-widget-3"><rai-custom-widget community-id="community-123" '
        b'widget-id="NjlmMzJiZTk3MjMzMzkwZjVhYzQzNzk1" embed-token="' + token + b'">'
        b"</rai-custom-widget></div>\n"
        b"</body></html>"
    )


def embed_token(body: bytes) -> bytes:
    match = re.search(rb'embed-token="([^"]*)"', body)
    assert match is not None
    return match.group(1)


ANONYMOUS_PAGE = (
    b'<html><body>\n\n  <a href="/login">Sign in to join the chat</a>\n\n\n\n</body></html>'
)


# -- the page -------------------------------------------------------------------------


async def test_signed_in_page_gets_exact_widget_markup(upstream: respx.MockRouter) -> None:
    middleware = wrap(html_app(PAGE), **FIXED_CLOCK)
    fixed_ticket(middleware)
    messages = await call_asgi(middleware, http_scope())
    assert body_of(messages) == signed_in_page()
    assert upstream["token"].call_count == 1


async def test_anonymous_page_gets_fallback_and_no_upstream_call(
    upstream: respx.MockRouter,
) -> None:
    middleware = wrap(html_app(PAGE), identify=lambda scope: None)
    messages = await call_asgi(middleware, http_scope())
    assert body_of(messages) == ANONYMOUS_PAGE
    assert upstream["token"].call_count == 0
    assert (b"cache-control", b"private, no-store") not in headers_of(messages)


async def test_upstream_request_carries_credentials_and_identifiers(
    upstream: respx.MockRouter,
) -> None:
    await call_asgi(wrap(html_app(PAGE)), http_scope())
    request = upstream["token"].calls.last.request
    assert request.url == TOKEN_URL
    assert request.url.query == b""
    assert json.loads(request.content) == {
        "accessId": "access-id-AAAAAAAAAAAAAAAAAAAA",
        "accessKey": "access-key-SSSSSSSSSSSSSSSSSSSSSSSS",
        "userIdentifiers": USER,
    }


async def test_all_widgets_of_a_page_share_one_token_and_scripts_appear_once(
    upstream: respx.MockRouter,
) -> None:
    body = body_of(await call_asgi(wrap(html_app(PAGE)), http_scope()))
    assert body.count(b'embed-token="tok-1"') == 3
    assert body.count(b'<script src="' + SDK.encode()) == 1
    assert body.count(b'data-rai-ticket="') == 1
    assert body.count(b"data-rai=") == 1
    assert b"rai-placeholder" not in body


async def test_hostile_attribute_values_are_escaped(upstream: respx.MockRouter) -> None:
    page = b'<rai-placeholder widget="store" title="&quot;><script>alert(1)</script>" x=\'a"b\'/>'
    middleware = wrap(html_app(page), **FIXED_CLOCK)
    fixed_ticket(middleware)
    body = body_of(await call_asgi(middleware, http_scope()))
    assert body == (
        b'<div id="returning-ai-widget-1"><rai-store-widget community-id="community-123" '
        b'title="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" x="a&quot;b" '
        b'embed-token="tok-1"></rai-store-widget></div>' + scripts(fragment=True)
    )


async def test_hostile_token_from_upstream_is_escaped(upstream: respx.MockRouter) -> None:
    upstream["token"].mock(
        return_value=httpx.Response(200, json={"data": {"embedToken": 'a"><b>&x'}})
    )
    app = html_app(b'<rai-placeholder widget="store"/>')
    body = body_of(await call_asgi(wrap(app), http_scope()))
    assert b'embed-token="a&quot;&gt;&lt;b&gt;&amp;x"' in body


async def test_placeholder_in_comment_is_left_alone(upstream: respx.MockRouter) -> None:
    page = b'<!-- <rai-placeholder widget="store"></rai-placeholder> --><p>x</p>'
    messages = await call_asgi(wrap(html_app(page)), http_scope())
    assert body_of(messages) == page
    assert upstream["token"].call_count == 0


async def test_placeholder_tag_and_widget_match_case_insensitively(
    upstream: respx.MockRouter,
) -> None:
    page = b'<RAI-Placeholder WIDGET="Store"></Rai-PlaceHolder>'
    middleware = wrap(html_app(page), **FIXED_CLOCK)
    fixed_ticket(middleware)
    body = body_of(await call_asgi(middleware, http_scope()))
    assert body == (
        b'<div id="returning-ai-widget-1"><rai-store-widget community-id="community-123" '
        b'embed-token="tok-1"></rai-store-widget></div>' + scripts(fragment=True)
    )


async def test_placeholder_tag_is_configurable(upstream: respx.MockRouter) -> None:
    page = b'<my-widget widget="store"></my-widget><rai-placeholder widget="store"/>'
    middleware = wrap(html_app(page), placeholder_tag="my-widget", **FIXED_CLOCK)
    fixed_ticket(middleware)
    body = body_of(await call_asgi(middleware, http_scope()))
    assert body.startswith(b'<div id="returning-ai-widget-1"><rai-store-widget ')
    assert body.endswith(b'<rai-placeholder widget="store"/>')


async def test_placeholder_community_id_overrides_configuration(
    upstream: respx.MockRouter,
) -> None:
    page = b'<rai-placeholder widget="store" community-id="other"/>'
    body = body_of(await call_asgi(wrap(html_app(page)), http_scope()))
    assert b'<rai-store-widget community-id="other" embed-token="tok-1">' in body
    widget = body.split(b"</div>", 1)[0]
    assert COMMUNITY_ID.encode() not in widget  # (the runtime has it, for other widgets)


async def test_unknown_widget_serves_fallback_and_logs_error(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    page = b'<p>a</p><rai-placeholder widget="nope">fallback</rai-placeholder>'
    with caplog.at_level(logging.DEBUG, logger="rai_middleware"):
        messages = await call_asgi(wrap(html_app(page)), http_scope())
    assert body_of(messages) == b"<p>a</p>fallback"
    assert upstream["token"].call_count == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "unknown widget 'nope'" in errors[0].getMessage()


async def test_missing_widget_attribute_serves_fallback_and_logs_error(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    page = b"<rai-placeholder>fallback</rai-placeholder>"
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        messages = await call_asgi(wrap(html_app(page)), http_scope())
    assert body_of(messages) == b"fallback"
    assert "has no widget attribute" in caplog.records[0].getMessage()


async def test_page_without_placeholder_is_byte_identical_with_its_headers(
    upstream: respx.MockRouter,
) -> None:
    app = html_app(b"<html><body>hello</body></html>", headers=[(b"etag", b'"v1"')])
    bare = await call_asgi(app, http_scope())
    wrapped = await call_asgi(wrap(app), http_scope())
    assert wrapped == bare
    assert upstream["token"].call_count == 0


@pytest.mark.parametrize(
    ("status", "content_type", "extra"),
    [
        (200, b"application/json", []),
        (404, b"text/html", []),
        (500, b"text/html", []),
        (304, b"text/html", []),
        (204, b"text/html", []),
        (206, b"text/html", [(b"content-range", b"bytes 0-9/100")]),
        (301, b"text/html", [(b"location", b"/elsewhere")]),
        (101, b"text/html", []),
        (200, b"image/png", []),
        (200, b"text/html", [(b"content-encoding", b"br")]),
        (200, b"text/html", [(b"content-disposition", b"attachment; filename=a.html")]),
        (200, b"text/html; charset=utf-16", []),
    ],
)
async def test_non_candidate_responses_pass_through_byte_identical(
    upstream: respx.MockRouter, status: int, content_type: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    app = html_app(PAGE, status=status, content_type=content_type, headers=extra)
    bare = await call_asgi(app, http_scope())
    wrapped = await call_asgi(wrap(app), http_scope())
    assert wrapped == bare
    assert upstream["token"].call_count == 0


async def test_head_request_passes_through_and_mints_nothing(upstream: respx.MockRouter) -> None:
    app = html_app(PAGE)
    bare = await call_asgi(app, http_scope(method="HEAD"))
    wrapped = await call_asgi(wrap(app), http_scope(method="HEAD"))
    assert wrapped == bare
    assert upstream["token"].call_count == 0


async def test_range_request_answered_with_206_is_untouched(upstream: respx.MockRouter) -> None:
    app = html_app(PAGE[:40], status=206, headers=[(b"content-range", b"bytes 0-39/500")])
    scope = http_scope(headers=[(b"host", b"testserver"), (b"range", b"bytes=0-39")])
    assert await call_asgi(wrap(app), scope) == await call_asgi(app, scope)
    assert upstream["token"].call_count == 0


async def test_post_page_is_rewritten(upstream: respx.MockRouter) -> None:
    body = body_of(await call_asgi(wrap(html_app(PAGE)), http_scope(method="POST")))
    assert b"rai-placeholder" not in body


async def test_xhtml_and_content_type_parameters_are_candidates(upstream: respx.MockRouter) -> None:
    for content_type in (b"application/xhtml+xml", b"TEXT/HTML; Charset=UTF-8"):
        app = html_app(b'<rai-placeholder widget="store"/>', content_type=content_type)
        body = body_of(await call_asgi(wrap(app), http_scope()))
        assert body.startswith(b'<div id="returning-ai-widget-1">')


async def test_websocket_and_other_scopes_pass_through(upstream: respx.MockRouter) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)
        await send({"type": "websocket.close", "code": 1000})

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:  # pragma: no cover - the app never reads
        return {}

    scope = {"type": "websocket", "path": "/_rai/embed-token", "headers": []}
    await wrap(app)(scope, receive, send)
    assert seen == [scope]
    assert sent == [{"type": "websocket.close", "code": 1000}]


# -- headers --------------------------------------------------------------------------


async def test_rewritten_page_has_exact_content_length(upstream: respx.MockRouter) -> None:
    messages = await call_asgi(wrap(html_app(PAGE)), http_scope())
    lengths = [value for name, value in headers_of(messages) if name == b"content-length"]
    assert lengths == [str(len(body_of(messages))).encode()]


async def test_token_page_is_private_uncacheable_and_loses_validators(
    upstream: respx.MockRouter,
) -> None:
    app = html_app(
        PAGE,
        headers=[
            (b"ETag", b'"abc"'),
            (b"Last-Modified", b"Wed, 21 Oct 2015 07:28:00 GMT"),
            (b"Cache-Control", b"public, max-age=600"),
            (b"Vary", b"Accept-Encoding"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ],
    )
    headers = headers_of(await call_asgi(wrap(app), http_scope()))
    names = [name.lower() for name, _ in headers]
    assert b"etag" not in names
    assert b"last-modified" not in names
    assert [v for n, v in headers if n.lower() == b"cache-control"] == [b"private, no-store"]
    assert [v for n, v in headers if n.lower() == b"vary"] == [
        b"Accept-Encoding, Cookie, Authorization"
    ]
    assert [v for n, v in headers if n.lower() == b"set-cookie"] == [b"a=1", b"b=2"]


async def test_anonymous_rewritten_page_varies_on_cookie_but_stays_cacheable(
    upstream: respx.MockRouter,
) -> None:
    app = html_app(PAGE, headers=[(b"cache-control", b"max-age=60")])
    headers = headers_of(await call_asgi(wrap(app, identify=lambda s: None), http_scope()))
    assert (b"cache-control", b"max-age=60") in headers
    assert (b"vary", b"Cookie, Authorization") in headers


async def test_headers_given_as_tuple_or_generator_are_handled(upstream: respx.MockRouter) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = ((b"Content-Type", b"text/html"), (b"X-Extra", b"1"))
        await send({"type": "http.response.start", "status": 200, "headers": (h for h in headers)})
        await send({"type": "http.response.body", "body": b'<rai-placeholder widget="store"/>'})

    messages = await call_asgi(wrap(app), http_scope())
    assert (b"X-Extra", b"1") in headers_of(messages)
    assert body_of(messages).startswith(b'<div id="returning-ai-widget-1">')


# -- tokens and upstream faults -------------------------------------------------------


async def test_one_upstream_call_for_200_concurrent_requests_of_one_user(
    upstream: respx.MockRouter,
) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.05)
        return httpx.Response(200, json={"data": {"embedToken": "shared", "expiresIn": 900}})

    upstream["token"].mock(side_effect=slow)
    middleware = wrap(html_app(PAGE))
    bodies = await asyncio.gather(*(call_asgi(middleware, http_scope()) for _ in range(200)))
    assert upstream["token"].call_count == 1
    assert all(body_of(b).count(b'embed-token="shared"') == 3 for b in bodies)


async def test_one_upstream_call_per_user_for_50_users(upstream: respx.MockRouter) -> None:
    async def per_user(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        user = json.loads(request.content)["userIdentifiers"]["data-customer-id"]
        return httpx.Response(200, json={"data": {"embedToken": f"token-of-{user}"}})

    upstream["token"].mock(side_effect=per_user)
    middleware = wrap(
        html_app(b'<rai-placeholder widget="store"/>'),
        identify=lambda scope: {"data-customer-id": scope["path"].strip("/")},
    )
    requests = [http_scope(f"/user-{n % 50}") for n in range(500)]
    results = await asyncio.gather(*(call_asgi(middleware, scope) for scope in requests))
    assert upstream["token"].call_count == 50
    for scope, messages in zip(requests, results, strict=True):
        user = scope["path"].strip("/")
        assert f'embed-token="token-of-{user}"'.encode() in body_of(messages)


async def test_token_with_less_than_min_ttl_left_is_never_served(
    upstream: respx.MockRouter,
) -> None:
    now = [1000.0]
    middleware = wrap(html_app(b'<rai-placeholder widget="store"/>'), clock=lambda: now[0])
    served = []
    for t in (0, 300, 599, 600.5, 601, 1200, 1201.5):
        now[0] = 1000.0 + t
        served.append(embed_token(body_of(await call_asgi(middleware, http_scope()))))
    assert served == [b"tok-1", b"tok-1", b"tok-1", b"tok-2", b"tok-2", b"tok-2", b"tok-3"]
    assert upstream["token"].call_count == 3


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json={"message": "boom"}),
        httpx.Response(401, json={"message": "Invalid access key"}),
        httpx.Response(200, content=b"<html>not json"),
        httpx.Response(200, json={"success": True, "data": {}}),
        httpx.Response(200, json={"success": True}),
        httpx.Response(200, json=["x"]),
        httpx.Response(200, json={"data": {"embedToken": ""}}),
        httpx.Response(200, json={"data": {"embedToken": "has space"}}),
        httpx.Response(200, json={"data": {"embedToken": "t", "expiresIn": "soon"}}),
        httpx.Response(200, json={"data": {"embedToken": "t", "expiresIn": 60}}),
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("read timed out"),
    ],
)
async def test_upstream_failure_serves_the_fallback_with_200(
    upstream: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
    answer: httpx.Response | Exception,
) -> None:
    if isinstance(answer, Exception):
        upstream["token"].mock(side_effect=answer)
    else:
        upstream["token"].mock(return_value=answer)
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        messages = await call_asgi(wrap(html_app(PAGE)), http_scope())
    assert messages[0]["status"] == 200
    assert body_of(messages) == ANONYMOUS_PAGE
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "Returning.AI token request failed" in warnings[0].getMessage()


async def test_upstream_timeout_is_bounded_by_the_timeout_option(
    upstream: respx.MockRouter,
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)  # pragma: no cover

    upstream["token"].mock(side_effect=hang)
    middleware = wrap(html_app(PAGE), timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    # respx does not apply httpx timeouts to side effects, so the service's own bound is what
    # this measures: it must hold even when the transport does not enforce one.
    messages = await asyncio.wait_for(call_asgi(middleware, http_scope()), 5)
    assert body_of(messages) == ANONYMOUS_PAGE
    assert loop.time() - started < 1.0


async def test_failure_is_not_cached(upstream: respx.MockRouter) -> None:
    upstream["token"].mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(200, json={"data": {"embedToken": "good"}}),
        ]
    )
    middleware = wrap(html_app(PAGE))
    first = body_of(await call_asgi(middleware, http_scope()))
    second = body_of(await call_asgi(middleware, http_scope()))
    assert first == ANONYMOUS_PAGE
    assert b'embed-token="good"' in second
    assert upstream["token"].call_count == 2


async def test_circuit_breaker_stops_calling_upstream_and_logs_once(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    upstream["token"].mock(return_value=httpx.Response(502))
    now = [0.0]
    middleware = wrap(
        html_app(PAGE), failure_threshold=3, failure_cooldown=30, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        for _ in range(20):
            assert body_of(await call_asgi(middleware, http_scope())) == ANONYMOUS_PAGE
    assert upstream["token"].call_count == 3
    assert sum("no token is requested for 30 s" in r.getMessage() for r in caplog.records) == 1
    now[0] = 31.0
    upstream["token"].mock(return_value=httpx.Response(200, json={"data": {"embedToken": "ok"}}))
    assert b'embed-token="ok"' in body_of(await call_asgi(middleware, http_scope()))


# -- identify -------------------------------------------------------------------------


async def test_async_identify_is_awaited(upstream: respx.MockRouter) -> None:
    async def identify(scope: Any) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"data-email": "x@y.z"}

    await call_asgi(wrap(html_app(PAGE), identify=identify), http_scope())
    assert json.loads(upstream["token"].calls.last.request.content)["userIdentifiers"] == {
        "data-email": "x@y.z"
    }


async def test_identify_exception_is_logged_and_visitor_is_anonymous(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    def identify(scope: Any) -> dict[str, str]:
        raise RuntimeError("database down")

    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        messages = await call_asgi(wrap(html_app(PAGE), identify=identify), http_scope())
    assert body_of(messages) == ANONYMOUS_PAGE
    assert upstream["token"].call_count == 0
    record = caplog.records[0]
    assert "raised; treating the visitor as anonymous" in record.getMessage()
    assert record.exc_info is not None


async def test_identifier_key_without_data_prefix_is_an_error_naming_the_key(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        messages = await call_asgi(
            wrap(html_app(PAGE), identify=lambda s: {"customer_id": "1"}), http_scope()
        )
    assert body_of(messages) == ANONYMOUS_PAGE
    assert upstream["token"].call_count == 0
    message = caplog.records[0].getMessage()
    assert "'customer_id'" in message
    assert "'data-*'" in message


async def test_default_identify_reads_starlette_user(upstream: respx.MockRouter) -> None:
    class User:
        is_authenticated = True
        customer_id = None
        id = 7
        email = "u@example.com"

    async def app(scope: Any, receive: Any, send: Any) -> None:
        scope["user"] = User()  # as AuthenticationMiddleware does, further in
        await html_app(b'<rai-placeholder widget="store"/>')(scope, receive, send)

    middleware = wrap(app, identify=None)
    await call_asgi(middleware, http_scope())
    assert json.loads(upstream["token"].calls.last.request.content)["userIdentifiers"] == {
        "data-customer-id": "7",
        "data-email": "u@example.com",
    }


async def test_identify_is_not_called_for_pages_without_placeholders(
    upstream: respx.MockRouter,
) -> None:
    calls = []
    middleware = wrap(html_app(b"<p>plain</p>"), identify=lambda s: calls.append(s))
    await call_asgi(middleware, http_scope())
    assert calls == []


# -- CSP ------------------------------------------------------------------------------


async def test_csp_nonce_from_response_header_is_put_on_injected_scripts(
    upstream: respx.MockRouter,
) -> None:
    csp = b"default-src 'self'; script-src 'nonce-abc123' 'strict-dynamic'"
    app = html_app(
        b'<rai-placeholder widget="store"/>', headers=[(b"content-security-policy", csp)]
    )
    middleware = wrap(app, **FIXED_CLOCK)
    fixed_ticket(middleware)
    body = body_of(await call_asgi(middleware, http_scope()))
    assert body.endswith(scripts(nonce="abc123", fragment=True))


async def test_csp_nonce_from_scope_state_is_used(upstream: respx.MockRouter) -> None:
    scope = http_scope()
    scope["state"]["csp_nonce"] = 'n"1'
    middleware = wrap(html_app(b'<rai-placeholder widget="store"/>'), **FIXED_CLOCK)
    fixed_ticket(middleware)
    body = body_of(await call_asgi(middleware, scope))
    assert body.endswith(scripts(nonce="n&quot;1", fragment=True))


# -- through httpx and Starlette ------------------------------------------------------


async def test_starlette_app_through_asgi_transport(
    upstream: respx.MockRouter, client_factory: Any
) -> None:
    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.decode())

    async def data(request: Request) -> Response:
        return JSONResponse({"html": "<rai-placeholder widget='store'/>"})

    app = Starlette(routes=[Route("/", page), Route("/data", data)])
    client = client_factory(wrap(app))
    response = await client.get("/")
    assert response.status_code == 200
    assert response.content.count(b'embed-token="tok-1"') == 3
    assert response.headers["content-length"] == str(len(response.content))
    data_response = await client.get("/data")
    assert data_response.json() == {"html": "<rai-placeholder widget='store'/>"}


async def test_lifespan_passes_through_and_closes_the_client(upstream: respx.MockRouter) -> None:
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            events.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    middleware = wrap(app)
    incoming = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[Any] = []
    clients: list[httpx.AsyncClient | None] = []

    async def receive() -> Any:
        return next(incoming)

    async def send(message: Any) -> None:
        clients.append(middleware.tokens.http_client)
        sent.append(message["type"])

    await middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert events == ["lifespan.startup", "lifespan.shutdown"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    client = clients[0]
    assert client is not None
    assert client.is_closed
    assert middleware.tokens.http_client is None


async def test_injected_http_client_is_used_and_not_closed(client_factory: Any) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"data": {"embedToken": "injected"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http_client:
        middleware = wrap(html_app(PAGE), http_client=http_client)
        body = body_of(await call_asgi(middleware, http_scope()))
        await middleware.tokens.aclose()
        assert not http_client.is_closed
    assert b'embed-token="injected"' in body
    assert len(calls) == 1


async def test_token_page_drops_cdn_cache_headers(upstream: respx.MockRouter) -> None:
    app = html_app(
        PAGE,
        headers=[
            (b"Surrogate-Control", b"max-age=3600"),
            (b"CDN-Cache-Control", b"max-age=3600"),
            (b"Cloudflare-CDN-Cache-Control", b"max-age=3600"),
            (b"X-Kept", b"1"),
        ],
    )
    headers = headers_of(await call_asgi(wrap(app), http_scope()))
    names = {name.lower() for name, _ in headers}
    assert not names & {b"surrogate-control", b"cdn-cache-control", b"cloudflare-cdn-cache-control"}
    assert (b"X-Kept", b"1") in headers


async def test_a_closed_http_client_fails_open_on_a_streamed_page(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = httpx.AsyncClient()
    await client.aclose()
    chunks = [
        b"<html><body>",
        b"a" * 10,
        b'<rai-placeholder widget="store">fb</rai-placeholder>',
        b"",
    ]
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        messages = await call_asgi(wrap(html_app(chunks), http_client=client), http_scope())
    assert body_of(messages) == b"<html><body>aaaaaaaaaafb"
    assert messages[-1].get("more_body", False) is False
    assert "getting a token failed" in caplog.text


async def test_breaker_reopens_after_one_failure_once_the_cool_down_is_over(
    upstream: respx.MockRouter,
) -> None:
    upstream["token"].mock(return_value=httpx.Response(502))
    now = [0.0]
    middleware = wrap(
        html_app(PAGE), failure_threshold=3, failure_cooldown=30, clock=lambda: now[0]
    )
    for _ in range(3):
        await call_asgi(middleware, http_scope())
    assert upstream["token"].call_count == 3
    now[0] = 31.0  # half-open: one probe
    for _ in range(5):
        await call_asgi(middleware, http_scope())
    assert upstream["token"].call_count == 4  # the probe failed: open again at once


async def test_aclose_closes_the_client_the_middleware_made(upstream: respx.MockRouter) -> None:
    middleware = wrap(html_app(b"<p>x</p>"))
    await middleware.tokens.startup()
    client = middleware.tokens.http_client
    assert client is not None and not client.is_closed
    await middleware.aclose()
    assert client.is_closed
