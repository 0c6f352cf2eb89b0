"""Returning.AI widgets in a Starlette site: the ASGI ``ReturningAIMiddleware``.

Run it from the repository root (offline: a fake Returning.AI runs in a thread)::

    pip install -e ".[demo]"
    python examples/starlette_app.py            # then open http://127.0.0.1:8000/

With ``RAI_COMMUNITY_ID``, ``RAI_ACCESS_ID`` and ``RAI_ACCESS_KEY`` set, it talks to the real
Returning.AI instead. Sign in with any email (no password): the placeholders become widgets with
your token; ``/stream`` is the same page as a ``StreamingResponse``. (``demo.py`` is the fuller
version of this site, with every mode.)

How it fits together: ``SessionMiddleware`` keeps the user in a cookie,
``AuthenticationMiddleware`` turns it into ``scope["user"]``, and ``ReturningAIMiddleware``,
listed after them (so running inside them), reads it with its default ``identify``
(``customer_id`` -> ``data-customer-id``, ``email`` -> ``data-email``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import os
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from rai_middleware import ReturningAIMiddleware
from rai_middleware.testing import FakeReturningAI

CREDENTIAL_VARS = ("RAI_COMMUNITY_ID", "RAI_ACCESS_ID", "RAI_ACCESS_KEY")

LAYOUT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} - rai-middleware + Starlette</title></head>
<body>
<header><h1><a href="/">rai-middleware + Starlette</a></h1><p>{account}</p></header>
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


class User(BaseUser):
    """Read by the default identify: ``customer_id`` and ``email``."""

    def __init__(self, customer_id: str, email: str, name: str) -> None:
        self.customer_id = customer_id
        self.email = email
        self.name = name

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name


class SessionBackend(AuthenticationBackend):
    """``scope["user"]`` from what ``/login`` put in the session."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        data = conn.session.get("user")
        if not isinstance(data, dict):
            return None
        user = User(data["id"], data["email"], data["name"])
        return AuthCredentials(["authenticated"]), user


def render(request: Request, title: str, content: str) -> str:
    user = request.user
    if isinstance(user, User):
        account = (
            f"Signed in as <strong>{html.escape(user.name)}</strong> "
            f"({html.escape(user.email)}) "
            '<form method="post" action="/logout" style="display:inline">'
            '<button type="submit">Sign out</button></form>'
        )
    else:
        account = 'Not signed in. <a href="/login">Sign in</a>'
    return LAYOUT.format(title=html.escape(title), account=account, content=content)


async def home(request: Request) -> Response:
    return HTMLResponse(render(request, "Home", HOME))


async def stream(request: Request) -> Response:
    page = render(request, "Streamed", HOME)

    async def chunks() -> AsyncIterator[str]:
        for start in range(0, len(page), 200):
            yield page[start : start + 200]

    return StreamingResponse(chunks(), media_type="text/html")


async def login_form(request: Request) -> Response:
    return HTMLResponse(render(request, "Sign in", LOGIN))


async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    email = form.get("email", [""])[0].strip()
    name = form.get("name", [""])[0].strip() or email.partition("@")[0]
    if "@" not in email or len(email) > 254:
        page = render(request, "Sign in", "<p>Please enter a valid email.</p>" + LOGIN)
        return HTMLResponse(page, status_code=400)
    request.session["user"] = {"id": customer_id_for(email), "email": email, "name": name}
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/", status_code=303)


def build_app(fake_url: str | None, *, http_client: httpx.AsyncClient | None = None) -> Starlette:
    """The site. ``fake_url``: a FakeReturningAI to use offline (None: the real service,
    from the ``RAI_*`` variables). ``http_client`` (an ``httpx.AsyncClient``) is for tests."""
    secret = os.environ.get("EXAMPLE_SECRET_KEY") or secrets.token_urlsafe(32)
    return Starlette(
        routes=[
            Route("/", home),
            Route("/stream", stream),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
        ],
        middleware=[
            # Outermost first: ReturningAIMiddleware last, so scope["user"] is set for it.
            Middleware(SessionMiddleware, secret_key=secret),
            Middleware(AuthenticationMiddleware, backend=SessionBackend()),
            Middleware(ReturningAIMiddleware, http_client=http_client, **rai_options(fake_url)),
        ],
    )


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="rai-middleware with Starlette")
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
        print(f"rai-middleware + Starlette ({where}): open {url}", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
