"""Issue 12, item 8: the smaller holes, on every entrance where they apply.

Weak configuration is warned about at construction (refused with ``RAI_STRICT=1``), the SDK
script can carry a Subresource Integrity hash, the middleware says at startup which paths
it answers, and a visitor is named in logs only by a short keyed hash.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from rai_middleware import ConfigurationError, ReturningAIMiddleware
from rai_middleware._config import build_settings
from rai_middleware._identity import Identity
from rai_middleware._modes.access_key import WidgetMarkup, render_scripts
from tests.entrances import ENTRANCES, build_site

FULL: dict[str, Any] = {"community_id": "c", "access_id": "i", "access_key": "k"}
STRONG = "s" * 32
INTEGRITY = "sha384-oqVuAfXRKap7fdgcCY5uykM6+R9GqQ8K/uxy9rx7HNQlGYl1kPzQho1wx4JwY8wC"


async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
    raise AssertionError


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# -- http:// upstreams and short secret keys ------------------------------------------------


@pytest.mark.parametrize("option", ["api_base_url", "widgets_base_url"])
def test_plain_http_upstream_warns_and_strict_refuses(
    option: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = {**FULL, "secret_key": STRONG, option: "http://api.example.com"}
    with caplog.at_level(logging.WARNING, "rai_middleware"):
        build_settings(options, environ={})
    assert any(option in m and "http://" in m for m in warnings_of(caplog))
    with pytest.raises(ConfigurationError, match=f"{option}.*RAI_STRICT=1"):
        build_settings(options, environ={"RAI_STRICT": "1"})


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8000", "http://localhost:9", "http://[::1]:80", "https://x.example"]
)
def test_loopback_and_https_upstreams_are_quiet(url: str, caplog: pytest.LogCaptureFixture) -> None:
    options = {**FULL, "secret_key": STRONG, "api_base_url": url, "widgets_base_url": url}
    with caplog.at_level(logging.WARNING, "rai_middleware"):
        build_settings(options, environ={"RAI_STRICT": "1"})
    assert warnings_of(caplog) == []


def test_short_secret_key_warns_without_showing_it(caplog: pytest.LogCaptureFixture) -> None:
    options = {**FULL, "secret_key": "x"}
    with caplog.at_level(logging.WARNING, "rai_middleware"):
        ReturningAIMiddleware(app, **options)
    assert any("secret_key is shorter than 32 bytes" in m for m in warnings_of(caplog))
    with pytest.raises(ConfigurationError, match="secret_key") as raised:
        build_settings(options, environ={"RAI_STRICT": "1"})
    assert "'x'" not in str(raised.value)


def test_derived_and_long_secret_keys_are_quiet(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "rai_middleware"):
        build_settings(FULL, environ={"RAI_STRICT": "1"})  # derived: 64 hex digits
        build_settings({**FULL, "secret_key": STRONG}, environ={"RAI_STRICT": "1"})
    assert warnings_of(caplog) == []


def test_strict_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAI_STRICT", "1")
    with pytest.raises(ConfigurationError, match="secret_key"):
        ReturningAIMiddleware(app, **FULL, secret_key="short")


# -- sdk_integrity --------------------------------------------------------------------------


def test_sdk_integrity_is_written_on_the_sdk_script() -> None:
    markup = WidgetMarkup(
        token="t",
        ticket="k",
        community_id="c",
        sdk_url="/sdk.js",
        refresh_url="/r",
        integrity=INTEGRITY,
    )
    html = render_scripts(markup)
    assert f'<script src="/sdk.js" integrity="{INTEGRITY}" crossorigin="anonymous"' in html
    assert "integrity" not in render_scripts(
        WidgetMarkup(token="t", ticket="k", community_id="c", sdk_url="/s", refresh_url="/r")
    )


@pytest.mark.parametrize("value", ["md5-abc", "sha384-", 'sha384-a"b', "", "sha384-a b"])
def test_bad_sdk_integrity_is_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="sdk_integrity"):
        build_settings({**FULL, "sdk_integrity": value}, environ={})


def test_several_sdk_integrity_hashes_are_accepted() -> None:
    both = f"{INTEGRITY} sha512-{'A' * 86}=="
    assert build_settings({**FULL, "sdk_integrity": both}, environ={}).sdk_integrity == both


@pytest.mark.parametrize("entrance", ENTRANCES)
def test_sdk_integrity_on_every_entrance(entrance: str) -> None:
    from rai_middleware.testing import FakeReturningAI
    from tests.conftest import ACCESS_ID, ACCESS_KEY

    fake = FakeReturningAI(access_id=ACCESS_ID, access_key=ACCESS_KEY)
    with fake.run_in_thread() as url:
        site = build_site(entrance, options={"api_base_url": url, "sdk_integrity": INTEGRITY})
        try:
            body = site.get("/page", headers={"X-User": "alice"}).body.decode()
        finally:
            site.close()
    assert f'integrity="{INTEGRITY}" crossorigin="anonymous"' in body
    assert "embed-token=" in body


# -- what the middleware answers, said once at startup ---------------------------------------


@pytest.mark.parametrize("entrance", ENTRANCES)
def test_startup_says_which_paths_the_middleware_answers(
    entrance: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "rai_middleware"):
        site = build_site(entrance)
        try:
            site.get("/plain")  # Django builds its middleware on the first request
            site.get("/plain")
        finally:
            site.close()
    said = [r.getMessage() for r in caplog.records if "rai-middleware answers" in r.getMessage()]
    assert said and all("POST /_rai/embed-token" in m for m in said)
    assert len(said) == 1


def test_a_mode_without_endpoint_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, "rai_middleware"):
        ReturningAIMiddleware(app, mode="attributes", community_id="c")
    assert any("answers no path" in r.getMessage() for r in caplog.records)


# -- identities in logs ------------------------------------------------------------------------


def test_identity_tag_is_a_short_keyed_hash() -> None:
    identity = Identity.create({"data-email": "a@b.c"}, b"k" * 32)
    assert identity.tag == identity.key[:8]
    other_key = Identity.create({"data-email": "a@b.c"}, b"j" * 32)
    assert other_key.tag != identity.tag


def test_visitor_without_needed_identifier_is_logged_by_tag_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = ReturningAIMiddleware(
        app, mode="iframe", community_id="c", widget_api_key="w", secret_key=STRONG
    )
    identity = Identity.create({"data-customer-id": "cust-4242"}, middleware.core.identity_secret)
    with caplog.at_level(logging.WARNING, "rai_middleware"):
        assert middleware.core.usable(identity, "/page") is None
    (message,) = warnings_of(caplog)
    assert identity.tag in message and "cust-4242" not in message
