"""Issue 15, item 4: an async ``identify`` where the framework runs async code.

Flask runs a coroutine-function ``identify`` the way it runs async views
(``app.ensure_sync``, asgiref), on whole and streamed pages. Django's async path awaits an
async ``identify`` and, by default, ``await request.auser()`` (tests/test_django.py), here
also through Django's real middleware stack and ``AsyncClient``."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID

PAGE = b'<html><body><rai-placeholder widget="store">fallback</rai-placeholder></body></html>'
TOKENS = re.compile(rb'embed-token="([^"]+)"')


@pytest.fixture
def upstream() -> Iterator[tuple[Any, httpx.Client]]:
    from tests.test_flask import Upstream

    handler = Upstream()
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        yield handler, client


# -- Flask ---------------------------------------------------------------------------------


def flask_app(client: httpx.Client, identify: Any) -> Any:
    pytest.importorskip("flask")
    from flask import Flask, Response

    from rai_middleware.flask import ReturningAI

    app = Flask(__name__)
    app.config.update(
        RAI_COMMUNITY_ID=COMMUNITY_ID,
        RAI_ACCESS_ID=ACCESS_ID,
        RAI_ACCESS_KEY=ACCESS_KEY,
        RAI_HTTP_CLIENT=client,
    )

    @app.get("/page")
    def page() -> bytes:
        return PAGE

    @app.get("/async-page")
    async def async_page() -> bytes:
        await asyncio.sleep(0)
        return PAGE

    @app.get("/stream")
    def stream() -> Response:
        return Response(iter([PAGE[:30], PAGE[30:]]), content_type="text/html")

    ReturningAI(app, identify=identify)
    return app


async def identify_header(request: Any) -> dict[str, str] | None:
    await asyncio.sleep(0)  # really a coroutine: it suspends
    user = request.headers.get("X-User")
    return {"data-customer-id": user} if user else None


@pytest.mark.parametrize("path", ["/page", "/async-page", "/stream"])
def test_flask_runs_an_async_identify_like_an_async_view(
    upstream: tuple[Any, httpx.Client], path: str
) -> None:
    handler, client = upstream
    app = flask_app(client, identify_header)
    with app.test_client() as browser:
        signed_in = browser.get(path, headers={"X-User": "ada"})
        anonymous = browser.get(path)
    assert TOKENS.findall(signed_in.data) == [b"tok-ada-1"]
    assert anonymous.data == b"<html><body>fallback</body></html>"
    assert handler.identifiers == [{"data-customer-id": "ada"}]


def test_flask_async_identify_given_as_a_dotted_path(upstream: tuple[Any, httpx.Client]) -> None:
    _, client = upstream
    app = flask_app(client, "tests.test_async_identity:identify_header")
    assert TOKENS.findall(app.test_client().get("/page", headers={"X-User": "bo"}).data) == [
        b"tok-bo-1"
    ]


def test_flask_async_identify_that_raises_serves_the_fallback(
    upstream: tuple[Any, httpx.Client], caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: Any) -> dict[str, str]:
        raise LookupError("no session store")

    handler, client = upstream
    app = flask_app(client, broken)
    with caplog.at_level("ERROR", logger="rai_middleware"):
        response = app.test_client().get("/page", headers={"X-User": "ada"})
    assert response.data == b"<html><body>fallback</body></html>"
    assert handler.calls == 0
    assert any(
        "raised; treating the visitor as anonymous" in r.getMessage() for r in caplog.records
    )


# -- Django: the real stack ----------------------------------------------------------------


class _URLs:
    def __init__(self) -> None:
        from django.http import HttpResponse
        from django.urls import path

        async def page(request: Any) -> HttpResponse:
            return HttpResponse(PAGE)

        self.urlpatterns = [path("page", page)]


@pytest.mark.anyio
async def test_django_async_default_identify_awaits_auser_through_the_real_stack(
    upstream: tuple[Any, httpx.Client],
) -> None:
    pytest.importorskip("django")
    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model
    from django.test import AsyncClient, override_settings

    from tests.test_django import configure_django, migrate_once

    configure_django()
    await sync_to_async(migrate_once)()
    user, _ = await get_user_model().objects.aget_or_create(
        username="grace", defaults={"email": "grace@example.com"}
    )
    handler, _ = upstream
    # An async client: the middleware runs its asyncio service, identify is awaited.
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        options = {
            "community_id": COMMUNITY_ID,
            "access_id": ACCESS_ID,
            "access_key": ACCESS_KEY,
            "http_client": client,
        }
        middleware = [
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "rai_middleware.django.ReturningAIMiddleware",
        ]
        with override_settings(RETURNING_AI=options, MIDDLEWARE=middleware, ROOT_URLCONF=_URLs()):
            browser = AsyncClient()
            await browser.aforce_login(user)
            response = await browser.get("/page")
    assert TOKENS.findall(response.content) == [f"tok-{user.pk}-1".encode()]
    assert handler.identifiers == [
        {"data-customer-id": str(user.pk), "data-email": "grace@example.com"}
    ]
