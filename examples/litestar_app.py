"""Returning.AI widgets in a Litestar site: the ASGI ``ReturningAIMiddleware`` around the app.

Run it from the repository root (offline: a fake Returning.AI runs in a thread)::

    pip install -e ".[litestar,demo]"
    python examples/litestar_app.py            # then open http://127.0.0.1:8000/

With ``RAI_COMMUNITY_ID``, ``RAI_ACCESS_ID`` and ``RAI_ACCESS_KEY`` set, it talks to the real
Returning.AI instead. Sign in with any email (no password): the placeholders become widgets with
your token; ``/stream`` is the same page as a ``Stream`` response.

How it fits together: Litestar runs the middleware of ``Litestar(middleware=[...])`` per route
handler, one instance each, and only for paths that have a route. So the middleware wraps the
whole ``Litestar`` app instead: one instance (one token cache), lifespan events (the HTTP client
is closed at shutdown), and its refresh endpoint needs no route. Outside Litestar, it reads the
visitor from the session: ``scope["session"]`` once Litestar's session middleware has loaded it
(pages), or from the session store by the session cookie (the refresh endpoint, which is
answered before Litestar runs).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import os
from collections.abc import AsyncIterator, MutableMapping, Sequence
from typing import Any, cast
from urllib.parse import parse_qs

import httpx
from litestar import Litestar, MediaType, Request, get, post
from litestar.connection import ASGIConnection
from litestar.middleware.session.server_side import (
    ServerSideSessionBackend,
    ServerSideSessionConfig,
)
from litestar.response import Redirect, Response, Stream

from rai_middleware import ReturningAIMiddleware
from rai_middleware.testing import FakeReturningAI

CREDENTIAL_VARS = ("RAI_COMMUNITY_ID", "RAI_ACCESS_ID", "RAI_ACCESS_KEY")

LAYOUT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} - rai-middleware + Litestar</title></head>
<body>
<header><h1><a href="/">rai-middleware + Litestar</a></h1><p>{account}</p></header>
{content}
</body>
</html>
"""
HOME = """<h2>Community chat</h2>
<rai-placeholder widget="channel" widget-id="demo-channel" channel-id="general">
  <p><a href="/login">Sign in</a> to join the chat.</p>
</rai-placeholder>
<h2>Rewards store</h2>
<rai-placeholder widget="store" widget-id="demo-store">
  <p><a href="/login">Sign in</a> to spend your points.</p>
</rai-placeholder>
<p><a href="/stream">The same page, streamed</a></p>
"""
LOGIN = """<h2>Sign in</h2>
<p>No password: any email will do.</p>
<form method="post" action="/login">
  <label>Email <input type="email" name="email" required></label>
  <label>Name <input type="text" name="name"></label>
  <button type="submit">Sign in</button>
</form>
"""


def real_mode() -> bool:
    return all(os.environ.get(name, "").strip() for name in CREDENTIAL_VARS)


def rai_options(fake_url: str | None) -> dict[str, Any]:
    """Offline: the credentials FakeReturningAI accepts. Real: none (the RAI_* variables)."""
    if fake_url is None:
        return {}
    return {
        "community_id": "demo-community",
        "access_id": "demo-access-id",
        "access_key": "demo-access-key",
        "api_base_url": fake_url,
        "sdk_url": fake_url.rstrip("/") + "/sdk/rai-widget.iife.js",
    }


def customer_id_for(email: str) -> str:
    """A stable customer id: in a real site, your user's primary key."""
    return "demo-" + hashlib.sha256(email.lower().encode()).hexdigest()[:16]


def render(request: Request[Any, Any, Any], title: str, content: str) -> str:
    user = request.session.get("user")
    if isinstance(user, dict):
        account = (
            f"Signed in as <strong>{html.escape(user['name'])}</strong> "
            f"({html.escape(user['email'])}) "
            '<form method="post" action="/logout" style="display:inline">'
            '<button type="submit">Sign out</button></form>'
        )
    else:
        account = 'Not signed in. <a href="/login">Sign in</a>'
    return LAYOUT.format(title=html.escape(title), account=account, content=content)


@get("/", media_type=MediaType.HTML)
async def home(request: Request[Any, Any, Any]) -> str:
    return render(request, "Home", HOME)


@get("/stream")
async def stream(request: Request[Any, Any, Any]) -> Stream:
    page = render(request, "Streamed", HOME)

    async def chunks() -> AsyncIterator[str]:
        for start in range(0, len(page), 200):
            yield page[start : start + 200]

    return Stream(chunks(), media_type=MediaType.HTML)


@get("/login", media_type=MediaType.HTML)
async def login_form(request: Request[Any, Any, Any]) -> str:
    return render(request, "Sign in", LOGIN)


@post("/login")
async def login(request: Request[Any, Any, Any]) -> Response[Any]:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    email = form.get("email", [""])[0].strip()
    name = form.get("name", [""])[0].strip() or email.partition("@")[0]
    if "@" not in email or len(email) > 254:
        page = render(request, "Sign in", "<p>Please enter a valid email.</p>" + LOGIN)
        return Response(page, status_code=400, media_type=MediaType.HTML)
    request.set_session({"user": {"id": customer_id_for(email), "email": email, "name": name}})
    return Redirect("/", status_code=303)


@post("/logout")
async def logout(request: Request[Any, Any, Any]) -> Redirect:
    request.clear_session()
    return Redirect("/", status_code=303)


def build_app(
    fake_url: str | None, *, http_client: httpx.AsyncClient | None = None
) -> ReturningAIMiddleware:
    """The site: a Litestar app inside ``ReturningAIMiddleware``. ``fake_url``: a
    FakeReturningAI to use offline (None: the real service, from the ``RAI_*`` variables).
    ``http_client`` (an ``httpx.AsyncClient``) is for tests."""
    session_config = ServerSideSessionConfig()
    sessions = ServerSideSessionBackend(config=session_config)
    site = Litestar(
        route_handlers=[home, stream, login_form, login, logout],
        middleware=[session_config.middleware],
    )

    async def identify(scope: MutableMapping[str, Any]) -> dict[str, str] | None:
        if "session" in scope:  # a page: Litestar's session middleware loaded it
            session = scope["session"]
        else:  # the refresh endpoint: answered before Litestar runs
            connection: ASGIConnection[Any, Any, Any, Any] = ASGIConnection(
                cast(Any, {**scope, "app": site})
            )
            session = await sessions.load_from_connection(connection)
        user = session.get("user") if isinstance(session, dict) else None
        if not isinstance(user, dict):
            return None
        return {"data-customer-id": user["id"], "data-email": user["email"]}

    # cast: Litestar's precise ASGI types against the middleware's generic ones.
    return ReturningAIMiddleware(
        cast(Any, site), identify=identify, http_client=http_client, **rai_options(fake_url)
    )


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="rai-middleware with Litestar")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if real_mode():
            app, where = build_app(None), "Returning.AI"
        else:
            fake_url = stack.enter_context(FakeReturningAI().run_in_thread())
            app, where = build_app(fake_url), f"offline, fake Returning.AI at {fake_url}"
        url = f"http://{args.host}:{args.port}/"
        print(f"rai-middleware + Litestar ({where}): open {url}", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
