"""What the benchmarks serve and how they call it: the page, the app, the client.

The page is a Jinja2 template of a shop category page (head with inline style and
script, navigation, product cards, a footer) with three widget spots: each is a
``<rai-placeholder>``, or, with ``embed_token``, the widget markup the app writes itself
(the hand-written recipe of case 3). ``dense=True`` adds a comment and an inline script
to every card and a placeholder every 25 cards (the scanner's hard case).

Routes: ``/json`` (small JSON), ``/page`` (the template rendered per request, one body
message), ``/stream`` (the same streamed in 16 KB chunks), ``/static/100k`` and
``/static/5m`` (pre-rendered, no placeholder), ``/widget`` (tiny page, one placeholder),
``/recipe`` (the docs' recipe: an httpx POST for a token on every page load), ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rai_middleware import ReturningAIMiddleware

TAG = b"<rai-placeholder"
CHUNK = 16 * 1024
ACCESS_ID, ACCESS_KEY = "demo-access-id", "demo-access-key"  # FakeReturningAI's
COMMUNITY_ID = "bench-community"
SDK_URL = "https://cdn.example/rai-widget.iife.js"
USER_HEADER = b"x-bench-user"
USER = "bench-user"
WIDGET_PAGE = (
    b"<!DOCTYPE html><html><head><title>Rewards</title></head><body><h1>Rewards</h1>"
    b'<rai-placeholder widget="store">Sign in to see the store.</rai-placeholder>'
    b"</body></html>"
)

_TEMPLATE = """\
{%- macro widget(kind, fallback) -%}
{%- if embed_token -%}
<div id="returning-ai-widget-{{ kind }}"><rai-{{ kind }}-widget community-id="{{ community_id }}" \
embed-token="{{ embed_token }}"></rai-{{ kind }}-widget></div>
{%- elif placeholders -%}
<rai-placeholder widget="{{ kind }}">{{ fallback }}</rai-placeholder>
{%- else -%}
<div class="fallback">{{ fallback }}</div>
{%- endif -%}
{%- endmacro -%}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ category.title }} | {{ shop.name }}</title>
<link rel="stylesheet" href="/static/site.css?v={{ shop.version }}">
<link rel="canonical" href="https://{{ shop.domain }}/c/{{ category.slug }}">
<style>
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr)); }
  .card { border: 1px solid #e3e3e3; border-radius: .5rem; padding: .75rem; }
  .card > h3 { font-size: 1rem; margin: .5rem 0; }
  .badge { background: #ffe08a; padding: 0 .25rem; }
</style>
<script>
  window.dataLayer = window.dataLayer || [];
  function track(e) { if (e && e.length < 64) { window.dataLayer.push({event: e}); } }
</script>
</head>
<body class="category category-{{ category.slug }}">
<!-- header -->
<header class="site-header">
  <a class="logo" href="/">{{ shop.name }}</a>
  <nav><ul>
  {%- for item in categories %}
    <li{% if item.slug == category.slug %} class="active"{% endif %}>\
<a href="/c/{{ item.slug }}">{{ item.title }}</a></li>
  {%- endfor %}
  </ul></nav>
  <form action="/search" method="get"><input type="search" name="q" \
placeholder="Search {{ shop.name }}"></form>
  <span class="user">Hello, {{ user.name }}</span>
</header>
<main>
<aside class="rewards">
  <h2>Your rewards</h2>
  {{ widget("store", "Sign in to see the rewards store.") }}
</aside>
<section class="grid">
{%- for p in products %}
<article class="card" data-id="{{ p.id }}" data-sku="{{ p.sku }}">
{%- if dense %}<!-- card {{ p.id }} -->
<script type="application/ld+json">{"@type": "Product", "sku": "{{ p.sku }}"}</script>{% endif %}
  <a href="/p/{{ p.slug }}"><img src="/img/{{ p.id }}.jpg" alt="{{ p.name }}" \
width="240" height="240" loading="lazy"></a>
  <h3><a href="/p/{{ p.slug }}">{{ p.name }}</a></h3>
  <p class="price">{{ "%.2f"|format(p.price) }} {{ shop.currency }}\
{% if p.badge %} <span class="badge">{{ p.badge }}</span>{% endif %}</p>
  <p class="blurb">{{ p.blurb }}</p>
  <button type="button" class="add" onclick="track('add')">Add to cart</button>
</article>
{%- if loop.index == middle or (dense and loop.index is divisibleby 25) %}
{{ widget("channel", "Join the conversation.") }}
{%- endif %}
{%- endfor %}
</section>
</main>
<!-- footer -->
<footer>
  {{ widget("milestone", "Your next milestone appears here.") }}
  <p>&copy; {{ shop.year }} {{ shop.name }}. Prices include VAT.</p>
</footer>
{%- if embed_token %}
<script src="{{ sdk_url }}"></script>
{%- endif %}
</body>
</html>
"""

_WORDS = str.split(
    "classic organic linen cotton merino travel compact everyday premium recycled "
    "lightweight waterproof handmade vintage modern slim wide soft warm bright"
)
_NOUNS = str.split("shirt jacket scarf bag bottle lamp mug notebook backpack sweater cap")


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(_TEMPLATE)


@functools.cache
def _products(count: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    products = []
    for number in range(count):
        name = f"{rng.choice(_WORDS).title()} {rng.choice(_WORDS)} {rng.choice(_NOUNS)}"
        products.append(
            {
                "id": 10_000 + number,
                "sku": f"SKU-{rng.randrange(16**6):06X}",
                "slug": name.lower().replace(" ", "-") + f"-{number}",
                "name": name,
                "price": rng.randrange(500, 20_000) / 100,
                "badge": rng.choice(("", "", "", "New", "Sale", "Last items")),
                "blurb": " ".join(rng.choice(_WORDS) for _ in range(12)) + ".",
            }
        )
    return products


def _variables(products: int, **options: Any) -> dict[str, Any]:
    titles = ["Outerwear", "Knitwear", "Bags", "Home", "Kitchen", "Stationery", "Sale"]
    categories = [{"slug": title.lower(), "title": title} for title in titles]
    shop = {"name": "Example & Sons", "domain": "shop.example", "currency": "EUR"}
    return {
        "shop": shop | {"version": "2024.06", "year": 2024},
        "user": {"name": "Ada"},
        "category": categories[1],
        "categories": categories,
        "products": _products(products),
        "middle": products // 2,
        "placeholders": True,
        "embed_token": None,
        "dense": False,
        "community_id": COMMUNITY_ID,
        "sdk_url": SDK_URL,
    } | options


def render(products: int = 190, **options: Any) -> str:
    """The page (190 products: about 100 KB), rendered as a view does on every request.
    Options: ``placeholders``, ``embed_token``, ``dense``."""
    return _template().render(_variables(products, **options))


@functools.cache
def page(size: int, *, placeholders: bool = True, dense: bool = False) -> bytes:
    """A page of about ``size`` bytes, pre-rendered with as many products as it takes."""
    base = len(render(0, placeholders=placeholders, dense=dense).encode())
    per_product = (len(render(100, placeholders=placeholders, dense=dense).encode()) - base) / 100
    count = max(1, round((size - base) / per_product))
    return render(count, placeholders=placeholders, dense=dense).encode()


# -- the app -------------------------------------------------------------------------------


async def _stream_view(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        pieces: list[bytes] = []
        size = 0
        for piece in _template().generate(_variables(190)):
            pieces.append(piece.encode())
            size += len(pieces[-1])
            if size >= CHUNK:
                data = b"".join(pieces)
                cut = len(data) - len(data) % CHUNK
                for start in range(0, cut, CHUNK):
                    yield data[start : start + CHUNK]
                pieces, size = [data[cut:]], len(data) - cut
        yield b"".join(pieces)

    return StreamingResponse(chunks(), media_type="text/html; charset=utf-8")


def _html(body: Callable[[], bytes | str]) -> Callable[[Request], Any]:
    async def view(request: Request) -> Response:
        return HTMLResponse(body())

    return view


def build_app(*, upstream_url: str | None = None) -> Starlette:
    """The bare app; ``upstream_url`` adds ``/recipe`` (a shared httpx client opened at
    startup: the recipe at its best)."""
    routes = [
        Route("/json", lambda request: JSONResponse({"ok": True, "items": [1, 2, 3]})),
        Route("/page", _html(render)),
        Route("/stream", _stream_view),
        Route("/static/100k", _html(lambda: page(100 * 1024, placeholders=False))),
        Route("/static/5m", _html(lambda: page(5 * 1024 * 1024, placeholders=False))),
        Route("/widget", _html(lambda: WIDGET_PAGE)),
        Route("/healthz", lambda request: JSONResponse({"ok": True})),
    ]
    lifespan = None
    if upstream_url is not None:
        token_url = upstream_url.rstrip("/") + "/v2/api/widget-access-keys/token"

        async def recipe(request: Request) -> Response:
            user = request.headers.get(USER_HEADER.decode())
            answer = await request.app.state.http.post(
                token_url,
                json={
                    "accessId": ACCESS_ID,
                    "accessKey": ACCESS_KEY,
                    "userIdentifiers": {"data-customer-id": user},
                },
            )
            answer.raise_for_status()
            token = answer.json()["data"]["embedToken"]
            return HTMLResponse(render(placeholders=False, embed_token=token))

        routes.append(Route("/recipe", recipe))

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
            async with httpx.AsyncClient(limits=limits) as client:
                app.state.http = client
                yield

    return Starlette(routes=routes, lifespan=lifespan)


def identify(scope: Scope) -> dict[str, str] | None:
    """The visitor named by the ``x-bench-user`` header (a stand-in for a session)."""
    for name, value in scope.get("headers", ()):
        if name == USER_HEADER:
            return {"data-customer-id": value.decode("latin-1")}
    return None


def wrap(app: ASGIApp, *, api_base_url: str, **options: Any) -> ReturningAIMiddleware:
    """``app`` behind the middleware (``options``: ``http_client``, ``clock``,
    ``keep_warm``, ``token_store``, ``secret_key``...)."""
    if options.get("keep_warm"):
        options.setdefault("refresh_ahead", 0)  # renewing on requests too only adds calls
    return ReturningAIMiddleware(
        app,
        community_id=COMMUNITY_ID,
        access_id=ACCESS_ID,
        access_key=ACCESS_KEY,
        identify=identify,
        api_base_url=api_base_url,
        sdk_url=SDK_URL,
        **options,
    )


class FloorMiddleware:
    """The least a response-reading middleware does: wrap ``send``, read the headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", ()):
                    if name == b"content-type" and value.startswith(b"text/html"):
                        break
            await send(message)

        await self.app(scope, receive, send_wrapper)


# -- the in-process client ------------------------------------------------------------------


@dataclass
class Sent:
    status: int = 0
    body: bytes = b""
    messages: int = 0


class Client:
    """Calls an ASGI app directly, as a server would (the scope keys uvicorn sets, ASGI
    spec 2.3), with no socket: ``receive`` gives one empty body, ``send`` counts bytes."""

    def __init__(self, app: ASGIApp, path: str, *, user: str | None = USER) -> None:
        self.app = app
        headers = [(b"host", b"127.0.0.1:8000"), (b"accept", b"text/html")]
        if user is not None:
            headers.append((USER_HEADER, user.encode()))
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": "GET",
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": headers,
        }
        self.received = 0

    @staticmethod
    def _receive() -> Receive:
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> Message:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # a disconnect listener: wait to be cancelled
            raise AssertionError("unreachable")

        return receive

    async def _count(self, message: Message) -> None:
        self.received += len(message.get("body", b""))

    async def batch(self, n: int) -> None:
        """``n`` requests in a row: the timed unit."""
        for _ in range(n):
            await self.app(dict(self.scope, state={}), self._receive(), self._count)

    async def fetch(self) -> Sent:
        """One request, keeping what the app sent (for the checks)."""
        response = Sent()
        parts: list[bytes] = []

        async def keep(message: Message) -> None:
            response.messages += 1
            if message["type"] == "http.response.start":
                response.status = message["status"]
            else:
                parts.append(bytes(message.get("body", b"")))

        await self.app(dict(self.scope, state={}), self._receive(), keep)
        response.body = b"".join(parts)
        return response
