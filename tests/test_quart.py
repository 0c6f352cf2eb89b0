"""The ASGI middleware with Quart: ``app.asgi_app = ReturningAIMiddleware(app.asgi_app, ...)``,
as docs/frameworks/quart.md documents it, through Quart's test client and a real server.

Quart's session and ``g`` live in its request context, which an ASGI middleware does not see:
``identify`` reads what it needs from the scope (a header set by an authenticating proxy, or the
signed session cookie, decoded with Quart's own serializer).
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any, cast

import httpx
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("quart")

from itsdangerous import BadSignature
from quart import Quart, Response, session
from werkzeug.http import parse_cookie

from rai_middleware import ReturningAIMiddleware
from rai_middleware.testing import FakeReturningAI
from tests.conftest import serve

pytestmark = pytest.mark.anyio

CREDENTIALS: dict[str, Any] = {
    "community_id": "demo-community",
    "access_id": "demo-access-id",
    "access_key": "demo-access-key",
}
PAGE = (
    '<html><body><rai-placeholder widget="channel">fallback</rai-placeholder>'
    '<rai-placeholder widget="store"/></body></html>'
)
ANONYMOUS = "<html><body>fallback</body></html>"
TOKENS = re.compile(r'embed-token="([^"]+)"')
TICKET = re.compile(r'data-rai-ticket="([^"]+)"')


def header_identify(scope: MutableMapping[str, Any]) -> dict[str, str] | None:
    """Behind an authenticating proxy: the user it vouches for, from a request header."""
    for name, value in scope["headers"]:
        if name == b"x-user" and value:
            return {"data-customer-id": value.decode("latin-1")}
    return None


def session_identify(app: Quart) -> Callable[[MutableMapping[str, Any]], dict[str, str] | None]:
    """The documented recipe (docs/frameworks/quart.md): Quart's signed session cookie,
    checked with Quart's serializer."""

    def identify(scope: MutableMapping[str, Any]) -> dict[str, str] | None:
        interface = app.session_interface
        serializer = interface.get_signing_serializer(app)
        header = b"; ".join(value for name, value in scope["headers"] if name == b"cookie")
        cookie = parse_cookie(header.decode("latin-1")).get(interface.get_cookie_name(app))
        if serializer is None or cookie is None:
            return None
        try:
            data = serializer.loads(
                cookie, max_age=int(app.permanent_session_lifetime.total_seconds())
            )
        except BadSignature:
            return None
        user = data.get("user") if isinstance(data, dict) else None
        return {"data-customer-id": user} if isinstance(user, str) else None

    return identify


def make_app(identify: Callable[[Quart], Any] | None = None, **options: Any) -> Quart:
    app = Quart(__name__)
    app.secret_key = "tests-quart-secret"

    @app.get("/")
    async def home() -> str:
        return PAGE

    @app.get("/stream")
    async def stream() -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(PAGE), 9):
                yield PAGE[start : start + 9].encode()

        return Response(chunks(), mimetype="text/html")

    @app.post("/login")
    async def login() -> str:
        session["user"] = "c-42"
        return "ok"

    @app.get("/json")
    async def as_json() -> dict[str, str]:
        return {"html": PAGE}

    chosen = identify(app) if identify is not None else header_identify
    app.asgi_app = cast(  # type: ignore[method-assign]
        Any,
        ReturningAIMiddleware(cast(Any, app.asgi_app), identify=chosen, **CREDENTIALS, **options),
    )
    return app


def tokens_of(body: str) -> list[str]:
    return [html.unescape(token) for token in TOKENS.findall(body)]


def ticket_of(body: str) -> str:
    match = TICKET.search(body)
    assert match is not None, body
    return html.unescape(match.group(1))


async def test_pages_streams_and_refresh_through_the_test_client() -> None:
    fake = FakeReturningAI()
    async with fake.client() as upstream:
        app = make_app(http_client=upstream)
        client = app.test_client()
        anonymous = await client.get("/")
        assert (await anonymous.get_data(as_text=True)) == ANONYMOUS
        user = {"X-User": "bob"}
        page = await (await client.get("/", headers=user)).get_data(as_text=True)
        tokens = tokens_of(page)
        assert len(tokens) == 2
        assert fake.decode(tokens[0])["data-customer-id"] == "bob"
        assert "demo-access-key" not in page

        streamed = await client.get("/stream", headers=user)
        assert tokens_of(await streamed.get_data(as_text=True)) == tokens
        assert streamed.headers["cache-control"] == "private, no-store"

        data = await (await client.get("/json", headers=user)).get_json()
        assert data == {"html": PAGE}

        ticket = {"X-RAI-Ticket": ticket_of(page)}
        refresh = await client.post("/_rai/embed-token", headers={**user, **ticket})
        assert refresh.status_code == 200
        assert (await refresh.get_json())["embedToken"] == tokens[0]
        assert (await client.post("/_rai/embed-token", headers=ticket)).status_code == 401
        assert (await client.post("/_rai/embed-token", headers=user)).status_code == 403
    assert fake.calls == 1


async def test_identify_from_the_signed_session_cookie() -> None:
    fake = FakeReturningAI()
    async with fake.client() as upstream:
        app = make_app(session_identify, http_client=upstream)
        client = app.test_client()
        assert (await (await client.get("/")).get_data(as_text=True)) == ANONYMOUS
        await client.post("/login")
        page = await (await client.get("/")).get_data(as_text=True)
        tokens = tokens_of(page)
        assert fake.decode(tokens[0])["data-customer-id"] == "c-42"
        # The refresh endpoint runs before Quart: the cookie is all it has, and enough.
        refresh = await client.post("/_rai/embed-token", headers={"X-RAI-Ticket": ticket_of(page)})
        assert (await refresh.get_json())["embedToken"] == tokens[0]
        # A cookie signed with another key is no session.
        forged = make_app(session_identify, http_client=upstream)
        forged.secret_key = "another-key"
        other = forged.test_client()
        other.cookie_jar = client.cookie_jar
        assert (await (await other.get("/")).get_data(as_text=True)) == ANONYMOUS


async def test_the_lifespan_closes_the_client_it_created() -> None:
    with FakeReturningAI().run_in_thread() as fake_url:
        app = make_app(api_base_url=fake_url)
        middleware = cast(ReturningAIMiddleware, app.asgi_app)
        async with app.test_app() as test_app:
            page = await test_app.test_client().get("/", headers={"X-User": "bob"})
            assert len(tokens_of(await page.get_data(as_text=True))) == 2
            assert middleware.tokens.http_client is not None
        assert middleware.tokens.http_client is None


@pytest.mark.server
def test_real_server() -> None:
    with FakeReturningAI().run_in_thread() as fake_url:
        app = make_app(session_identify, api_base_url=fake_url)
        with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
            assert client.get("/").text == ANONYMOUS
            client.post("/login")
            page = client.get("/")
            assert len(tokens_of(page.text)) == 2
            assert page.headers["cache-control"] == "private, no-store"
            streamed = client.get("/stream")
            assert len(tokens_of(streamed.text)) == 2
            refresh = client.post(
                "/_rai/embed-token", headers={"X-RAI-Ticket": ticket_of(page.text)}
            )
            assert refresh.status_code == 200
