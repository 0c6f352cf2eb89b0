"""Modes ``iframe`` (Authenticated Widgets) and ``attributes`` (Attribute Auth)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from typing import Any

import httpx
import pytest
import respx

from rai_middleware import ConfigurationError, ReturningAIMiddleware
from rai_middleware._identity import Identity
from rai_middleware._modes._height import HEIGHT_SCRIPT
from rai_middleware._modes.iframe import IFRAME_AUTH_SCRIPT, IframeAuth, render_iframe_auth
from tests.conftest import (
    Message,
    SecretSpy,
    body_of,
    call_asgi,
    headers_of,
    html_app,
    http_scope,
    runtime_script,
)

pytestmark = pytest.mark.anyio

WIDGETS = "https://prod-widgets.returning.ai"
SIGNIN_URL = f"{WIDGETS}/widget/community-123/signin"
API_KEY = "widget-api-key-WWWWWWWWWWWWWWWWWWWW"
USER = {"data-email": "a@b.c", "data-customer-id": "c-42"}
PAGE = (
    b'<rai-placeholder widget="channel" widget-id="W1" height="600px" class="chat" '
    b'theme="dark">fallback</rai-placeholder>'
    b'<rai-placeholder widget="store" widget-id="S 2"/>'
)


@pytest.fixture
def signin() -> Any:
    with respx.mock(assert_all_called=False) as router:
        counter = iter(range(1, 1_000_000))

        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"token": f"legacy-{next(counter)}"})

        router.post(SIGNIN_URL, name="signin").mock(side_effect=answer)
        yield router


def iframe_site(app: Any, **options: Any) -> ReturningAIMiddleware:
    options.setdefault("community_id", "community-123")
    options.setdefault("widget_api_key", API_KEY)
    options.setdefault("identify", lambda scope: dict(USER))
    return ReturningAIMiddleware(app, **options)


def data_block(body: bytes) -> dict[str, Any]:
    match = re.search(rb'<script type="application/json">(.*?)</script>', body)
    assert match is not None
    loaded: dict[str, Any] = json.loads(match.group(1))
    return loaded


# -- iframe ---------------------------------------------------------------------------


async def test_widget_api_key_alone_selects_iframe_mode() -> None:
    assert iframe_site(html_app(b"")).settings.mode == "iframe"


async def test_iframe_mode_needs_community_id_and_key() -> None:
    with pytest.raises(ConfigurationError, match="RAI_WIDGET_API_KEY"):
        ReturningAIMiddleware(html_app(b""), mode="iframe", community_id="c")
    with pytest.raises(ConfigurationError, match="RAI_COMMUNITY_ID"):
        ReturningAIMiddleware(html_app(b""), mode="iframe", widget_api_key="k")


async def test_unknown_mode_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="mode must be one of"):
        ReturningAIMiddleware(html_app(b""), mode="magic")


async def test_iframe_page_exact_markup_and_one_auth_script(signin: respx.MockRouter) -> None:
    middleware = iframe_site(html_app(PAGE))
    body = body_of(await call_asgi(middleware, http_scope()))
    iframe_one = (
        b'<iframe src="https://prod-widgets.returning.ai/channel-widget/W1" '
        b'allow="clipboard-write" height="600px" class="chat"></iframe>'
    )
    iframe_two = (
        b'<iframe src="https://prod-widgets.returning.ai/store-widget/S%202" '
        b'allow="clipboard-write"></iframe>'
    )
    assert body.startswith(iframe_one + b'<script type="application/json">')
    height = (
        b'<script data-rai-origin="https://prod-widgets.returning.ai" '
        b'data-rai-frames="https://prod-widgets.returning.ai/">'
        + HEIGHT_SCRIPT.encode()
        + b"</script>"
    )
    data = data_block(body)
    runtime = runtime_script(
        frames=True,
        ticket=data["ticket"],
        token="legacy-1",
        expires_in=data["expiresIn"],
        endpoint="/_rai/signin",
        widgets_base="https://prod-widgets.returning.ai",
    )
    auth_script = b"<script>" + IFRAME_AUTH_SCRIPT.encode() + b"</script>"
    assert body.endswith(auth_script + height + runtime + iframe_two)
    assert data["token"] == "legacy-1"
    assert data["origin"] == "https://prod-widgets.returning.ai"
    assert data["endpoint"] == "/_rai/signin"
    assert 890 <= data["expiresIn"] <= 900
    assert middleware.tickets.verify(data["ticket"], _key(middleware))
    assert b"legacy-1" not in body.split(b"<script")[0]  # not in any URL
    assert signin["signin"].call_count == 1


async def test_iframe_signin_request_shape(signin: respx.MockRouter) -> None:
    await call_asgi(iframe_site(html_app(PAGE)), http_scope())
    request = signin["signin"].calls.last.request
    assert request.method == "POST"
    assert request.headers["returningai-api-key"] == API_KEY
    assert request.headers["email"] == "a@b.c"
    assert request.content == b""


async def test_iframe_token_lifetime_comes_from_jwt_exp(signin: respx.MockRouter) -> None:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": time.time() + 600}).encode())
    token = "h." + claims.decode().rstrip("=") + ".s"
    signin["signin"].mock(return_value=httpx.Response(200, json={"token": token}))
    body = body_of(await call_asgi(iframe_site(html_app(PAGE)), http_scope()))
    assert 590 <= data_block(body)["expiresIn"] <= 600


async def test_iframe_data_block_is_safe_against_script_breakout(
    signin: respx.MockRouter,
) -> None:
    signin["signin"].mock(
        return_value=httpx.Response(200, json={"token": "a</script><!--<script>&'"})
    )
    body = body_of(await call_asgi(iframe_site(html_app(PAGE)), http_scope()))
    block = re.search(rb'<script type="application/json">(.*?)</script>', body)
    assert block is not None
    assert b"<" not in block.group(1) and b">" not in block.group(1)
    assert json.loads(block.group(1))["token"] == "a</script><!--<script>&'"
    # the data block, the auth and the height scripts, the runtime
    assert body.count(b"</script>") == 4
    assert b"a</script><!--" not in body


def test_iframe_data_block_escapes_line_separators() -> None:
    auth = IframeAuth(
        token="t\u2028\u2029", expires_in=1, widgets_origin="o", refresh_url="/r", ticket="x"
    )
    rendered = render_iframe_auth(auth)
    assert "\u2028" not in rendered and "\u2029" not in rendered
    block = rendered.split(">", 1)[1].split("</script>", 1)[0]
    assert json.loads(block)["token"] == "t\u2028\u2029"


async def test_iframe_identity_without_email_is_anonymous_with_a_log_line(
    signin: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = iframe_site(html_app(PAGE), identify=lambda s: {"data-customer-id": "c"})
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        body = body_of(await call_asgi(middleware, http_scope()))
    assert body == b"fallback"
    assert signin["signin"].call_count == 0
    assert "'data-email'" in caplog.text


async def test_iframe_placeholder_without_widget_id_serves_fallback(
    signin: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    page = b'<rai-placeholder widget="store">fb</rai-placeholder>'
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        body = body_of(await call_asgi(iframe_site(html_app(page)), http_scope()))
    assert body == b"fb"
    assert "needs a widget-id attribute" in caplog.text


async def test_iframe_widget_without_segment_serves_fallback(
    signin: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    page = b'<rai-placeholder widget="referral" widget-id="x">fb</rai-placeholder>'
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        body = body_of(await call_asgi(iframe_site(html_app(page)), http_scope()))
    assert body == b"fb"
    assert "iframe_segments" in caplog.text


async def test_iframe_segments_are_configurable(signin: respx.MockRouter) -> None:
    middleware = iframe_site(
        html_app(b'<rai-placeholder widget="store" widget-id="1"/>'),
        iframe_segments={"store": "store"},
        widgets_base_url="https://sgtr-eks-widgets.genesiv.org/",
    )
    assert middleware.settings.token_url == (
        "https://sgtr-eks-widgets.genesiv.org/widget/community-123/signin"
    )
    with respx.mock:
        respx.post(middleware.settings.token_url).mock(
            return_value=httpx.Response(200, json={"token": "t"})
        )
        body = body_of(await call_asgi(middleware, http_scope()))
    assert body.startswith(b'<iframe src="https://sgtr-eks-widgets.genesiv.org/store/1"')
    assert data_block(body)["origin"] == "https://sgtr-eks-widgets.genesiv.org"


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(401, json={"message": "Unauthorized"}),
        httpx.Response(200, json={"nope": 1}),
        httpx.Response(200, text="<html>"),
        httpx.ConnectError("refused"),
    ],
)
async def test_iframe_upstream_failure_serves_fallback(
    signin: respx.MockRouter, answer: Any
) -> None:
    if isinstance(answer, Exception):
        signin["signin"].mock(side_effect=answer)
    else:
        signin["signin"].mock(return_value=answer)
    body = body_of(await call_asgi(iframe_site(html_app(PAGE)), http_scope()))
    assert body == b"fallback"


async def test_iframe_single_flight_for_concurrent_pages(signin: respx.MockRouter) -> None:
    middleware = iframe_site(html_app(PAGE))
    await asyncio.gather(*(call_asgi(middleware, http_scope()) for _ in range(50)))
    assert signin["signin"].call_count == 1


async def test_iframe_signin_endpoint_status_codes(signin: respx.MockRouter) -> None:
    middleware = iframe_site(html_app(PAGE))
    ticket = data_block(body_of(await call_asgi(middleware, http_scope())))["ticket"]

    def scope(method: str = "POST", extra: list[tuple[bytes, bytes]] | None = None) -> Any:
        headers = [(b"host", b"testserver"), (b"x-rai-ticket", ticket.encode()), *(extra or [])]
        return http_scope("/_rai/signin", method=method, headers=headers)

    ok = await call_asgi(middleware, scope())
    assert ok[0]["status"] == 200
    payload = json.loads(body_of(ok))
    assert payload["token"] == "legacy-1" and 890 <= payload["expiresIn"] <= 900
    assert (b"cache-control", b"no-store") in headers_of(ok)
    assert (await call_asgi(middleware, scope("GET")))[0]["status"] == 405
    cross = [(b"sec-fetch-site", b"cross-site")]
    assert (await call_asgi(middleware, scope(extra=cross)))[0]["status"] == 403
    evil = [(b"origin", b"https://prod-widgets.returning.ai")]
    assert (await call_asgi(middleware, scope(extra=evil)))[0]["status"] == 403
    bad = http_scope("/_rai/signin", method="POST", headers=[(b"x-rai-ticket", b"forged")])
    assert (await call_asgi(middleware, bad))[0]["status"] == 403
    anonymous = iframe_site(html_app(PAGE), identify=lambda s: None)
    assert (await call_asgi(anonymous, scope()))[0]["status"] == 401
    # The access-key endpoint does not exist in this mode: the app answers it.
    assert body_of(await call_asgi(middleware, http_scope("/_rai/embed-token"))) != b""


async def test_iframe_signin_endpoint_503_when_no_token(signin: respx.MockRouter) -> None:
    now = [0.0]
    middleware = iframe_site(html_app(PAGE), clock=lambda: now[0])
    ticket = data_block(body_of(await call_asgi(middleware, http_scope())))["ticket"]
    now[0] = 1000.0
    signin["signin"].mock(return_value=httpx.Response(500))
    headers = [(b"host", b"testserver"), (b"x-rai-ticket", ticket.encode())]
    messages = await call_asgi(middleware, http_scope("/_rai/signin", "POST", headers))
    assert messages[0]["status"] == 503
    assert json.loads(body_of(messages)) == {"error": "token_unavailable"}


async def test_iframe_no_secret_in_page_logs_or_reprs(
    signin: respx.MockRouter, all_logs: SecretSpy
) -> None:
    middleware = iframe_site(html_app(PAGE))
    messages: list[Message] = await call_asgi(middleware, http_scope())
    signin["signin"].mock(return_value=httpx.Response(401))
    await call_asgi(iframe_site(html_app(PAGE)), http_scope())
    assert API_KEY.encode() not in body_of(messages)
    for text in (*all_logs.lines, repr(middleware), repr(middleware.settings)):
        assert API_KEY not in text


# -- attributes -----------------------------------------------------------------------


def attributes_site(app: Any, **options: Any) -> ReturningAIMiddleware:
    options.setdefault("identify", lambda scope: dict(USER))
    return ReturningAIMiddleware(app, mode="attributes", **options)


async def test_attributes_mode_needs_no_secret_and_renders_the_loader_snippet() -> None:
    middleware = attributes_site(html_app(PAGE))
    with respx.mock(assert_all_mocked=True):
        body = body_of(await call_asgi(middleware, http_scope()))
    assert body == (
        b'<div id="returning-ai-widget-1"></div>'
        b'<script src="https://prod-widgets.returning.ai/widget-loader.js" data-widget-id="W1" '
        b'data-widget-type="channel" data-container="returning-ai-widget-1" '
        b'data-api-url="https://prod-widgets.returning.ai" '
        b'data-widget-url="https://prod-widgets.returning.ai/channel-widget" '
        b'data-height="600px" data-class="chat" data-theme="dark" '
        b'data-email="a@b.c" data-customer-id="c-42"></script>'
        b'<div id="returning-ai-widget-2"></div>'
        b'<script src="https://prod-widgets.returning.ai/widget-loader.js" data-widget-id="S 2" '
        b'data-widget-type="store" data-container="returning-ai-widget-2" '
        b'data-api-url="https://prod-widgets.returning.ai" '
        b'data-widget-url="https://prod-widgets.returning.ai/store-widget" '
        b'data-email="a@b.c" data-customer-id="c-42"></script>'
    )
    assert middleware.settings.refresh_path is None


async def test_attributes_mode_escapes_identity_and_uses_the_nonce() -> None:
    hostile = {"data-email": '"><script>alert(1)</script>', "data-customer-id": "c"}
    app = html_app(
        b'<rai-placeholder widget="custom" widget-id="X" data-email="forged"/>',
        headers=[(b"content-security-policy", b"script-src 'nonce-n1'")],
    )
    middleware = attributes_site(
        app, identify=lambda s: hostile, loader_url="https://l.example/l.js"
    )
    body = body_of(await call_asgi(middleware, http_scope()))
    assert b'<script src="https://l.example/l.js" nonce="n1" ' in body
    assert b'data-email="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in body
    assert b"forged" not in body
    headers = headers_of(await call_asgi(middleware, http_scope()))
    assert (b"cache-control", b"private, no-store") in headers


async def test_attributes_mode_anonymous_gets_fallback() -> None:
    body = body_of(
        await call_asgi(attributes_site(html_app(PAGE), identify=lambda s: None), http_scope())
    )
    assert body == b"fallback"


async def test_identifier_key_that_is_not_attribute_safe_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = attributes_site(html_app(PAGE), identify=lambda s: {'data-x" onload="y': "1"})
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        body = body_of(await call_asgi(middleware, http_scope()))
    assert body == b"fallback"
    assert "onload" not in body.decode()


def _key(middleware: ReturningAIMiddleware) -> str:
    return Identity.create(USER, middleware.core.identity_secret).key


@pytest.mark.parametrize("mode", ["access_key", "iframe"])
async def test_xhtml_page_stays_well_formed_xml(signin: respx.MockRouter, mode: str) -> None:
    from xml.dom import minidom

    page = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<html xmlns="http://www.w3.org/1999/xhtml"><head><title>t</title></head><body>'
        b'<rai-placeholder widget="channel" widget-id="W1" channel-id="c">fb</rai-placeholder>'
        b"</body></html>"
    )
    app = html_app(page, content_type=b"application/xhtml+xml; charset=utf-8")
    if mode == "iframe":
        middleware = iframe_site(app)
    else:
        middleware = ReturningAIMiddleware(
            app,
            community_id="c",
            access_id="i",
            access_key="k",
            identify=lambda s: dict(USER),
        )
        signin.post("https://api-v2.returning.ai/v2/api/widget-access-keys/token").mock(
            return_value=httpx.Response(200, json={"data": {"embedToken": "t.o.k"}})
        )
    body = body_of(await call_asgi(middleware, http_scope()))
    assert b"<![CDATA[" in body
    minidom.parseString(body)  # raises if the rewritten page is not well-formed XML


def test_the_token_service_of_a_mode_without_tokens_has_a_repr() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        pass

    middleware = ReturningAIMiddleware(app, mode="attributes")
    assert middleware.settings.token_url is None
    assert repr(middleware.tokens) == "TokenService(TokenPolicy(api=None, cached=0))"
