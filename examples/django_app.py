"""Returning.AI widgets in a Django site: ``rai_middleware.django.ReturningAIMiddleware``.

A single-file Django project. Run it from the repository root (offline: a fake Returning.AI
runs in a thread)::

    pip install -e ".[django,demo]"
    python examples/django_app.py            # WSGI, then open http://127.0.0.1:8000/
    python examples/django_app.py --asgi     # the same under uvicorn: the async middleware

With ``RAI_COMMUNITY_ID``, ``RAI_ACCESS_ID`` and ``RAI_ACCESS_KEY`` set, it talks to the real
Returning.AI instead. Sign in with any email (no password): a ``django.contrib.auth`` user is
created for it and logged in, and the placeholders become widgets with your token. ``/stream``
is the same page as a ``StreamingHttpResponse``.

How it fits together: ``SessionMiddleware`` and ``AuthenticationMiddleware`` come first in
``MIDDLEWARE``, ``ReturningAIMiddleware`` after them, so that its default ``identify`` reads
``request.user`` (``pk`` as ``data-customer-id``, ``email`` as ``data-email``), for pages and for
its token-refresh endpoint alike (which needs no entry in ``urlpatterns``).
"""

from __future__ import annotations

import argparse
import contextlib
import html
import os
import secrets
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import django
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.urls import path
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from rai_middleware.testing import FakeReturningAI

CREDENTIAL_VARS = ("RAI_COMMUNITY_ID", "RAI_ACCESS_ID", "RAI_ACCESS_KEY")

#: The order that matters: sessions and auth first, then ReturningAIMiddleware (and
#: GZipMiddleware, or the CSP middleware, would go before it).
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "rai_middleware.django.ReturningAIMiddleware",
]

LAYOUT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} - rai-middleware + Django</title></head>
<body>
<header><h1><a href="/">rai-middleware + Django</a></h1><p>{account}</p></header>
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
  <input type="hidden" name="csrfmiddlewaretoken" value="{csrf}">
  <label>Email <input type="email" name="email" required></label>
  <label>Name <input type="text" name="name"></label>
  <button type="submit">Sign in</button>
</form>
"""


def real_mode() -> bool:
    return all(os.environ.get(name, "").strip() for name in CREDENTIAL_VARS)


def rai_settings(fake_url: str | None, **extra: Any) -> dict[str, Any]:
    """``settings.RETURNING_AI``: the fake's credentials offline; with ``fake_url`` None, the
    middleware reads the ``RAI_*`` environment variables. ``extra``: e.g. an http_client."""
    if fake_url is None:
        return dict(extra)
    return {
        "community_id": "demo-community",
        "access_id": "demo-access-id",
        "access_key": "demo-access-key",
        "api_base_url": fake_url,
        "sdk_url": fake_url.rstrip("/") + "/sdk/rai-widget.iife.js",
        **extra,
    }


def configure(returning_ai: dict[str, Any], database: str) -> None:
    """Django's settings, for this one-file project."""
    settings.configure(
        DEBUG=False,
        SECRET_KEY=os.environ.get("EXAMPLE_SECRET_KEY") or secrets.token_urlsafe(40),
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "[::1]", "testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
        ],
        MIDDLEWARE=MIDDLEWARE,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": database}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        USE_TZ=True,
        RETURNING_AI=returning_ai,
    )
    django.setup()


# -- views ------------------------------------------------------------------------------------


def render(request: HttpRequest, title: str, content: str) -> str:
    user: Any = request.user
    if user.is_authenticated:
        from django.middleware.csrf import get_token

        account = (
            f"Signed in as <strong>{html.escape(user.first_name)}</strong> "
            f"({html.escape(user.email)}) "
            '<form method="post" action="/logout" style="display:inline">'
            f'<input type="hidden" name="csrfmiddlewaretoken" value="{get_token(request)}">'
            '<button type="submit">Sign out</button></form>'
        )
    else:
        account = 'Not signed in. <a href="/login">Sign in</a>'
    return LAYOUT.format(title=html.escape(title), account=account, content=content)


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(render(request, "Home", HOME))


@require_GET
def stream(request: HttpRequest) -> StreamingHttpResponse:
    page = render(request, "Streamed", HOME)

    def chunks() -> Iterator[str]:
        for start in range(0, len(page), 200):
            yield page[start : start + 200]

    return StreamingHttpResponse(chunks(), content_type="text/html; charset=utf-8")


@require_http_methods(["GET", "POST"])
def login_view(request: HttpRequest) -> HttpResponse:
    from django.contrib.auth import get_user_model, login
    from django.middleware.csrf import get_token

    form = LOGIN.format(csrf=get_token(request))
    if request.method == "GET":
        return HttpResponse(render(request, "Sign in", form))
    email = request.POST.get("email", "").strip().lower()
    name = request.POST.get("name", "").strip() or email.partition("@")[0]
    if "@" not in email or len(email) > 150:
        page = render(request, "Sign in", "<p>Please enter a valid email.</p>" + form)
        return HttpResponse(page, status=400)
    user, created = get_user_model().objects.get_or_create(
        username=email, defaults={"email": email, "first_name": name[:150]}
    )
    if created:
        user.set_unusable_password()  # no password: it is a demo
        user.save()
    login(request, user, backend="django.contrib.auth.backends.ModelBackend")
    return HttpResponseRedirect("/", status=303)


@require_POST
def logout_view(request: HttpRequest) -> HttpResponse:
    from django.contrib.auth import logout

    logout(request)
    return HttpResponseRedirect("/", status=303)


urlpatterns = [
    path("", home),
    path("stream", stream),
    path("login", login_view),
    path("logout", logout_view),
]


# -- running it -------------------------------------------------------------------------------


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="rai-middleware with Django")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--asgi", action="store_true", help="serve with uvicorn (async mode)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="rai-django-"))
        if real_mode():
            returning_ai, where = rai_settings(None), "Returning.AI"
        else:
            fake_url = stack.enter_context(FakeReturningAI().run_in_thread())
            returning_ai = rai_settings(fake_url)
            where = f"offline, fake Returning.AI at {fake_url}"
        configure(returning_ai, str(Path(folder) / "db.sqlite3"))
        migrate()
        url = f"http://{args.host}:{args.port}/"
        mode = "ASGI" if args.asgi else "WSGI"
        print(f"rai-middleware + Django ({mode}, {where}): open {url}", flush=True)
        if args.asgi:
            import uvicorn
            from django.core.asgi import get_asgi_application

            uvicorn.run(get_asgi_application(), host=args.host, port=args.port, lifespan="off")
            return
        from django.core.servers.basehttp import run
        from django.core.wsgi import get_wsgi_application

        try:
            run(args.host, args.port, get_wsgi_application(), threading=True)
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
