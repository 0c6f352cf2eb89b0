"""A small Starlette site that shows Returning.AI widgets to its signed-in visitors.

Run it from the repository root::

    pip install -e ".[demo]"
    python examples/demo.py            # then open http://127.0.0.1:8000/
    python examples/demo.py --port 9000 --host 0.0.0.0
    python examples/demo.py --mode iframe        # or --mode attributes, ...
    python examples/demo.py --token-ttl 60       # watch a token being renewed

``--mode`` picks the middleware's auth flow, one of the package's modes
(``rai_middleware._config.MODES``): ``access_key`` (the default: the widget SDK's elements
with an embed token), ``iframe`` (widget pages in iframes, which get their token from the page
by ``postMessage``), ``attributes`` (the widget loader script, with the identity in its
``data-*`` attributes and no token), and any mode added since.

``--token-ttl SECONDS`` (offline only) makes the fake mint tokens that live that long (900 by
default, as Returning.AI's), and scales the middleware's ``min_token_ttl`` and
``refresh_ahead`` to match: each stand-in widget counts its token's life down, and when it
runs out the page's refresh script fetches a new one, which the widget shows as "token
renewed", without a reload.

Offline or real:

* **Offline** (the default): no account and no network needed. The demo starts
  :class:`rai_middleware.testing.FakeReturningAI` in a background thread and points the
  middleware at it; the fake mints real (HS256) tokens and serves stand-ins for the widget SDK,
  the widget pages and the loader: small cards that show whose token (or identity) they got
  and how long the token has to live.
* **Real**: set the mode's variables (``REAL_MODE_VARS``): ``RAI_COMMUNITY_ID``,
  ``RAI_ACCESS_ID`` and ``RAI_ACCESS_KEY`` for ``access_key``; ``RAI_COMMUNITY_ID`` and
  ``RAI_WIDGET_API_KEY`` for ``iframe``; ``RAI_WIDGETS_BASE_URL`` for ``attributes`` (which has
  no secret). The middleware then talks to Returning.AI and loads its real scripts.

Sign in with any email (there is no password: it is a demo) and the placeholders on the home
page become widgets; sign out and their fallback content comes back.

How it fits together: ``SessionMiddleware`` keeps the signed-in user in a cookie,
``AuthenticationMiddleware`` turns the session into ``request.user`` (``scope["user"]``), and
``ReturningAIMiddleware``, listed after them and so running inside them, reads ``scope["user"]``
to decide who the visitor is, both for pages and for its token-refresh endpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import os
import secrets
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from rai_middleware import ReturningAIMiddleware
from rai_middleware._config import MODES as PACKAGE_MODES
from rai_middleware._options import SETTINGS
from rai_middleware.testing import FakeReturningAI

__all__ = [
    "MODES",
    "DemoAuthBackend",
    "DemoUser",
    "build_app",
    "main",
    "real_mode",
    "short_token_options",
]

#: The middleware's auth flows, for ``--mode``: every mode the package has, the default first.
MODES: tuple[str, ...] = tuple(PACKAGE_MODES)

#: The environment variables that switch the demo to the real Returning.AI (Access Key mode).
CREDENTIAL_VARS = ("RAI_COMMUNITY_ID", "RAI_ACCESS_ID", "RAI_ACCESS_KEY")
#: The same, for every mode: all of them set means real, otherwise offline. A mode's variables
#: are those of the options it requires; Attribute Auth requires none (it has no secret), so
#: the widgets host is what makes it real.
REAL_MODE_VARS: dict[str, tuple[str, ...]] = {
    name: tuple(str(SETTINGS[option].env) for option in mode.required) or ("RAI_WIDGETS_BASE_URL",)
    for name, mode in PACKAGE_MODES.items()
}

# Offline credentials: the ones FakeReturningAI accepts by default.
DEMO_COMMUNITY_ID = "demo-community"
DEMO_ACCESS_ID = "demo-access-id"
DEMO_ACCESS_KEY = "demo-access-key"
DEMO_WIDGET_API_KEY = "demo-widget-api-key"
#: What each required option is offline.
DEMO_OPTIONS: dict[str, str] = {
    "community_id": DEMO_COMMUNITY_ID,
    "access_id": DEMO_ACCESS_ID,
    "access_key": DEMO_ACCESS_KEY,
    "widget_api_key": DEMO_WIDGET_API_KEY,
}
#: The shortest ``--token-ttl``: below it the middleware's margins would leave no time to show.
MIN_TOKEN_TTL = 10.0
FAKE_SDK_PATH = "/sdk/rai-widget.iife.js"
FAKE_LOADER_PATH = "/widget-loader.js"


def real_mode(mode: str = "access_key") -> bool:
    """True when all of ``mode``'s Returning.AI variables are in the environment."""
    return all(os.environ.get(name, "").strip() for name in REAL_MODE_VARS[mode])


# -- who is signed in -----------------------------------------------------------------------


class DemoUser(BaseUser):
    """A signed-in visitor. ``ReturningAIMiddleware``'s default ``identify`` sends
    ``customer_id`` as ``data-customer-id`` and ``email`` as ``data-email``."""

    def __init__(self, *, customer_id: str, email: str, name: str) -> None:
        self.customer_id = customer_id
        self.email = email
        self.name = name

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name

    @property
    def identity(self) -> str:
        return self.customer_id


class DemoAuthBackend(AuthenticationBackend):
    """Reads the user that ``/login`` stored in the session."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        data = conn.session.get("user")
        if not isinstance(data, dict):
            return None
        customer_id, email, name = data.get("customer_id"), data.get("email"), data.get("name")
        if not (isinstance(customer_id, str) and isinstance(email, str) and isinstance(name, str)):
            return None
        user = DemoUser(customer_id=customer_id, email=email, name=name)
        return AuthCredentials(["authenticated"]), user


def customer_id_for(email: str) -> str:
    """A stable, opaque customer id: in a real site, your user's primary key."""
    return "demo-" + hashlib.sha256(email.lower().encode()).hexdigest()[:16]


# -- pages ----------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - rai-middleware demo</title>
<style>
  body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto;
         padding: 0 1rem; line-height: 1.5; }}
  header {{ display: flex; justify-content: space-between; align-items: center;
           border-bottom: 1px solid #ddd; margin-bottom: 1rem; }}
  header h1 {{ font-size: 1.5rem; }}
  header h1 a {{ color: inherit; text-decoration: none; }}
  section {{ border: 1px solid #ddd; border-radius: 8px; padding: 1rem;
            margin-bottom: 1rem; background: #f6f8fa; }}
  section > p:first-child {{ margin-top: 0; }}
  /* Widget frames (modes iframe, attributes, proxy) take the section's whole width. */
  section iframe {{ display: block; width: 100%; min-height: 200px; border: 0; }}
  form.inline {{ display: inline; }}
  label {{ display: block; margin: .5rem 0; }}
  .note {{ color: #555; font-size: .9rem; }}
  .error {{ color: #b00020; }}
</style>
</head>
<body>
<header><h1><a href="/">rai-middleware demo</a></h1><div>{account}</div></header>
{notice}
{content}
</body>
</html>
"""

HOME = """<h2>Community chat</h2>
<section>
<rai-placeholder widget="channel" widget-id="demo-channel" channel-id="general" theme="dark">
  <p><a href="/login">Sign in</a> to join the chat.</p>
</rai-placeholder>
</section>
<h2>Rewards store</h2>
<section>
<rai-placeholder widget="store" widget-id="demo-store">
  <p><a href="/login">Sign in</a> to spend your points in the rewards store.</p>
</rai-placeholder>
</section>
"""

LOGIN = """<h2>Sign in</h2>
<p class="note">No password: this is a demo. Any email will do.</p>
{error}
<form method="post" action="/login">
  <label>Email <input type="email" name="email" value="{email}" required></label>
  <label>Name <input type="text" name="name" value="{name}"></label>
  <button type="submit">Sign in</button>
</form>
"""


def render(request: Request, title: str, content: str, *, status_code: int = 200) -> Response:
    """The page layout around ``content`` (already HTML; every value in it escaped)."""
    user = request.user
    if isinstance(user, DemoUser):
        account = (
            f"Signed in as <strong>{html.escape(user.display_name)}</strong> "
            f"({html.escape(user.email)}) "
            '<form class="inline" method="post" action="/logout">'
            '<button type="submit">Sign out</button></form>'
        )
    else:
        account = 'Not signed in. <a href="/login">Sign in</a>'
    notice = request.app.state.notice
    page = PAGE.format(title=html.escape(title), account=account, notice=notice, content=content)
    # Pages depend on the session: never cache them in a shared cache. (When a page holds a
    # token, ReturningAIMiddleware sets "Cache-Control: private, no-store" itself.)
    return HTMLResponse(page, status_code=status_code, headers={"Cache-Control": "no-store"})


async def home(request: Request) -> Response:
    return render(request, "Home", HOME)


async def login_form(request: Request) -> Response:
    return render(request, "Sign in", LOGIN.format(error="", email="", name=""))


async def login(request: Request) -> Response:
    # The form is application/x-www-form-urlencoded: parse it without python-multipart.
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    email = form.get("email", [""])[0].strip()
    name = form.get("name", [""])[0].strip() or email.partition("@")[0]
    if "@" not in email or len(email) > 254 or len(name) > 100:
        content = LOGIN.format(
            error='<p class="error">Please enter a valid email address.</p>',
            email=html.escape(email),
            name=html.escape(name),
        )
        return render(request, "Sign in", content, status_code=400)
    request.session["user"] = {
        "customer_id": customer_id_for(email),
        "email": email,
        "name": name,
    }
    return RedirectResponse("/", status_code=303)


async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/", status_code=303)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def favicon(request: Request) -> Response:
    # Browsers ask for one; "no content" keeps a 404 out of their console.
    return Response(status_code=204)


# -- the application ------------------------------------------------------------------------


def short_token_options(token_ttl: float) -> dict[str, float]:
    """The middleware's margins for tokens that live ``token_ttl`` seconds: a page gets a token
    with at least a quarter of its life left, renewed ahead in the last sixth of it (the
    defaults, 300 s and 120 s, are for Returning.AI's 900-second tokens)."""
    if not token_ttl >= MIN_TOKEN_TTL:
        raise ValueError(f"token_ttl must be at least {MIN_TOKEN_TTL:g} seconds, got {token_ttl}")
    return {"min_token_ttl": min(300.0, token_ttl / 4), "refresh_ahead": min(120.0, token_ttl / 6)}


def build_app(
    *,
    mode: str = "access_key",
    api_base_url: str | None = None,
    sdk_url: str | None = None,
    widgets_base_url: str | None = None,
    loader_url: str | None = None,
    http_client: httpx.AsyncClient | None = None,
    token_ttl: float | None = None,
) -> Starlette:
    """The demo site, with the middleware in ``mode`` (one of :data:`MODES`).

    With the mode's variables set (:data:`REAL_MODE_VARS`), the middleware reads them and talks
    to Returning.AI. Otherwise it uses the demo credentials that
    :class:`~rai_middleware.testing.FakeReturningAI` accepts: pass the fake's URL as
    ``api_base_url`` (its SDK stand-in then becomes ``sdk_url``, and in the modes with widget
    pages the fake also serves the widgets: ``widgets_base_url`` defaults to it,
    ``loader_url`` to its loader), or an ``http_client`` wired to the fake (``fake.client()``).
    ``token_ttl`` is the lifetime of the fake's tokens, when it is not the default 900 s: the
    middleware's margins are scaled to it (:func:`short_token_options`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    rai_options: dict[str, Any] = {"mode": mode, "http_client": http_client}
    if token_ttl is not None:
        rai_options.update(short_token_options(token_ttl))
    if real_mode(mode):
        # The middleware reads the RAI_* variables itself.
        notice = ""
    else:
        rai_options.update({name: DEMO_OPTIONS[name] for name in PACKAGE_MODES[mode].required})
        fake_url = api_base_url.rstrip("/") if api_base_url is not None else None
        if sdk_url is None and fake_url is not None:
            sdk_url = fake_url + FAKE_SDK_PATH
        if widgets_base_url is None:
            widgets_base_url = fake_url
        if loader_url is None and widgets_base_url is not None:
            loader_url = widgets_base_url.rstrip("/") + FAKE_LOADER_PATH
        shows = (
            "whose stand-in widgets show whom they got an identity for (no token in this mode)"
            if mode == "attributes"
            else "whose stand-in widgets show whom their token was minted for and how long it "
            "has to live"
        )
        lifetime = f" Tokens live {token_ttl:g} s." if token_ttl and mode != "attributes" else ""
        variables = ", ".join(REAL_MODE_VARS[mode])
        notice = (
            f'<p class="note">Offline mode ({mode}): a fake Returning.AI, {shows}.{lifetime} '
            f"Set {variables} to use the real service.</p>"
        )
    if api_base_url is not None:
        rai_options["api_base_url"] = api_base_url
    if sdk_url is not None:
        rai_options["sdk_url"] = sdk_url
    if widgets_base_url is not None:
        rai_options["widgets_base_url"] = widgets_base_url
    if loader_url is not None:
        rai_options["loader_url"] = loader_url

    session_secret = os.environ.get("DEMO_SESSION_SECRET") or secrets.token_urlsafe(32)
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/login", login_form, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/health", health),
            Route("/favicon.ico", favicon),
        ],
        middleware=[
            # Outermost first. ReturningAIMiddleware must come after (inside) the other two,
            # so that scope["user"] exists when it renders a page or answers /_rai/embed-token
            # (/_rai/signin in iframe mode).
            Middleware(SessionMiddleware, secret_key=session_secret),
            Middleware(AuthenticationMiddleware, backend=DemoAuthBackend()),
            Middleware(ReturningAIMiddleware, **rai_options),
        ],
    )
    app.state.notice = notice
    return app


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _token_ttl(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= MIN_TOKEN_TTL:  # also refuses nan
        raise argparse.ArgumentTypeError(f"at least {MIN_TOKEN_TTL:g} seconds, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the rai-middleware demo site.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument(
        "--mode",
        choices=MODES,
        default=MODES[0],
        help=f"the middleware's auth flow ({MODES[0]})",
    )
    parser.add_argument(
        "--token-ttl",
        type=_token_ttl,
        default=None,
        metavar="SECONDS",
        help="offline only: the fake's tokens live this long (900), e.g. 60 to watch a renewal",
    )
    args = parser.parse_args(argv)

    try:
        import uvicorn
    except ImportError:
        sys.exit('The demo needs uvicorn: pip install -e ".[demo]"')

    site_url = f"http://{_url_host(args.host)}:{args.port}/"
    with contextlib.ExitStack() as stack:
        variables = REAL_MODE_VARS[args.mode]
        if real_mode(args.mode):
            if args.token_ttl is not None:
                parser.error(
                    "--token-ttl works offline only (Returning.AI decides how long its tokens "
                    f"live): unset {', '.join(variables)} to use the fake"
                )
            app = build_app(mode=args.mode)
            where = ", ".join(f"{name}={os.environ[name].strip()}" for name in variables)
            if "RAI_COMMUNITY_ID" in variables:
                where = f"Returning.AI community {os.environ['RAI_COMMUNITY_ID'].strip()}"
            description = f"{args.mode}, {where}"
        else:
            missing = [name for name in variables if not os.environ.get(name, "").strip()]
            if len(missing) < len(variables):
                print(f"note: {', '.join(missing)} not set; running offline", file=sys.stderr)
            fake = FakeReturningAI()
            if args.token_ttl is not None:
                fake.token_lifetime = args.token_ttl
            fake_url = stack.enter_context(fake.run_in_thread())
            app = build_app(mode=args.mode, api_base_url=fake_url, token_ttl=args.token_ttl)
            description = f"offline, fake Returning.AI at {fake_url}"
            if args.token_ttl is not None:
                description += f", tokens live {args.token_ttl:g} s"
            if args.mode != MODES[0]:
                description = f"{args.mode}, {description}"
        print(f"rai-middleware demo ({description}): open {site_url}", flush=True)
        uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
