"""The applications under test: one Starlette app, bare or behind a middleware.

Routes (the same in every case):

``/json``         a small JSON document (pass-through, case 1a)
``/page``         the template rendered on every request, one body message (1b, 3)
``/stream``       the same render streamed in 16 KB chunks (1c)
``/static/100k``  a pre-rendered 100 KB page with no placeholder (1d, 2)
``/static/5m``    the same at 5 MB (1d, 2)
``/widget``       a tiny page with one placeholder (4)
``/recipe``       the docs' recipe written by hand: mint a token on every page load with an
                  httpx POST, no cache, then render the template with it (3 iii)
``/healthz``      liveness, for the server case
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rai_middleware import ReturningAIMiddleware

from .pages import CHUNK_SIZE, generate_page, page_context, render_page, static_page

if TYPE_CHECKING:
    from rai_middleware._store import TokenStore

__all__ = [
    "ACCESS_ID",
    "ACCESS_KEY",
    "COMMUNITY_ID",
    "SDK_URL",
    "USER_HEADER",
    "FloorMiddleware",
    "build_app",
    "identify_from_header",
    "wrap",
]

ACCESS_ID = "demo-access-id"  # FakeReturningAI's credentials
ACCESS_KEY = "demo-access-key"
COMMUNITY_ID = "bench-community"
SDK_URL = "https://cdn.example/rai-widget.iife.js"
#: The visitor, as the load generator (or the in-process driver) names them.
USER_HEADER = b"x-bench-user"
TOKEN_PATH = "/v2/api/widget-access-keys/token"

SMALL_JSON = {"ok": True, "items": [1, 2, 3], "message": "hello"}
WIDGET_PAGE = (
    b"<!DOCTYPE html><html><head><title>Rewards</title></head><body><h1>Rewards</h1>"
    b'<rai-placeholder widget="store">Sign in to see the store.</rai-placeholder>'
    b"</body></html>"
)


def identify_from_header(scope: Scope) -> dict[str, str] | None:
    """The visitor named by the ``x-bench-user`` request header (a stand-in for a session
    cookie lookup), or anonymous."""
    for name, value in scope.get("headers", ()):
        if name == USER_HEADER:
            return {"data-customer-id": value.decode("latin-1")}
    return None


def _user(request: Request) -> str | None:
    return request.headers.get(USER_HEADER.decode())


async def json_view(request: Request) -> Response:
    return JSONResponse(SMALL_JSON)


async def page_view(request: Request) -> Response:
    return HTMLResponse(render_page(page_context()))


async def stream_view(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        buffered: list[str] = []
        size = 0
        for piece in generate_page(page_context()):
            buffered.append(piece)
            size += len(piece)
            if size >= CHUNK_SIZE:
                data = "".join(buffered).encode()
                buffered, size = [], 0
                for start in range(0, len(data), CHUNK_SIZE):
                    yield data[start : start + CHUNK_SIZE]
        if buffered:
            yield "".join(buffered).encode()

    return StreamingResponse(chunks(), media_type="text/html; charset=utf-8")


def _static_view(size: int) -> Callable[[Request], Any]:
    async def view(request: Request) -> Response:
        return HTMLResponse(static_page(size))

    return view


async def widget_view(request: Request) -> Response:
    return HTMLResponse(WIDGET_PAGE)


async def healthz_view(request: Request) -> Response:
    return JSONResponse({"ok": True})


def _recipe_view(upstream_url: str) -> Callable[[Request], Any]:
    token_url = upstream_url.rstrip("/") + TOKEN_PATH

    async def view(request: Request) -> Response:
        user = _user(request)
        token: str | None = None
        if user is not None:
            client: httpx.AsyncClient = request.app.state.http
            answer = await client.post(
                token_url,
                json={
                    "accessId": ACCESS_ID,
                    "accessKey": ACCESS_KEY,
                    "userIdentifiers": {"data-customer-id": user},
                },
            )
            answer.raise_for_status()
            token = answer.json()["data"]["embedToken"]
        html = render_page(
            page_context(),
            placeholders=False,
            embed_token=token,
            community_id=COMMUNITY_ID,
            sdk_url=SDK_URL,
        )
        return HTMLResponse(html)

    return view


def build_app(*, upstream_url: str | None = None) -> Starlette:
    """The bare app. ``upstream_url`` enables ``/recipe`` (a shared httpx client, opened at
    startup: the recipe at its best)."""
    routes = [
        Route("/json", json_view),
        Route("/page", page_view),
        Route("/stream", stream_view),
        Route("/static/100k", _static_view(100 * 1024)),
        Route("/static/5m", _static_view(5 * 1024 * 1024)),
        Route("/widget", widget_view),
        Route("/healthz", healthz_view),
    ]
    lifespan = None
    if upstream_url is not None:
        routes.append(Route("/recipe", _recipe_view(upstream_url)))

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with httpx.AsyncClient(
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=100)
            ) as client:
                app.state.http = client
                yield

    return Starlette(routes=routes, lifespan=lifespan)


def wrap(
    app: ASGIApp,
    *,
    api_base_url: str,
    http_client: httpx.AsyncClient | None = None,
    clock: Callable[[], float] | None = None,
    keep_warm: float = 0.0,
    token_store: TokenStore | None = None,
    secret_key: str | None = None,
) -> ReturningAIMiddleware:
    """``app`` behind ReturningAIMiddleware, the visitor read from ``x-bench-user``.

    With ``keep_warm``, tokens are renewed by the periodic check alone (``refresh_ahead=0``):
    renewing on requests as well would only add calls. Instances that share a
    ``token_store`` need the same ``secret_key``: it keys the identities in the store."""
    options: dict[str, Any] = {"keep_warm": keep_warm}
    if keep_warm:
        options["refresh_ahead"] = 0
    if clock is not None:
        options["clock"] = clock
    if token_store is not None:
        options["token_store"] = token_store
    if secret_key is not None:
        options["secret_key"] = secret_key
    return ReturningAIMiddleware(
        app,
        community_id=COMMUNITY_ID,
        access_id=ACCESS_ID,
        access_key=ACCESS_KEY,
        identify=identify_from_header,
        api_base_url=api_base_url,
        http_client=http_client,
        sdk_url=SDK_URL,
        **options,
    )


class FloorMiddleware:
    """The least a response-reading middleware can do: wrap ``send`` and read the start
    message's headers. Its overhead is the floor for case 1a."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", ()):
                    if name == b"content-type" and value.startswith(b"text/html"):
                        break
            await send(message)

        await self.app(scope, receive, send_wrapper)
