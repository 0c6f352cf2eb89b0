"""The ASGI middleware with Litestar: the two ways to plug it in, as the docs show them.

1. Around the ``Litestar`` app (recommended): one middleware instance, lifespan events, the
   refresh endpoint with no route; ``identify`` reads Litestar's session.
2. ``Litestar(middleware=[DefineMiddleware(ReturningAIMiddleware, ...)])``: inside Litestar's
   own middleware (so ``scope["user"]`` from an authentication middleware listed before it is
   there), but Litestar builds it per route handler and only for paths with a route: the refresh
   endpoint needs a route of its own, and each route has its own token cache.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import AsyncIterator, MutableMapping
from typing import Any, cast

import httpx
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("litestar")

from litestar import Litestar, MediaType, Request, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotFoundException
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)
from litestar.middleware.session.server_side import (
    ServerSideSessionBackend,
    ServerSideSessionConfig,
)
from litestar.response import Redirect, Stream
from litestar.testing import AsyncTestClient

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
# For DefineMiddleware: the middleware's ASGI types are MutableMapping-based, Litestar's are
# TypedDicts, which mypy does not take for each other.
RAI = cast(Any, ReturningAIMiddleware)
TOKENS = re.compile(r'embed-token="([^"]+)"')
TICKET = re.compile(r'data-rai-ticket="([^"]+)"')


@get("/", media_type=MediaType.HTML)
async def home() -> str:
    return PAGE


@get("/other", media_type=MediaType.HTML)
async def other() -> str:
    return PAGE


@get("/stream")
async def stream() -> Stream:
    async def chunks() -> AsyncIterator[str]:
        for start in range(0, len(PAGE), 9):
            yield PAGE[start : start + 9]

    return Stream(chunks(), media_type=MediaType.HTML)


@post("/login")
async def login(request: Request[Any, Any, Any]) -> Redirect:
    request.set_session({"user": {"id": "c-42", "email": "ada@example.com"}})
    return Redirect("/", status_code=303)


@post("/logout")
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    request.clear_session()
    return Redirect("/", status_code=303)


def tokens_of(body: str) -> list[str]:
    return [html.unescape(token) for token in TOKENS.findall(body)]


def ticket_of(body: str) -> str:
    match = TICKET.search(body)
    assert match is not None, body
    return html.unescape(match.group(1))


# -- 1. around the app -------------------------------------------------------------------------


def wrapped_site(**options: Any) -> ReturningAIMiddleware:
    session_config = ServerSideSessionConfig()
    sessions = ServerSideSessionBackend(config=session_config)
    site = Litestar(
        route_handlers=[home, stream, login, logout], middleware=[session_config.middleware]
    )

    async def identify(scope: MutableMapping[str, Any]) -> dict[str, str] | None:
        if "session" in scope:  # pages: Litestar's session middleware has run
            session = scope["session"]
        else:  # the refresh endpoint is answered before Litestar runs
            session = await sessions.load_from_connection(
                ASGIConnection(cast(Any, {**scope, "app": site}))
            )
        user = session.get("user") if isinstance(session, dict) else None
        if not isinstance(user, dict):
            return None
        return {"data-customer-id": user["id"], "data-email": user["email"]}

    return ReturningAIMiddleware(cast(Any, site), identify=identify, **CREDENTIALS, **options)


async def test_around_the_app_pages_streams_and_refresh() -> None:
    fake = FakeReturningAI()
    async with fake.client() as upstream:
        app = wrapped_site(http_client=upstream)
        async with AsyncTestClient(cast(Any, app)) as client:
            anonymous = await client.get("/")
            assert anonymous.text == ANONYMOUS
            await client.post("/login", follow_redirects=False)
            page = await client.get("/")
            tokens = tokens_of(page.text)
            assert len(tokens) == 2
            assert fake.decode(tokens[0])["data-customer-id"] == "c-42"
            assert page.headers["content-length"] == str(len(page.content))
            assert page.headers["cache-control"] == "private, no-store"
            assert "demo-access-key" not in page.text + str(page.headers)

            streamed = await client.get("/stream")
            assert tokens_of(streamed.text) == tokens
            assert "content-length" not in streamed.headers

            ticket = {"X-RAI-Ticket": ticket_of(page.text)}
            refresh = await client.post("/_rai/embed-token", headers=ticket)
            assert refresh.status_code == 200
            assert refresh.json()["embedToken"] == tokens[0]
            assert (await client.get("/_rai/embed-token", headers=ticket)).status_code == 405

            await client.post("/logout", follow_redirects=False)
            assert (await client.get("/")).text == ANONYMOUS
            assert (await client.post("/_rai/embed-token", headers=ticket)).status_code == 401
    assert fake.calls == 1


async def test_around_the_app_the_lifespan_closes_the_client() -> None:
    with FakeReturningAI().run_in_thread() as fake_url:
        app = wrapped_site(api_base_url=fake_url)
        async with AsyncTestClient(cast(Any, app)) as client:
            await client.post("/login", follow_redirects=False)
            assert len(tokens_of((await client.get("/")).text)) == 2
            assert app.tokens.http_client is not None
        assert app.tokens.http_client is None  # closed at lifespan shutdown


@pytest.mark.server
def test_around_the_app_on_a_real_server() -> None:
    with FakeReturningAI().run_in_thread() as fake_url:
        app = wrapped_site(api_base_url=fake_url)
        with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
            client.post("/login")
            page = client.get("/")
            assert len(tokens_of(page.text)) == 2
            assert page.headers["content-length"] == str(len(page.content))
            streamed = client.get("/stream")
            assert len(tokens_of(streamed.text)) == 2
            refresh = client.post(
                "/_rai/embed-token", headers={"X-RAI-Ticket": ticket_of(page.text)}
            )
            assert refresh.status_code == 200


# -- 2. DefineMiddleware, inside Litestar --------------------------------------------------------


class User:
    """What the default identify reads from ``scope["user"]``."""

    is_authenticated = True

    def __init__(self, customer_id: str, email: str) -> None:
        self.customer_id = customer_id
        self.email = email


class HeaderAuth(AbstractAuthenticationMiddleware):
    """Stands for a site's authentication middleware: ``scope["user"]`` for every request,
    ``None`` for an anonymous one (no exception: the same pages serve both)."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        name = connection.headers.get("x-user")
        user = User(name, f"{name}@example.com") if name else None
        return AuthenticationResult(user=user, auth=None)


@post("/_rai/embed-token", include_in_schema=False)
async def rai_refresh() -> None:
    """Never called: it only gives the path a route, so that Litestar runs the middleware."""
    raise NotFoundException()


async def test_define_middleware_after_authentication() -> None:
    fake = FakeReturningAI()
    async with fake.client() as upstream:
        app = Litestar(
            route_handlers=[home, other, stream, rai_refresh],
            middleware=[
                DefineMiddleware(HeaderAuth),  # first: outside, so scope["user"] is set
                DefineMiddleware(RAI, http_client=upstream, **CREDENTIALS),
            ],
        )
        async with AsyncTestClient(app) as client:
            assert (await client.get("/")).text == ANONYMOUS
            user = {"X-User": "bob"}
            page = await client.get("/", headers=user)
            tokens = tokens_of(page.text)
            assert fake.decode(tokens[0])["data-customer-id"] == "bob"
            streamed = await client.get("/stream", headers=user)
            assert len(tokens_of(streamed.text)) == 2
            refresh = await client.post(
                "/_rai/embed-token", headers={**user, "X-RAI-Ticket": ticket_of(page.text)}
            )
            assert refresh.status_code == 200
            # The caveat: one middleware instance, so one token cache, per route handler.
            await client.get("/other", headers=user)
    assert fake.calls == 4  # "/", "/stream", the refresh route and "/other": one mint each


async def test_define_middleware_without_a_route_never_sees_the_endpoint() -> None:
    fake = FakeReturningAI()
    async with fake.client() as upstream:
        app = Litestar(
            route_handlers=[home],
            middleware=[
                DefineMiddleware(HeaderAuth),
                DefineMiddleware(RAI, http_client=upstream, **CREDENTIALS),
            ],
        )
        async with AsyncTestClient(app) as client:
            page = await client.get("/", headers={"X-User": "bob"})
            refresh = await client.post(
                "/_rai/embed-token",
                headers={"X-User": "bob", "X-RAI-Ticket": ticket_of(page.text)},
            )
            assert refresh.status_code == 404  # Litestar's: the middleware never ran
