"""One small site, built on each of the package's five entrances, behind one driver.

``build_site(entrance, ...)`` returns a :class:`Site`: the site of :data:`ROUTES` served by
its real framework (a Starlette app for ASGI, a plain WSGI app, Django through its own
``WSGIHandler`` and ``ASGIHandler``, a Flask app), with ``rai_middleware`` set up through
its public API only, or without it (``rai=False``: the same site bare, to compare with).
Whatever the framework, a :class:`Site` is driven the same way::

    site.get("/page", headers={"X-User": "alice"}) -> Response(status, headers, body)
    site.post("/_rai/embed-token", headers={...})
    site.stream("/slow-stream", headers=...) -> Streamed (what arrived before the app went on)

ASGI entrances (``asgi``, ``django-async``) are called with raw scope/receive/send on an
event loop of their own (an anyio blocking portal); WSGI entrances (``wsgi``,
``django-sync``, ``flask``) with a raw environ and ``start_response``, their iterable
consumed by hand. The visitor is whoever the ``X-User`` request header names.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio.from_thread
import httpx

# Fixture values the secrecy tests look for (fake credentials, never real ones).
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID, SECRET_KEY, http_scope

ENTRANCES = ["asgi", "wsgi", "django-sync", "django-async", "flask"]

SDK_URL = "https://sdk.invalid/rai-widget.iife.js"
REFRESH_URL = "/_rai/embed-token"
HOST = "testserver"
#: How long the slow stream's app waits for the client to have its first bytes.
STREAM_WAIT = 2.0

# -- the site ------------------------------------------------------------------------------

HTML = "text/html; charset=utf-8"
VALIDATORS = (
    ("ETag", '"v1"'),
    ("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
    ("Cache-Control", "max-age=60"),
)

PAGE_BEFORE = b"<!doctype html><html><head><title>t</title></head><body><p>before</p>"
PLACEHOLDER = (
    b'<rai-placeholder widget="channel" channel-id="abc">'
    b'<a href="/login">Sign in to chat</a></rai-placeholder>'
)
FALLBACK = b'<a href="/login">Sign in to chat</a>'
PAGE_AFTER = b"<p>after</p></body></html>"
PAGE = PAGE_BEFORE + PLACEHOLDER + PAGE_AFTER
PLAIN = b"<!doctype html><html><body><p>no widgets here</p></body></html>"
# Issue 13: an HTML fragment (no html/head/body), a Turbo Stream, an SPA shell.
FRAGMENT = b'<div class="fragment">' + PLACEHOLDER + b"</div>"
TURBO_STREAM_BODY = (
    b'<turbo-stream action="append" target="chat"><template>'
    + PLACEHOLDER
    + b"</template></turbo-stream>"
)
TURBO_STREAM_TYPE = "text/vnd.turbo-stream.html; charset=utf-8"
SHELL = PAGE_BEFORE + b'<main id="app"></main><rai-runtime></rai-runtime>' + PAGE_AFTER
JSON_BODY = b'{"html": "<rai-placeholder widget=\\"channel\\">x</rai-placeholder>"}'

STREAM_BEFORE = b"<!doctype html><html><body><p>streamed</p>"
STREAM_AFTER = b"<p>end</p></body></html>"
# The placeholder is cut in its tag name, in its attributes and in its fallback.
STREAM_CHUNKS = (
    STREAM_BEFORE + b"<rai-place",
    b'holder widget="chan',
    b'nel" channel-id="abc"><a href="/login">Sign in',
    b" to chat</a></rai-placeholder>" + STREAM_AFTER,
)
assert b"".join(STREAM_CHUNKS) == STREAM_BEFORE + PLACEHOLDER + STREAM_AFTER

# Mode proxy: three widgets with ids (one with a theme and height bounds, one with its own
# height and title, one in a segment of its own).
PROXY_PLACEHOLDERS = (
    b'<rai-placeholder widget="channel" widget-id="chat-1" theme="dark" min-height="200px"'
    b' max-height="900">F1</rai-placeholder>'
    b'<rai-placeholder widget="store" widget-id="store_1" height="300" title="Store">F2'
    b"</rai-placeholder>"
    b'<rai-placeholder widget="custom" widget-id="NjlmMzJi">F3</rai-placeholder>'
)
PROXY_PAGE = PAGE_BEFORE + PROXY_PLACEHOLDERS + PAGE_AFTER

SLOW_HEAD = b"<!doctype html><html><head><title>slow</title></head><body><p>head</p>"
SLOW_TAIL = PLACEHOLDER + PAGE_AFTER


# What an app may send that lets a shared cache keep a page (each one dropped from a page
# that carries a token or an identity), and headers such a page keeps.
CACHE_HEADERS_SENT = (
    ("Cache-Control", "public, max-age=600"),
    ("Expires", "Thu, 01 Jan 2037 00:00:00 GMT"),
    ("Pragma", "cache"),
    ("Age", "12"),
    ("Surrogate-Control", "max-age=600"),
    ("Surrogate-Key", "page"),
    ("CDN-Cache-Control", "max-age=600"),
    ("Cloudflare-CDN-Cache-Control", "max-age=600"),
    ("Vercel-CDN-Cache-Control", "max-age=600"),
    ("X-Accel-Expires", "600"),
    ("Edge-Control", "cache-maxage=600s"),
    ("Netlify-Vary", "query"),
    ("X-Cache-Tags", "page"),
    ("X-Varnish-TTL", "600"),
)
KEPT_HEADERS_SENT = (
    ("Set-Cookie", "session=s1; HttpOnly"),
    ("Content-Security-Policy", "default-src 'self'"),
    ("X-Frame-Options", "DENY"),
    ("Strict-Transport-Security", "max-age=63072000"),
    ("Access-Control-Max-Age", "600"),
    ("Link", "</app.css>; rel=preload; as=style"),
    ("X-Request-Id", "r-1"),
    ("HX-Trigger", "loaded"),
)


def _flushed_gzip(*parts: bytes) -> tuple[bytes, ...]:
    """``parts`` as a compression middleware streams them: one gzip stream, flushed after
    each part, finished after the last."""
    import zlib

    encoder = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [encoder.compress(part) + encoder.flush(zlib.Z_SYNC_FLUSH) for part in parts[:-1]]
    return (*out, encoder.compress(parts[-1]) + encoder.flush())


# Issue 12, item 7: labelled gzip, gzip for its first part and garbage after (330 bytes).
MISLABELLED_GZIP = (*_flushed_gzip(STREAM_BEFORE, b"<p>more</p>")[:1], b"\x00garbage " * 30)
# A flushed gzip stream with the placeholder in its second part.
GZIP_STREAM = _flushed_gzip(STREAM_BEFORE, PLACEHOLDER, STREAM_AFTER)
# The same, rewritten, then garbage.
GZIP_THEN_GARBAGE = (*GZIP_STREAM[:2], b"\x00garbage " * 30)
GZIP = (("Content-Encoding", "gzip"),)


@dataclass(frozen=True)
class Route:
    """What the app answers on one path, whatever the framework."""

    status: int = 200
    content_type: str | None = HTML
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: A streamed body (no Content-Length), one chunk per item.
    chunks: tuple[bytes, ...] | None = None
    #: After the first chunk, wait (up to STREAM_WAIT) until the client has received it.
    wait_for_client: bool = False


ROUTES: dict[str, Route] = {
    "/page": Route(headers=VALIDATORS, body=PAGE),
    "/page-vary-cookie": Route(headers=(*VALIDATORS, ("Vary", "Cookie")), body=PAGE),
    "/page-vary-list": Route(headers=(*VALIDATORS, ("Vary", "cookie, Accept")), body=PAGE),
    "/plain": Route(headers=VALIDATORS, body=PLAIN),
    "/fragment": Route(body=FRAGMENT),
    "/turbo-stream": Route(content_type=TURBO_STREAM_TYPE, body=TURBO_STREAM_BODY),
    "/shell": Route(body=SHELL),
    "/json": Route(content_type="application/json", headers=VALIDATORS, body=JSON_BODY),
    "/stream": Route(headers=VALIDATORS, chunks=STREAM_CHUNKS),
    "/slow-stream": Route(chunks=(SLOW_HEAD, SLOW_TAIL), wait_for_client=True),
    "/page-cached": Route(headers=(*CACHE_HEADERS_SENT, *KEPT_HEADERS_SENT), body=PAGE),
    "/stream-cached": Route(
        headers=(*CACHE_HEADERS_SENT, *KEPT_HEADERS_SENT), chunks=STREAM_CHUNKS
    ),
    "/gzip-mislabelled": Route(headers=GZIP, chunks=MISLABELLED_GZIP),
    "/gzip-stream": Route(headers=GZIP, chunks=GZIP_STREAM),
    "/gzip-then-garbage": Route(headers=GZIP, chunks=GZIP_THEN_GARBAGE),
    "/not-modified": Route(status=304, content_type=None, headers=(("ETag", '"v1"'),)),
    "/proxy-page": Route(headers=VALIDATORS, body=PROXY_PAGE),
}


@dataclass
class SiteState:
    """What the apps share with the test: the slow stream's event and what its app saw."""

    #: Set by the driver once the client has received the slow stream's first chunk.
    received: threading.Event = field(default_factory=threading.Event)
    #: Per slow stream: whether the client had the first chunk before the app went on.
    waits: list[bool] = field(default_factory=list)


def sync_chunks(route: Route, state: SiteState) -> Iterator[bytes]:
    assert route.chunks is not None
    for index, chunk in enumerate(route.chunks):
        yield chunk
        if index == 0 and route.wait_for_client:
            state.waits.append(state.received.wait(STREAM_WAIT))


async def async_chunks(route: Route, state: SiteState) -> AsyncIterator[bytes]:
    assert route.chunks is not None
    for index, chunk in enumerate(route.chunks):
        yield chunk
        if index == 0 and route.wait_for_client:
            deadline = time.monotonic() + STREAM_WAIT
            while not state.received.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            state.waits.append(state.received.is_set())


def common_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options every entrance gets, by the same names (tests add or override)."""
    return {
        "community_id": COMMUNITY_ID,
        "access_id": ACCESS_ID,
        "access_key": ACCESS_KEY,
        "secret_key": SECRET_KEY,
        "sdk_url": SDK_URL,
        **options,
    }


def identity(user: str | None) -> dict[str, str] | None:
    """The visitor the ``X-User`` header names; a user named by an email (``a@b.c``) has it
    as ``data-email`` too (modes ``iframe`` and ``proxy`` need one)."""
    if not user:
        return None
    return {"data-customer-id": user, **({"data-email": user} if "@" in user else {})}


# -- the driver ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        """Every value of the header ``name`` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Streamed:
    """A streamed response driven by hand."""

    #: The body bytes the client had received when it first held all of SLOW_HEAD.
    first: bytes
    response: Response


class Site:
    """A site on one entrance. ``request`` is the driver; the rest is shorthand."""

    def __init__(self, entrance: str, state: SiteState) -> None:
        self.entrance = entrance
        self.state = state
        self._cleanup = contextlib.ExitStack()
        #: The middleware object's public ``stats`` (None when bare), and its core.
        self.stats: Callable[[], Any] | None = None
        self.core: Any = None

    def request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> Response:
        raise NotImplementedError

    def stream(self, path: str, headers: Mapping[str, str] | None = None) -> Streamed:
        raise NotImplementedError

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Response:
        return self.request("GET", path, headers)

    def head(self, path: str, headers: Mapping[str, str] | None = None) -> Response:
        return self.request("HEAD", path, headers)

    def post(
        self, path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> Response:
        return self.request("POST", path, headers, body)

    def close(self) -> None:
        self._cleanup.close()


class _FirstBytes:
    """Collects body bytes as the client receives them; once SLOW_HEAD is all there, notes
    what had arrived and sets the event the app waits for."""

    def __init__(self, received: threading.Event) -> None:
        self.received = received
        self.body = b""
        self.first: bytes | None = None

    def __call__(self, chunk: bytes) -> None:
        self.body += chunk
        if self.first is None and len(self.body) >= len(SLOW_HEAD):
            self.first = self.body
            self.received.set()


class WSGISite(Site):
    def __init__(self, entrance: str, state: SiteState, app: Any) -> None:
        super().__init__(entrance, state)
        self.app = app

    def _environ(self, method: str, path: str, headers: Mapping[str, str] | None, body: bytes):
        path, _, query = path.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": HOST,
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": HOST,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in (headers or {}).items():
            environ["HTTP_" + name.upper().replace("-", "_")] = value
        return environ

    def _call(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None,
        body: bytes,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> Response:
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, response_headers: Any, exc_info: Any = None) -> Any:
            assert exc_info is None
            started.append((status, list(response_headers)))
            return _no_write

        result = self.app(self._environ(method, path, headers, body), start_response)
        chunks: list[bytes] = []
        try:
            for chunk in result:
                chunks.append(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        assert len(started) == 1, started
        status, response_headers = started[0]
        return Response(int(status.split()[0]), response_headers, b"".join(chunks))

    def request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> Response:
        return self._call(method, path, headers, body)

    def stream(self, path: str, headers: Mapping[str, str] | None = None) -> Streamed:
        first = _FirstBytes(self.state.received)
        response = self._call("GET", path, headers, b"", first)
        return Streamed(first.first or b"", response)


class ASGISite(Site):
    def __init__(
        self, entrance: str, state: SiteState, app: Any, *, lifespan: bool, portal: Any
    ) -> None:
        super().__init__(entrance, state)
        self.app = app
        self.portal = portal
        if lifespan:
            self.portal.call(self._startup)
            self._cleanup.callback(self.portal.call, self._shutdown)

    async def _startup(self) -> None:
        self._lifespan_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lifespan_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.4"}}
        scope["state"] = {}
        self._lifespan = asyncio.ensure_future(
            self.app(scope, self._lifespan_in.get, self._lifespan_out.put)
        )
        await self._lifespan_in.put({"type": "lifespan.startup"})
        assert (await self._lifespan_out.get())["type"] == "lifespan.startup.complete"

    async def _shutdown(self) -> None:
        await self._lifespan_in.put({"type": "lifespan.shutdown"})
        assert (await self._lifespan_out.get())["type"] == "lifespan.shutdown.complete"
        await self._lifespan

    async def _call(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str] | None,
        body: bytes,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> Response:
        raw_headers = [(b"host", HOST.encode())] + [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (headers or {}).items()
        ]
        path, _, query = path.partition("?")
        scope = http_scope(path, method, raw_headers)
        scope["query_string"] = query.encode("latin-1")
        start: dict[str, Any] | None = None
        chunks: list[bytes] = []
        done = asyncio.Event()
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal start
            assert not done.is_set(), f"a message after the last body: {message}"
            if message["type"] == "http.response.start":
                assert start is None, "a second http.response.start"
                start = message
            elif message["type"] == "http.response.body":
                assert start is not None, "a body before http.response.start"
                chunk = bytes(message.get("body", b""))
                chunks.append(chunk)
                if on_chunk is not None and chunk:
                    on_chunk(chunk)
                if not message.get("more_body", False):
                    done.set()

        await self.app(scope, receive, send)
        assert start is not None and done.is_set(), "the response was not completed"
        return Response(
            int(start["status"]),
            [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in start.get("headers", [])
            ],
            b"".join(chunks),
        )

    def request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> Response:
        response: Response = self.portal.call(self._call, method, path, headers, body)
        return response

    def stream(self, path: str, headers: Mapping[str, str] | None = None) -> Streamed:
        first = _FirstBytes(self.state.received)
        response: Response = self.portal.call(self._call, "GET", path, headers, b"", first)
        return Streamed(first.first or b"", response)


def _no_write(data: bytes) -> None:  # pragma: no cover
    raise AssertionError("no app of the site uses the legacy write() callable")


# -- the five entrances --------------------------------------------------------------------


def build_site(
    entrance: str,
    *,
    rai: bool = True,
    http_client: bool = True,
    options: Mapping[str, Any] | None = None,
) -> Site:
    """The site on ``entrance``, with the middleware (``rai``) or bare.

    ``options`` are the middleware's keyword options (``api_base_url``, ``timeout``,
    ``clock``...). With ``http_client`` the site hands the middleware an httpx client of its
    own (async for ASGI, sync otherwise) and closes it; without, the middleware makes its
    own from the options.
    """
    builders = {
        "asgi": _asgi_site,
        "wsgi": _wsgi_site,
        "django-sync": _django_sync_site,
        "django-async": _django_async_site,
        "flask": _flask_site,
    }
    state = SiteState()
    with contextlib.ExitStack() as cleanup:
        opts = common_options(options or {})
        site = builders[entrance](state, opts if rai else None, http_client, cleanup)
        # The site's own cleanup (an ASGI lifespan shutdown) first, then what it was built on.
        own, site._cleanup = site._cleanup, cleanup.pop_all()
        site._cleanup.push(own)
        return site
    raise AssertionError("unreachable")  # pragma: no cover


def _sync_client(http_client: bool, options: dict[str, Any], cleanup: contextlib.ExitStack):
    if http_client:
        options["http_client"] = cleanup.enter_context(httpx.Client())


# ASGI: a Starlette app, wrapped by ReturningAIMiddleware.


def _asgi_site(
    state: SiteState,
    options: dict[str, Any] | None,
    http_client: bool,
    cleanup: contextlib.ExitStack,
) -> Site:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response as StarletteResponse
    from starlette.responses import StreamingResponse
    from starlette.routing import Route as StarletteRoute

    from rai_middleware import ReturningAIMiddleware

    def endpoint(route: Route) -> Callable[[Request], Any]:
        async def view(request: Request) -> StarletteResponse:
            if route.chunks is not None:
                return StreamingResponse(
                    async_chunks(route, state),
                    status_code=route.status,
                    headers=dict(route.headers),
                    media_type=route.content_type,
                )
            return StarletteResponse(
                route.body,
                status_code=route.status,
                headers=dict(route.headers),
                media_type=route.content_type,
            )

        return view

    app: Any = Starlette(routes=[StarletteRoute(path, endpoint(r)) for path, r in ROUTES.items()])
    portal = cleanup.enter_context(anyio.from_thread.start_blocking_portal())
    if options is not None:

        def identify(scope: Any) -> dict[str, str] | None:
            users = [v for k, v in scope["headers"] if k == b"x-user"]
            return identity(users[0].decode() if users else None)

        if http_client:
            client = httpx.AsyncClient()
            cleanup.callback(portal.call, client.aclose)
            options["http_client"] = client
        app = ReturningAIMiddleware(app, identify=identify, **options)
    site = ASGISite("asgi", state, app, lifespan=True, portal=portal)
    if options is not None:
        site.stats, site.core = app.stats, app.core
    return site


# WSGI: a plain WSGI app, wrapped by ReturningAIWSGIMiddleware.


def _wsgi_site(
    state: SiteState,
    options: dict[str, Any] | None,
    http_client: bool,
    cleanup: contextlib.ExitStack,
) -> Site:
    from rai_middleware import ReturningAIWSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        route = ROUTES.get(environ["PATH_INFO"])
        if route is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        headers = [("Content-Type", route.content_type)] if route.content_type else []
        headers += list(route.headers)
        reason = {200: "OK", 304: "Not Modified"}[route.status]
        if route.chunks is not None:
            start_response(f"{route.status} {reason}", headers)
            return sync_chunks(route, state)
        if route.status != 304:
            headers.append(("Content-Length", str(len(route.body))))
        start_response(f"{route.status} {reason}", headers)
        return [route.body]

    if options is None:
        return WSGISite("wsgi", state, app)

    def identify(environ: dict[str, Any]) -> dict[str, str] | None:
        return identity(environ.get("HTTP_X_USER"))

    _sync_client(http_client, options, cleanup)
    middleware = ReturningAIWSGIMiddleware(app, identify=identify, **options)
    cleanup.callback(middleware.close)
    site = WSGISite("wsgi", state, middleware)
    site.stats, site.core = middleware.stats, middleware.core
    return site


# Django: one URLconf, ReturningAIMiddleware in settings.MIDDLEWARE, configured by
# settings.RETURNING_AI; served by Django's WSGIHandler (sync) or ASGIHandler (async).

_django_state = SiteState()


def _django_view(request: Any, name: str) -> Any:
    from django.core.handlers.asgi import ASGIRequest
    from django.http import HttpResponse, HttpResponseNotFound, StreamingHttpResponse

    route = ROUTES.get("/" + name)
    if route is None:
        return HttpResponseNotFound(b"not found")
    if route.chunks is not None:
        # Under the ASGI handler, an async iterator (a sync one is consumed whole, with a
        # warning); under the WSGI handler, a sync one.
        content: Any = (
            async_chunks(route, _django_state)
            if isinstance(request, ASGIRequest)
            else sync_chunks(route, _django_state)
        )
        response: Any = StreamingHttpResponse(
            content, status=route.status, content_type=route.content_type
        )
    else:
        response = HttpResponse(route.body, status=route.status, content_type=route.content_type)
    if route.content_type is None:
        del response.headers["Content-Type"]
    for key, value in route.headers:
        response.headers[key] = value
    return response


def _django_urlpatterns() -> list[Any]:
    from django.urls import re_path

    return [re_path(r"^(?P<name>.*)\Z", _django_view)]


class _URLConf:
    def __init__(self) -> None:
        self.urlpatterns = _django_urlpatterns()


_urlconf: _URLConf | None = None


def _django_settings(
    state: SiteState,
    options: dict[str, Any] | None,
    http_client: bool,
    cleanup: contextlib.ExitStack,
) -> None:
    """Settings for a Django site: entered for the site's life (sites close in LIFO order)."""
    global _django_state, _urlconf
    from django.test import override_settings

    from tests.test_django import configure_django

    configure_django()  # the process's one Django configuration, shared with test_django.py
    if _urlconf is None:
        _urlconf = _URLConf()
    _django_state = state
    middleware: list[str] = []
    if options is not None:

        def identify(request: Any) -> dict[str, str] | None:
            return identity(request.headers.get("X-User"))

        _sync_client(http_client, options, cleanup)
        options["identify"] = identify
        middleware = ["rai_middleware.django.ReturningAIMiddleware"]
    cleanup.enter_context(
        override_settings(ROOT_URLCONF=_urlconf, MIDDLEWARE=middleware, RETURNING_AI=options)
    )


def _django_sync_site(
    state: SiteState,
    options: dict[str, Any] | None,
    http_client: bool,
    cleanup: contextlib.ExitStack,
) -> Site:
    from django.core.handlers.wsgi import WSGIHandler

    _django_settings(state, options, http_client, cleanup)
    return _django_middleware(WSGISite("django-sync", state, WSGIHandler()))


def _django_async_site(
    state: SiteState,
    options: dict[str, Any] | None,
    http_client: bool,
    cleanup: contextlib.ExitStack,
) -> Site:
    from django.core.handlers.asgi import ASGIHandler

    _django_settings(state, options, http_client, cleanup)
    portal = cleanup.enter_context(anyio.from_thread.start_blocking_portal())
    site = ASGISite("django-async", state, ASGIHandler(), lifespan=False, portal=portal)
    return _django_middleware(site)


def _django_middleware(site: ASGISite | WSGISite) -> Site:
    """Note the stats of the middleware instance the handler built (its one middleware,
    under Django's exception wrapper), if it has one."""
    import inspect

    from rai_middleware.django import ReturningAIMiddleware

    chain = site.app._middleware_chain
    middleware = inspect.unwrap(chain) if chain is not None else None
    if isinstance(middleware, ReturningAIMiddleware):
        site.stats, site.core = middleware.stats, middleware.core
    return site


# Flask: an app with one view per route, and the ReturningAI extension.


def _flask_site(
    state: SiteState,
    options: dict[str, Any] | None,
    http_client: bool,
    cleanup: contextlib.ExitStack,
) -> Site:
    from flask import Flask
    from flask import Response as FlaskResponse
    from flask import request as flask_request

    from rai_middleware.flask import ReturningAI

    app = Flask(__name__)

    def view_of(route: Route) -> Callable[[], FlaskResponse]:
        def view() -> FlaskResponse:
            body: Any = route.body if route.chunks is None else sync_chunks(route, state)
            response = FlaskResponse(body, status=route.status, content_type=route.content_type)
            if route.content_type is None:
                del response.headers["Content-Type"]
            for key, value in route.headers:
                response.headers[key] = value
            return response

        return view

    for index, (path, route) in enumerate(ROUTES.items()):
        app.add_url_rule(path, f"route{index}", view_of(route))
    if options is not None:

        def identify(request: Any) -> dict[str, str] | None:
            assert request.path == flask_request.path
            return identity(request.headers.get("X-User"))

        _sync_client(http_client, options, cleanup)
        extension = ReturningAI(app, identify=identify, **options)
        cleanup.callback(ReturningAI.core(app).close)
    site = WSGISite("flask", state, app)
    if options is not None:
        site.stats, site.core = lambda: extension.stats(app), ReturningAI.core(app).core
    return site
