"""Fragments and client-rendered views in a real browser (issue 13): htmx 2, Turbo 8 and
Unpoly 3 from the npm registry, and a plain History API single-page app.

The libraries are installed by ``.ci/run`` (``npm ci`` of ``tests/browser_js``) into
``$RAI_NPM_CACHE`` (default ``~/.cache/rai-middleware/npm``), outside the package; they are
never vendored. The site serves them from there. Every page is under a nonce-only policy
(``script-src 'nonce-...'``, no ``'strict-dynamic'``), with the one nonce per document the
libraries expect (``<meta name="csp-nonce">``, htmx's ``inlineScriptNonce``).

Every test asserts: no JavaScript error, no CSP violation, no ``rai-middleware:`` warning,
the SDK requested at most once and run once per document (the fake SDK, like a real
bundle, throws when it runs twice).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from rai_middleware import ReturningAIMiddleware
from rai_middleware.testing import FakeReturningAI
from tests.conftest import serve
from tests.services import NPM_LIBRARIES, require
from tests.test_browser import (  # noqa: F401 - fixtures
    HAVE_PLAYWRIGHT,
    Watch,
    browser,
    fake,
    page,
)

if HAVE_PLAYWRIGHT:
    from playwright.sync_api import Page, expect

pytestmark = [pytest.mark.server]

NONCE = "n0nce-per-document"
CSP = f"script-src 'nonce-{NONCE}'; object-src 'none'; base-uri 'none'"
# Unpoly runs a fragment's scripts by re-parsing their serialized HTML, in which the browser
# has already hidden the nonce (``nonce=""``): under Unpoly a policy needs 'strict-dynamic'.
UNPOLY_CSP = f"script-src 'nonce-{NONCE}' 'strict-dynamic'; object-src 'none'; base-uri 'none'"
ID_FORM = re.compile(r"returning-ai-widget-[A-Za-z0-9-]+\Z")


def library(name: str) -> Path:
    """A browser library from the npm cache (skips, naming how to install them, without)."""
    return Path(require("npm-libraries")) / NPM_LIBRARIES[name]


# -- the site ------------------------------------------------------------------------------------


def head(*scripts: str, extra: str = "") -> str:
    tags = "".join(f'<script nonce="{NONCE}" src="/js/{name}"></script>' for name in scripts)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>t</title>'
        f'<meta name="csp-nonce" content="{NONCE}">{extra}{tags}</head>'
    )


def placeholder(widget: str, n: object) -> str:
    return (
        f'<rai-placeholder widget="{widget}" widget-id="w{n}">'
        f'<p class="fallback">Sign in ({n})</p></rai-placeholder>'
    )


def html(body: str, *, media_type: str = "text/html", csp: str = CSP) -> Response:
    return HTMLResponse(body, headers={"content-security-policy": csp}, media_type=media_type)


async def htmx_page(request: Request) -> Response:
    config = json.dumps({"inlineScriptNonce": NONCE})
    buttons = "".join(
        f'<button id="load{n}" hx-get="/htmx/fragment/{n}" hx-target="#slot{n}">{n}</button>'
        f'<div id="slot{n}"></div>'
        for n in (1, 2, 3)
    )
    return html(
        head("htmx.js", extra=f"<meta name=\"htmx-config\" content='{config}'>")
        + f"<body><h1>htmx</h1>{buttons}</body></html>"
    )


async def htmx_fragment(request: Request) -> Response:
    n = request.path_params["n"]
    return html(f'<div class="fragment">{placeholder("store", n)}</div>')


async def turbo_page(request: Request) -> Response:
    n = request.path_params["n"]
    other = 2 if n == 1 else 1
    return html(
        head("turbo.js") + f'<body><h1 id="title">Turbo {n}</h1>{placeholder("channel", f"p{n}")}'
        f'<a id="next" href="/turbo/{other}">page {other}</a>'
        '<turbo-frame id="frame"><a id="frame-link" href="/turbo/frame">load frame</a>'
        "</turbo-frame>"
        '<form id="stream-form" action="/turbo/stream" method="post">'
        '<button id="stream">stream</button></form><div id="streamed"></div>'
        "</body></html>"
    )


async def turbo_frame(request: Request) -> Response:
    return html(f'<turbo-frame id="frame">{placeholder("milestone", "frame")}</turbo-frame>')


async def turbo_stream(request: Request) -> Response:
    body = (
        '<turbo-stream action="append" target="streamed"><template>'
        f'<div class="streamed">{placeholder("referral", "stream")}</div>'
        "</template></turbo-stream>"
    )
    return html(body, media_type="text/vnd.turbo-stream.html")


async def unpoly_page(request: Request) -> Response:
    return html(
        head("unpoly.js")
        + '<body><h1>Unpoly</h1><a id="up-link" href="/unpoly/fragment" up-target="#target">'
        'load</a><div id="target"></div></body></html>',
        csp=UNPOLY_CSP,
    )


async def unpoly_fragment(request: Request) -> Response:
    return html(f'<div id="target">{placeholder("social", "up")}</div>', csp=UNPOLY_CSP)


# A History API single-page app, no build step: three views rendered with innerHTML.
SPA_APP = """
(function () {
  var views = {
    "/spa": '<h2>Home</h2><rai-placeholder widget="store" widget-id="s1">'
      + '<p class="fallback">Sign in to shop</p></rai-placeholder>',
    "/spa/chat": '<h2>Chat</h2><rai-placeholder widget="channel" channel-id="general">'
      + '<p class="fallback">Sign in to chat</p></rai-placeholder>'
      + '<rai-placeholder widget="milestone"><p class="fallback">Sign in</p></rai-placeholder>',
    "/spa/rewards": '<h2>Rewards</h2><rai-placeholder widget="referral">'
      + '<p class="fallback">Sign in for rewards</p></rai-placeholder>'
  };
  function render() {
    document.getElementById("view").innerHTML = views[location.pathname] || "<h2>404</h2>";
  }
  document.addEventListener("click", function (e) {
    var a = e.target.closest("a[data-nav]");
    if (!a) return;
    e.preventDefault();
    history.pushState({}, "", a.getAttribute("href"));
    render();
  });
  window.addEventListener("popstate", render);
  render();
})();
"""


async def spa_shell(request: Request) -> Response:
    links = "".join(
        f'<a data-nav id="nav-{name}" href="{path}">{name}</a> '
        for name, path in (("home", "/spa"), ("chat", "/spa/chat"), ("rewards", "/spa/rewards"))
    )
    return html(
        head() + f'<body><nav>{links}</nav><main id="view"></main><rai-runtime></rai-runtime>'
        f'<script nonce="{NONCE}">{SPA_APP}</script></body></html>'
    )


async def js(request: Request) -> Response:
    return FileResponse(library(request.path_params["name"]), media_type="text/javascript")


async def no_favicon(request: Request) -> Response:
    return Response(status_code=204)


def identify(scope: Any) -> dict[str, str] | None:
    name = HTTPConnection(scope).cookies.get("user")
    return {"data-customer-id": name, "data-email": f"{name}@example.com"} if name else None


def make_site(fake_url: str) -> ReturningAIMiddleware:
    app = Starlette(
        routes=[
            Route("/htmx", htmx_page),
            Route("/htmx/fragment/{n:int}", htmx_fragment),
            Route("/turbo/{n:int}", turbo_page),
            Route("/turbo/frame", turbo_frame),
            Route("/turbo/stream", turbo_stream, methods=["POST"]),
            Route("/unpoly", unpoly_page),
            Route("/unpoly/fragment", unpoly_fragment),
            Route("/spa", spa_shell),
            Route("/spa/{view}", spa_shell),
            Route("/js/{name}", js),
            Route("/favicon.ico", no_favicon),
        ]
    )
    return ReturningAIMiddleware(
        app,
        community_id="community-1",
        access_id="demo-access-id",
        access_key="demo-access-key",
        identify=identify,
        api_base_url=fake_url,
        sdk_url=f"{fake_url}/sdk/rai-widget.iife.js",
    )


@pytest.fixture
def site(fake: tuple[FakeReturningAI, str]) -> Iterator[str]:  # noqa: F811
    _, fake_url = fake
    with serve(make_site(fake_url)) as url:
        yield url


# -- helpers -------------------------------------------------------------------------------------


def sign_in(page: Page, url: str, user: str = "alice") -> None:  # noqa: F811
    page.context.add_cookies([{"name": "user", "value": user, "url": url}])


def sdk_requests(watch: Watch) -> int:
    return sum(1 for _, url in watch.requests if urlsplit(url).path == "/sdk/rai-widget.iife.js")


def expect_widgets(page: Page, fake: FakeReturningAI, selector: str, count: int) -> list[str]:  # noqa: F811
    """``count`` SDK elements under ``selector`` show alice's token; their container ids."""
    widgets = page.locator(selector)
    expect(widgets).to_have_count(count)
    ids = []
    for i in range(count):
        widget = widgets.nth(i)
        expect(widget).to_have_attribute("data-fake-state", "ok")
        token = widget.get_attribute("embed-token") or ""
        assert fake.decode(token)["data-customer-id"] == "alice"
        container = widget.evaluate("e => e.parentElement.id")
        assert ID_FORM.match(container), container
        ids.append(container)
    return ids


def assert_one_sdk(page: Page, watch: Watch) -> None:  # noqa: F811
    assert sdk_requests(watch) == 1
    assert page.evaluate("window.__fakeRaiSdkRuns") == 1
    watch.assert_clean()


# -- tests ---------------------------------------------------------------------------------------


def test_htmx_three_fragments_three_widgets_one_sdk(
    fake: tuple[FakeReturningAI, str],  # noqa: F811
    site: str,
    page: tuple[Page, Watch],  # noqa: F811
) -> None:
    library("htmx.js")
    service, _ = fake
    tab, watch = page
    sign_in(tab, site)
    tab.goto(f"{site}/htmx")
    for n in (1, 2, 3):
        tab.click(f"#load{n}")
        expect(tab.locator(f"#slot{n} rai-store-widget")).to_have_count(1)
    ids = expect_widgets(tab, service, "rai-store-widget", 3)
    assert len(set(ids)) == 3
    assert tab.locator(".fallback").count() == 0
    assert tab.evaluate("typeof window.raiMiddleware.token") == "function"
    assert_one_sdk(tab, watch)
    assert service.calls == 1  # one token for the three fragments


def test_htmx_fragments_for_an_anonymous_visitor_show_their_fallbacks(
    fake: tuple[FakeReturningAI, str],  # noqa: F811
    site: str,
    page: tuple[Page, Watch],  # noqa: F811
) -> None:
    library("htmx.js")
    service, _ = fake
    tab, watch = page
    tab.goto(f"{site}/htmx")
    for n in (1, 2):
        tab.click(f"#load{n}")
        expect(tab.locator(f"#slot{n} .fallback")).to_have_text(f"Sign in ({n})")
    assert tab.locator("rai-store-widget").count() == 0
    assert sdk_requests(watch) == 0
    assert service.calls == 0
    watch.assert_clean()


def test_turbo_drive_frame_and_stream(
    fake: tuple[FakeReturningAI, str],  # noqa: F811
    site: str,
    page: tuple[Page, Watch],  # noqa: F811
) -> None:
    library("turbo.js")
    service, _ = fake
    tab, watch = page
    sign_in(tab, site)
    tab.goto(f"{site}/turbo/1")
    first = expect_widgets(tab, service, "rai-channel-widget", 1)
    tab.evaluate("window.__sameDocument = true")
    # Turbo Drive: the second page replaces the body; the document stays.
    tab.click("#next")
    expect(tab.locator("#title")).to_have_text("Turbo 2")
    assert tab.evaluate("window.__sameDocument") is True
    second = expect_widgets(tab, service, "rai-channel-widget", 1)
    # A Turbo Frame, then a Turbo Stream (a form's answer).
    tab.click("#frame-link")
    expect(tab.locator("turbo-frame rai-milestone-widget")).to_have_count(1)
    frame = expect_widgets(tab, service, "rai-milestone-widget", 1)
    tab.click("#stream")
    expect(tab.locator("#streamed rai-referral-widget")).to_have_count(1)
    stream = expect_widgets(tab, service, "rai-referral-widget", 1)
    # And back (a restoration visit from Turbo's cache).
    tab.go_back()
    expect(tab.locator("#title")).to_have_text("Turbo 1")
    expect_widgets(tab, service, "rai-channel-widget", 1)
    assert len({*first, *second, *frame, *stream}) == 4
    assert tab.evaluate("window.__sameDocument") is True
    assert_one_sdk(tab, watch)


def test_unpoly_fragment(
    fake: tuple[FakeReturningAI, str],  # noqa: F811
    site: str,
    page: tuple[Page, Watch],  # noqa: F811
) -> None:
    library("unpoly.js")
    service, _ = fake
    tab, watch = page
    sign_in(tab, site)
    tab.goto(f"{site}/unpoly")
    tab.click("#up-link")
    expect(tab.locator("#target rai-social-widget")).to_have_count(1)
    expect_widgets(tab, service, "rai-social-widget", 1)
    assert_one_sdk(tab, watch)


def test_spa_views_get_a_fresh_token_each(
    fake: tuple[FakeReturningAI, str],  # noqa: F811
    site: str,
    page: tuple[Page, Watch],  # noqa: F811
) -> None:
    service, _ = fake
    tab, watch = page
    sign_in(tab, site)
    tab.goto(f"{site}/spa")
    home = expect_widgets(tab, service, "#view rai-store-widget", 1)
    assert watch.posts("/_rai/embed-token") == 1
    tab.click("#nav-chat")
    chat = expect_widgets(tab, service, "#view rai-channel-widget, #view rai-milestone-widget", 2)
    assert watch.posts("/_rai/embed-token") == 2  # one per view, not per widget
    tab.click("#nav-rewards")
    rewards = expect_widgets(tab, service, "#view rai-referral-widget", 1)
    assert watch.posts("/_rai/embed-token") == 3
    tab.go_back()  # popstate: the chat view again, with a fresh token
    expect_widgets(tab, service, "#view rai-channel-widget, #view rai-milestone-widget", 2)
    assert watch.posts("/_rai/embed-token") == 4
    assert len({*home, *chat, *rewards}) == 4
    # Attributes as the server maps them; the framework's children stay, unshown.
    channel = tab.locator("#view rai-channel-widget")
    expect(channel).to_have_attribute("community-id", "community-1")
    expect(channel).to_have_attribute("channel-id", "general")
    expect(tab.locator("#view .fallback").first).to_be_hidden()
    token = tab.evaluate("window.raiMiddleware.token()")
    assert fake_claims(service, token)["data-customer-id"] == "alice"
    assert watch.posts("/_rai/embed-token") == 4  # from memory: 15 minutes left
    assert service.calls == 1  # the endpoint answers from the middleware's cache
    assert_one_sdk(tab, watch)


def test_spa_widget_named_after_an_object_property_keeps_its_fallback(
    fake: tuple[FakeReturningAI, str],  # noqa: F811
    site: str,
    page: tuple[Page, Watch],  # noqa: F811
) -> None:
    """``widget="constructor"`` is no widget, whatever Object.prototype holds: a warning and
    the fallback, no exception."""
    service, _ = fake
    tab, watch = page
    sign_in(tab, site)
    tab.goto(f"{site}/spa")
    expect_widgets(tab, service, "#view rai-store-widget", 1)
    for name in ("constructor", "__proto__", "toString"):
        tab.evaluate(
            "name => { const view = document.getElementById('view');"
            ' view.innerHTML = `<rai-placeholder widget="${name}">'
            '<p class="odd">no such widget</p></rai-placeholder>`; }',
            name,
        )
        expect(tab.locator("#view .odd")).to_be_visible()
    tab.wait_for_timeout(200)  # a rejected promise would be reported by now
    assert tab.locator("#view iframe, #view [embed-token]").count() == 0
    assert [e for e in watch.errors if "unknown widget" not in e] == []


def test_spa_anonymous_visitor_sees_fallbacks_without_requests(
    fake: tuple[FakeReturningAI, str],  # noqa: F811
    site: str,
    page: tuple[Page, Watch],  # noqa: F811
) -> None:
    service, _ = fake
    tab, watch = page
    tab.goto(f"{site}/spa")
    expect(tab.locator("#view .fallback")).to_have_text("Sign in to shop")
    tab.click("#nav-chat")
    expect(tab.locator("#view .fallback").first).to_have_text("Sign in to chat")
    tab.click("#nav-rewards")
    expect(tab.locator("#view .fallback")).to_have_text("Sign in for rewards")
    assert watch.posts("/_rai/embed-token") <= 1
    assert tab.evaluate("typeof window.raiMiddleware") == "undefined"
    assert sdk_requests(watch) == 0
    assert service.calls == 0
    watch.assert_clean()


def test_spa_signed_out_mid_session_keeps_the_fallbacks_with_one_request(
    fake: tuple[FakeReturningAI, str],  # noqa: F811
    site: str,
    page: tuple[Page, Watch],  # noqa: F811
) -> None:
    """The shell was served to a signed-in visitor whose session then ended: the endpoint
    answers 401 once, and the view keeps its children (no retry loop within the view)."""
    tab, watch = page
    sign_in(tab, site)
    tab.route(
        "**/_rai/embed-token",
        lambda route: route.fulfill(status=401, body='{"error":"not_signed_in"}'),
    )
    tab.goto(f"{site}/spa/chat")
    expect(tab.locator("#view .fallback").first).to_have_text("Sign in to chat")
    tab.wait_for_timeout(300)
    assert watch.posts("/_rai/embed-token") == 1
    expect(tab.locator("#view .fallback").first).to_be_visible()
    assert tab.locator("rai-channel-widget").count() == 0
    # The browser's own line for the refused request; nothing else.
    assert watch.errors == [
        "console.error: Failed to load resource: the server responded with a status of 401 "
        "(Unauthorized)"
    ]
    assert watch.violations() == []


def fake_claims(service: FakeReturningAI, token: object) -> dict[str, Any]:
    assert isinstance(token, str)
    return service.decode(token)


def test_spa_in_iframe_mode_renders_frames_answered_by_the_page(
    fake: tuple[FakeReturningAI, str],  # noqa: F811
    page: tuple[Page, Watch],  # noqa: F811
) -> None:
    service, fake_url = fake
    app = Starlette(
        routes=[
            Route("/spa", spa_shell),
            Route("/spa/{view}", spa_shell),
            Route("/favicon.ico", no_favicon),
        ]
    )
    middleware = ReturningAIMiddleware(
        app,
        mode="iframe",
        community_id="community-1",
        widget_api_key="demo-widget-api-key",
        identify=identify,
        widgets_base_url=fake_url,
    )
    tab, watch = page
    with serve(middleware) as url:
        sign_in(tab, url)
        tab.goto(f"{url}/spa")
        frame = tab.frame_locator(f'iframe[src="{fake_url}/store-widget/s1"]').locator("body")
        expect(frame).to_have_attribute("data-state", "ok")
        assert service.decode(frame.get_attribute("data-token") or "")["email"] == (
            "alice@example.com"
        )
        watch.assert_clean()


def test_spa_token_needs_a_minute_left_and_concurrent_calls_share_one_request(
    fake: tuple[FakeReturningAI, str],  # noqa: F811
    site: str,
    page: tuple[Page, Watch],  # noqa: F811
) -> None:
    service, _ = fake
    tab, watch = page
    sign_in(tab, site)
    tab.clock.install()
    tab.goto(f"{site}/spa")
    expect_widgets(tab, service, "#view rai-store-widget", 1)
    assert watch.posts("/_rai/embed-token") == 1
    # The endpoint said about 900 s; 835 s later a minute is still left: from memory.
    tab.clock.fast_forward(835_000)
    tab.evaluate("window.raiMiddleware.token()")
    assert watch.posts("/_rai/embed-token") == 1
    # Seven more seconds: under a minute left. Three concurrent calls, one request.
    tab.clock.fast_forward(7_000)
    tokens = tab.evaluate(
        "Promise.all([1, 2, 3].map(() => window.raiMiddleware.token()))"
        ".then((all) => all.filter((t) => t === all[0]).length)"
    )
    assert tokens == 3
    assert watch.posts("/_rai/embed-token") == 2
    watch.assert_clean()
