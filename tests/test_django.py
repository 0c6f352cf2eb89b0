"""The Django middleware (rai_middleware.django): sync and async, through Django's own
test clients and real servers (WSGI and ASGI)."""

from __future__ import annotations

import contextlib
import gzip
import html
import io
import json
import logging
import os
import re
import socket
import sys
import threading
import time
import wsgiref.simple_server
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("django")

import django
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.http import (
    FileResponse,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.test import AsyncClient, Client, override_settings
from django.urls import path

from rai_middleware import ConfigurationError
from rai_middleware.django import ReturningAIMiddleware, default_identify
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID

# -- one Django configuration for the whole test process (test_examples.py shares it) -------

DATABASE = "file:rai-middleware-tests?mode=memory&cache=shared"
_migrated = threading.Lock()
_state = {"migrated": False}


def configure_django() -> None:
    """Settings for every Django test of this process; tests override what they need."""
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="tests-django-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
            ALLOWED_HOSTS=["*"],
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATABASE}},
            SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
            ROOT_URLCONF="tests.test_django",
            MIDDLEWARE=[],
            USE_TZ=True,
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
            LOGGING_CONFIG=None,
        )
        django.setup()


def migrate_once() -> None:
    """The auth tables, in the shared in-memory database (kept alive by this thread's
    connection; Django's other threads open their own to the same database)."""
    with _migrated:
        if not _state["migrated"]:
            call_command("migrate", verbosity=0, interactive=False)
            _state["migrated"] = True


configure_django()

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "rai_middleware.django.ReturningAIMiddleware",
]

PAGE = (
    b"<html><body><!-- <rai-placeholder widget=store></rai-placeholder> -->"
    b'<rai-placeholder widget="channel" channel-id="abc">fallback</rai-placeholder>'
    b'<rai-placeholder widget="store"/></body></html>'
)
ANONYMOUS = (
    b"<html><body><!-- <rai-placeholder widget=store></rai-placeholder> -->fallback</body></html>"
)
TICKET = re.compile(rb'data-rai-ticket="([^"]+)"')
TOKENS = re.compile(rb'embed-token="([^"]+)"')


class Upstream:
    """The token endpoint as an httpx.MockTransport handler: ``tok-<customer id>-<n>``."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.identifiers: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.calls += 1
            number = self.calls
        if self.fail:
            return httpx.Response(500)
        payload = json.loads(request.content)
        assert payload["accessKey"] == ACCESS_KEY
        identifiers = payload["userIdentifiers"]
        self.identifiers.append(identifiers)
        user = identifiers.get("data-customer-id", "?")
        return httpx.Response(
            200, json={"data": {"embedToken": f"tok-{user}-{number}", "expiresIn": 900}}
        )


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    yield Upstream()


@pytest.fixture
def rai(upstream: Upstream) -> Iterator[dict[str, Any]]:
    """``settings.RETURNING_AI`` for a test, with an httpx.Client bound to ``upstream``."""
    client = httpx.Client(transport=httpx.MockTransport(upstream))
    options: dict[str, Any] = {
        "community_id": COMMUNITY_ID,
        "access_id": ACCESS_ID,
        "access_key": ACCESS_KEY,
        "http_client": client,
    }
    try:
        yield options
    finally:
        client.close()


@pytest.fixture
def site(rai: dict[str, Any]) -> Iterator[dict[str, Any]]:
    migrate_once()
    with override_settings(RETURNING_AI=rai, MIDDLEWARE=MIDDLEWARE, ROOT_URLCONF=__name__):
        yield rai


@pytest.fixture
def user() -> Any:
    migrate_once()
    model = get_user_model()
    found, _ = model.objects.get_or_create(username="ada", defaults={"email": "ada@example.com"})
    return found


# -- views ---------------------------------------------------------------------------------


def page(request: Any) -> HttpResponse:
    return HttpResponse(PAGE, headers={"ETag": '"v1"', "Cache-Control": "max-age=60"})


def plain(request: Any) -> HttpResponse:
    return HttpResponse(b"<p>no widgets here</p>", headers={"ETag": '"v1"'})


def chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def stream(request: Any) -> StreamingHttpResponse:
    return StreamingHttpResponse(chunks(PAGE), content_type="text/html; charset=utf-8")


async def achunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def astream(request: Any) -> StreamingHttpResponse:
    return StreamingHttpResponse(achunks(PAGE), content_type="text/html; charset=utf-8")


async def apage(request: Any) -> HttpResponse:
    return HttpResponse(PAGE)


def file_page(request: Any) -> FileResponse:
    return FileResponse(io.BytesIO(PAGE), content_type="text/html; charset=utf-8")


def json_view(request: Any) -> JsonResponse:
    return JsonResponse({"html": PAGE.decode()})


def missing(request: Any) -> HttpResponse:
    return HttpResponse(PAGE, status=404)


def gzipped(request: Any) -> HttpResponse:
    return HttpResponse(gzip.compress(PAGE), headers={"Content-Encoding": "gzip"})


def with_csp(request: Any) -> HttpResponse:
    return HttpResponse(
        PAGE, headers={"Content-Security-Policy": "script-src 'self' 'nonce-fromheader'"}
    )


def legacy(request: Any) -> HttpResponse:
    return HttpResponse(
        b'<rai-placeholder widget="channel" widget-id="w-1">fallback</rai-placeholder>'
    )


NOT_WIDGETS = (
    b"<!-- <rai-placeholder widget=store></rai-placeholder> -->"
    b'<rai-placeholder widget="nonesuch">x</rai-placeholder><p>' + b"padding " * 40 + b"</p>"
)


def not_widgets(request: Any) -> HttpResponse:
    return HttpResponse(NOT_WIDGETS)


async def anot_widgets(request: Any) -> HttpResponse:
    return HttpResponse(NOT_WIDGETS)


def gzip_stream(request: Any) -> StreamingHttpResponse:
    data = gzip.compress(PAGE)
    return StreamingHttpResponse(
        chunks(data, 16), content_type="text/html", headers={"Content-Encoding": "gzip"}
    )


async def agzip_stream(request: Any) -> StreamingHttpResponse:
    data = gzip.compress(PAGE)
    return StreamingHttpResponse(
        achunks(data, 16), content_type="text/html", headers={"Content-Encoding": "gzip"}
    )


def corrupt_stream(request: Any) -> StreamingHttpResponse:
    return StreamingHttpResponse(
        chunks(b"this is not gzip at all"),
        content_type="text/html",
        headers={"Content-Encoding": "gzip"},
    )


async def acorrupt_stream(request: Any) -> StreamingHttpResponse:
    return StreamingHttpResponse(
        achunks(b"this is not gzip at all"),
        content_type="text/html",
        headers={"Content-Encoding": "gzip"},
    )


def gzip_plain(request: Any) -> HttpResponse:
    return HttpResponse(gzip.compress(b"<p>nothing</p>"), headers={"Content-Encoding": "gzip"})


def form(request: Any) -> HttpResponse:
    return HttpResponse(b"posted")


urlpatterns = [
    path("page", page),
    path("plain", plain),
    path("stream", stream),
    path("astream", astream),
    path("apage", apage),
    path("file", file_page),
    path("json", json_view),
    path("missing", missing),
    path("gzipped", gzipped),
    path("csp", with_csp),
    path("form", form),
    path("legacy", legacy),
    path("not-widgets", not_widgets),
    path("anot-widgets", anot_widgets),
    path("gzip-stream", gzip_stream),
    path("agzip-stream", agzip_stream),
    path("corrupt-stream", corrupt_stream),
    path("acorrupt-stream", acorrupt_stream),
    path("gzip-plain", gzip_plain),
]


def identify_header(request: Any) -> dict[str, str] | None:
    """A dotted-path identify for the tests: the visitor named by a header."""
    user = request.headers.get("X-User")
    return {"data-customer-id": user} if user else None


def requires(module: str) -> None:
    """An optional test dependency: skipped when missing, except in CI."""
    if not os.environ.get("CI"):
        pytest.importorskip(module)


def header(response: Any, name: str) -> str | None:
    value: str | None = response.headers.get(name)
    return value


def ticket_of(body: bytes) -> str:
    match = TICKET.search(body)
    assert match is not None, body
    return html.unescape(match.group(1).decode())


def assert_no_secret(response: Any, body: bytes) -> None:
    everything = body + "\n".join(f"{k}: {v}" for k, v in response.items()).encode()
    assert ACCESS_KEY.encode() not in everything
    assert ACCESS_ID.encode() not in everything


# -- sync mode (WSGI handler) --------------------------------------------------------------


def test_signed_in_user_gets_widgets_with_their_token(
    site: dict[str, Any], user: Any, upstream: Upstream
) -> None:
    client = Client()
    client.force_login(user)
    response = client.get("/page")
    body = response.content
    assert response.status_code == 200
    assert TOKENS.findall(body) == [f"tok-{user.pk}-1".encode()] * 2
    assert b"<rai-channel-widget community-id=" in body
    assert b"rai-placeholder" not in body.split(b"-->", 1)[1]
    assert header(response, "Content-Length") == str(len(body))
    assert header(response, "Cache-Control") == "private, no-store"
    assert "Cookie" in (header(response, "Vary") or "")
    assert header(response, "ETag") is None
    assert upstream.identifiers == [
        {"data-customer-id": str(user.pk), "data-email": "ada@example.com"}
    ]
    assert_no_secret(response, body)


def test_anonymous_visitor_gets_the_fallback(site: dict[str, Any], upstream: Upstream) -> None:
    response = Client().get("/page")
    assert response.content == ANONYMOUS
    assert header(response, "Content-Length") == str(len(ANONYMOUS))
    assert header(response, "Cache-Control") == "max-age=60"  # no token in the page
    assert header(response, "Vary") == "Cookie, Authorization"  # but it depends on who is signed in
    assert header(response, "ETag") is None  # the body changed
    assert upstream.calls == 0


def test_module_stats_reads_the_middleware_django_built(
    site: dict[str, Any], user: Any, upstream: Upstream
) -> None:
    import rai_middleware.django

    client = Client()
    client.force_login(user)
    assert client.get("/page").status_code == 200
    assert client.get("/page").status_code == 200
    counts = rai_middleware.django.stats()
    assert (counts["cache_misses"], counts["cache_hits"], counts["mints"]) == (1, 1, 1)
    assert counts["pages_rewritten"] == 2
    assert upstream.calls == 1


def test_module_stats_before_django_built_the_middleware(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rai_middleware.django
    from rai_middleware.django import _built

    monkeypatch.setattr(_built, "_newest", None)
    with pytest.raises(LookupError, match=r"Django has not built the middleware"):
        rai_middleware.django.stats()


def test_responses_that_are_not_pages_with_placeholders_are_untouched(
    site: dict[str, Any], user: Any, upstream: Upstream
) -> None:
    client = Client()
    client.force_login(user)
    plain_page = client.get("/plain")
    assert plain_page.content == b"<p>no widgets here</p>"
    assert header(plain_page, "ETag") == '"v1"'
    assert header(plain_page, "Cache-Control") is None
    assert client.get("/json").json() == {"html": PAGE.decode()}
    assert client.get("/missing").content == PAGE
    head = client.head("/page")
    assert head.status_code == 200
    assert upstream.calls == 0


def test_streaming_response_is_rewritten(
    site: dict[str, Any], user: Any, upstream: Upstream
) -> None:
    client = Client()
    client.force_login(user)
    response = client.get("/stream")
    assert response.streaming
    body = b"".join(response.streaming_content)
    assert TOKENS.findall(body) == [f"tok-{user.pk}-1".encode()] * 2
    assert header(response, "Content-Length") is None
    assert header(response, "Cache-Control") == "private, no-store"
    anonymous = Client().get("/stream")
    assert b"".join(anonymous.streaming_content) == ANONYMOUS
    assert header(anonymous, "Cache-Control") is None
    assert upstream.calls == 1


def test_file_response_html_is_rewritten(site: dict[str, Any], user: Any) -> None:
    client = Client()
    client.force_login(user)
    response = client.get("/file")
    assert response.file_to_stream is None  # no wsgi.file_wrapper shortcut around the rewrite
    body = b"".join(response.streaming_content)
    assert len(TOKENS.findall(body)) == 2
    assert header(response, "Content-Length") is None


def test_refresh_endpoint_needs_no_url_and_passes_csrf(
    site: dict[str, Any], user: Any, upstream: Upstream
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    body = client.get("/page").content
    ticket = {"X-RAI-Ticket": ticket_of(body)}
    refresh = client.post("/_rai/embed-token", headers=ticket)
    assert refresh.status_code == 200
    assert refresh.json()["embedToken"] == f"tok-{user.pk}-1"
    assert 890 <= refresh.json()["expiresIn"] <= 900
    assert header(refresh, "Cache-Control") == "no-store"
    assert header(refresh, "Content-Type") == "application/json"
    assert_no_secret(refresh, refresh.content)
    # A normal view still gets CSRF protection.
    assert client.post("/form").status_code == 403
    assert client.get("/_rai/embed-token", headers=ticket).status_code == 405
    cross = {**ticket, "Sec-Fetch-Site": "cross-site"}
    assert client.post("/_rai/embed-token", headers=cross).status_code == 403
    assert client.post("/_rai/embed-token").status_code == 403  # no ticket
    assert Client().post("/_rai/embed-token", headers=ticket).status_code == 401
    assert upstream.calls == 1  # the page and the refresh shared one token


def test_refresh_endpoint_answers_503_when_upstream_fails(
    site: dict[str, Any], user: Any, upstream: Upstream
) -> None:
    client = Client()
    client.force_login(user)
    ticket = {"X-RAI-Ticket": ticket_of(client.get("/page").content)}
    with override_settings(RETURNING_AI={**site, "min_token_ttl": 0}):
        fresh = Client()
        fresh.force_login(user)
        upstream.fail = True
        # A new middleware (new settings): an empty cache, and the upstream fails.
        assert fresh.post("/_rai/embed-token", headers=ticket).status_code == 503


def test_upstream_failure_serves_the_fallback(
    site: dict[str, Any], user: Any, upstream: Upstream
) -> None:
    upstream.fail = True
    client = Client()
    client.force_login(user)
    assert client.get("/page").content == ANONYMOUS


def test_identify_as_a_dotted_path_and_endpoint_prefix(
    rai: dict[str, Any], upstream: Upstream
) -> None:
    options = {**rai, "identify": f"{__name__}.identify_header", "endpoint_prefix": "/widgets"}
    with override_settings(RETURNING_AI=options, MIDDLEWARE=MIDDLEWARE[-1:]):
        client = Client(headers={"X-User": "u-7"})
        body = client.get("/page").content
        assert TOKENS.findall(body) == [b"tok-u-7-1"] * 2
        assert b'data-rai-refresh="/widgets/embed-token"' in body or b"/widgets/embed-token" in body
        refresh = client.post("/widgets/embed-token", headers={"X-RAI-Ticket": ticket_of(body)})
        assert refresh.json()["embedToken"] == "tok-u-7-1"
        assert client.post("/_rai/embed-token").status_code == 404  # not ours any more
    with override_settings(RETURNING_AI={**rai, "identify": identify_header}, MIDDLEWARE=[]):
        middleware = ReturningAIMiddleware(page)
        assert middleware.identify is identify_header
        assert not middleware.async_mode
        assert "community-123" in repr(middleware)


def test_script_name_prefixes_the_refresh_url(rai: dict[str, Any]) -> None:
    options = {**rai, "identify": identify_header}
    with override_settings(RETURNING_AI=options, MIDDLEWARE=MIDDLEWARE[-1:]):
        client = Client(headers={"X-User": "u-1"}, SCRIPT_NAME="/app")
        body = client.get("/page").content
        assert b"/app/_rai/embed-token" in body


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"community_id": "c", "acces_key": "typo"}, "unknown option"),
        ("not a dict", "must be a dict"),
        ({"identify": "tests.test_django.no_such_thing"}, "cannot import"),
        ({"identify": 42}, "must be a callable"),
        ({"community_id": "c", "access_id": "i"}, r"RETURNING_AI\['access_key'\] is required"),
    ],
)
def test_bad_settings_are_configuration_errors(value: object, message: str) -> None:
    with override_settings(RETURNING_AI=value), pytest.raises(ConfigurationError, match=message):
        ReturningAIMiddleware(page)


def test_settings_errors_list_every_problem_as_written_in_settings() -> None:
    value = {"community_id": "c", "acces_key": "typo", "timeout": -1}
    with override_settings(RETURNING_AI=value), pytest.raises(ConfigurationError) as caught:
        ReturningAIMiddleware(page)
    assert caught.value.problems == (
        "unknown option RETURNING_AI['acces_key'] (did you mean RETURNING_AI['access_key']?)",
        "RETURNING_AI['timeout'] must be greater than 0, got -1",
        "RETURNING_AI['access_id'] is required in mode='access_key': set it in "
        "settings.RETURNING_AI or set the RAI_ACCESS_ID environment variable",
        "RETURNING_AI['access_key'] is required in mode='access_key': set it in "
        "settings.RETURNING_AI or set the RAI_ACCESS_KEY environment variable",
    )


def test_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, upstream: Upstream
) -> None:
    monkeypatch.setenv("RAI_COMMUNITY_ID", COMMUNITY_ID)
    monkeypatch.setenv("RAI_ACCESS_ID", ACCESS_ID)
    monkeypatch.setenv("RAI_ACCESS_KEY", ACCESS_KEY)
    with httpx.Client(transport=httpx.MockTransport(upstream)) as http_client:
        with override_settings(
            RETURNING_AI={"http_client": http_client, "identify": identify_header},
            MIDDLEWARE=MIDDLEWARE[-1:],
        ):
            body = Client(headers={"X-User": "env"}).get("/page").content
        assert TOKENS.findall(body) == [b"tok-env-1"] * 2
    with override_settings(RETURNING_AI=None):
        assert ReturningAIMiddleware(page).settings.community_id == COMMUNITY_ID


def test_missing_authentication_middleware_is_logged_once(
    rai: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with (
        override_settings(RETURNING_AI=rai, MIDDLEWARE=MIDDLEWARE[-1:]),
        caplog.at_level(logging.WARNING, logger="rai_middleware"),
    ):
        client = Client()
        assert client.get("/page").content == ANONYMOUS
        assert client.get("/page").content == ANONYMOUS
    assert caplog.text.count("after AuthenticationMiddleware") == 1


def test_default_identify_reads_pk_and_email() -> None:
    class User:
        is_authenticated = True
        pk: int | None = 42
        email = "a@b.c"

    class Anonymous:
        is_authenticated = False

    class Request:
        def __init__(self, user: object) -> None:
            self.user = user

    assert default_identify(Request(User())) == {"data-customer-id": "42", "data-email": "a@b.c"}
    assert default_identify(Request(Anonymous())) is None
    assert default_identify(object()) is None
    no_email = User()
    no_email.email = ""
    assert default_identify(Request(no_email)) == {"data-customer-id": "42"}
    no_pk = User()
    no_pk.pk = None
    assert default_identify(Request(no_pk)) == {"data-email": "a@b.c"}


def test_gzip_middleware_outside_compresses_the_rewritten_page(
    site: dict[str, Any], user: Any
) -> None:
    with override_settings(MIDDLEWARE=["django.middleware.gzip.GZipMiddleware", *MIDDLEWARE]):
        client = Client()
        client.force_login(user)
        # GZipMiddleware skips bodies under 200 bytes: the rewritten page is longer.
        response = client.get("/page", headers={"Accept-Encoding": "gzip"})
        assert header(response, "Content-Encoding") == "gzip"
        assert len(TOKENS.findall(gzip.decompress(response.content))) == 2
        streamed = client.get("/stream", headers={"Accept-Encoding": "gzip"})
        assert header(streamed, "Content-Encoding") == "gzip"
        body = gzip.decompress(b"".join(streamed.streaming_content))
        assert len(TOKENS.findall(body)) == 2


def test_gzip_page_from_inside_is_decoded_and_reencoded(site: dict[str, Any], user: Any) -> None:
    client = Client()
    client.force_login(user)
    response = client.get("/gzipped")
    assert header(response, "Content-Encoding") == "gzip"
    assert header(response, "Content-Length") == str(len(response.content))
    assert len(TOKENS.findall(gzip.decompress(response.content))) == 2


def test_unsupported_encoding_is_sent_unchanged_with_one_warning(
    rai: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    def brotli(request: Any) -> HttpResponse:
        return HttpResponse(b"compressed", headers={"Content-Encoding": "br"})

    middleware_options = {**rai, "identify": identify_header}
    with (
        override_settings(RETURNING_AI=middleware_options),
        caplog.at_level(logging.WARNING, logger="rai_middleware"),
    ):
        middleware = ReturningAIMiddleware(brotli)
        request = _request()
        assert middleware(request).content == b"compressed"
        assert middleware(request).content == b"compressed"
    assert caplog.text.count("List GZipMiddleware") == 1


def _request(path_info: str = "/page", method: str = "GET") -> Any:
    from django.test import RequestFactory

    return RequestFactory().generic(method, path_info, headers={"X-User": "u-1"})


def test_a_failing_rewrite_sends_the_page_unchanged(
    rai: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with override_settings(RETURNING_AI={**rai, "identify": identify_header}):
        middleware = ReturningAIMiddleware(page)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("rai_middleware._page.rewrite_headers", broken)
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        assert middleware(_request()).content == PAGE
    assert "sending it unchanged" in caplog.text


def test_pages_without_real_widgets_and_compressed_streams(
    site: dict[str, Any], user: Any, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client()
    client.force_login(user)
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        body = client.get("/not-widgets").content
    assert body == NOT_WIDGETS.replace(
        b'<rai-placeholder widget="nonesuch">x</rai-placeholder>', b"x"
    )
    assert "unknown widget 'nonesuch'" in caplog.text
    plain = client.get("/gzip-plain")
    assert gzip.decompress(plain.content) == b"<p>nothing</p>"
    streamed = client.get("/gzip-stream")
    body = gzip.decompress(b"".join(streamed.streaming_content))
    assert len(TOKENS.findall(body)) == 2
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        corrupt = client.get("/corrupt-stream")
        # Nothing could be rewritten: the app's bytes, all of them, unchanged.
        assert b"".join(corrupt.streaming_content) == b"this is not gzip at all"
    assert "corrupt" in caplog.text
    assert upstream.calls == 1


@pytest.mark.anyio
async def test_async_pages_without_real_widgets_and_compressed_streams(
    site: dict[str, Any], user: Any
) -> None:
    client = AsyncClient()
    await client.aforce_login(user)
    assert (await client.get("/plain")).content == b"<p>no widgets here</p>"
    body = (await client.get("/anot-widgets")).content
    assert b"nonesuch" not in body
    streamed = await client.get("/agzip-stream")
    data = gzip.decompress(b"".join([chunk async for chunk in streamed.streaming_content]))
    assert len(TOKENS.findall(data)) == 2
    corrupt = await client.get("/acorrupt-stream")
    assert b"".join([c async for c in corrupt.streaming_content]) == b"this is not gzip at all"


@pytest.mark.anyio
async def test_async_failing_rewrite_sends_the_page_unchanged(
    rai: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with override_settings(RETURNING_AI={**rai, "identify": identify_header}):
        middleware = ReturningAIMiddleware(apage)
    assert middleware.async_mode

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("rai_middleware._page.rewrite_headers", broken)
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        response = await middleware(_request())
    assert response.content == PAGE
    assert "sending it unchanged" in caplog.text
    middleware.close()


def test_a_failing_stream_setup_sends_the_stream_unchanged(
    rai: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    with override_settings(RETURNING_AI={**rai, "identify": identify_header}):
        middleware = ReturningAIMiddleware(stream)
    monkeypatch.setattr("rai_middleware._page.streamed_headers", broken)
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        response = middleware(_request())
    assert b"".join(response.streaming_content) == PAGE
    assert "sending it unchanged" in caplog.text
    middleware.close()


# -- CSP nonces ----------------------------------------------------------------------------


def test_django_csp_nonce_is_used_and_lands_in_the_header(site: dict[str, Any], user: Any) -> None:
    requires("csp")
    from csp.constants import NONCE, SELF

    policy = {"DIRECTIVES": {"script-src": [SELF, NONCE]}}
    with override_settings(
        MIDDLEWARE=["csp.middleware.CSPMiddleware", *MIDDLEWARE],
        CONTENT_SECURITY_POLICY=policy,
    ):
        client = Client()
        client.force_login(user)
        response = client.get("/page")
        match = re.search(r"'nonce-([^']+)'", response.headers["Content-Security-Policy"])
        assert match is not None
        assert f'nonce="{match.group(1)}"'.encode() in response.content
        # No placeholder: the nonce is not asked for, so none is added to the header.
        assert "nonce-" not in client.get("/plain").headers["Content-Security-Policy"]
        streamed = client.get("/stream")
        match = re.search(r"'nonce-([^']+)'", streamed.headers["Content-Security-Policy"])
        assert match is not None
        assert f'nonce="{match.group(1)}"'.encode() in b"".join(streamed.streaming_content)


class LazyNonce:
    """Django 6's ``django.utils.csp.LazyNonce``: made on first use, false until then."""

    def __init__(self) -> None:
        self.value: str | None = None

    def __str__(self) -> str:
        if self.value is None:
            self.value = "django6-nonce"
        return self.value

    def __bool__(self) -> bool:
        return self.value is not None


class Django6CSPMiddleware:
    """What Django 6's ``ContentSecurityPolicyMiddleware`` does, for Django 5 here."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        request._csp_nonce = LazyNonce()
        response = self.get_response(request)
        nonce = request._csp_nonce
        policy = "script-src 'self'" + (f" 'nonce-{nonce}'" if nonce else "")
        response.headers["Content-Security-Policy"] = policy
        return response


def test_django6_csp_nonce(
    site: dict[str, Any], user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rai_middleware.django as adapter

    monkeypatch.setattr(adapter, "django_csp_nonce", lambda request: request._csp_nonce)
    with override_settings(MIDDLEWARE=[f"{__name__}.Django6CSPMiddleware", *MIDDLEWARE]):
        client = Client()
        client.force_login(user)
        response = client.get("/page")
        assert response.headers["Content-Security-Policy"].endswith("'nonce-django6-nonce'")
        assert b'nonce="django6-nonce"' in response.content
        assert "nonce-" not in client.get("/plain").headers["Content-Security-Policy"]


def test_django6_get_nonce_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import rai_middleware.django as adapter

    module = types.ModuleType("django.middleware.csp")

    def get_nonce(request: Any) -> Any:
        return None

    module.get_nonce = get_nonce  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "django.middleware.csp", module)
    assert adapter._django_get_nonce() is get_nonce


def test_a_csp_header_already_set_gives_its_nonce(site: dict[str, Any], user: Any) -> None:
    client = Client()
    client.force_login(user)
    assert b'nonce="fromheader"' in client.get("/csp").content


def test_csp_middleware_listed_after_is_reported(
    site: dict[str, Any], user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    requires("csp")
    with (
        override_settings(
            # The CSP middleware inside ReturningAIMiddleware: its header is written before
            # the page is rewritten, and no policy is configured, so there is no header.
            MIDDLEWARE=[*MIDDLEWARE, "csp.middleware.CSPMiddleware"],
            CONTENT_SECURITY_POLICY=None,
        ),
        caplog.at_level(logging.WARNING, logger="rai_middleware"),
    ):
        client = Client()
        client.force_login(user)
        body = client.get("/page").content
    assert len(TOKENS.findall(body)) == 2
    assert b"nonce=" not in body
    assert "csp_nonce" in caplog.text


# -- other modes -----------------------------------------------------------------------------


def test_iframe_mode_serves_signin(upstream: Upstream) -> None:
    def signin(request: httpx.Request) -> httpx.Response:
        upstream.calls += 1
        return httpx.Response(200, json={"token": "iframe-tok"})

    with httpx.Client(transport=httpx.MockTransport(signin)) as http_client:
        options = {
            "mode": "iframe",
            "community_id": COMMUNITY_ID,
            "widget_api_key": "widget-key",
            "http_client": http_client,
            "identify": lambda request: {"data-email": "a@b.c"},
        }
        with override_settings(RETURNING_AI=options, MIDDLEWARE=MIDDLEWARE[-1:]):
            client = Client()
            response = client.get("/legacy")
            assert b"<iframe" in response.content
            block = re.search(rb'<script type="application/json">(.*?)</script>', response.content)
            assert block is not None
            data = json.loads(block.group(1))
            assert data["token"] == "iframe-tok"
            assert data["endpoint"] == "/_rai/signin"
            ticket = {"X-RAI-Ticket": data["ticket"]}
            refresh = client.post("/_rai/signin", headers=ticket)
            assert refresh.json()["token"] == "iframe-tok"
            assert client.post("/_rai/embed-token").status_code == 404


def test_attributes_mode_has_no_endpoint(site: dict[str, Any]) -> None:
    options = {"mode": "attributes", "identify": identify_header}
    with override_settings(RETURNING_AI=options, MIDDLEWARE=MIDDLEWARE[-1:]):
        client = Client(headers={"X-User": "u-9"})
        body = client.get("/legacy").content
        assert b'data-customer-id="u-9"' in body
        assert client.post("/_rai/embed-token").status_code == 404


# -- async mode (ASGI handler) -------------------------------------------------------------


@pytest.mark.anyio
async def test_async_mode_pages_streams_and_refresh(
    site: dict[str, Any], user: Any, upstream: Upstream
) -> None:
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get("/apage")
    assert TOKENS.findall(response.content) == [f"tok-{user.pk}-1".encode()] * 2
    assert header(response, "Content-Length") == str(len(response.content))
    assert header(response, "Cache-Control") == "private, no-store"

    streamed = await client.get("/astream")
    assert streamed.is_async
    body = b"".join([chunk async for chunk in streamed.streaming_content])
    assert TOKENS.findall(body) == [f"tok-{user.pk}-1".encode()] * 2
    assert header(streamed, "Content-Length") is None

    refresh = await client.post("/_rai/embed-token", headers={"X-RAI-Ticket": ticket_of(body)})
    assert refresh.status_code == 200
    assert refresh.json()["embedToken"] == f"tok-{user.pk}-1"

    anonymous = AsyncClient()
    assert (await anonymous.get("/page")).content == ANONYMOUS
    anonymous_stream = await anonymous.get("/astream")
    assert b"".join([c async for c in anonymous_stream.streaming_content]) == ANONYMOUS
    assert (await anonymous.post("/_rai/embed-token")).status_code == 401
    assert (await anonymous.get("/plain")).content == b"<p>no widgets here</p>"
    assert (await anonymous.get("/json")).json() == {"html": PAGE.decode()}
    assert upstream.calls == 1


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
async def test_async_mode_with_a_sync_streaming_view(site: dict[str, Any], user: Any) -> None:
    client = AsyncClient()
    await client.aforce_login(user)
    response = await client.get("/stream")
    body = b"".join([chunk async for chunk in response])
    assert len(TOKENS.findall(body)) == 2


def test_async_middleware_is_a_coroutine_function(rai: dict[str, Any]) -> None:
    from asgiref.sync import iscoroutinefunction

    async def get_response(request: Any) -> HttpResponse:
        return HttpResponse(b"")

    with override_settings(RETURNING_AI=rai):
        assert iscoroutinefunction(ReturningAIMiddleware(get_response))
        assert not iscoroutinefunction(ReturningAIMiddleware(page))


# -- real servers ----------------------------------------------------------------------------


def _real_flow(base_url: str, user: Any, stream_path: str) -> None:
    from django.contrib.auth import SESSION_KEY
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = user.get_session_auth_hash()
    session.save()
    cookies = {settings.SESSION_COOKIE_NAME: session.session_key}
    with httpx.Client(base_url=base_url, cookies=cookies, timeout=10) as client:
        response = client.get("/page")
        assert response.headers["content-length"] == str(len(response.content))
        assert len(TOKENS.findall(response.content)) == 2
        assert_no_secret(response.headers, response.content)
        streamed = client.get(stream_path)
        assert "content-length" not in streamed.headers
        assert len(TOKENS.findall(streamed.content)) == 2
        refresh = client.post(
            "/_rai/embed-token", headers={"X-RAI-Ticket": ticket_of(response.content)}
        )
        assert refresh.status_code == 200
        assert refresh.json()["embedToken"].startswith(f"tok-{user.pk}-")
    with httpx.Client(base_url=base_url, timeout=10) as anonymous:
        assert anonymous.get("/page").content == ANONYMOUS


@pytest.mark.server
def test_real_wsgi_server(site: dict[str, Any], user: Any) -> None:
    from django.core.handlers.wsgi import WSGIHandler

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = wsgiref.simple_server.make_server(
        "127.0.0.1",
        0,
        WSGIHandler(),
        handler_class=Quiet,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _real_flow(f"http://127.0.0.1:{server.server_port}", user, "/stream")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """uvicorn on 127.0.0.1 in a thread; no lifespan (Django's ASGIHandler has none)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.server
def test_real_asgi_server(site: dict[str, Any], user: Any) -> None:
    from django.core.handlers.asgi import ASGIHandler

    with serve_asgi(ASGIHandler()) as base_url:
        _real_flow(base_url, user, "/astream")


# -- async identify ------------------------------------------------------------------------


async def aidentify_header(request: Any) -> dict[str, str] | None:
    user = request.headers.get("X-User")
    return {"data-customer-id": f"async-{user}"} if user else None


@pytest.mark.anyio
async def test_async_mode_awaits_an_async_identify(rai: dict[str, Any], upstream: Upstream) -> None:
    with override_settings(RETURNING_AI={**rai, "identify": aidentify_header}):
        middleware = ReturningAIMiddleware(apage)
    response = await middleware(_request())
    assert TOKENS.findall(response.content) == [b"tok-async-u-1-1"] * 2
    assert upstream.identifiers == [{"data-customer-id": "async-u-1"}]


@pytest.mark.anyio
async def test_async_mode_reads_the_user_with_auser(
    rai: dict[str, Any], upstream: Upstream
) -> None:
    class User:
        is_authenticated = True
        pk = 7
        email = "ada@example.com"

    async def auser() -> User:
        return User()

    with override_settings(RETURNING_AI=rai):
        middleware = ReturningAIMiddleware(apage)
    request = _request()
    request.auser = auser  # AuthenticationMiddleware's async accessor, and no request.user
    response = await middleware(request)
    assert TOKENS.findall(response.content) == [b"tok-7-1"] * 2
    assert upstream.identifiers == [{"data-customer-id": "7", "data-email": "ada@example.com"}]
