"""Mode ``proxy`` (issue 14), below the entrances: the page surgery (token, ``<base>``), the
height bounds and script, configuration, and the widget page fetch's edges (size, charset,
breaker, mounting) through the ASGI middleware with a mock transport.

Every status of the route on every entrance is in ``tests/test_entrances.py``; the browser
behaviour in ``tests/test_browser.py``.
"""

from __future__ import annotations

import html.parser
import json
import logging
from typing import Any

import httpx
import pytest

from rai_middleware import ConfigurationError, ReturningAIMiddleware
from rai_middleware._endpoint import HtmlReply
from rai_middleware._modes._height import HEIGHT_SCRIPT, height_attributes, render_height_script
from rai_middleware._modes.proxy import add_base, inject_token, js_string, parse_route
from rai_middleware._widget_pages import MAX_PAGE_BYTES
from tests.conftest import body_of, call_asgi, headers_of, html_app, http_scope

WIDGETS = "https://widgets.test"
EMAIL = {"data-email": "ann@example.com"}
PAGE = (
    "<!doctype html><html><head><title>w</title></head><body>"
    '<script>window.__WIDGET_INIT__ = { token: "", color: "light" };</script></body></html>'
)
HOSTILE = "a\"b\\c</script><script>alert(1)</script><!--\u2028\u2029'&>"
FRAMED = [(b"host", b"testserver"), (b"sec-fetch-dest", b"iframe")]


# -- the token, escaped for a JavaScript string inside HTML --------------------------------


def test_js_string_escapes_everything_that_could_break_out() -> None:
    literal = js_string(HOSTILE)
    assert literal == (
        '"a\\"b\\\\c\\u003c/script\\u003e\\u003cscript\\u003ealert(1)\\u003c/script\\u003e'
        '\\u003c!--\\u2028\\u2029\\u0027\\u0026\\u003e"'
    )
    assert json.loads(literal) == HOSTILE  # the same string, read back


class _Scripts(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self._in = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._in = tag == "script"
        if self._in:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in = False

    def handle_data(self, data: str) -> None:
        if self._in:
            self.scripts[-1] += data


def test_an_injected_hostile_token_stays_inside_its_string() -> None:
    page = inject_token(PAGE, HOSTILE)
    assert page is not None
    parser = _Scripts()
    parser.feed(page)
    (script,) = parser.scripts  # no element closed early, none opened
    assert script.startswith('window.__WIDGET_INIT__ = { token: "')
    literal = script.removeprefix("window.__WIDGET_INIT__ = { token: ").split(", color")[0]
    assert json.loads(literal) == HOSTILE


def test_an_injected_hostile_token_reads_back_in_javascript_under_node() -> None:
    from tests.test_testing import run_node

    page = inject_token(PAGE, HOSTILE)
    assert page is not None
    script = page.split("<script>")[1].split("</script>")[0]
    out = run_node(
        "globalThis.window = {};\n"
        + script
        + "\nconsole.log(JSON.stringify(window.__WIDGET_INIT__));"
    )
    assert out == {"token": HOSTILE, "color": "light"}


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ('window.__WIDGET_INIT__={token:""}', 'window.__WIDGET_INIT__={token:"T"}'),
        (
            "window.__WIDGET_INIT__ = {\n  theme: 'x',\n  token : '' ,\n}",
            "window.__WIDGET_INIT__ = {\n  theme: 'x',\n  token : \"T\" ,\n}",
        ),
        (
            'var other = { token: "" }; window.__WIDGET_INIT__ = { token: "" };',
            'var other = { token: "" }; window.__WIDGET_INIT__ = { token: "T" };',
        ),
    ],
    ids=["compact", "spaced-single-quotes", "only-in-the-init-object"],
)
def test_inject_token_fills_the_init_objects_empty_token(page: str, expected: str) -> None:
    assert inject_token(page, "T") == expected


@pytest.mark.parametrize(
    "page",
    [
        "<p>no init</p>",
        'window.__WIDGET_INIT__ = { token: "already" }',
        'window.__WIDGET_INIT__ = { a: {} }; x = { token: "" }',
    ],
    ids=["none", "filled", "outside-the-object"],
)
def test_inject_token_refuses_a_page_without_an_empty_init_token(page: str) -> None:
    assert inject_token(page, "T") is None


# -- the <base> --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("<html><head><title>", '<html><head><base href="H"><title>'),
        ('<HTML><HEAD lang="en"><title>', '<HTML><HEAD lang="en"><base href="H"><title>'),
        ("<!DOCTYPE html>\n<title>x", '<!DOCTYPE html><base href="H">\n<title>x'),
        ("<title>x", '<base href="H"><title>x'),
        ("<header>x</header>", '<base href="H"><header>x</header>'),
    ],
    ids=["head", "head-attributes", "doctype-only", "neither", "header-is-no-head"],
)
def test_add_base_puts_it_first_in_the_head(page: str, expected: str) -> None:
    assert add_base(page, "H") == expected


def test_add_base_escapes_the_href() -> None:
    assert (
        add_base("<head>", 'https://w.test/a"b/') == '<head><base href="https://w.test/a&quot;b/">'
    )


@pytest.mark.parametrize(
    ("rest", "expected"),
    [
        ("store-widget/abc_DEF-123", ("store-widget", "abc_DEF-123")),
        ("store-widget/" + "a" * 128, ("store-widget", "a" * 128)),
        ("store-widget/" + "a" * 129, None),
        ("store-widget/a%2Fb", None),
        ("store-widget/a/b", None),
        ("store-widget", None),
        ("store-widget/", None),
    ],
)
def test_parse_route(rest: str, expected: tuple[str, str] | None) -> None:
    assert parse_route(rest) == expected


# -- height bounds and the listener -----------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        (
            [("min-height", "200px"), ("max-height", "900")],
            ' data-rai-min-height="200" data-rai-max-height="900"',
        ),
        ([("max-height", " 250.50 PX ")], ' data-rai-max-height="250.5"'),
        ([("min-height", "120.0px")], ' data-rai-min-height="120"'),
        ([("height", "300")], ""),
        ([], ""),
    ],
)
def test_height_attributes_are_pixels(attributes: list[tuple[str, str]], expected: str) -> None:
    assert height_attributes(attributes, "/p") == expected


@pytest.mark.parametrize("value", ["50%", "-5px", "1e3", "20em", "calc(1px)", '"><script>'])
def test_height_bounds_that_are_not_pixels_are_logged_and_left_out(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        caplog.clear()  # only what this block logs (another test may have lowered the level)
        assert height_attributes([("max-height", value)], "/p") == ""
    (record,) = caplog.records
    assert record.getMessage().startswith(f"max-height={value!r} on a widget on /p is not a number")


def test_height_script_markup() -> None:
    assert render_height_script("/_rai/widget/") == (
        f'<script data-rai-frames="/_rai/widget/">{HEIGHT_SCRIPT}</script>'
    )
    assert render_height_script(
        "https://w.test/", origin="https://w.test", nonce='n"1', xhtml=True
    ) == (
        '<script nonce="n&quot;1" data-rai-origin="https://w.test" '
        f'data-rai-frames="https://w.test/">//<![CDATA[\n{HEIGHT_SCRIPT}\n//]]></script>'
    )


# -- configuration -----------------------------------------------------------------------


def test_proxy_mode_needs_community_id_and_widget_api_key() -> None:
    with pytest.raises(ConfigurationError, match="widget_api_key is required in mode='proxy'"):
        ReturningAIMiddleware(html_app(b""), mode="proxy", community_id="c")
    with pytest.raises(ConfigurationError, match="community_id is required in mode='proxy'"):
        ReturningAIMiddleware(html_app(b""), mode="proxy", widget_api_key="k")


def test_proxy_page_ttl_must_be_zero_or_more() -> None:
    with pytest.raises(ConfigurationError, match="proxy_page_ttl must be 0 or more"):
        proxy_site(html_app(b""), proxy_page_ttl=-1)


def test_proxy_mode_logs_the_route_it_answers(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="rai_middleware"):
        caplog.clear()  # only what this block logs (another test may have lowered the level)
        proxy_site(html_app(b""))
    assert [r.getMessage() for r in caplog.records] == [
        "rai-middleware answers GET /_rai/widget/{segment}/{widget_id} (before the app)"
    ]


def test_html_reply_repr_hides_the_page() -> None:
    reply = HtmlReply(200, {}, (), "<p>token-XYZ</p>")
    assert "token-XYZ" not in repr(reply)


# -- through the ASGI middleware, with a mock upstream ---------------------------------------


class Upstream:
    """Signin and widget pages, by hand: ``page`` is what the widgets host answers."""

    def __init__(self) -> None:
        self.page: tuple[int, bytes, str] = (200, PAGE.encode(), "text/html")
        self.pages = 0
        self.signins = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/signin"):
            self.signins += 1
            return httpx.Response(200, json={"token": "tok.en.1"})
        self.pages += 1
        status, content, content_type = self.page
        return httpx.Response(status, content=content, headers={"content-type": content_type})


def proxy_site(app: Any, upstream: Upstream | None = None, **options: Any) -> ReturningAIMiddleware:
    options.setdefault("identify", lambda scope: dict(EMAIL))
    client = httpx.AsyncClient(transport=httpx.MockTransport(upstream or Upstream()))
    return ReturningAIMiddleware(
        app,
        mode="proxy",
        community_id="c",
        widget_api_key="wak-SECRET",
        widgets_base_url=WIDGETS,
        secret_key="s" * 40,
        http_client=client,
        **options,
    )


async def route(middleware: ReturningAIMiddleware, path: str, **scope: Any) -> tuple[int, bytes]:
    messages = await call_asgi(middleware, {**http_scope(path, headers=FRAMED), **scope})
    return messages[0]["status"], body_of(messages)


@pytest.mark.anyio
async def test_a_page_larger_than_the_limit_is_not_served() -> None:
    upstream = Upstream()
    big = PAGE.replace("<body>", "<body>" + "x" * MAX_PAGE_BYTES)
    upstream.page = (200, big.encode(), "text/html")
    status, body = await route(proxy_site(html_app(b""), upstream), "/_rai/widget/store-widget/s")
    assert status == 503
    assert b"unavailable" in body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content_type", "raw", "expected"),
    [
        ("text/html; charset=iso-8859-1", "café".encode("latin-1"), "café"),
        ('text/html; charset="utf-8"', "café".encode(), "café"),
        ("text/html; charset=rot13", "café".encode(), "café"),
        ("text/html; charset=no-such-charset", "café".encode(), "café"),
        ("TEXT/HTML", b"caf\xff", "caf\ufffd"),
        ("text/html; charset=windows-1252", "caf\u20ac".encode("cp1252"), "caf\u20ac"),
        # Python codecs no page is written in: read as UTF-8, so the text stays text.
        ("text/html; charset=unicode_escape", b"\\x3cb>", "\\x3cb>"),
        ("text/html; charset=idna", "café".encode(), "café"),
        ("text/html; charset=punycode", "café".encode(), "café"),
    ],
    ids=[
        "latin-1",
        "quoted-utf-8",
        "not-a-text-encoding",
        "unknown",
        "bad-bytes",
        "windows-1252",
        "unicode-escape",
        "idna",
        "punycode",
    ],
)
async def test_the_page_is_decoded_by_its_charset_and_served_as_utf8(
    content_type: str, raw: bytes, expected: str
) -> None:
    upstream = Upstream()
    content = PAGE.encode().replace(b"<title>w", b"<title>" + raw)
    upstream.page = (200, content, content_type)
    messages = await call_asgi(
        proxy_site(html_app(b""), upstream),
        http_scope("/_rai/widget/store-widget/s", headers=FRAMED),
    )
    assert dict(headers_of(messages))[b"content-type"] == b"text/html; charset=utf-8"
    assert f"<title>{expected}</title>".encode() in body_of(messages)


@pytest.mark.anyio
async def test_widget_page_failures_open_the_breaker_and_nothing_is_fetched_then(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = Upstream()
    upstream.page = (502, b"bad gateway", "text/plain")
    page = b'<rai-placeholder widget="store" widget-id="s">fallback</rai-placeholder>'
    middleware = proxy_site(html_app(page), upstream, failure_threshold=2)
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        caplog.clear()  # only what this block logs (another test may have lowered the level)
        for _ in range(2):
            assert await route(middleware, "/_rai/widget/store-widget/s") == (503, _UNAVAILABLE)
        # Open: the route answers at once, without a fetch...
        assert await route(middleware, "/_rai/widget/store-widget/s") == (503, _UNAVAILABLE)
        assert upstream.pages == 2
        # ...and a page for a visitor with no token yet shows the fallback, without a signin.
        other = proxy_site(html_app(page), upstream)  # its own breaker: closed
        assert body_of(await call_asgi(other, http_scope())).startswith(b"<iframe")
        middleware.identify = lambda scope: {"data-email": "bob@example.com"}
        assert body_of(await call_asgi(middleware, http_scope())) == b"fallback"
    assert upstream.signins == 2  # the first visitor's, and the other site's
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == (
        "Returning.AI widget page request (store-widget/s?color=light) failed (HTTP 502); "
        "serving the placeholder fallback"
    )
    assert "2 failures in a row" in messages[1]
    assert not any("wak-SECRET" in m for m in messages)


_UNAVAILABLE = (
    b'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Unavailable</title>'
    b"</head><body><p>This widget is unavailable. Try again later.</p></body></html>"
)


@pytest.mark.anyio
async def test_a_widget_page_success_resets_the_failures_in_a_row() -> None:
    upstream = Upstream()
    good = upstream.page
    middleware = proxy_site(html_app(b""), upstream, failure_threshold=2, proxy_page_ttl=0)
    down = (503, b"", "text/plain")
    for page in (down, good, down, good):
        upstream.page = page
        await route(middleware, "/_rai/widget/store-widget/s")
    assert (await route(middleware, "/_rai/widget/store-widget/s"))[0] == 200
    assert upstream.pages == 5


@pytest.mark.anyio
async def test_a_mounted_app_frames_and_answers_under_its_root_path() -> None:
    page = b'<rai-placeholder widget="store" widget-id="s" color="dark">f</rai-placeholder>'
    middleware = proxy_site(html_app(page))
    body = body_of(await call_asgi(middleware, {**http_scope("/app/"), "root_path": "/app"}))
    assert body.startswith(
        b'<iframe src="/app/_rai/widget/store-widget/s?color=dark"></iframe>'
        b'<script data-rai-frames="/app/_rai/widget/">'
    )
    scope = {**http_scope("/app/_rai/widget/store-widget/s", headers=FRAMED), "root_path": "/app"}
    assert (await call_asgi(middleware, scope))[0]["status"] == 200


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        ('widget-id="a.b"', "widget-id 'a.b'"),
        ('widget-id="ok" theme="dark mode"', "theme/color 'dark mode'"),
    ],
)
async def test_a_placeholder_the_route_could_not_serve_gets_its_fallback(
    attributes: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    page = f'<rai-placeholder widget="store" {attributes}>fallback</rai-placeholder>'.encode()
    upstream = Upstream()
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        caplog.clear()  # only what this block logs (another test may have lowered the level)
        body = body_of(await call_asgi(proxy_site(html_app(page), upstream), http_scope()))
    assert body == b"fallback"
    (record,) = caplog.records
    assert record.getMessage().startswith(
        f"a <rai-placeholder widget='store'> on / has a bad {problem}"
    )


@pytest.mark.anyio
async def test_a_broken_token_service_answers_503(caplog: pytest.LogCaptureFixture) -> None:
    middleware = proxy_site(html_app(b""))

    async def broken(need: object) -> str:
        raise RuntimeError("bug")

    middleware.tokens.widget_page = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        caplog.clear()  # only what this block logs (another test may have lowered the level)
        assert (await route(middleware, "/_rai/widget/store-widget/s"))[0] == 503
    assert caplog.records[0].getMessage() == "getting widget page s failed"


def test_the_page_cache_repr_shows_its_ttl_only() -> None:
    middleware = proxy_site(html_app(b""), proxy_page_ttl=30)
    assert repr(middleware.tokens.pages) == "WidgetPages(ttl=30)"


@pytest.mark.anyio
async def test_a_placeholder_without_widget_id_gets_its_fallback() -> None:
    page = b'<rai-placeholder widget="store">fallback</rai-placeholder>'
    assert body_of(await call_asgi(proxy_site(html_app(page)), http_scope())) == b"fallback"


@pytest.mark.anyio
async def test_a_widgets_host_that_refuses_connections_counts_towards_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/signin"):
            return httpx.Response(200, json={"token": "tok.en.1"})
        raise httpx.ConnectError("connection refused")

    client = httpx.AsyncClient(transport=httpx.MockTransport(refuse))
    middleware = proxy_site(html_app(b""), failure_threshold=1)
    middleware.tokens._client = client  # the same service, another transport
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        caplog.clear()  # only what this block logs (another test may have lowered the level)
        assert (await route(middleware, "/_rai/widget/store-widget/s"))[0] == 503
    (record,) = caplog.records
    assert "failed (ConnectError: connection refused); 1 failures in a row" in record.getMessage()
    await client.aclose()


# -- the thread driver (WSGI) ------------------------------------------------------------


def wsgi_site(handler: Any, **options: Any) -> Any:
    from rai_middleware import ReturningAIWSGIMiddleware

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"app"]

    return ReturningAIWSGIMiddleware(
        app,
        mode="proxy",
        community_id="c",
        widget_api_key="wak-SECRET",
        widgets_base_url=WIDGETS,
        secret_key="s" * 40,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        identify=lambda environ: dict(EMAIL),
        **options,
    )


def wsgi_get(middleware: Any, path: str) -> tuple[str, bytes]:
    statuses: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "HTTP_SEC_FETCH_DEST": "iframe",
        "wsgi.url_scheme": "http",
    }
    body = b"".join(middleware(environ, lambda status, headers: statuses.append(status)))
    return statuses[0], body


def test_thread_driver_refuses_a_page_larger_than_the_limit() -> None:
    upstream = Upstream()
    upstream.page = (200, b"<head>" + b"x" * (MAX_PAGE_BYTES + 1), "text/html")
    middleware = wsgi_site(upstream)
    assert wsgi_get(middleware, "/_rai/widget/store-widget/s") == (
        "503 Service Unavailable",
        _UNAVAILABLE,
    )
    middleware.close()


def test_thread_driver_answers_at_the_timeout_when_the_page_trickles() -> None:
    import time

    def trickle() -> Any:
        for part in (b"<head>", PAGE.encode()):
            time.sleep(0.3)
            yield part

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/signin"):
            return httpx.Response(200, json={"token": "tok.en.1"})
        return httpx.Response(200, content=trickle(), headers={"content-type": "text/html"})

    middleware = wsgi_site(handler, timeout=0.5)
    started = time.monotonic()
    status, body = wsgi_get(middleware, "/_rai/widget/store-widget/s")
    elapsed = time.monotonic() - started
    assert (status, body) == ("503 Service Unavailable", _UNAVAILABLE)
    assert elapsed < 1.0, elapsed
    middleware.close()  # waits for the fetch thread, which gave up at its own deadline


def test_thread_driver_answers_503_when_the_token_service_breaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = wsgi_site(Upstream())

    def broken(need: object) -> str:
        raise RuntimeError("bug")

    middleware.tokens.widget_page = broken
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        caplog.clear()  # only what this block logs (another test may have lowered the level)
        status, _ = wsgi_get(middleware, "/_rai/widget/store-widget/s")
    assert status == "503 Service Unavailable"
    assert caplog.records[0].getMessage() == "getting widget page s failed"
    middleware.close()


def test_fake_widget_height_must_be_a_positive_int() -> None:
    from rai_middleware.testing import FakeReturningAI

    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="widget_height must be a positive int"):
            FakeReturningAI(widget_height=bad)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_hostile_token_from_upstream_is_served_escaped() -> None:
    """A token Returning.AI could send (ASCII, printable, no space) with quotes, backslashes
    and a closing script tag: the route's page keeps it inside its string."""
    hostile = 'x"y\\z</script><script>alert(1)</script><!--'

    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/signin"):
            return httpx.Response(200, json={"token": hostile})
        return httpx.Response(200, content=PAGE.encode(), headers={"content-type": "text/html"})

    middleware = proxy_site(html_app(b""))
    middleware.tokens._client = client = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    status, body = await route(middleware, "/_rai/widget/store-widget/s")
    await client.aclose()
    assert status == 200
    expected = (
        '<!doctype html><html><head><base href="https://widgets.test/store-widget/">'
        "<title>w</title></head><body><script>window.__WIDGET_INIT__ = { token: "
        '"x\\"y\\\\z\\u003c/script\\u003e\\u003cscript\\u003ealert(1)\\u003c/script\\u003e'
        '\\u003c!--", color: "light" };</script></body></html>'
    )
    assert body == expected.encode()
    parser = _Scripts()
    parser.feed(body.decode())
    (script,) = parser.scripts
    literal = script.removeprefix("window.__WIDGET_INIT__ = { token: ").split(", color")[0]
    assert json.loads(literal) == hostile


# -- single flight: concurrent requests for one page share one fetch -------------------------


def counting_upstream(delay: float) -> tuple[Any, list[int]]:
    """An async handler: signin at once, each page after ``delay`` seconds; counts pages."""
    import asyncio

    fetches = [0]

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/signin"):
            return httpx.Response(200, json={"token": "tok.en.1"})
        fetches[0] += 1
        await asyncio.sleep(delay)
        return httpx.Response(200, content=PAGE.encode(), headers={"content-type": "text/html"})

    return handler, fetches


@pytest.mark.anyio
@pytest.mark.parametrize(("delay", "status"), [(0.15, 200), (5.0, 503)], ids=["ok", "too-slow"])
async def test_concurrent_requests_for_one_page_share_one_fetch(delay: float, status: int) -> None:
    import asyncio
    import time

    handler, fetches = counting_upstream(delay)
    middleware = proxy_site(html_app(b""), proxy_page_ttl=0, timeout=0.3)
    middleware.tokens._client = client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    started = time.monotonic()
    results = await asyncio.gather(
        *(route(middleware, "/_rai/widget/store-widget/s") for _ in range(10))
    )
    elapsed = time.monotonic() - started
    await client.aclose()
    assert [answer for answer, _ in results] == [status] * 10
    assert fetches == [1]
    assert middleware.tokens.pages.in_flight() == 0
    assert elapsed < 0.3 + 0.5  # no waiter waits past the fetch's own deadline


@pytest.mark.parametrize(("delay", "status"), [(0.3, "200 OK"), (2.0, "503 Service Unavailable")])
def test_concurrent_threads_for_one_page_share_one_fetch(delay: float, status: str) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    fetches = [0]
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/signin"):
            return httpx.Response(200, json={"token": "tok.en.1"})
        with lock:
            fetches[0] += 1
        time.sleep(delay)
        return httpx.Response(200, content=PAGE.encode(), headers={"content-type": "text/html"})

    middleware = wsgi_site(handler, proxy_page_ttl=0, timeout=0.5)
    wsgi_get(middleware, "/_rai/widget/no-such-segment/s")  # the framework warm: a 404
    started = time.monotonic()
    with ThreadPoolExecutor(10) as pool:
        results = list(
            pool.map(lambda _: wsgi_get(middleware, "/_rai/widget/store-widget/s"), range(10))
        )
    elapsed = time.monotonic() - started
    assert [answer for answer, _ in results] == [status] * 10
    assert fetches == [1]
    assert middleware.tokens.pages.in_flight() == 0
    assert elapsed < 0.5 + 0.8
    middleware.close()
