"""Issue 15, item 1: routes the middleware leaves alone (``exclude_paths``, ``skip``,
Django's ``rai_exempt``, Flask's ``ReturningAI.exempt`` and ``RAI_EXCLUDE_PATHS``).

An excluded ASGI request reaches the app with the server's very objects: checked at the raw
ASGI level (the same ``receive``, ``send`` and scope; ``pathsend`` used by the app reaches
the server) and under a real uvicorn. The behaviour on every entrance is in
tests/test_entrances.py."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from rai_middleware import ConfigurationError, ReturningAIMiddleware, ReturningAIWSGIMiddleware
from tests.conftest import (
    ACCESS_ID,
    ACCESS_KEY,
    COMMUNITY_ID,
    body_of,
    call_asgi,
    html_app,
    http_scope,
    serve,
)

PAGE = (
    b'<html><body><rai-placeholder widget="channel" widget-id="w-1">fallback</rai-placeholder>'
    b"</body></html>"
)
PATHSEND: dict[str, dict[str, Any]] = {
    "http.response.pathsend": {},
    "http.response.zerocopysend": {},
}
CREDENTIALS: dict[str, Any] = {
    "community_id": COMMUNITY_ID,
    "access_id": ACCESS_ID,
    "access_key": ACCESS_KEY,
}


class Recorder:
    """A raw ASGI app: keeps the scope, receive and send it was called with, and answers
    with ``pathsend`` when the server offers it (as Starlette's FileResponse does)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # under uvicorn
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.calls.append((scope, receive, send))
        headers = [(b"content-type", b"text/html"), (b"content-length", str(len(PAGE)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if "http.response.pathsend" in scope.get("extensions", {}):
            await send({"type": "http.response.pathsend", "path": "/srv/static/page.html"})
        else:
            await send({"type": "http.response.body", "body": PAGE})


def middleware(app: Any, **options: Any) -> ReturningAIMiddleware:
    options.setdefault("identify", lambda scope: {"data-customer-id": "c-1"})
    return ReturningAIMiddleware(app, **CREDENTIALS, **options)


# -- raw ASGI ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "root_path"),
    [
        ("/static/page.html", ""),
        ("/static", ""),
        ("/mount/static/a", "/mount"),
        ("/static/a", "/m"),
    ],
)
async def test_an_excluded_request_gets_the_servers_own_receive_send_and_scope(
    path: str, root_path: str
) -> None:
    app = Recorder()
    wrapped = middleware(app, exclude_paths=("/static",))
    scope = {**http_scope(path), "root_path": root_path, "extensions": dict(PATHSEND)}
    before = copy.deepcopy(scope)

    async def receive() -> dict[str, Any]:
        raise AssertionError("the app does not read the body")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await wrapped(scope, receive, send)
    assert app.calls == [(scope, receive, send)]
    assert app.calls[0][0] is scope and app.calls[0][1] is receive and app.calls[0][2] is send
    assert scope == before  # no mark, the extensions as the server offered them
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]


@pytest.mark.anyio
async def test_a_path_that_only_shares_the_text_of_a_prefix_is_rewritten() -> None:
    app = Recorder()
    wrapped = middleware(app, exclude_paths=("/static",), mode="attributes")
    scope = {**http_scope("/statically"), "extensions": dict(PATHSEND)}
    sent = await call_asgi(wrapped, scope)
    seen_scope = app.calls[0][0]
    assert "http.response.pathsend" not in seen_scope["extensions"]  # hidden: may be a page
    assert b"<rai-placeholder" not in body_of(sent)
    assert app.calls[0][2] is not None


@pytest.mark.anyio
async def test_websocket_and_lifespan_are_untouched_by_exclusions() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "lifespan":
            message = await receive()
            assert message["type"] == "lifespan.startup"
            await send({"type": "lifespan.startup.complete"})

    wrapped = middleware(app, exclude_paths=("/",), mode="attributes")
    messages = [{"type": "lifespan.startup"}]
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop()

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await wrapped({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    await wrapped({**http_scope("/ws"), "type": "websocket"}, receive, send)
    assert seen == ["lifespan", "websocket"]
    assert out == [{"type": "lifespan.startup.complete"}]


@pytest.mark.anyio
async def test_skip_is_called_with_the_scope() -> None:
    app = Recorder()
    asked: list[Any] = []

    def skip(scope: Any) -> bool:
        asked.append(scope)
        return bool(scope["method"] == "GET" and scope["path"].endswith(".html"))

    wrapped = middleware(app, skip=skip)
    scope = {**http_scope("/docs/a.html"), "extensions": dict(PATHSEND)}
    sent = await call_asgi(wrapped, scope)
    assert asked == [scope] and app.calls[0][0] is scope
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]


@pytest.mark.anyio
async def test_skip_given_as_a_dotted_path_is_imported() -> None:
    app = html_app(PAGE)
    wrapped = middleware(app, skip="tests.test_exclusions:skip_everything", mode="attributes")
    assert body_of(await call_asgi(wrapped, http_scope("/"))) == PAGE


def skip_everything(request: object) -> bool:
    return True


# -- a real server -------------------------------------------------------------------------


class Outer:
    """The outermost app uvicorn calls: notes the send uvicorn gave."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sends: list[Any] = []
        self.receives: list[Any] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.sends.append(send)
            self.receives.append(receive)
        await self.app(scope, receive, send)


@pytest.mark.server
def test_under_uvicorn_the_excluded_app_gets_uvicorns_send() -> None:
    app = Recorder()
    outer = Outer(middleware(app, exclude_paths=("/api",), mode="attributes"))
    with serve(outer) as base, httpx.Client(base_url=base) as client:
        excluded = client.get("/api/page")
        rewritten = client.get("/page")
    assert excluded.content == PAGE  # the placeholder is left as the app wrote it
    assert b"<rai-placeholder" not in rewritten.content
    (scope, receive, send), (_, _, wrapped_send) = app.calls
    assert send is outer.sends[0] and receive is outer.receives[0]
    assert "rai_middleware.tags" not in scope
    assert wrapped_send is not outer.sends[1]  # the page went through the rewrite


# -- WSGI ----------------------------------------------------------------------------------


def test_wsgi_an_excluded_request_gets_the_servers_start_response_and_environ() -> None:
    calls: list[tuple[Any, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append((environ, start_response))
        start_response("200 OK", [("Content-Type", "text/html")])
        return [PAGE]

    wrapped = ReturningAIWSGIMiddleware(app, exclude_paths=("/static",), **CREDENTIALS)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/static/x", "SCRIPT_NAME": "/mount"}
    before = dict(environ)

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    assert wrapped(environ, start_response) == [PAGE]
    assert calls == [(environ, start_response)] and calls[0][1] is start_response
    assert environ == before


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "/api",
            "exclude_paths must be a tuple of path prefixes such as ('/api', '/static'), got str",
        ),
        (("api",), "exclude_paths: 'api' is not a path prefix"),
        (("//evil",), "exclude_paths: '//evil' is not a path prefix"),
        (("/a?b",), "exclude_paths: '/a?b' is not a path prefix"),
        ((b"/api",), "exclude_paths: b'/api' is not a path prefix"),
        (("/",), "exclude_paths: '/' covers the middleware's own endpoint /_rai/embed-token"),
        (("/_rai/",), "exclude_paths: '/_rai' covers the middleware's own endpoint"),
    ],
)
def test_bad_exclude_paths_are_refused_at_construction(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        middleware(html_app(PAGE), exclude_paths=value)
    assert str(raised.value).startswith(message)


def test_exclude_paths_may_not_cover_the_proxy_widget_route() -> None:
    with pytest.raises(ConfigurationError) as raised:
        ReturningAIMiddleware(
            html_app(PAGE),
            mode="proxy",
            community_id="c",
            widget_api_key="widget-key-123456",
            exclude_paths=("/_rai/widget",),
        )
    assert str(raised.value) == (
        "exclude_paths: '/_rai/widget' covers the middleware's own endpoint /_rai/widget,"
        " which the widgets call; exclude narrower paths"
    )
    assert "widget-key" not in str(raised.value)


def test_exclusions_never_take_the_proxy_widget_route(caplog: pytest.LogCaptureFixture) -> None:
    proxy: dict[str, Any] = {"mode": "proxy", "community_id": "c", "widget_api_key": "k" * 16}
    with pytest.raises(ConfigurationError) as raised:
        ReturningAIMiddleware(html_app(PAGE), **proxy, exclude_paths=("/_rai/widget/store-widget",))
    assert str(raised.value) == (
        "exclude_paths: '/_rai/widget/store-widget' is under the middleware's own route"
        " /_rai/widget/, which the widget frames call; it cannot be excluded"
    )
    asked: list[str] = []

    def skip(scope: Any) -> bool:
        asked.append(scope["path"])
        return True

    core = ReturningAIMiddleware(html_app(PAGE), **proxy, skip=skip).core
    assert core.excluded is not None
    scope = {"path": "/_rai/widget/store-widget/abc"}
    assert core.excluded(scope, scope["path"], "") is False
    assert core.excluded({"path": "/x"}, "/x", "") is True
    assert asked == ["/x"]  # never asked about the widget route


def test_skip_must_be_callable() -> None:
    with pytest.raises(ConfigurationError, match=r"^skip must be a callable, or its dotted path\Z"):
        middleware(html_app(PAGE), skip=42)
    with pytest.raises(ConfigurationError, match=r"^skip: cannot import 'tests\.nowhere:skip'"):
        middleware(html_app(PAGE), skip="tests.nowhere:skip")


def test_exclude_paths_are_normalised_and_deduplicated() -> None:
    wrapped = middleware(html_app(PAGE), exclude_paths=["/api/", "/api", "/static//"])
    assert wrapped.settings.exclude_paths == ("/api", "/static")
    assert middleware(
        html_app(PAGE), mode="attributes", exclude_paths={"/"}
    ).settings.exclude_paths == ("",)


# -- Django: rai_exempt --------------------------------------------------------------------


def _django_views() -> list[Any]:
    from django.http import HttpResponse
    from django.urls import path
    from django.views import View

    from rai_middleware.django import rai_exempt

    def page(request: Any) -> HttpResponse:
        return HttpResponse(PAGE)

    @rai_exempt
    def exempt_page(request: Any) -> HttpResponse:
        return HttpResponse(PAGE)

    @rai_exempt
    async def exempt_async_page(request: Any) -> HttpResponse:
        return HttpResponse(PAGE)

    @rai_exempt
    class ExemptView(View):  # type: ignore[misc]
        def get(self, request: Any) -> HttpResponse:
            return HttpResponse(PAGE)

    return [
        path("page", page),
        path("exempt", exempt_page),
        path("exempt-async", exempt_async_page),
        path("exempt-class", ExemptView.as_view()),
        path("exempt-as-view", rai_exempt(View.as_view(http_method_names=["get"]))),
        path("api/page", page),
    ]


class _DjangoURLs:
    def __init__(self) -> None:
        self.urlpatterns = _django_views()


@pytest.fixture
def django_site() -> Any:
    pytest.importorskip("django")
    from django.test import override_settings

    from tests.test_django import configure_django

    configure_django()
    options = {
        **CREDENTIALS,
        "mode": "attributes",
        "identify": lambda request: {"data-customer-id": "c-1"},
        "exclude_paths": ("/api",),
    }
    with override_settings(
        ROOT_URLCONF=_DjangoURLs(),
        MIDDLEWARE=["rai_middleware.django.ReturningAIMiddleware"],
        RETURNING_AI=options,
    ):
        yield


@pytest.mark.parametrize(
    ("path", "rewritten"),
    [
        ("/page", True),
        ("/exempt", False),
        ("/exempt-async", False),
        ("/exempt-class", False),
        ("/api/page", False),
    ],
)
def test_django_sync_rai_exempt_and_exclude_paths(
    django_site: Any, path: str, rewritten: bool
) -> None:
    from django.test import Client

    response = Client().get(path)
    assert response.status_code == 200
    assert (response.content == PAGE) is not rewritten
    if rewritten:
        assert b"<rai-placeholder" not in response.content and b'data-widget-id="w-1"' in (
            response.content
        )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "rewritten"),
    [("/page", True), ("/exempt", False), ("/exempt-async", False), ("/api/page", False)],
)
async def test_django_async_rai_exempt_and_exclude_paths(
    django_site: Any, path: str, rewritten: bool
) -> None:
    from django.test import AsyncClient

    response = await AsyncClient().get(path)
    assert response.status_code == 200
    assert (response.content == PAGE) is not rewritten


def test_django_rai_exempt_marks_an_as_view_function() -> None:
    pytest.importorskip("django")
    from rai_middleware._exclude import is_exempt

    view = _django_views()[4].callback
    assert is_exempt(view) and not is_exempt(_django_views()[0].callback)


# -- Flask: ReturningAI.exempt and RAI_EXCLUDE_PATHS ---------------------------------------


def _flask_app(**config: Any) -> Any:
    from flask import Flask
    from flask.views import View

    from rai_middleware.flask import ReturningAI

    app = Flask(__name__)
    app.config.update(RAI_COMMUNITY_ID=COMMUNITY_ID, RAI_MODE="attributes", **config)
    rai = ReturningAI(identify=lambda request: {"data-customer-id": "c-1"})

    @app.get("/page")
    def page() -> bytes:
        return PAGE

    @app.get("/exempt")
    @ReturningAI.exempt
    def exempt() -> bytes:
        return PAGE

    @rai.exempt  # the other order, on the instance
    @app.get("/exempt-too")
    def exempt_too() -> bytes:
        return PAGE

    @ReturningAI.exempt
    class Exempt(View):
        def dispatch_request(self) -> bytes:
            return PAGE

    app.add_url_rule("/exempt-class", view_func=Exempt.as_view("exempt_class"))
    app.add_url_rule("/api/page", "api_page", lambda: PAGE)
    rai.init_app(app)
    return app


@pytest.mark.parametrize(
    ("path", "rewritten"),
    [
        ("/page", True),
        ("/exempt", False),
        ("/exempt-too", False),
        ("/exempt-class", False),
        ("/api/page", False),
        ("/nowhere", False),
    ],
)
def test_flask_exempt_and_rai_exclude_paths(path: str, rewritten: bool) -> None:
    pytest.importorskip("flask")
    app = _flask_app(RAI_EXCLUDE_PATHS=("/api",))
    response = app.test_client().get(path)
    if path == "/nowhere":
        assert response.status_code == 404
        return
    assert response.status_code == 200
    assert (response.data == PAGE) is not rewritten
    if rewritten:
        assert b"<rai-placeholder" not in response.data and b'data-widget-id="w-1"' in (
            response.data
        )


def test_flask_skip_from_the_config_gets_the_request() -> None:
    pytest.importorskip("flask")
    seen: list[Any] = []

    def skip(request: Any) -> bool:
        seen.append(request.path)
        return bool(request.args.get("raw") == "1")

    app = _flask_app(RAI_SKIP=skip)
    client = app.test_client()
    assert client.get("/page?raw=1").data == PAGE
    assert client.get("/page").data != PAGE
    assert seen == ["/page", "/page"]


@pytest.mark.anyio
async def test_starlettes_file_response_uses_pathsend_on_an_excluded_route(tmp_path: Any) -> None:
    from starlette.applications import Starlette
    from starlette.responses import FileResponse
    from starlette.routing import Route

    page = tmp_path / "page.html"
    page.write_bytes(PAGE)

    async def static(request: Any) -> FileResponse:
        return FileResponse(page)

    app = Starlette(routes=[Route("/static/page.html", static), Route("/page.html", static)])
    wrapped = middleware(app, exclude_paths=("/static",), mode="attributes")
    scope = {**http_scope("/static/page.html"), "extensions": dict(PATHSEND)}
    excluded = await call_asgi(wrapped, scope)
    assert [m["type"] for m in excluded] == ["http.response.start", "http.response.pathsend"]
    assert excluded[1]["path"] == str(page)
    # Not excluded: pathsend is hidden, so the file comes as body messages, rewritten.
    rewritten = await call_asgi(wrapped, {**http_scope("/page.html"), "extensions": dict(PATHSEND)})
    assert "http.response.pathsend" not in [m["type"] for m in rewritten]
    assert b"<rai-placeholder" not in body_of(rewritten)
    await wrapped.aclose()


def test_setup_checks_report_an_exclusion_that_covers_the_endpoint() -> None:
    """The same rule as at construction, so ``check`` and Django's checks list it too."""
    from rai_middleware._config import DJANGO, review_settings

    options = {"community_id": "c", "access_id": "i", "access_key": "k" * 16}
    found = review_settings({**options, "exclude_paths": ("/_rai",)}, {}, spelling=DJANGO)
    assert found.errors == (
        "RETURNING_AI['exclude_paths']: '/_rai' covers the middleware's own endpoint "
        "/_rai/embed-token, which the widgets call; exclude narrower paths",
    )
