"""WSGI edge cases: modes, odd apps, failures, and the sync token service's corners."""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rai_middleware import ReturningAIWSGIMiddleware
from rai_middleware._identity import Identity
from rai_middleware._store import StoredToken, StoreError
from rai_middleware._sync_tokens import SyncTokenService
from tests.conftest import USER
from tests.test_tokens import settings, user
from tests.test_wsgi import ANONYMOUS, PAGE, Upstream, call, header, wrap, wsgi_page


def test_attributes_mode_on_wsgi_renders_the_loader() -> None:
    page = b'<rai-placeholder widget="store" widget-id="S1">fb</rai-placeholder>'
    middleware = ReturningAIWSGIMiddleware(
        wsgi_page(page), mode="attributes", identify=lambda e: {"data-email": "a@b.c"}
    )
    _, headers, body = call(middleware)
    assert b'data-widget-id="S1"' in body and b'data-email="a@b.c"' in body
    assert header(headers, "cache-control") == ["private, no-store"]


def test_iframe_mode_without_email_is_anonymous_on_wsgi(caplog: pytest.LogCaptureFixture) -> None:
    page = b'<rai-placeholder widget="store" widget-id="S1">fb</rai-placeholder>'
    middleware = ReturningAIWSGIMiddleware(
        wsgi_page(page),
        community_id="c",
        widget_api_key="k",
        identify=lambda e: {"data-customer-id": "1"},
    )
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        assert call(middleware)[2] == b"fb"
    assert "'data-email'" in caplog.text


def test_unexpected_token_failure_fails_open_and_the_endpoint_answers_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = wrap(wsgi_page(PAGE))

    def broken(identity: Any) -> Any:
        raise RuntimeError("closed client")

    middleware.tokens.get = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        assert call(middleware)[2] == ANONYMOUS
    reply = middleware.driver.run(middleware.core.endpoint("POST", {}, "http"), {})
    assert reply.status == 403  # no ticket: refused before any token is asked for
    key = Identity.create(dict(USER), middleware.core.identity_secret).key
    headers = {b"x-rai-ticket": middleware.tickets.issue(key).encode()}
    reply = middleware.driver.run(middleware.core.endpoint("POST", headers, "http"), {})
    assert reply.status == 503
    assert caplog.text.count("getting a token failed") == 2  # the page, then the endpoint


def test_non_numeric_status_and_unsupported_encoding_pass_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    odd = wsgi_page(PAGE, status="OK")
    assert call(wrap(odd))[2] == PAGE
    brotli = wsgi_page(b"\x00br", headers=[("Content-Encoding", "br")])
    middleware = wrap(brotli)
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        for _ in range(3):
            assert call(middleware)[2] == b"\x00br"
    assert caplog.text.count("only gzip and deflate") == 1


def test_start_response_with_exc_info_after_headers_reraises() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        yield b"<p>first</p>"
        yield b"<p>second</p>"
        try:
            raise ValueError("late failure")
        except ValueError as exc:
            start_response("500 Oops", [("Content-Type", "text/plain")], (ValueError, exc, None))
        yield b"never"

    with pytest.raises(ValueError, match="late failure"):
        call(wrap(app))


def test_streamed_gzip_that_turns_corrupt_ends_quietly(caplog: pytest.LogCaptureFixture) -> None:
    whole = gzip.compress(b"<p>" + bytes(range(256)) * 200 + b"</p>")
    bad = bytes([whole[-8] ^ 0xFF]) + whole[-7:]

    def chunks() -> Iterator[bytes]:
        yield whole[:500]
        yield whole[500:-8]
        yield bad
        yield b"after"

    app = wsgi_page(chunks, headers=[("Content-Encoding", "gzip")])
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        body = call(wrap(app))[2]
    assert b"after" not in body
    assert "is corrupt" in caplog.text


def test_empty_streamed_body_is_sent_unchanged() -> None:
    def empty() -> Iterator[bytes]:
        return iter(())

    _, headers, body = call(wrap(wsgi_page(empty)))
    assert body == b""
    assert header(headers, "content-type") == ["text/html; charset=utf-8"]  # sent unchanged


def test_first_chunk_failure_sends_the_stream_unchanged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("rai_middleware._page.streamed_headers", broken)

    def chunks() -> Iterator[bytes]:
        yield PAGE[:30]
        yield PAGE[30:]

    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        assert call(wrap(wsgi_page(chunks)))[2] == PAGE
    assert "sending it unchanged" in caplog.text


def test_whole_page_failure_sends_it_unchanged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    middleware = wrap(wsgi_page(PAGE))
    monkeypatch.setattr("rai_middleware._page.rewrite_headers", broken)
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        assert call(middleware)[2] == PAGE
    assert "sending it unchanged" in caplog.text


class MemoryStore:
    """A SyncTokenStore in memory, with switches for failures."""

    def __init__(self) -> None:
        self.data: dict[str, StoredToken] = {}
        self.locks: dict[str, str] = {}
        self.fail = False
        self.closed = False

    def _check(self) -> None:
        if self.fail:
            raise StoreError("down")

    def load(self, key: str) -> StoredToken | None:
        self._check()
        return self.data.get(key)

    def save(self, key: str, token: StoredToken) -> None:
        self._check()
        self.data[key] = token

    def acquire(self, key: str, lease: float) -> str | None:
        self._check()
        if key in self.locks:
            return None
        self.locks[key] = "me"
        return "me"

    def release(self, key: str, owner: str) -> None:
        self._check()
        if self.locks.get(key) == owner:
            del self.locks[key]

    def close(self) -> None:
        self.closed = True


def _service(store: MemoryStore, upstream: Upstream, **overrides: Any) -> SyncTokenService:
    client = httpx.Client(transport=httpx.MockTransport(upstream))
    return SyncTokenService(settings(**overrides), http_client=client, store=store)


def test_sync_service_adopts_a_token_another_process_stored() -> None:
    store, upstream = MemoryStore(), Upstream()
    first = _service(store, upstream)
    token = first.get(user(1))
    second = _service(store, upstream)
    assert second.get(user(1)).value == token.value
    assert upstream.calls == 1
    first.close()
    second.close()
    assert store.closed


def test_sync_service_waits_for_the_lock_holder_then_mints_itself() -> None:
    store, upstream = MemoryStore(), Upstream()
    service = _service(store, upstream, timeout=0.4)
    store.locks[user(1).key] = "someone-else"  # a process holds the lock and never finishes
    started = time.monotonic()
    assert service.get(user(1)).value.startswith("tok-")
    assert 0.15 < time.monotonic() - started < 1.0  # waited half the timeout, then minted
    assert upstream.calls == 1
    service.close()


def test_sync_service_falls_back_per_process_when_the_store_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, upstream = MemoryStore(), Upstream()
    store.fail = True
    service = _service(store, upstream)
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        assert service.get(user(1)).value.startswith("tok-")
        assert service.get(user(2)).value.startswith("tok-")
    assert caplog.text.count("shared token store failed") == 1
    service.close()


def test_sync_waiters_share_the_leaders_failure() -> None:
    upstream = Upstream(delay=0.1)
    upstream.fail = httpx.Response(500)
    client = httpx.Client(transport=httpx.MockTransport(upstream))
    service = SyncTokenService(settings(), http_client=client)
    errors: list[Exception] = []

    def get() -> None:
        try:
            service.get(user(1))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=get) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(errors) == 5
    assert upstream.calls == 1
    service.close()
