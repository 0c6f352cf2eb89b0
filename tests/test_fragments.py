"""Issue 13 below the entrances: fragment detection, container ids, the runtime tag in every
mode, and what the runtime carries (escaped)."""

from __future__ import annotations

import html
import json
import logging
import re
from typing import Any

import pytest
import respx

from rai_middleware import ConfigurationError
from rai_middleware._http import fragment_request
from rai_middleware._render import ContainerIds
from rai_middleware._runtime import RUNTIME_SCRIPT, RUNTIME_SCRIPT_FRAMES
from tests.conftest import body_of, call_asgi, html_app, http_scope, runtime_script, wrap

pytestmark = pytest.mark.anyio

SDK = "https://unpkg.com/@returningai/widget-sdk@1.5.1/dist/rai-widget.iife.js"
SDK_TAG = f'<script src="{SDK}" data-turbo-eval="false"></script>'.encode()


def config_of(body: bytes) -> dict[str, Any]:
    match = re.search(rb'data-rai="([^"]+)"', body)
    assert match is not None, body
    config: dict[str, Any] = json.loads(html.unescape(match.group(1).decode()))
    return config


class _FixedTickets:
    def issue(self, key: str) -> str:
        return "TICKET"


# -- fragment detection --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        (None, False),
        ([], False),
        ([(b"hx-request", b"true")], True),
        ([(b"HX-Request", b"true")], True),
        ([(b"hx-request", b"false")], False),
        ([(b"hx-request", b" ")], False),
        ([(b"turbo-frame", b"chat")], True),
        ([(b"x-up-version", b"3.9.5")], True),
        ([(b"accept", b"text/html")], False),
        ({"HTTP_HX_REQUEST": "true"}, True),  # a WSGI environ
        ({"HTTP_TURBO_FRAME": "chat", "PATH_INFO": "/"}, True),
        ({"HTTP_HX_REQUEST": "False"}, False),
        ({"hx-request": "true"}, True),  # a header mapping
        ({"X-Up-Version": ""}, False),
        ({"accept": "text/html"}, False),
    ],
)
def test_fragment_request(headers: Any, fragment: bool) -> None:
    assert fragment_request(headers) is fragment


# -- container ids -------------------------------------------------------------------------


@pytest.mark.random_container_ids
def test_container_ids_have_a_random_prefix_per_middleware() -> None:
    first, second = ContainerIds(), ContainerIds()
    assert re.fullmatch(r"[0-9a-f]{8}", first.prefix)
    assert first.prefix != second.prefix
    assert [first.next(), first.next()] == [f"{first.prefix}-1", f"{first.prefix}-2"]
    assert second.next() == f"{second.prefix}-1"
    assert repr(first) == f"ContainerIds(prefix={first.prefix!r})"


@pytest.mark.random_container_ids
async def test_pages_of_two_middlewares_never_share_a_container_id(
    upstream: respx.MockRouter,
) -> None:
    page = b'<rai-placeholder widget="store"></rai-placeholder>'
    ids = []
    for _ in range(2):
        body = body_of(await call_asgi(wrap(html_app(page)), http_scope()))
        match = re.search(rb'<div id="(returning-ai-widget-[0-9a-f]{8}-1)">', body)
        assert match is not None, body
        ids.append(match.group(1))
    assert ids[0] != ids[1]


def test_container_ids_without_a_prefix_are_plain_numbers() -> None:
    ids = ContainerIds("")
    assert [ids.next(), ids.next()] == ["1", "2"]


# -- the runtime tag -------------------------------------------------------------------------


def test_runtime_tag_must_differ_from_the_placeholder_tag() -> None:
    with pytest.raises(ConfigurationError, match="runtime_tag must differ from placeholder_tag"):
        wrap(html_app(b""), runtime_tag="rai-placeholder")


@pytest.mark.parametrize("option", ["runtime_tag", "placeholder_tag"])
@pytest.mark.parametrize("name", ["script", "style", "textarea", "svg", "plaintext"])
def test_tags_the_page_parses_specially_are_refused(option: str, name: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        wrap(html_app(b""), **{option: name})
    assert str(raised.value) == (
        f"{option} must not be {name!r}: the page's parser reads that element specially, "
        "so the tag would never be found"
    )


async def test_runtime_before_a_widget_carries_the_sdk_once(upstream: respx.MockRouter) -> None:
    page = (
        b"<html><body><rai-runtime></rai-runtime>"
        b'<rai-placeholder widget="store"></rai-placeholder></body></html>'
    )
    middleware = wrap(html_app(page), clock=lambda: 1000.0)
    middleware.core.tickets = _FixedTickets()  # type: ignore[assignment]
    body = body_of(await call_asgi(middleware, http_scope()))
    runtime = runtime_script(token="tok-1", expires_in=900)  # the page's token, seeded
    assert body.startswith(
        b"<html><body>" + SDK_TAG + runtime + b'<div id="returning-ai-widget-1">'
    )
    assert body.count(SDK_TAG) == 1
    assert body.count(b"data-rai=") == 1  # the widget's runtime is the one already there
    assert body.count(b"data-rai-ticket=") == 1  # the refresh script follows the widget


async def test_runtime_after_a_widget_adds_nothing(upstream: respx.MockRouter) -> None:
    page = (
        b'<html><body><rai-placeholder widget="store"></rai-placeholder>'
        b"<rai-runtime></rai-runtime></body></html>"
    )
    body = body_of(await call_asgi(wrap(html_app(page)), http_scope()))
    assert body.endswith(b"</script></body></html>")
    assert body.count(b"data-rai=") == 1
    assert config_of(body)["token"] == "tok-1"


async def test_runtime_tag_is_configurable(upstream: respx.MockRouter) -> None:
    page = b"<html><body><my-runtime></my-runtime><rai-runtime></rai-runtime></body></html>"
    body = body_of(await call_asgi(wrap(html_app(page), runtime_tag="my-runtime"), http_scope()))
    assert body.endswith(b"</script><rai-runtime></rai-runtime></body></html>")
    assert upstream["token"].call_count == 0  # a runtime needs no token


@pytest.mark.parametrize(
    "mode",
    [
        {"mode": "attributes", "community_id": "c"},
        # Proxy frames get their token from the widget route: nothing for a runtime to do.
        {"mode": "proxy", "community_id": "c", "widget_api_key": "widget-key-123456"},
    ],
    ids=["attributes", "proxy"],
)
async def test_runtime_tag_in_a_mode_without_runtime_is_removed_with_one_warning(
    caplog: pytest.LogCaptureFixture, mode: dict[str, str]
) -> None:
    page = b"<html><body><rai-runtime></rai-runtime><p>x</p></body></html>"
    middleware = wrap(html_app(page), **mode)
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        for _ in range(2):
            body = body_of(await call_asgi(middleware, http_scope()))
            assert body == b"<html><body><p>x</p></body></html>"
    warnings = [r.getMessage() for r in caplog.records if "runtime" in r.getMessage()]
    assert warnings == [
        f"<rai-runtime> on /: mode={mode['mode']!r} has no browser runtime (no endpoint); "
        "it is removed"
    ]


async def test_runtime_tag_in_iframe_mode_carries_the_answerer_and_frames_runtime(
    caplog: pytest.LogCaptureFixture,
) -> None:
    page = b"<html><body><rai-runtime></rai-runtime></body></html>"
    middleware = wrap(
        html_app(page),
        mode="iframe",
        widget_api_key="k" * 32,
        identify=lambda scope: {"data-email": "a@b.c"},
    )
    body = body_of(await call_asgi(middleware, http_scope()))
    data = re.search(rb'<script type="application/json">(.*?)</script>', body)
    assert data is not None
    auth = json.loads(data.group(1))
    assert auth["token"] == "" and auth["expiresIn"] == 0  # the answerer asks the endpoint
    assert auth["endpoint"] == "/_rai/signin"
    config = config_of(body)
    assert config["frames"] is True and config["field"] == "token"
    assert config["segments"]["store"] == "store-widget"
    assert RUNTIME_SCRIPT_FRAMES.encode() in body and b"embed-token" not in body


async def test_runtime_in_an_xhtml_page_is_in_cdata(upstream: respx.MockRouter) -> None:
    page = b"<html><body><rai-runtime></rai-runtime></body></html>"
    app = html_app(page, content_type=b"application/xhtml+xml")
    body = body_of(await call_asgi(wrap(app), http_scope()))
    assert b"//<![CDATA[\n" + RUNTIME_SCRIPT.encode() + b"\n//]]></script>" in body


async def test_runtime_configuration_is_escaped(upstream: respx.MockRouter) -> None:
    sdk = 'https://cdn.example/sdk.js?a="><script>alert(1)</script>&b'
    page = b"<html><body><rai-runtime></rai-runtime></body></html>"
    middleware = wrap(html_app(page), sdk_url=sdk, community_id='c"><b>')
    body = body_of(await call_asgi(middleware, http_scope()))
    assert b"<script>alert" not in body and b"<b>" not in body
    config = config_of(body)
    assert config["sdk"] == sdk and config["community"] == 'c"><b>'


async def test_streamed_runtime_then_widget_share_one_ticket_and_one_sdk_tag(
    upstream: respx.MockRouter,
) -> None:
    chunks = [
        b"<html><body><rai-runtime></rai-runtime><p>",
        b'</p><rai-placeholder widget="store"></rai-placeholder></body></html>',
    ]
    app = html_app(chunks, content_length=False)
    body = body_of(await call_asgi(wrap(app), http_scope()))
    assert body.count(SDK_TAG) == 1
    assert body.count(b"data-rai=") == 1
    assert "token" not in config_of(body)  # the runtime left before the token was known
    ticket = re.search(rb'data-rai-ticket="([^"]+)"', body)
    assert ticket is not None
    assert config_of(body)["ticket"] == html.unescape(ticket.group(1).decode())
    assert b'embed-token="tok-1"' in body
    assert upstream["token"].call_count == 1


async def test_a_document_tag_cut_by_a_chunk_end_still_makes_a_page(
    upstream: respx.MockRouter,
) -> None:
    chunks = [b"<ht", b'ml><p>x</p><rai-placeholder widget="store"></rai-placeholder></html>']
    body = body_of(await call_asgi(wrap(html_app(chunks, content_length=False)), http_scope()))
    assert SDK_TAG in body
