"""Returning.AI widgets in a Flask site, with Flask-Login: ``rai_middleware.flask.ReturningAI``.

Run it from the repository root (offline: a fake Returning.AI runs in a thread)::

    pip install -e ".[flask,demo]" flask-login
    python examples/flask_app.py            # then open http://127.0.0.1:8000/

With ``RAI_COMMUNITY_ID``, ``RAI_ACCESS_ID`` and ``RAI_ACCESS_KEY`` set, it talks to the real
Returning.AI instead. Sign in with any email (no password): the placeholders on the home page
become widgets with your token; ``/stream`` is the same page as a streamed response.

How it fits together: Flask-Login keeps the signed-in user in the session, and the extension's
default ``identify`` reads ``flask_login.current_user`` (``get_id()`` as ``data-customer-id``,
``email`` as ``data-email``) while the request context is alive.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import os
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from flask import Flask, Response, redirect, request, session, stream_with_context
from flask_login import LoginManager, current_user, login_user, logout_user

from rai_middleware.flask import ReturningAI
from rai_middleware.testing import FakeReturningAI

CREDENTIAL_VARS = ("RAI_COMMUNITY_ID", "RAI_ACCESS_ID", "RAI_ACCESS_KEY")
# The credentials FakeReturningAI accepts.
DEMO = {
    "community_id": "demo-community",
    "access_id": "demo-access-id",
    "access_key": "demo-access-key",
}

LAYOUT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} - rai-middleware + Flask</title></head>
<body>
<header><h1><a href="/">rai-middleware + Flask</a></h1><p>{account}</p></header>
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


def customer_id_for(email: str) -> str:
    """A stable customer id: in a real site, your user's primary key."""
    return "demo-" + hashlib.sha256(email.lower().encode()).hexdigest()[:16]


class User:
    """A Flask-Login user, kept whole in the session (there is no database)."""

    is_active = True
    is_anonymous = False
    is_authenticated = True

    def __init__(self, id: str, email: str, name: str) -> None:
        self.id = id
        self.email = email
        self.name = name

    def get_id(self) -> str:
        return self.id


def render(title: str, content: str) -> str:
    if current_user.is_authenticated:
        account = (
            f"Signed in as <strong>{html.escape(current_user.name)}</strong> "
            f"({html.escape(current_user.email)}) "
            '<form method="post" action="/logout" style="display:inline">'
            '<button type="submit">Sign out</button></form>'
        )
    else:
        account = 'Not signed in. <a href="/login">Sign in</a>'
    return LAYOUT.format(title=html.escape(title), account=account, content=content)


def build_app(fake_url: str | None, *, http_client: httpx.Client | None = None) -> Flask:
    """The site. ``fake_url``: a FakeReturningAI to use offline (None: the real service,
    from the ``RAI_*`` variables). ``http_client`` (an ``httpx.Client``) is for tests."""
    app = Flask(__name__)
    app.config["SECRET_KEY"] = os.environ.get("EXAMPLE_SECRET_KEY") or secrets.token_urlsafe(32)
    if fake_url is not None:
        app.config.update(
            RAI_COMMUNITY_ID=DEMO["community_id"],
            RAI_ACCESS_ID=DEMO["access_id"],
            RAI_ACCESS_KEY=DEMO["access_key"],
            RAI_API_BASE_URL=fake_url,
            RAI_SDK_URL=fake_url.rstrip("/") + "/sdk/rai-widget.iife.js",
        )
    if http_client is not None:
        app.config["RAI_HTTP_CLIENT"] = http_client

    login_manager = LoginManager(app)

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        profile = session.get("profile")
        if isinstance(profile, dict) and profile.get("id") == user_id:
            return User(**profile)
        return None

    @app.get("/")
    def home() -> str:
        return render("Home", HOME)

    @app.get("/stream")
    def stream() -> Response:
        page = render("Streamed", HOME)

        def chunks() -> Iterator[str]:
            for start in range(0, len(page), 200):
                yield page[start : start + 200]

        return Response(stream_with_context(chunks()), mimetype="text/html")

    @app.get("/login")
    def login_form() -> str:
        return render("Sign in", LOGIN)

    @app.post("/login")
    def login() -> Any:
        email = request.form.get("email", "").strip()
        name = request.form.get("name", "").strip() or email.partition("@")[0]
        if "@" not in email or len(email) > 254:
            return render("Sign in", "<p>Please enter a valid email.</p>" + LOGIN), 400
        profile = {"id": customer_id_for(email), "email": email, "name": name}
        session["profile"] = profile
        login_user(User(**profile))
        return redirect("/", code=303)

    @app.post("/logout")
    def logout() -> Any:
        logout_user()
        session.clear()
        return redirect("/", code=303)

    # After LoginManager (not required: identify runs at request time) and after any
    # compression extension, so that it compresses the rewritten page.
    ReturningAI(app)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description="rai-middleware with Flask")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if real_mode():
            app, where = build_app(None), "Returning.AI"
        else:
            fake_url = stack.enter_context(FakeReturningAI().run_in_thread())
            app, where = build_app(fake_url), f"offline, fake Returning.AI at {fake_url}"
        print(f"rai-middleware + Flask ({where}): open http://{args.host}:{args.port}/", flush=True)
        run_simple(args.host, args.port, app, threaded=True)


if __name__ == "__main__":
    main()
