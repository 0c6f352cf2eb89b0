"""One behaviour suite, run on all five entrances: ASGI, WSGI, Django sync and async, Flask.

Each test is written once against the driver of ``tests/entrances.py`` (the same small
site on each framework) and parametrized over the entrances. The upstream is one
``FakeReturningAI`` served on 127.0.0.1 for the module (real tokens, counted calls),
except for the timeout test, whose upstream is a socket that answers too late.
"""

from __future__ import annotations

import html
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from rai_middleware import FAILURE_KINDS, Event, StoreError
from rai_middleware._identity import Identity
from rai_middleware._runtime import RUNTIME_SCRIPT
from rai_middleware.testing import _WIDGET_PAGE, FakeReturningAI
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID, SECRET_KEY
from tests.entrances import (
    ENTRANCES,
    FALLBACK,
    FRAGMENT,
    JSON_BODY,
    PAGE_AFTER,
    PAGE_BEFORE,
    PLAIN,
    REFRESH_URL,
    SDK_URL,
    SHELL,
    SLOW_HEAD,
    SLOW_TAIL,
    STREAM_AFTER,
    STREAM_BEFORE,
    STREAM_WAIT,
    TURBO_STREAM_BODY,
    TURBO_STREAM_TYPE,
    Response,
    Site,
    build_site,
)

ALICE = {"X-User": "alice"}
BOB = {"X-User": "bob"}
#: The legacy Widget API key modes iframe and proxy sign visitors in with (a fixture value).
WIDGET_API_KEY = "widget-api-key-WWWWWWWWWWWWWWWWWWWWWWWW"

# The widget that replaces the placeholder, then the SDK, refresh and runtime scripts (once
# per page): exact bytes but for the token, the ticket, the runtime's configuration and the
# refresh script's code.
WIDGET = (
    rb'<div id="returning-ai-widget-(?P<suffix>[0-9]+)">'
    + re.escape(
        b'<rai-channel-widget community-id="'
        + COMMUNITY_ID.encode()
        + b'" channel-id="abc" embed-token="'
    )
    + rb"(?P<token>[A-Za-z0-9_.-]+)"
    + re.escape(
        b'"></rai-channel-widget></div><script src="'
        + SDK_URL.encode()
        + b'" data-turbo-eval="false"></script><script data-rai-ticket="'
    )
    + rb'(?P<ticket>[^"<>]+)'
    + re.escape(b'" data-rai-endpoint="' + REFRESH_URL.encode() + b'">')
    + rb"(?P<script>[^\n]*?rai-error[^\n]*?)</script>"
    + rb'<script data-rai="(?P<runtime>[^"<>]+)">'
    + re.escape(RUNTIME_SCRIPT.encode() + b"</script>")
)


def widget_page(before: bytes, after: bytes) -> re.Pattern[bytes]:
    return re.compile(re.escape(before) + WIDGET + re.escape(after), re.DOTALL)


# In a fragment: no SDK tag (the runtime loads the SDK once per document).
FRAGMENT_WIDGET = WIDGET.replace(
    re.escape(b'<script src="' + SDK_URL.encode() + b'" data-turbo-eval="false"></script>'), b""
)
assert FRAGMENT_WIDGET != WIDGET


def fragment_page(before: bytes, after: bytes) -> re.Pattern[bytes]:
    return re.compile(re.escape(before) + FRAGMENT_WIDGET + re.escape(after), re.DOTALL)


def runtime_config(body: bytes) -> dict[str, Any]:
    match = re.search(rb'<script data-rai="([^"]+)">', body)
    assert match is not None, body
    config: dict[str, Any] = json.loads(html.unescape(match.group(1).decode()))
    return config


WIDGET_PAGE = widget_page(PAGE_BEFORE, PAGE_AFTER)
FALLBACK_PAGE = PAGE_BEFORE + FALLBACK + PAGE_AFTER
STREAM_WIDGET_PAGE = widget_page(STREAM_BEFORE, STREAM_AFTER)
STREAM_FALLBACK_PAGE = STREAM_BEFORE + FALLBACK + STREAM_AFTER


class Clock:
    """The middleware's token clock (the public ``clock`` option), moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_fake() -> Iterator[tuple[FakeReturningAI, str]]:
    fake = FakeReturningAI(
        access_id=ACCESS_ID, access_key=ACCESS_KEY, widget_api_key=WIDGET_API_KEY
    )
    with fake.run_in_thread() as base_url:
        yield fake, base_url


@pytest.fixture
def fake(served_fake: tuple[FakeReturningAI, str]) -> FakeReturningAI:
    served_fake[0].reset()
    return served_fake[0]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=ENTRANCES, ids=ENTRANCES)
def entrance(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_site(
    entrance: str, served_fake: tuple[FakeReturningAI, str], clock: Clock
) -> Iterator[Callable[..., Site]]:
    """``make_site(rai=True, http_client=True, **options)``: the site on this entrance,
    against the fake upstream unless ``api_base_url`` says otherwise. Closed last first
    (Django's settings overrides nest)."""
    sites: list[Site] = []

    def make(*, rai: bool = True, http_client: bool = True, **options: Any) -> Site:
        options.setdefault("api_base_url", served_fake[1])
        options.setdefault("clock", clock)
        site = build_site(entrance, rai=rai, http_client=http_client, options=options)
        sites.append(site)
        return site

    yield make
    while sites:
        sites.pop().close()


@pytest.fixture
def site(make_site: Callable[..., Site]) -> Site:
    return make_site()


@pytest.fixture
def bare(make_site: Callable[..., Site]) -> Site:
    """The same site on the same framework, without the middleware."""
    return make_site(rai=False)


# -- helpers -------------------------------------------------------------------------------


def vary_tokens(response: Response) -> list[str]:
    return [
        token.strip().lower()
        for value in response.header("Vary")
        for token in value.split(",")
        if token.strip()
    ]


def widget_parts(pattern: re.Pattern[bytes], body: bytes) -> tuple[str, str]:
    """(token, ticket) of a page that must be exactly ``pattern``."""
    match = pattern.fullmatch(body)
    assert match is not None, body
    return match["token"].decode(), html.unescape(match["ticket"].decode())


def assert_no_secret(response: Response) -> None:
    everything = response.body + repr(response.headers).encode()
    for secret in (ACCESS_KEY, SECRET_KEY, ACCESS_ID, WIDGET_API_KEY):
        assert secret.encode() not in everything


def refresh_headers(ticket: str, **extra: str) -> dict[str, str]:
    return {**ALICE, "X-RAI-Ticket": ticket, "Sec-Fetch-Site": "same-origin", **extra}


# -- 1. a signed-in visitor ----------------------------------------------------------------


def test_signed_in_page_gets_the_widget_with_the_token(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/page", headers=ALICE)
    assert response.status == 200
    token, ticket = widget_parts(WIDGET_PAGE, response.body)
    assert fake.decode(token)["data-customer-id"] == "alice"
    assert ticket
    assert response.header("Content-Length") == [str(len(response.body))]
    assert response.header("Content-Type") == ["text/html; charset=utf-8"]
    assert response.header("Cache-Control") == ["private, no-store"]
    assert vary_tokens(response) == ["cookie", "authorization"]
    assert response.header("ETag") == []
    assert response.header("Last-Modified") == []
    assert_no_secret(response)
    assert fake.calls == 1
    assert fake.requests == [
        {
            "accessId": ACCESS_ID,
            "accessKey": ACCESS_KEY,
            "userIdentifiers": {"data-customer-id": "alice"},
        }
    ]


@pytest.mark.parametrize(
    ("path", "expected_vary"),
    [
        ("/page", ["cookie", "authorization"]),
        ("/page-vary-cookie", ["cookie", "authorization"]),
        ("/page-vary-list", ["cookie", "accept", "authorization"]),
    ],
    ids=["no-vary", "vary-cookie", "vary-cookie-accept"],
)
def test_vary_cookie_is_there_exactly_once(
    site: Site, fake: FakeReturningAI, path: str, expected_vary: list[str]
) -> None:
    response = site.get(path, headers=ALICE)
    widget_parts(WIDGET_PAGE, response.body)
    assert vary_tokens(response) == expected_vary
    assert response.header("Cache-Control") == ["private, no-store"]
    assert response.header("ETag") == []
    assert response.header("Last-Modified") == []


def test_two_pages_of_one_visitor_cost_one_upstream_call(site: Site, fake: FakeReturningAI) -> None:
    first = site.get("/page", headers=ALICE)
    second = site.get("/page-vary-cookie", headers=ALICE)
    token1, _ = widget_parts(WIDGET_PAGE, first.body)
    token2, _ = widget_parts(WIDGET_PAGE, second.body)
    assert token1 == token2
    assert fake.calls == 1
    other = site.get("/page", headers=BOB)
    token3, _ = widget_parts(WIDGET_PAGE, other.body)
    assert fake.decode(token3)["data-customer-id"] == "bob"
    assert fake.calls == 2


# -- 2. an anonymous visitor ---------------------------------------------------------------


def test_anonymous_visitor_gets_the_fallback_without_upstream_call(
    site: Site, fake: FakeReturningAI
) -> None:
    response = site.get("/page")
    assert response.status == 200
    assert response.body == FALLBACK_PAGE
    assert response.header("Content-Length") == [str(len(FALLBACK_PAGE))]
    assert response.header("Cache-Control") == ["max-age=60"]  # no token in the page
    assert vary_tokens(response) == [
        "cookie",
        "authorization",
    ]  # but it depends on who the visitor is
    assert response.header("ETag") == []
    assert response.header("Last-Modified") == []
    assert fake.calls == 0


# -- 3. upstream failure -------------------------------------------------------------------


@pytest.mark.parametrize("failure", [{"status": 503}, {"mode": "garbage"}], ids=["503", "garbage"])
def test_upstream_failure_serves_the_fallback(
    site: Site, fake: FakeReturningAI, failure: dict[str, Any]
) -> None:
    fake.fail_always(**failure)
    response = site.get("/page", headers=ALICE)
    assert response.status == 200
    assert response.body == FALLBACK_PAGE
    assert response.header("Content-Length") == [str(len(FALLBACK_PAGE))]
    assert b"embed-token" not in response.body
    assert b"data-rai-ticket" not in response.body
    # No token, but a signed-in visitor's page: no shared cache may keep it.
    assert response.header("Cache-Control") == ["private, no-store"]
    assert vary_tokens(response) == ["cookie", "authorization"]
    assert_no_secret(response)
    assert fake.calls == 1


# -- 4, 5, HEAD, 304: untouched responses --------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/plain", PLAIN),
        ("GET", "/json", JSON_BODY),
        ("HEAD", "/page", None),
        ("GET", "/not-modified", b""),
    ],
    ids=["no-placeholder", "json", "head", "304"],
)
def test_responses_that_are_no_page_to_rewrite_are_untouched(
    site: Site,
    bare: Site,
    fake: FakeReturningAI,
    method: str,
    path: str,
    body: bytes | None,
) -> None:
    expected = bare.request(method, path, headers=ALICE)
    response = site.request(method, path, headers=ALICE)
    if body is not None:
        assert expected.body == body
    assert response == expected  # status, every header in order, body: byte for byte
    assert fake.calls == 0


# -- 6. a streamed page --------------------------------------------------------------------


def test_streamed_page_is_rewritten_across_chunks(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/stream", headers=ALICE)
    assert response.status == 200
    token, _ = widget_parts(STREAM_WIDGET_PAGE, response.body)
    assert fake.decode(token)["data-customer-id"] == "alice"
    assert response.header("Content-Length") == []
    assert response.header("Cache-Control") == ["private, no-store"]
    assert vary_tokens(response) == ["cookie", "authorization"]
    assert response.header("ETag") == []
    assert fake.calls == 1


def test_streamed_page_for_an_anonymous_visitor(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/stream")
    assert response.status == 200
    assert response.body == STREAM_FALLBACK_PAGE
    assert response.header("Content-Length") == []
    assert response.header("Cache-Control") == ["max-age=60"]
    assert vary_tokens(response) == ["cookie", "authorization"]
    assert fake.calls == 0


# -- 7. the refresh endpoint ---------------------------------------------------------------


def page_ticket(site: Site) -> tuple[str, str]:
    return widget_parts(WIDGET_PAGE, site.get("/page", headers=ALICE).body)


def test_refresh_answers_the_pages_token(site: Site, fake: FakeReturningAI) -> None:
    token, ticket = page_ticket(site)
    response = site.post(REFRESH_URL, headers=refresh_headers(ticket))
    assert response.status == 200
    payload = response.json()
    assert payload["embedToken"] == token
    assert 890 <= payload["expiresIn"] <= 900
    assert response.header("Cache-Control") == ["no-store"]
    assert response.header("Content-Type") == ["application/json"]
    assert response.header("Content-Length") == [str(len(response.body))]
    assert not [name for name, _ in response.headers if name.lower().startswith("access-control")]
    assert_no_secret(response)
    assert fake.calls == 1


def test_refresh_refuses_get(site: Site, fake: FakeReturningAI) -> None:
    _, ticket = page_ticket(site)
    response = site.get(REFRESH_URL, headers=refresh_headers(ticket))
    assert response.status == 405
    assert response.header("Allow") == ["POST"]


def test_refresh_refuses_cross_site(site: Site, fake: FakeReturningAI) -> None:
    _, ticket = page_ticket(site)
    response = site.post(
        REFRESH_URL, headers=refresh_headers(ticket, **{"Sec-Fetch-Site": "cross-site"})
    )
    assert (response.status, response.json()) == (403, {"error": "cross_origin"})
    assert fake.calls == 1  # the page's


def test_refresh_refuses_an_anonymous_visitor(site: Site, fake: FakeReturningAI) -> None:
    _, ticket = page_ticket(site)
    response = site.post(REFRESH_URL, headers={"X-RAI-Ticket": ticket})
    assert (response.status, response.json()) == (401, {"error": "not_signed_in"})
    assert fake.calls == 1


@pytest.mark.parametrize("whose", ["garbage", "another-visitor"])
def test_refresh_refuses_a_bad_ticket(site: Site, fake: FakeReturningAI, whose: str) -> None:
    _, ticket = page_ticket(site)
    if whose == "garbage":
        headers = refresh_headers("garbage")
    else:
        headers = {**refresh_headers(ticket), **BOB}
    response = site.post(REFRESH_URL, headers=headers)
    assert (response.status, response.json()) == (403, {"error": "invalid_ticket"})
    assert fake.calls == 1


def test_refresh_answers_503_when_upstream_fails(
    site: Site, fake: FakeReturningAI, clock: Clock
) -> None:
    _, ticket = page_ticket(site)
    clock.now += 800  # the cached token has 100 s left: too little to hand out
    fake.fail_always(status=503)
    response = site.post(REFRESH_URL, headers=refresh_headers(ticket))
    assert (response.status, response.json()) == (503, {"error": "token_unavailable"})
    assert response.header("Cache-Control") == ["no-store"]
    assert_no_secret(response)
    assert fake.calls == 2


# -- 8. a token request that gets no answer in time ----------------------------------------

TIMEOUT = 0.5


class SlowUpstream:
    def __init__(self, url: str) -> None:
        self.url = url
        #: Request heads received.
        self.requests: list[bytes] = []


@pytest.fixture
def slow_upstream() -> Iterator[SlowUpstream]:
    """A server on 127.0.0.1 that reads a request and sends its status line only after
    ``TIMEOUT + 2`` seconds (then a 503 and closes); it stops with the test."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def answer_late(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TIMEOUT + 3)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                server.requests.append(data.split(b"\r\n\r\n", 1)[0])
                stop.wait(TIMEOUT + 2)
                conn.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\n"
                    b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=answer_late, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    server = SlowUpstream(f"http://127.0.0.1:{listener.getsockname()[1]}")
    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield server
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        for thread in threads:
            thread.join(5)


def test_slow_upstream_headers_cost_at_most_the_timeout(
    make_site: Callable[..., Site], slow_upstream: SlowUpstream
) -> None:
    # No http_client: the middleware's own, made from the options.
    site = make_site(http_client=False, api_base_url=slow_upstream.url, timeout=TIMEOUT)
    assert site.get("/plain", headers=ALICE).body == PLAIN  # the framework warmed up
    started = time.monotonic()
    response = site.get("/page", headers=ALICE)
    elapsed = time.monotonic() - started
    assert response.status == 200
    assert response.body == FALLBACK_PAGE
    assert elapsed < TIMEOUT + 0.5, f"the page took {elapsed:.2f} s with timeout={TIMEOUT}"
    assert len(slow_upstream.requests) == 1
    assert slow_upstream.requests[0].startswith(b"POST /v2/api/widget-access-keys/token ")


# -- 9. the first bytes of a streamed page leave at once -----------------------------------


def test_first_chunk_of_a_stream_reaches_the_client_before_the_app_goes_on(
    site: Site, fake: FakeReturningAI
) -> None:
    started = time.monotonic()
    streamed = site.stream("/slow-stream", headers=ALICE)
    elapsed = time.monotonic() - started
    # The response completed (no deadlock), rewritten.
    assert streamed.response.status == 200
    token, _ = widget_parts(widget_page(SLOW_HEAD, PAGE_AFTER), streamed.response.body)
    assert fake.decode(token)["data-customer-id"] == "alice"
    # The client had the head, and nothing after it, while the app was still waiting.
    assert streamed.first == SLOW_HEAD
    assert site.state.waits == [True], (
        f"the app waited {STREAM_WAIT} s for the client to receive its first chunk "
        f"(took {elapsed:.2f} s); the head was held back"
    )
    assert SLOW_TAIL.startswith(b"<rai-placeholder")


# -- issue 12: one visitor, or one cool-down, cannot switch widgets off for everyone ------


def test_a_visitor_the_upstream_refuses_does_not_trip_the_breaker(
    make_site: Callable[..., Site], fake: FakeReturningAI
) -> None:
    site = make_site(failure_threshold=1)
    fake.fail_next(1, status=400)  # about alice alone
    assert site.get("/page", headers=ALICE).body == FALLBACK_PAGE
    token, _ = widget_parts(WIDGET_PAGE, site.get("/page", headers=BOB).body)
    assert fake.decode(token)["data-customer-id"] == "bob"
    # alice backs off on her own: her next page costs no upstream call.
    assert site.get("/page", headers=ALICE).body == FALLBACK_PAGE
    assert fake.calls == 2


def test_after_the_cool_down_one_page_probes_the_upstream(
    make_site: Callable[..., Site], fake: FakeReturningAI, clock: Clock
) -> None:
    site = make_site(failure_threshold=1, failure_cooldown=30.0)
    fake.fail_next(1, status=503)
    assert site.get("/page", headers=ALICE).body == FALLBACK_PAGE
    assert site.get("/page", headers=BOB).body == FALLBACK_PAGE  # open: no call
    assert fake.calls == 1
    clock.now += 31.0
    token, _ = widget_parts(WIDGET_PAGE, site.get("/page", headers=BOB).body)  # the probe
    assert fake.decode(token)["data-customer-id"] == "bob"
    assert fake.calls == 2


# -- 13. fragments and client-rendered views (issue 13) ----------------------------------------


def test_a_body_without_html_head_or_body_is_a_fragment(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/fragment", headers=ALICE)
    before, after = FRAGMENT.split(b"<rai-placeholder")[0], b"</div>"
    token, ticket = widget_parts(fragment_page(before, after), response.body)
    assert fake.decode(token)["data-customer-id"] == "alice"
    config = runtime_config(response.body)
    assert config["sdk"] == SDK_URL and config["sdkTag"] is False
    assert config["token"] == token and config["ticket"] == ticket
    assert config["endpoint"] == REFRESH_URL and config["field"] == "embedToken"
    assert response.header("Cache-Control") == ["private, no-store"]
    assert response.header("Content-Length") == [str(len(response.body))]


@pytest.mark.parametrize(
    "header", [("HX-Request", "true"), ("Turbo-Frame", "chat"), ("X-Up-Version", "3.9.5")]
)
def test_htmx_turbo_frame_and_unpoly_requests_get_fragments(
    site: Site, fake: FakeReturningAI, header: tuple[str, str]
) -> None:
    response = site.get("/page", headers={**ALICE, header[0]: header[1]})
    widget_parts(fragment_page(PAGE_BEFORE, PAGE_AFTER), response.body)
    assert runtime_config(response.body)["sdkTag"] is False


def test_hx_request_false_is_a_page(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/page", headers={**ALICE, "HX-Request": "false"})
    widget_parts(WIDGET_PAGE, response.body)
    assert runtime_config(response.body)["sdkTag"] is True


def test_a_turbo_stream_is_rewritten_as_a_fragment(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/turbo-stream", headers=ALICE)
    before, after = TURBO_STREAM_BODY.split(b"<rai-placeholder")[0], b"</template></turbo-stream>"
    token, _ = widget_parts(fragment_page(before, after), response.body)
    assert fake.decode(token)["data-customer-id"] == "alice"
    assert response.header("Content-Type") == [TURBO_STREAM_TYPE]


def test_container_ids_are_unique_across_responses(site: Site, fake: FakeReturningAI) -> None:
    suffixes = []
    for path in ("/page", "/fragment", "/page"):
        body = site.get(path, headers=ALICE).body
        match = re.search(rb'<div id="returning-ai-widget-([^"]+)">', body)
        assert match is not None
        suffixes.append(match.group(1))
    assert len(set(suffixes)) == 3
    assert fake.calls == 1


def test_runtime_tag_for_a_signed_in_visitor(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/shell", headers=ALICE)
    body = response.body
    before, after = SHELL.split(b"<rai-runtime>")[0], SHELL.split(b"</rai-runtime>")[1]
    runtime = re.compile(
        re.escape(before)
        + re.escape(b'<script src="' + SDK_URL.encode() + b'" data-turbo-eval="false"></script>')
        + rb'<script data-rai="[^"]+">'
        + re.escape(RUNTIME_SCRIPT.encode() + b"</script>" + after)
    )
    assert runtime.fullmatch(body), body
    config = runtime_config(body)
    assert "token" not in config  # a ticket, no token: the first view asks the endpoint
    assert config["sdkTag"] is True and config["tag"] == "rai-placeholder"
    assert b"rai-placeholder" not in body
    assert fake.calls == 0
    assert response.header("Cache-Control") == ["private, no-store"]
    assert_no_secret(response)
    # The runtime's ticket is the page's: the endpoint answers it.
    reply = site.post(REFRESH_URL, headers=refresh_headers(config["ticket"]))
    assert reply.status == 200
    assert fake.decode(reply.json()["embedToken"])["data-customer-id"] == "alice"


def test_runtime_tag_for_an_anonymous_visitor_is_removed(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/shell")
    assert response.body == SHELL.replace(b"<rai-runtime></rai-runtime>", b"")
    assert fake.calls == 0


# -- issue 15, item 6: stats() and on_event ------------------------------------------------


def expected_stats(
    *, failures: Mapping[str, int] | None = None, breaker: str = "closed", **counts: int
) -> dict[str, Any]:
    """Every key of ``stats()``: zero, but for ``counts`` and ``failures`` (by kind)."""
    stats: dict[str, Any] = {
        "cache_hits": 0,
        "cache_misses": 0,
        "mints": 0,
        "mint_failures": dict.fromkeys(FAILURE_KINDS, 0),
        "breaker_state": breaker,
        "breaker_openings": 0,
        "store_fallbacks": 0,
        "refresh_ahead_mints": 0,
        "pages_rewritten": 0,
        "pages_passed_through": 0,
        "fallbacks_served": 0,
        "events_dropped": 0,
        "event_errors": 0,
    }
    assert set(counts) <= set(stats), set(counts) - set(stats)
    assert set(failures or {}) <= set(FAILURE_KINDS)
    stats["mint_failures"].update(failures or {})
    return {**stats, **counts}


def stats_of(site: Site) -> Any:
    assert site.stats is not None
    return site.stats()


def tag_of(site: Site, user: str) -> str:
    """The identity hash events name ``user`` by (as the log lines do)."""
    return Identity.create({"data-customer-id": user}, site.core.identity_secret).tag


def test_stats_count_cache_hits_misses_mints_and_pages(site: Site, fake: FakeReturningAI) -> None:
    assert stats_of(site) == expected_stats()
    assert WIDGET_PAGE.fullmatch(site.get("/page", headers=ALICE).body)  # miss, mint
    assert WIDGET_PAGE.fullmatch(site.get("/page", headers=ALICE).body)  # hit
    assert site.get("/plain", headers=ALICE).body == PLAIN  # an HTML page, no placeholder
    assert site.get("/json", headers=ALICE).body == JSON_BODY  # no page: not counted
    assert site.head("/page", headers=ALICE).status == 200  # HEAD: not counted
    assert site.get("/page").body == FALLBACK_PAGE  # anonymous: placeholders replaced
    assert stats_of(site) == expected_stats(
        cache_hits=1, cache_misses=1, mints=1, pages_rewritten=3, pages_passed_through=1
    )
    assert fake.calls == 1


def test_stats_count_streamed_pages_when_they_end(site: Site, fake: FakeReturningAI) -> None:
    assert STREAM_WIDGET_PAGE.fullmatch(site.get("/stream", headers=ALICE).body)
    site.get("/gzip-mislabelled", headers=ALICE)  # sent unchanged from first to last byte
    assert stats_of(site) == expected_stats(
        cache_misses=1, mints=1, pages_rewritten=1, pages_passed_through=1
    )


@pytest.mark.parametrize(
    ("status", "mode", "kind"),
    [
        (503, "status", "server_error"),
        (401, "status", "unauthorized"),
        (429, "status", "rate_limited"),
        (400, "status", "refused"),
        (200, "garbage", "bad_answer"),
        (200, "disconnect", "network"),
    ],
)
def test_a_failed_mint_is_counted_by_kind_and_its_page_as_a_fallback(
    site: Site, fake: FakeReturningAI, status: int, mode: Any, kind: str
) -> None:
    fake.fail_next(1, status=status, mode=mode)
    assert site.get("/page", headers=ALICE).body == FALLBACK_PAGE
    assert stats_of(site) == expected_stats(
        cache_misses=1, mints=1, failures={kind: 1}, fallbacks_served=1, pages_rewritten=1
    )


def test_a_mint_that_times_out_is_counted_once_as_a_timeout(
    make_site: Callable[..., Site], fake: FakeReturningAI
) -> None:
    site = make_site(timeout=0.3)
    fake.fail_next(1, mode="hang")
    assert site.get("/page", headers=ALICE).body == FALLBACK_PAGE
    try:
        assert stats_of(site) == expected_stats(
            cache_misses=1, mints=1, failures={"timeout": 1}, fallbacks_served=1, pages_rewritten=1
        )
    finally:
        fake.recover()  # the hanging request ends now


def test_the_breaker_opening_is_counted_and_its_state_shown(
    make_site: Callable[..., Site], fake: FakeReturningAI, clock: Clock
) -> None:
    site = make_site(failure_threshold=2, failure_cooldown=30.0)
    fake.fail_always(status=503)
    for headers in (ALICE, BOB, ALICE):  # two failures open it; the third page asks nothing
        assert site.get("/page", headers=headers).body == FALLBACK_PAGE
    assert fake.calls == 2
    failed = {"server_error": 2}
    assert stats_of(site) == expected_stats(
        breaker="open",
        failures=failed,
        cache_misses=3,
        mints=2,
        breaker_openings=1,
        fallbacks_served=3,
        pages_rewritten=3,
    )
    clock.now += 31.0
    assert stats_of(site)["breaker_state"] == "half_open"
    fake.recover()
    assert WIDGET_PAGE.fullmatch(site.get("/page", headers=BOB).body)  # the probe
    assert stats_of(site) == expected_stats(
        breaker="closed",
        failures=failed,
        cache_misses=4,
        mints=3,
        breaker_openings=1,
        fallbacks_served=3,
        pages_rewritten=4,
    )


class _BrokenStore:
    """A token store whose every operation fails (async methods)."""

    async def load(self, key: str) -> Any:
        raise StoreError("the store is down")

    save = acquire = release = load

    async def aclose(self) -> None:
        return None


class _BrokenSyncStore:
    """The same, synchronous."""

    def load(self, key: str) -> Any:
        raise StoreError("the store is down")

    save = acquire = release = load

    def close(self) -> None:
        return None


def test_a_failing_store_is_counted_once_per_cool_down(
    make_site: Callable[..., Site], fake: FakeReturningAI, entrance: str
) -> None:
    store = _BrokenStore() if entrance == "asgi" else _BrokenSyncStore()
    site = make_site(token_store=store)
    assert WIDGET_PAGE.fullmatch(site.get("/page", headers=ALICE).body)  # minted per process
    assert WIDGET_PAGE.fullmatch(site.get("/page", headers=BOB).body)  # store not asked again
    assert stats_of(site) == expected_stats(
        cache_misses=2, mints=2, store_fallbacks=1, pages_rewritten=2
    )


def test_a_refresh_ahead_mint_is_counted(site: Site, fake: FakeReturningAI, clock: Clock) -> None:
    first, _ = widget_parts(WIDGET_PAGE, site.get("/page", headers=ALICE).body)
    clock.now += 500.0  # 400 s left: in the refresh-ahead window, past half its life
    again, _ = widget_parts(WIDGET_PAGE, site.get("/page", headers=ALICE).body)
    assert again == first  # served the cached token while one mint replaces it
    deadline = time.monotonic() + 5.0
    while fake.calls < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.calls == 2
    assert stats_of(site) == expected_stats(
        cache_hits=1, cache_misses=1, mints=2, refresh_ahead_mints=1, pages_rewritten=2
    )


def test_on_event_gets_each_event_with_the_identity_hash_only(
    make_site: Callable[..., Site], fake: FakeReturningAI
) -> None:
    events: list[Event] = []
    site = make_site(on_event=events.append)
    assert WIDGET_PAGE.fullmatch(site.get("/page", headers=ALICE).body)
    assert WIDGET_PAGE.fullmatch(site.get("/page", headers=ALICE).body)
    assert site.get("/plain", headers=ALICE).body == PLAIN
    fake.fail_next(1, status=503)
    assert site.get("/page", headers=BOB).body == FALLBACK_PAGE
    assert site.core.metrics.flush(5.0)
    alice, bob = tag_of(site, "alice"), tag_of(site, "bob")
    assert events[:6] == [
        Event("cache_miss", alice),
        Event("mint", alice, 0.0),  # the fake clock did not move during the request
        Event("page_rewritten", alice),
        Event("cache_hit", alice),
        Event("page_rewritten", alice),
        Event("page_passed_through", None),  # nobody was identified for it
    ]
    assert events[6:] == [
        Event("cache_miss", bob),
        Event("mint_failure", bob, 0.0, "server_error"),
        Event("fallback_served", bob),
        Event("page_rewritten", bob),
    ]
    assert re.fullmatch(r"[0-9a-f]{8}", alice) and alice != bob
    assert "alice" not in repr(events) and "bob" not in repr(events)


def test_an_on_event_that_raises_breaks_no_page_and_is_logged_once(
    make_site: Callable[..., Site], fake: FakeReturningAI, caplog: pytest.LogCaptureFixture
) -> None:
    def on_event(event: Event) -> None:
        raise RuntimeError(f"broken exporter ({event.name})")

    site = make_site(on_event=on_event)
    with caplog.at_level("ERROR", logger="rai_middleware"):
        assert WIDGET_PAGE.fullmatch(site.get("/page", headers=ALICE).body)
        assert WIDGET_PAGE.fullmatch(site.get("/page", headers=ALICE).body)
        assert site.core.metrics.flush(5.0)
    logged = [r for r in caplog.records if "on_event raised" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert str(logged[0].exc_info[1]) == "broken exporter (cache_miss)"
    assert stats_of(site) == expected_stats(
        cache_hits=1, cache_misses=1, mints=1, pages_rewritten=2, event_errors=5
    )


def test_a_slow_on_event_does_not_delay_the_page(
    make_site: Callable[..., Site], fake: FakeReturningAI
) -> None:
    release = threading.Event()
    seen: list[str] = []

    def on_event(event: Event) -> None:
        release.wait(10.0)  # an exporter stuck on its network
        seen.append(event.name)

    site = make_site(on_event=on_event)
    try:
        started = time.monotonic()
        for _ in range(3):
            assert WIDGET_PAGE.fullmatch(site.get("/page", headers=ALICE).body)
        assert time.monotonic() - started < 3.0  # not 10 s per event
        assert seen == []
    finally:
        release.set()
    assert site.core.metrics.flush(5.0)
    assert seen == ["cache_miss", "mint", "page_rewritten"] + ["cache_hit", "page_rewritten"] * 2


# -- issue 14: mode proxy, the widget route ---------------------------------------------------

ANN = {"X-User": "ann@example.com"}
#: What a browser sends when a page of the site frames the route.
FRAMED = {"Sec-Fetch-Dest": "iframe", "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate"}
WIDGET_ROUTE = "/_rai/widget/"
PROXY_HEADERS = [
    ("content-type", "text/html; charset=utf-8"),
    ("cache-control", "private, no-store"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "SAMEORIGIN"),
    ("content-security-policy", "frame-ancestors 'self'"),
    ("x-content-type-options", "nosniff"),
]
INIT = re.compile(rb'window\.__WIDGET_INIT__ = \{ token: "(?P<token>[^"]+)", color: "light" \};')


def proxied(base_url: str, segment: str, token: str) -> bytes:
    """The fake's widget page as the route serves it: <base> first in its head, the token in
    its init object."""
    page = _WIDGET_PAGE.replace("__HEIGHT__", "480")
    page = page.replace("<head>", f'<head><base href="{base_url}/{segment}/">', 1)
    return page.replace('token: ""', f'token: "{token}"', 1).encode()


def error_page(title: str, message: str) -> bytes:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"</head><body><p>{message}</p></body></html>"
    ).encode()


NOT_FOUND = error_page("Not found", "There is no such widget.")
CROSS_SITE = error_page("Forbidden", "This widget is shown only in this site's own pages.")
NOT_SIGNED_IN = error_page("Not signed in", "Sign in to see this widget.")
UNAVAILABLE = error_page("Unavailable", "This widget is unavailable. Try again later.")


def route_headers(response: Response) -> list[tuple[str, str]]:
    """The answer's headers, names lower-cased, in order; the server's own (Date, Server:
    no entrance here adds them) would show up too."""
    return [(name.lower(), value) for name, value in response.headers]


def assert_route_answer(response: Response, status: int, body: bytes) -> None:
    assert (response.status, response.body) == (status, body)
    length = ("content-length", str(len(body)))
    allow = [("allow", "GET")] if status == 405 else []
    assert route_headers(response) == [*PROXY_HEADERS, *allow, length]
    assert_no_secret(response)


@pytest.fixture
def proxy(
    make_site: Callable[..., Site], served_fake: tuple[FakeReturningAI, str]
) -> Callable[..., Site]:
    """``proxy(**options)``: the site in mode proxy, its widgets host the served fake."""

    def make(**options: Any) -> Site:
        options = {"mode": "proxy", "widget_api_key": WIDGET_API_KEY, **options}
        return make_site(widgets_base_url=served_fake[1], **options)

    return make


def test_proxy_page_frames_each_widget_from_the_sites_own_route(
    proxy: Callable[..., Site], fake: FakeReturningAI
) -> None:
    from rai_middleware._modes._height import HEIGHT_SCRIPT

    response = proxy().get("/proxy-page", headers=ANN)
    assert response.status == 200
    assert response.body == (
        PAGE_BEFORE
        + b'<iframe src="/_rai/widget/channel-widget/chat-1?color=dark"'
        + b' data-rai-min-height="200" data-rai-max-height="900"></iframe>'
        + b'<script data-rai-frames="/_rai/widget/">'
        + HEIGHT_SCRIPT.encode()
        + b"</script>"
        + b'<iframe src="/_rai/widget/store-widget/store_1?color=light" height="300"'
        + b' title="Store"></iframe>'
        + b'<iframe src="/_rai/widget/custom-widget/NjlmMzJi?color=light"></iframe>'
        + PAGE_AFTER
    )
    assert response.header("Cache-Control") == ["private, no-store"]
    # The page signed the visitor in (one signin, whatever the number of widgets)...
    assert (fake.signin_calls, fake.calls) == (1, 0)
    assert fake.signin_requests == [{"community": COMMUNITY_ID, "email": "ann@example.com"}]
    # ...and carries no token: the frames get theirs from the route.
    assert b"eyJ" not in response.body
    assert fake.widget_page_requests == []


def test_proxy_route_serves_the_widget_page_with_the_visitors_token(
    proxy: Callable[..., Site], fake: FakeReturningAI, served_fake: tuple[FakeReturningAI, str]
) -> None:
    site = proxy()
    site.get("/proxy-page", headers=ANN)
    visitor = {**ANN, **FRAMED, "Cookie": "session=s3cr3t", "Authorization": "Basic YTpi"}
    tokens = []
    for path, segment in [
        ("channel-widget/chat-1?color=dark", "channel-widget"),
        ("store-widget/store_1?color=light", "store-widget"),
        ("custom-widget/NjlmMzJi", "custom-widget"),
    ]:
        response = site.get(WIDGET_ROUTE + path, headers=visitor)
        found = INIT.search(response.body)
        assert found is not None, response.body
        token = found["token"].decode()
        assert_route_answer(response, 200, proxied(served_fake[1], segment, token))
        assert fake.decode(token)["email"] == "ann@example.com"
        tokens.append(token)
    # One signin for the page and its three widgets: the same token everywhere.
    assert len(set(tokens)) == 1
    assert fake.signin_calls == 1
    # The widgets host was asked for each page, with nothing of the visitor's.
    assert [(r["path"], r["query"]) for r in fake.widget_page_requests] == [
        ("/channel-widget/chat-1", "color=dark"),
        ("/store-widget/store_1", "color=light"),
        ("/custom-widget/NjlmMzJi", "color=light"),
    ]
    for request in fake.widget_page_requests:
        headers = request["headers"]
        assert "cookie" not in headers and "authorization" not in headers
        assert "x-user" not in headers and "sec-fetch-dest" not in headers
        assert headers["accept"] == "text/html"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("channel-widget/chat-1", {}, 401),
        ("channel-widget/chat-1", ALICE, 401),  # signed in, but no email: the fallback
        ("channel-widget/chat-1", {**ANN, "Sec-Fetch-Site": "cross-site"}, 403),
        ("channel-widget/chat-1", {**ANN, "Sec-Fetch-Site": "same-site"}, 403),
        ("channel-widget/chat-1", {**ANN, "Sec-Fetch-Dest": "document"}, 403),
        ("channel-widget/chat-1", {**ANN, "Sec-Fetch-Dest": "script"}, 403),
        ("no-such-segment/chat-1", ANN, 404),
        ("channel-widget/a.b", ANN, 404),
        ("channel-widget/" + "x" * 129, ANN, 404),
        ("channel-widget/", ANN, 404),
        ("channel-widget/chat-1/more", ANN, 404),
        ("channel-widget", ANN, 404),
        ("channel-widget/chat-1?color=%3Cscript%3E", ANN, 404),
    ],
    ids=[
        "anonymous",
        "no-email",
        "cross-site",
        "same-site",
        "dest-document",
        "dest-script",
        "unknown-segment",
        "bad-widget-id",
        "long-widget-id",
        "no-widget-id",
        "extra-segment",
        "segment-only",
        "bad-color",
    ],
)
def test_proxy_route_refuses(
    proxy: Callable[..., Site],
    fake: FakeReturningAI,
    path: str,
    headers: dict[str, str],
    status: int,
) -> None:
    response = proxy().get(WIDGET_ROUTE + path, headers=headers)
    body = {401: NOT_SIGNED_IN, 403: CROSS_SITE, 404: NOT_FOUND}[status]
    assert_route_answer(response, status, body)
    assert (fake.signin_calls, fake.widget_page_requests) == (0, [])


def test_proxy_route_answers_only_get(proxy: Callable[..., Site], fake: FakeReturningAI) -> None:
    response = proxy().post(WIDGET_ROUTE + "channel-widget/chat-1", headers={**ANN, **FRAMED})
    assert_route_answer(response, 405, error_page("Method not allowed", "Only GET is allowed."))
    assert fake.signin_calls == 0


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 500},
        {"status": 404},
        {"mode": "garbage"},
        {"mode": "missing_token"},
        {"mode": "disconnect"},
    ],
    ids=["500", "404", "not-html", "no-token-slot", "disconnect"],
)
def test_proxy_route_answers_503_when_the_widget_page_cannot_be_had(
    proxy: Callable[..., Site], fake: FakeReturningAI, failure: dict[str, Any]
) -> None:
    fake.fail_widget_pages(**failure)
    response = proxy().get(WIDGET_ROUTE + "channel-widget/chat-1", headers={**ANN, **FRAMED})
    assert_route_answer(response, 503, UNAVAILABLE)  # no upstream detail
    assert fake.signin_calls == 1
    assert len(fake.widget_page_requests) == 1


def test_proxy_route_answers_503_when_the_visitor_cannot_be_signed_in(
    proxy: Callable[..., Site], fake: FakeReturningAI
) -> None:
    fake.fail_always(status=503)
    response = proxy().get(WIDGET_ROUTE + "channel-widget/chat-1", headers={**ANN, **FRAMED})
    assert_route_answer(response, 503, UNAVAILABLE)
    assert (fake.signin_calls, fake.widget_page_requests) == (1, [])


def test_proxy_page_shows_fallbacks_when_the_visitor_cannot_be_signed_in(
    proxy: Callable[..., Site], fake: FakeReturningAI
) -> None:
    fake.fail_always(status=503)
    site = proxy()
    assert site.get("/proxy-page", headers=ANN).body == PAGE_BEFORE + b"F1F2F3" + PAGE_AFTER
    assert site.get("/proxy-page", headers=ALICE).body == PAGE_BEFORE + b"F1F2F3" + PAGE_AFTER
    assert site.get("/proxy-page").body == PAGE_BEFORE + b"F1F2F3" + PAGE_AFTER  # anonymous
    assert fake.signin_calls == 1  # alice has no email, the anonymous visitor none: not asked


def test_proxy_pages_are_cached_without_the_token_for_proxy_page_ttl(
    proxy: Callable[..., Site],
    fake: FakeReturningAI,
    served_fake: tuple[FakeReturningAI, str],
    clock: Clock,
) -> None:
    site = proxy(proxy_page_ttl=60.0)
    bob = {"X-User": "bob@example.com", **FRAMED}
    chat = WIDGET_ROUTE + "channel-widget/chat-1"
    first = site.get(chat, headers={**ANN, **FRAMED})
    second = site.get(chat, headers=bob)  # another visitor: the cached page, his own token
    site.get(chat + "?color=dark", headers=bob)  # another color: another page
    assert len(fake.widget_page_requests) == 2
    tokens = [INIT.search(r.body)["token"].decode() for r in (first, second)]  # type: ignore[index]
    assert [fake.decode(t)["email"] for t in tokens] == ["ann@example.com", "bob@example.com"]
    assert second.body == proxied(served_fake[1], "channel-widget", tokens[1])
    clock.now += 59.0
    site.get(chat, headers=bob)
    assert len(fake.widget_page_requests) == 2
    clock.now += 2.0  # past the page's 60 s
    site.get(chat, headers=bob)
    assert len(fake.widget_page_requests) == 3
    assert fake.signin_calls == 2  # one per visitor


def test_proxy_page_ttl_zero_fetches_every_time(
    proxy: Callable[..., Site], fake: FakeReturningAI
) -> None:
    site = proxy(proxy_page_ttl=0)
    for _ in range(3):
        response = site.get(WIDGET_ROUTE + "store-widget/s1", headers={**ANN, **FRAMED})
        assert response.status == 200
    assert len(fake.widget_page_requests) == 3
    assert fake.signin_calls == 1


def test_proxy_route_without_fetch_metadata_is_served(
    proxy: Callable[..., Site], fake: FakeReturningAI
) -> None:
    """Older browsers send no Sec-Fetch-* headers: the frame still loads."""
    response = proxy().get(WIDGET_ROUTE + "store-widget/s1", headers=ANN)
    assert response.status == 200
    assert INIT.search(response.body) is not None


def test_proxy_route_is_not_answered_in_other_modes(
    make_site: Callable[..., Site], fake: FakeReturningAI
) -> None:
    response = make_site().get(WIDGET_ROUTE + "channel-widget/chat-1", headers={**ANN, **FRAMED})
    assert response.status == 404  # the app's own 404
    assert fake.widget_page_requests == []


def test_proxy_route_answers_within_the_timeout_when_the_widgets_host_hangs(
    proxy: Callable[..., Site], fake: FakeReturningAI
) -> None:
    # No http_client: the middleware's own (asyncio or threads, as the entrance runs).
    site = proxy(http_client=False, timeout=TIMEOUT)
    assert site.get("/proxy-page", headers=ANN).status == 200  # signed in; the framework warm
    fake.fail_widget_pages(mode="hang")
    started = time.monotonic()
    response = site.get(WIDGET_ROUTE + "channel-widget/chat-1", headers={**ANN, **FRAMED})
    elapsed = time.monotonic() - started
    assert_route_answer(response, 503, UNAVAILABLE)
    assert elapsed < TIMEOUT + 0.5, f"the route took {elapsed:.2f} s with timeout={TIMEOUT}"
    assert fake.signin_calls == 1


# -- issue 15: excluded routes -------------------------------------------------------------


def wants_skip(request: Any) -> bool:
    """``skip`` for every entrance: an ``X-Skip`` request header, read from what the
    entrance gives (the ASGI scope, the WSGI environ, Django's or Flask's request)."""
    if isinstance(request, dict) and "headers" in request:
        return any(name == b"x-skip" for name, _ in request["headers"])
    if isinstance(request, dict):
        return "HTTP_X_SKIP" in request
    return "X-Skip" in request.headers


@pytest.mark.parametrize("prefix", ["/page", "/page/"])
def test_an_excluded_path_is_served_as_the_bare_app_serves_it(
    make_site: Callable[..., Site], bare: Site, fake: FakeReturningAI, prefix: str
) -> None:
    site = make_site(exclude_paths=(prefix, "/json"))
    for path in ("/page", "/json"):
        assert site.get(path, headers=ALICE) == bare.get(path, headers=ALICE)
    # /page-vary-cookie shares the text but not the segment: it is still rewritten.
    widget_parts(WIDGET_PAGE, site.get("/page-vary-cookie", headers=ALICE).body)
    assert fake.calls == 1


def test_skip_leaves_the_request_alone_and_is_not_asked_about_the_endpoint(
    make_site: Callable[..., Site], bare: Site, fake: FakeReturningAI
) -> None:
    site = make_site(skip=wants_skip)
    skipped = {**ALICE, "X-Skip": "1"}
    assert site.get("/page", headers=skipped) == bare.get("/page", headers=skipped)
    assert fake.calls == 0
    token, ticket = widget_parts(WIDGET_PAGE, site.get("/page", headers=ALICE).body)
    answer = site.post(REFRESH_URL, headers={**refresh_headers(ticket), "X-Skip": "1"})
    assert answer.status == 200
    assert answer.json()["embedToken"] == token
    assert fake.calls == 1


def test_a_skip_that_raises_is_logged_and_the_page_still_rewritten(
    make_site: Callable[..., Site], fake: FakeReturningAI, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Any) -> bool:
        raise LookupError("a bug in the site's skip")

    site = make_site(skip=broken)
    with caplog.at_level("ERROR", logger="rai_middleware"):
        widget_parts(WIDGET_PAGE, site.get("/page", headers=ALICE).body)
    assert [r.getMessage() for r in caplog.records] == [
        "skip raised for /page; the request is handled by the middleware as usual"
    ]
    assert caplog.records[0].exc_info is not None
    assert fake.calls == 1


def test_proxy_route_answer_is_never_rewritten_as_a_page(
    proxy: Callable[..., Site], fake: FakeReturningAI
) -> None:
    """The route's own answer is served as it is (Flask runs after_request hooks on it too)."""
    site = proxy()
    response = site.get(WIDGET_ROUTE + "store-widget/s1", headers={**ANN, **FRAMED})
    assert response.status == 200
    counts = stats_of(site)
    assert (counts["pages_rewritten"], counts["pages_passed_through"]) == (0, 0)
