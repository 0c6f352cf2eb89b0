"""Returning.AI widgets in a Quart site: the ASGI ``ReturningAIMiddleware`` as ``asgi_app``.

Run it from the repository root (offline: a fake Returning.AI runs in a thread)::

    pip install -e ".[quart,demo]"
    python examples/quart_app.py            # then open http://127.0.0.1:8000/

With ``RAI_COMMUNITY_ID``, ``RAI_ACCESS_ID`` and ``RAI_ACCESS_KEY`` set, it talks to the real
Returning.AI instead. Sign in with any email (no password): the placeholders become widgets with
your token; ``/stream`` is the same page as a streamed (async generator) response.

How it fits together: ``app.asgi_app = ReturningAIMiddleware(app.asgi_app, ...)`` wraps the
whole app. Quart's session lives in its request context, which the middleware does not see, so
``identify`` reads the session cookie itself, with Quart's own signing serializer (the same
secret key, salt and maximum age as Quart).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import os
import secrets
from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from typing import Any, cast

import httpx
from itsdangerous import BadSignature
from quart import Quart, Response, redirect, request, session
from werkzeug.http import parse_cookie

from rai_middleware import ReturningAIMiddleware
from rai_middleware.testing import FakeReturningAI

CREDENTIAL_VARS = ("RAI_COMMUNITY_ID", "RAI_ACCESS_ID", "RAI_ACCESS_KEY")

LAYOUT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} - rai-middleware + Quart</title></head>
<body>
<header><h1><a href="/">rai-middleware + Quart</a></h1><p>{account}</p></header>
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


def session_identify(app: Quart) -> Callable[[MutableMapping[str, Any]], dict[str, str] | None]:
    """An ``identify`` reading Quart's signed session cookie straight from the ASGI scope."""

    def identify(scope: MutableMapping[str, Any]) -> dict[str, str] | None:
        interface = app.session_interface
        serializer = interface.get_signing_serializer(app)
        header = b"; ".join(value for name, value in scope["headers"] if name == b"cookie")
        cookie = parse_cookie(header.decode("latin-1")).get(interface.get_cookie_name(app))
        if serializer is None or cookie is None:
            return None
        try:
            max_age = int(app.permanent_session_lifetime.total_seconds())
            data = serializer.loads(cookie, max_age=max_age)
        except BadSignature:
            return None
        user = data.get("user") if isinstance(data, dict) else None
        if not isinstance(user, dict):
            return None
        return {"data-customer-id": user["id"], "data-email": user["email"]}

    return identify


def render(title: str, content: str) -> str:
    user = session.get("user")
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


def build_app(fake_url: str | None, *, http_client: httpx.AsyncClient | None = None) -> Quart:
    """The site. ``fake_url``: a FakeReturningAI to use offline (None: the real service,
    from the ``RAI_*`` variables). ``http_client`` (an ``httpx.AsyncClient``) is for tests."""
    app = Quart(__name__)
    app.secret_key = os.environ.get("EXAMPLE_SECRET_KEY") or secrets.token_urlsafe(32)

    @app.get("/")
    async def home() -> str:
        return render("Home", HOME)

    @app.get("/stream")
    async def stream() -> Response:
        page = render("Streamed", HOME)

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(page), 200):
                yield page[start : start + 200].encode()

        return Response(chunks(), mimetype="text/html")

    @app.get("/login")
    async def login_form() -> str:
        return render("Sign in", LOGIN)

    @app.post("/login")
    async def login() -> Any:
        form = await request.form
        email = form.get("email", "").strip()
        name = form.get("name", "").strip() or email.partition("@")[0]
        if "@" not in email or len(email) > 254:
            return render("Sign in", "<p>Please enter a valid email.</p>" + LOGIN), 400
        session["user"] = {"id": customer_id_for(email), "email": email, "name": name}
        return redirect("/", 303)

    @app.post("/logout")
    async def logout() -> Any:
        session.clear()
        return redirect("/", 303)

    # cast: Quart's precise ASGI types against the middleware's generic ones.
    app.asgi_app = cast(  # type: ignore[method-assign]
        Any,
        ReturningAIMiddleware(
            cast(Any, app.asgi_app),
            identify=session_identify(app),
            http_client=http_client,
            **rai_options(fake_url),
        ),
    )
    return app


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="rai-middleware with Quart")
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
        print(f"rai-middleware + Quart ({where}): open {url}", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
