"""Issue 12, item 1: a page that carries a token or an identity keeps no header that lets a
shared cache keep it, on every entrance (ASGI, WSGI, Django sync and async, Flask).

The rule is ``rai_middleware._http.private_page_keeps``: an allow-list of standard headers,
plus any other header whose name says nothing about caching. Each dropped header is tested
by name; the headers a real app relies on (every Set-Cookie, CSP, HSTS...) stay.
"""

# ruff: noqa: F811  (the suite's fixtures, imported, are the tests' parameters)
from __future__ import annotations

from collections.abc import Callable

import pytest

from rai_middleware._http import private_page_keeps, rewrite_headers
from rai_middleware.testing import FakeReturningAI
from tests.entrances import CACHE_HEADERS_SENT, KEPT_HEADERS_SENT, Response, Site
from tests.test_entrances import (  # noqa: F401  (fixtures)
    ALICE,
    WIDGET_PAGE,
    clock,
    entrance,
    fake,
    make_site,
    served_fake,
    site,
    vary_tokens,
    widget_parts,
)

DROPPED = [name for name, _ in CACHE_HEADERS_SENT]


def assert_private(response: Response) -> None:
    names = {name.lower() for name, _ in response.headers}
    for name in DROPPED:
        if name != "Cache-Control":  # ours replaces it, checked below
            assert name.lower() not in names, f"{name} kept on a private page"
    assert response.header("Cache-Control") == ["private, no-store"]
    assert vary_tokens(response) == ["cookie", "authorization"]
    for name, value in KEPT_HEADERS_SENT:
        assert response.header(name) == [value], f"{name} lost"


@pytest.mark.parametrize("name", DROPPED)
def test_a_token_page_drops_the_header(site: Site, fake: FakeReturningAI, name: str) -> None:
    response = site.get("/page-cached", headers=ALICE)
    widget_parts(WIDGET_PAGE, response.body)
    ours = ["private, no-store"]
    assert response.header(name) == (ours if name == "Cache-Control" else [])
    assert response.header("Cache-Control") == ours


def test_a_token_page_keeps_what_apps_rely_on(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/page-cached", headers=ALICE)
    widget_parts(WIDGET_PAGE, response.body)
    assert_private(response)


def test_a_signed_in_visitors_fallback_page_is_private(site: Site, fake: FakeReturningAI) -> None:
    fake.fail_always(status=503)  # the upstream is down: no token, but alice is signed in
    response = site.get("/page-cached", headers=ALICE)
    assert b"embed-token" not in response.body
    assert b"Sign in to chat" in response.body
    assert_private(response)


def test_a_streamed_token_page_is_private(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/stream-cached", headers=ALICE)
    assert b"embed-token" in response.body
    assert_private(response)


def test_a_streamed_fallback_page_of_a_signed_in_visitor_is_private(
    site: Site, fake: FakeReturningAI
) -> None:
    fake.fail_always(status=503)
    response = site.get("/stream-cached", headers=ALICE)
    assert b"embed-token" not in response.body
    assert_private(response)


def test_an_attribute_mode_page_of_a_signed_in_visitor_is_private(
    make_site: Callable[..., Site], fake: FakeReturningAI
) -> None:
    # No token in this mode: the identity is what makes the page private. (The site's
    # placeholder has no widget-id, so alice gets the fallback: still her page.)
    site = make_site(mode="attributes", widget_api_key="widget-key-WWWWWWWWWWWWWWWWWWWW")
    response = site.get("/page-cached", headers=ALICE)
    assert_private(response)
    assert fake.calls == 0


def test_an_anonymous_page_keeps_the_apps_caching(site: Site, fake: FakeReturningAI) -> None:
    response = site.get("/page-cached")
    assert b"Sign in to chat" in response.body
    for name, value in (*CACHE_HEADERS_SENT, *KEPT_HEADERS_SENT):
        assert response.header(name) == [value]
    # It is the fallback for anyone, but a signed-in visitor gets another page.
    assert vary_tokens(response) == ["cookie", "authorization"]


# -- the rule itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        b"cache-control",
        b"expires",
        b"pragma",
        b"age",
        b"warning",
        b"cache-status",
        b"surrogate-control",
        b"surrogate-key",
        b"fastly-surrogate-control",
        b"cdn-cache-control",
        b"cloudflare-cdn-cache-control",
        b"vercel-cdn-cache-control",
        b"netlify-cdn-cache-control",
        b"x-accel-expires",
        b"edge-control",
        b"edge-cache-tag",
        b"netlify-vary",
        b"x-cache-tags",
        b"x-varnish-ttl",
        b"x-stale-while-revalidate",
    ],
)
def test_the_rule_drops(name: bytes) -> None:
    assert not private_page_keeps(name)
    out = rewrite_headers([(name, b"600")], content_length=1, private=True, rewritten=True)
    assert (name, b"600") not in out
    assert (b"cache-control", b"private, no-store") in out


@pytest.mark.parametrize(
    "name",
    [
        b"content-type",
        b"set-cookie",
        b"content-security-policy",
        b"content-security-policy-report-only",
        b"access-control-max-age",
        b"content-language",
        b"x-frame-options",
        b"x-request-id",
        b"x-accel-buffering",
        b"hx-trigger",
        b"server",
        b"date",
        b"link",
    ],
)
def test_the_rule_keeps(name: bytes) -> None:
    assert private_page_keeps(name)


def test_every_set_cookie_stays_and_vary_star_is_left_alone() -> None:
    headers = [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Vary", b"*")]
    out = rewrite_headers(headers, content_length=None, private=True, rewritten=True)
    assert out == [*headers, (b"cache-control", b"private, no-store")]
