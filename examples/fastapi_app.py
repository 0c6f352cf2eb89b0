"""Returning.AI widgets in a FastAPI site: the ASGI ``ReturningAIMiddleware``.

Run it from the repository root (offline: a fake Returning.AI runs in a thread)::

    pip install -e ".[demo]" fastapi
    python examples/fastapi_app.py            # then open http://127.0.0.1:8000/

With ``RAI_COMMUNITY_ID``, ``RAI_ACCESS_ID`` and ``RAI_ACCESS_KEY`` set, it talks to the real
Returning.AI instead. Sign in with any email (no password): the placeholders become widgets with
your token; ``/stream`` is the same page as a ``StreamingResponse``.

How it fits together: FastAPI's dependencies (``Depends(get_current_user)``) run inside the
route, where no middleware can see them, so ``identify`` reads the user that ``/login`` stored
in the session, from ``scope["session"]``: ``SessionMiddleware`` must be added *after*
``ReturningAIMiddleware`` (``add_middleware`` puts each new one outside the others).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import os
import secrets
from collections.abc import AsyncIterator, MutableMapping, Sequence
from typing import Any
from urllib.parse import parse_qs

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from starlette.middleware.sessions import SessionMiddleware

from rai_middleware import ReturningAIMiddleware
from rai_middleware.testing import FakeReturningAI

CREDENTIAL_VARS = ("RAI_COMMUNITY_ID", "RAI_ACCESS_ID", "RAI_ACCESS_KEY")

LAYOUT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} - rai-middleware + FastAPI</title></head>
<body>
<header><h1><a href="/">rai-middleware + FastAPI</a></h1><p>{account}</p></header>
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


def identify(scope: MutableMapping[str, Any]) -> dict[str, str] | None:
    """The visitor, from the session that SessionMiddleware (outside us) decoded."""
    user = (scope.get("session") or {}).get("user")
    if not isinstance(user, dict):
        return None
    return {"data-customer-id": user["id"], "data-email": user["email"]}


def render(request: Request, title: str, content: str) -> str:
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


def build_app(fake_url: str | None, *, http_client: httpx.AsyncClient | None = None) -> FastAPI:
    """The site. ``fake_url``: a FakeReturningAI to use offline (None: the real service,
    from the ``RAI_*`` variables). ``http_client`` (an ``httpx.AsyncClient``) is for tests."""
    app = FastAPI()

    @app.get("/", response_class=HTMLResponse)
    async def home(request: Request) -> str:
        return render(request, "Home", HOME)

    @app.get("/stream")
    async def stream(request: Request) -> StreamingResponse:
        page = render(request, "Streamed", HOME)

        async def chunks() -> AsyncIterator[str]:
            for start in range(0, len(page), 200):
                yield page[start : start + 200]

        return StreamingResponse(chunks(), media_type="text/html")

    @app.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> str:
        return render(request, "Sign in", LOGIN)

    @app.post("/login", response_model=None)
    async def login(request: Request) -> RedirectResponse | HTMLResponse:
        # Parsed by hand, so that the example needs no python-multipart.
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        email = form.get("email", [""])[0].strip()
        name = form.get("name", [""])[0].strip() or email.partition("@")[0]
        if "@" not in email or len(email) > 254:
            page = render(request, "Sign in", "<p>Please enter a valid email.</p>" + LOGIN)
            return HTMLResponse(page, status_code=400)
        request.session["user"] = {"id": customer_id_for(email), "email": email, "name": name}
        return RedirectResponse("/", status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> RedirectResponse:
        request.session.clear()
        return RedirectResponse("/", status_code=303)

    # Added first, so it runs inside SessionMiddleware (added next, outside it).
    app.add_middleware(
        ReturningAIMiddleware,
        identify=identify,
        http_client=http_client,
        **rai_options(fake_url),
    )
    secret = os.environ.get("EXAMPLE_SECRET_KEY") or secrets.token_urlsafe(32)
    app.add_middleware(SessionMiddleware, secret_key=secret)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="rai-middleware with FastAPI")
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
        print(f"rai-middleware + FastAPI ({where}): open {url}", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
