"""End to end in a real browser: Debian's Chromium, driven by Playwright.

Three origins on 127.0.0.1, each its own uvicorn on its own port:

* the *site*: a small Starlette app behind ``ReturningAIMiddleware``, one per test and mode;
* the *fake* Returning.AI (``FakeReturningAI.run_in_thread()``): token endpoints, the SDK
  stand-in, the widget loader and the framed widget pages;
* an *evil* origin, whose page, framed by the site, begs the page for tokens like a widget.

Every test asserts that the page logged no JavaScript error (uncaught exceptions and
``console.error``, in any frame), nothing about Content Security Policy and no
``rai-middleware:`` warning, and that no ``securitypolicyviolation`` event fired in any frame.

Without Chromium (``tests.services.require``) or Playwright the tests skip, and fail under
``RAI_REQUIRE_ALL=1`` (``.ci/run`` installs Debian's ``chromium``; ``playwright`` is a test
extra). ``CHROMIUM=/path/to/chromium`` picks another build than the ``chromium`` on ``PATH``.
"""

from __future__ import annotations

import contextlib
import html
import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from rai_middleware import ReturningAIMiddleware
from rai_middleware.testing import FakeReturningAI
from tests.conftest import serve
from tests.services import require

try:
    from playwright.sync_api import (
        Browser,
        ConsoleMessage,
        Locator,
        Page,
        expect,
        sync_playwright,
    )
    from playwright.sync_api import Request as BrowserRequest
except ImportError:  # pragma: no cover - reported by the browser fixture
    HAVE_PLAYWRIGHT = False
else:
    HAVE_PLAYWRIGHT = True

pytestmark = [pytest.mark.server]

MODES = ("access_key", "iframe", "attributes", "proxy")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NONCE = "abc123"
CSP = f"script-src 'nonce-{NONCE}' 'strict-dynamic'; object-src 'none'; base-uri 'none'"
USERS = ("alice", "bob")
TIMEOUT_MS = 10_000

# Runs first in every frame of every page: records CSP violations where tests can read them.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""

SITE_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Test site</title></head>
<body>
<h1>Test site</h1>
<section id="chat">
<rai-placeholder widget="channel" widget-id="chat-1" channel-id="general"{chat_attrs}>
<p class="fallback">Sign in to chat</p>
</rai-placeholder>
</section>
<section id="store">
<rai-placeholder widget="store" widget-id="store-1"{store_attrs}>
<p class="fallback">Sign in to shop</p>
</rai-placeholder>
</section>
{extra}
</body>
</html>
"""

# Framed by the site at /?evil=<url>: asks its parent for a token, with both message types,
# four times a second, and records whatever token-shaped answer it gets; and each time tells
# its parent it is 999 pixels high, as a widget would.
EVIL_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Evil</title></head>
<body data-requests="0" data-received="">
<script>
(function () {
  "use strict";
  var body = document.body;
  window.addEventListener("message", function (e) {
    var m = e.data;
    if (m && typeof m === "object" && typeof m.value === "string") {
      body.dataset.received += m.value + " ";
    }
  });
  function ask() {
    body.dataset.requests = String(Number(body.dataset.requests) + 1);
    window.parent.postMessage({type: "RETURNINGAI_WIDGET_REQUEST_TOKEN"}, "*");
    window.parent.postMessage({type: "RETURNINGAI_WIDGET_TOKEN"}, "*");
    window.parent.postMessage({type: "WIDGET_HEIGHT_UPDATE", payload: {height: 999}}, "*");
  }
  ask();
  setInterval(ask, 250);
})();
</script>
</body>
</html>
"""


# -- the site ------------------------------------------------------------------------------------


def identify(scope: Any) -> dict[str, str] | None:
    """``?user=alice`` picks the visitor; the page then sets a ``user`` cookie, because the
    token endpoint's URL (``/_rai/...``) has no query string and must still know who it is."""
    conn = HTTPConnection(scope)
    name = conn.query_params.get("user") or conn.cookies.get("user")
    if name not in USERS:
        return None
    return {"data-email": f"{name}@example.com", "data-customer-id": name}


async def home(request: Request) -> Response:
    extra = ""
    evil = request.query_params.get("evil")
    if evil:
        extra = f'<iframe id="evil" title="evil" src="{html.escape(evil, quote=True)}"></iframe>'
    headers = {"content-security-policy": CSP} if request.query_params.get("csp") else {}
    # ?bounds=1: the chat frame may not grow past 300 pixels, nor (bounds=2) stay under 600;
    # the store's height is the author's.
    bounds = request.query_params.get("bounds")
    chat = {"1": ' min-height="100" max-height="300px"', "2": ' min-height="600px"'}
    page = SITE_PAGE.format(
        extra=extra,
        chat_attrs=chat.get(bounds or "", ""),
        store_attrs=' height="222"' if bounds else "",
    )
    response = HTMLResponse(page, headers=headers)
    user = request.query_params.get("user")
    if user in USERS:
        response.set_cookie("user", user, httponly=True, samesite="strict")
    return response


async def bad_csp(request: Request) -> Response:
    """An inline script without the nonce: the violation the CSP checks must catch."""
    page = "<!doctype html><html><head><title>x</title></head><body><script>1</script></body>"
    return HTMLResponse(page, headers={"content-security-policy": CSP})


async def no_favicon(request: Request) -> Response:
    return Response(status_code=204)


def make_site(mode: str, fake_url: str, *, min_token_ttl: float = 300) -> ReturningAIMiddleware:
    app = Starlette(
        routes=[
            Route("/", home),
            Route("/bad-csp", bad_csp),
            Route("/favicon.ico", no_favicon),
        ]
    )
    options: dict[str, Any] = {
        "mode": mode,
        "community_id": "community-1",
        "identify": identify,
        "min_token_ttl": min_token_ttl,
        "api_base_url": fake_url,
        "sdk_url": f"{fake_url}/sdk/rai-widget.iife.js",
        "widgets_base_url": fake_url,
        "loader_url": f"{fake_url}/widget-loader.js",
    }
    if mode == "access_key":
        options.update(access_id="demo-access-id", access_key="demo-access-key")
    elif mode in ("iframe", "proxy"):
        options.update(widget_api_key="demo-widget-api-key")
    return ReturningAIMiddleware(app, **options)


async def evil_home(request: Request) -> Response:
    return HTMLResponse(EVIL_PAGE)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not HAVE_PLAYWRIGHT:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    chromium = require("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, args=LAUNCH_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def evil_url() -> Iterator[str]:
    with serve(Starlette(routes=[Route("/", evil_home)])) as url:
        yield url


@pytest.fixture
def fake() -> Iterator[tuple[FakeReturningAI, str]]:
    service = FakeReturningAI()
    with service.run_in_thread() as url:
        yield service, url


@pytest.fixture
def site(fake: tuple[FakeReturningAI, str]) -> Iterator[Callable[..., str]]:
    """``site(mode, **options)`` serves a site for ``mode`` and returns its URL."""
    _, fake_url = fake
    with contextlib.ExitStack() as stack:

        def start(mode: str, **options: Any) -> str:
            return stack.enter_context(serve(make_site(mode, fake_url, **options)))

        yield start


class Watch:
    """What a page did: JavaScript errors, CSP reports, requests."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.requests: list[tuple[str, str]] = []
        page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        page.on("console", self._console)
        page.on("request", self._request)

    def _console(self, message: ConsoleMessage) -> None:
        text = message.text
        if message.type == "error" or "Content Security Policy" in text or "rai-middleware" in text:
            self.errors.append(f"console.{message.type}: {text}")

    def _request(self, request: BrowserRequest) -> None:
        self.requests.append((request.method, request.url))

    def posts(self, path: str) -> int:
        return sum(
            1 for method, url in self.requests if method == "POST" and urlsplit(url).path == path
        )

    def violations(self) -> list[str]:
        found: list[str] = []
        for frame in self.page.frames:
            found.extend(frame.evaluate("window.__cspViolations || []"))
        return found

    def assert_clean(self) -> None:
        assert self.errors == []
        assert self.violations() == []


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, Watch]]:
    """A page in a fresh context (no cookies). Ask for it after ``fake`` and ``site``, so that
    it closes first: servers then stop without waiting on the browser's idle connections."""
    context = browser.new_context()
    context.add_init_script(RECORD_VIOLATIONS)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        new_page = context.new_page()
        yield new_page, Watch(new_page)
    finally:
        context.close()


# -- helpers -------------------------------------------------------------------------------------


def widgets(
    page: Page, mode: str, fake_url: str, ids: tuple[str, str] = ("chat-1", "store-1")
) -> list[Locator]:
    """The element whose state each widget exposes: the SDK element, or a frame's body."""
    if mode == "access_key":
        return [page.locator("rai-channel-widget"), page.locator("rai-store-widget")]
    if mode == "iframe":
        return [
            page.frame_locator(f'iframe[src="{fake_url}/{segment}/{widget_id}"]').locator("body")
            for segment, widget_id in zip(("channel-widget", "store-widget"), ids, strict=True)
        ]
    if mode == "proxy":  # the site's own frames
        return [
            page.frame_locator(f'iframe[src^="/_rai/widget/{segment}/{widget_id}?"]').locator(
                "body"
            )
            for segment, widget_id in zip(("channel-widget", "store-widget"), ids, strict=True)
        ]
    return [page.frame_locator(f"#returning-ai-widget-{n} iframe").locator("body") for n in (1, 2)]


def expect_signed_in_widgets(
    page: Page,
    mode: str,
    fake: FakeReturningAI,
    fake_url: str,
    user: str,
    *,
    email: str | None = None,
    ids: tuple[str, str] = ("chat-1", "store-1"),
) -> list[str]:
    """Each widget shows the token (or identity) of ``user`` (the customer id; the email is
    ``user@example.com`` unless given); returns the tokens the widgets hold."""
    email = email or f"{user}@example.com"
    tokens: list[str] = []
    for widget in widgets(page, mode, fake_url, ids):
        if mode == "access_key":
            expect(widget).to_have_attribute("data-fake-state", "ok")
            token = widget.get_attribute("embed-token") or ""
            assert fake.decode(token)["data-email"] == email
            assert fake.decode(token)["data-customer-id"] == user
            expect(widget).to_contain_text(f"signed in as {email}")
        elif mode in ("iframe", "proxy"):
            expect(widget).to_have_attribute("data-state", "ok")
            # Proxy: the token came inside the page; iframe: from the page, by postMessage.
            source = "init" if mode == "proxy" else "message"
            expect(widget).to_have_attribute("data-source", source)
            token = widget.get_attribute("data-token") or ""
            assert fake.decode(token)["email"] == email
            expect(widget).to_have_attribute("data-email", email)
            expect(widget.locator("#status")).to_have_text(f"Signed in as {email}")
        else:
            expect(widget).to_have_attribute("data-state", "identified")
            token = ""
            expect(widget).to_have_attribute("data-email", email)
            expect(widget).to_have_attribute("data-customer-id", user)
            expect(widget.locator("#status")).to_have_text(f"Signed in as {email}")
        tokens.append(token)
    return tokens


# -- tests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_signed_in_visitor_sees_widgets_with_their_identity(
    mode: str,
    fake: tuple[FakeReturningAI, str],
    site: Callable[..., str],
    page: tuple[Page, Watch],
) -> None:
    browser_page, watch = page
    service, fake_url = fake
    url = site(mode)

    response = browser_page.goto(f"{url}/?user=alice")

    assert response is not None and response.status == 200
    tokens = expect_signed_in_widgets(browser_page, mode, service, fake_url, "alice")
    expect(browser_page.locator("p.fallback")).to_have_count(0)
    if mode == "access_key":
        assert tokens[0] == tokens[1]
        assert service.calls == 1
    elif mode == "iframe":
        assert tokens[0] == tokens[1]
        assert service.signin_calls == 1
        assert watch.posts("/_rai/signin") == 0  # the first token came with the page
    elif mode == "proxy":
        assert tokens[0] == tokens[1]
        assert service.signin_calls == 1  # the page's; the frames' came from the cache
        assert len(service.widget_page_requests) == 2
        # The browser never talked to the widgets host for the pages: the site served them.
        assert [u for _, u in watch.requests if u.startswith(fake_url + "/channel-widget")] == []
    else:
        assert (service.calls, service.signin_calls) == (0, 0)
    watch.assert_clean()


@pytest.mark.parametrize("mode", MODES)
def test_anonymous_visitor_sees_the_fallbacks(
    mode: str,
    fake: tuple[FakeReturningAI, str],
    site: Callable[..., str],
    page: tuple[Page, Watch],
) -> None:
    browser_page, watch = page
    service, fake_url = fake
    url = site(mode)

    browser_page.goto(f"{url}/")

    expect(browser_page.locator("p.fallback")).to_have_text(["Sign in to chat", "Sign in to shop"])
    expect(browser_page.locator("iframe")).to_have_count(0)
    expect(browser_page.locator("rai-channel-widget, rai-store-widget")).to_have_count(0)
    assert [url for _, url in watch.requests if url.startswith(fake_url)] == []
    assert (service.calls, service.signin_calls) == (0, 0)
    watch.assert_clean()


def test_other_users_get_their_own_widgets(
    fake: tuple[FakeReturningAI, str],
    site: Callable[..., str],
    page: tuple[Page, Watch],
) -> None:
    browser_page, watch = page
    service, fake_url = fake
    url = site("iframe")

    browser_page.goto(f"{url}/?user=bob")

    expect_signed_in_widgets(browser_page, "iframe", service, fake_url, "bob")
    assert [r["email"] for r in service.signin_requests] == ["bob@example.com"]
    watch.assert_clean()


def test_access_key_refreshes_an_expired_token_without_a_reload(
    fake: tuple[FakeReturningAI, str],
    site: Callable[..., str],
    page: tuple[Page, Watch],
) -> None:
    browser_page, watch = page
    service, fake_url = fake
    # The cache serves a token while it has >= min_token_ttl left: with 3 s tokens and 1 s,
    # the refresh after expiry gets a newly minted token.
    service.token_lifetime = 3
    url = site("access_key", min_token_ttl=1)

    browser_page.goto(f"{url}/?user=alice")
    first = expect_signed_in_widgets(browser_page, "access_key", service, fake_url, "alice")[0]
    browser_page.evaluate(
        """() => {
          window.__sameDocument = true;
          window.__raiErrors = [];
          document.addEventListener("rai-error",
            (e) => window.__raiErrors.push(e.detail.reason), true);
        }"""
    )
    assert watch.posts("/_rai/embed-token") == 0

    # No user action: the SDK stand-in notices the expiry, the page's script refreshes.
    browser_page.wait_for_function(
        """(first) => [...document.querySelectorAll("rai-channel-widget, rai-store-widget")]
             .every((el) => el.getAttribute("embed-token") !== first
                            && el.dataset.fakeState === "ok")""",
        arg=first,
        timeout=TIMEOUT_MS,
    )
    time.sleep(0.5)  # room for a (wrong) second refresh

    fresh = expect_signed_in_widgets(browser_page, "access_key", service, fake_url, "alice")
    assert fresh[0] == fresh[1] != first
    assert service.decode(fresh[0])["exp"] > time.time()
    assert watch.posts("/_rai/embed-token") == 1
    assert service.calls == 2
    # One rai-error per widget (both held the same expired token), not one per check.
    assert browser_page.evaluate("window.__raiErrors") == ["token_expired", "token_expired"]
    assert browser_page.evaluate("window.__sameDocument") is True
    watch.assert_clean()


def test_access_key_retries_a_failed_refresh_with_backoff(
    fake: tuple[FakeReturningAI, str],
    site: Callable[..., str],
    page: tuple[Page, Watch],
) -> None:
    browser_page, watch = page
    service, fake_url = fake
    service.token_lifetime = 3
    url = site("access_key", min_token_ttl=1)
    browser_page.goto(f"{url}/?user=alice")
    first = expect_signed_in_widgets(browser_page, "access_key", service, fake_url, "alice")[0]
    service.fail_next(1, status=503)  # the refresh's mint fails once: the endpoint says 503

    # The SDK reports the expiry once per token; the script must not wait for another report.
    browser_page.wait_for_function(
        """(first) => [...document.querySelectorAll("rai-channel-widget, rai-store-widget")]
             .every((el) => el.getAttribute("embed-token") !== first
                            && el.dataset.fakeState === "ok")""",
        arg=first,
        timeout=TIMEOUT_MS + 10_000,
    )
    assert watch.posts("/_rai/embed-token") == 2  # the failed refresh, then one retry
    assert service.calls == 3
    # The failure was reported (the 503 and the script's warning), and nothing else went wrong.
    assert [e for e in watch.errors if "503" not in e and "rai-middleware" not in e] == []
    assert watch.violations() == []


def test_iframe_tokens_reach_only_the_widgets_and_are_refreshed(
    fake: tuple[FakeReturningAI, str],
    site: Callable[..., str],
    page: tuple[Page, Watch],
    evil_url: str,
) -> None:
    browser_page, watch = page
    service, fake_url = fake
    # The page's script refreshes 5 s before the server-given expiry: tokens must live long
    # enough (9 s) that the first requests are answered from the page, without a POST.
    service.token_lifetime = 9
    url = site("iframe", min_token_ttl=1)

    browser_page.goto(f"{url}/?user=alice&evil={quote(evil_url + '/', safe='')}")
    first = expect_signed_in_widgets(browser_page, "iframe", service, fake_url, "alice")[0]
    assert watch.posts("/_rai/signin") == 0

    # A widget asking with the legacy message type is answered too.
    browser_page.evaluate(
        """(src) => {
          const frame = document.createElement("iframe");
          frame.id = "legacy";
          frame.src = src;
          document.body.appendChild(frame);
        }""",
        f"{fake_url}/store-widget/legacy?legacy=1",
    )
    legacy = browser_page.frame_locator("#legacy").locator("body")
    expect(legacy).to_have_attribute("data-state", "ok")
    assert legacy.get_attribute("data-token") == first

    # The third origin asked, over and over, and got nothing.
    evil = browser_page.frame_locator("#evil").locator("body")
    expect(evil).to_have_attribute("data-requests", re.compile(r"^([5-9]|\d\d+)$"))  # >= 1 s
    time.sleep(0.3)  # room for a (wrong) answer to the last requests
    assert evil.get_attribute("data-received") == ""
    # ...though it does listen: a message it posts to itself is recorded.
    evil.evaluate(
        """() => window.postMessage({type: "RETURNINGAI_WIDGET_TOKEN", value: "control"}, "*")"""
    )
    expect(evil).to_have_attribute("data-received", "control ")

    # After expiry every widget asks again; the page fetches one fresh token for all.
    for widget in [*widgets(browser_page, "iframe", fake_url), legacy]:
        expect(widget).not_to_have_attribute("data-token", first, timeout=15_000)
        expect(widget).to_have_attribute("data-state", "ok")
    fresh = expect_signed_in_widgets(browser_page, "iframe", service, fake_url, "alice")
    assert fresh[0] == fresh[1] == legacy.get_attribute("data-token") != first
    assert service.decode(fresh[0])["exp"] > time.time()
    assert watch.posts("/_rai/signin") == 1
    assert service.signin_calls == 2
    assert evil.get_attribute("data-received") == "control "
    watch.assert_clean()


@pytest.mark.parametrize("mode", MODES)
def test_strict_csp_with_nonce_still_shows_widgets(
    mode: str,
    fake: tuple[FakeReturningAI, str],
    site: Callable[..., str],
    page: tuple[Page, Watch],
) -> None:
    browser_page, watch = page
    service, fake_url = fake
    url = site(mode)

    response = browser_page.goto(f"{url}/?user=alice&csp=1")

    assert response is not None
    assert response.headers["content-security-policy"] == CSP
    expect_signed_in_widgets(browser_page, mode, service, fake_url, "alice")
    assert browser_page.locator("script[nonce]").count() >= 1
    watch.assert_clean()


def test_the_csp_checks_catch_a_violation(
    fake: tuple[FakeReturningAI, str], site: Callable[..., str], page: tuple[Page, Watch]
) -> None:
    """The control for the test above: an inline script without the nonce is reported."""
    browser_page, watch = page
    url = site("access_key")

    browser_page.goto(f"{url}/bad-csp")

    browser_page.wait_for_function("window.__cspViolations.length > 0")
    assert any("Content Security Policy" in error for error in watch.errors), watch.errors
    assert watch.violations() == ["script-src-elem inline"]


@pytest.mark.parametrize("mode", MODES)
def test_the_demo_in_each_mode(
    mode: str, fake: tuple[FakeReturningAI, str], page: tuple[Page, Watch]
) -> None:
    """examples/demo.py as its --mode runs it: sign in with the form, see the widgets."""
    from examples.demo import build_app, customer_id_for

    browser_page, watch = page
    service, fake_url = fake
    email = "ada@example.com"
    with serve(build_app(mode=mode, api_base_url=fake_url)) as url:
        browser_page.goto(f"{url}/")
        expect(browser_page.get_by_text("to join the chat")).to_be_visible()
        browser_page.goto(f"{url}/login")
        browser_page.get_by_label("Email").fill(email)
        browser_page.get_by_role("button", name="Sign in").click()
        browser_page.wait_for_url(f"{url}/")

        expect_signed_in_widgets(
            browser_page,
            mode,
            service,
            fake_url,
            customer_id_for(email),
            email=email,
            ids=("demo-channel", "demo-store"),
        )
        expect(browser_page.get_by_text("to join the chat")).to_have_count(0)
        watch.assert_clean()
        browser_page.close()  # before the server stops: no idle connection to wait for


def frame_heights(page: Page) -> dict[str, int]:
    """The content height of every frame of the page, by its title or src."""
    heights: dict[str, int] = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("iframe")]
             .map((f) => [f.title || f.getAttribute("src"), f.clientHeight]))"""
    )
    return heights


@pytest.mark.parametrize("mode", ["iframe", "proxy"])
def test_widget_frames_grow_to_the_height_their_widget_posts(
    mode: str,
    fake: tuple[FakeReturningAI, str],
    site: Callable[..., str],
    page: tuple[Page, Watch],
    evil_url: str,
) -> None:
    browser_page, watch = page
    service, fake_url = fake
    url = site(mode)

    # A third origin's frame tells the page, four times a second, that it is 999 pixels high.
    browser_page.goto(f"{url}/?user=alice&evil={quote(evil_url + '/', safe='')}")
    expect_signed_in_widgets(browser_page, mode, service, fake_url, "alice")
    frames = browser_page.locator("section iframe")
    expect(frames).to_have_count(2)
    browser_page.wait_for_function(
        """() => [...document.querySelectorAll("section iframe")]
             .every((f) => f.clientHeight === 480)"""
    )
    evil = browser_page.frame_locator("#evil").locator("body")
    expect(evil).to_have_attribute("data-requests", re.compile(r"^([5-9]|\d\d+)$"))  # >= 1 s
    # A frame of the page's own origin that is not a widget frame (srcdoc: no widget src).
    browser_page.evaluate(
        """() => {
          const frame = document.createElement("iframe");
          frame.title = "own";
          frame.srcdoc = "<body data-posts='0'><script>setInterval(function () {"
            + "document.body.dataset.posts = Number(document.body.dataset.posts) + 1;"
            + "parent.postMessage({type: 'WIDGET_HEIGHT_UPDATE', payload: {height: 777}}, '*');"
            + "}, 100);</script></body>";
          document.body.appendChild(frame);
        }"""
    )
    own = browser_page.frame_locator('iframe[title="own"]').locator("body")
    expect(own).to_have_attribute("data-posts", re.compile(r"^([5-9]|\d\d+)$"))
    heights = frame_heights(browser_page)
    assert heights.pop("evil") == 150  # the default: its messages changed nothing
    assert heights.pop("own") == 150
    assert sorted(heights.values()) == [480, 480]
    assert service.widget_height == 480

    # A widget frame that was navigated to the third origin: its src is still a widget's,
    # but its messages come from the wrong origin and change nothing either.
    browser_page.evaluate(
        "(url) => { document.querySelector('section#store iframe').contentWindow.location = url; }",
        evil_url + "/",
    )
    hijacked = browser_page.frame_locator("section#store iframe").locator("body")
    expect(hijacked).to_have_attribute("data-requests", re.compile(r"^([5-9]|\d\d+)$"))
    assert browser_page.locator("section#store iframe").evaluate("(f) => f.clientHeight") == 480
    watch.assert_clean()


@pytest.mark.parametrize("mode", ["iframe", "proxy"])
@pytest.mark.parametrize(("bounds", "height"), [("1", 300), ("2", 600)], ids=["max", "min"])
def test_height_bounds_hold_and_an_explicit_height_stays(
    mode: str,
    bounds: str,
    height: int,
    fake: tuple[FakeReturningAI, str],
    site: Callable[..., str],
    page: tuple[Page, Watch],
) -> None:
    browser_page, watch = page
    service, fake_url = fake
    url = site(mode)

    browser_page.goto(f"{url}/?user=alice&bounds={bounds}")  # the widgets post 480
    expect_signed_in_widgets(browser_page, mode, service, fake_url, "alice")
    browser_page.wait_for_function(
        "(h) => document.querySelector('section#chat iframe').clientHeight === h", arg=height
    )
    time.sleep(0.3)  # room for a (wrong) later change
    store = browser_page.locator("section#store iframe")
    assert store.evaluate("(f) => [f.clientHeight, f.style.height]") == [222, ""]
    chat = browser_page.locator("section#chat iframe")
    assert chat.evaluate("(f) => f.clientHeight") == height
    watch.assert_clean()
