"""Edge cases of the page rewrite found in review: held bytes, late failures, cache headers."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import respx

from rai_middleware._http import rewrite_headers
from rai_middleware._page import Step
from tests.conftest import body_of, call_asgi, headers_of, html_app, http_scope, wrap
from tests.test_wsgi import wrap as wrap_wsgi

pytestmark = pytest.mark.anyio

PAGE = b'<p>lead</p><rai-placeholder widget="store">fallback</rai-placeholder><p>end</p>'


def test_wsgi_write_after_a_held_chunk_keeps_every_byte() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", "36")])
        yield b"<html>FIRST-CHUNK-"
        write(b"WRITTEN-")
        yield b"LAST</html>"

    received: list[bytes] = []  # in the order the server would send them

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return received.append

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    result = wrap_wsgi(app)(environ, start_response)
    received.extend(result)
    result.close()  # type: ignore[attr-defined]
    assert b"".join(received) == b"<html>FIRST-CHUNK-WRITTEN-LAST</html>"


async def test_a_failure_on_a_later_streamed_chunk_sends_the_rest_unchanged(
    upstream: respx.MockRouter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("attribute parser bug")

    monkeypatch.setattr("rai_middleware._core.read_placeholder", broken)
    app = html_app([b"<p>head</p>", PAGE], content_length=False)
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        messages = await call_asgi(wrap(app), http_scope())
    assert body_of(messages) == b"<p>head</p>" + PAGE
    assert messages[-1]["more_body"] is False
    assert "rewriting the page failed" in caplog.text
    assert upstream["token"].call_count == 0


async def test_a_page_labelled_with_a_codec_that_is_no_charset_is_sent_as_it_is(
    upstream: respx.MockRouter,
) -> None:
    app = html_app([b"<p>head</p>", PAGE], content_type=b"text/html; charset=rot13")
    assert await call_asgi(wrap(app), http_scope()) == await call_asgi(app, http_scope())


@pytest.mark.parametrize(
    "name", [b"X-Accel-Expires", b"Edge-Control", b"Surrogate-Control", b"CDN-Cache-Control"]
)
def test_a_token_page_loses_every_shared_cache_header(name: bytes) -> None:
    headers = rewrite_headers([(name, b"600")], content_length=1, private=True, rewritten=True)
    assert [n for n, _ in headers if n.lower() == name.lower()] == []
    assert (b"cache-control", b"private, no-store") in headers


@pytest.mark.parametrize("name", [b"Content-Digest", b"Repr-Digest", b"ETag"])
def test_a_rewritten_body_loses_the_digests_of_the_old_one(name: bytes) -> None:
    headers = rewrite_headers([(name, b"x")], content_length=1, private=False, rewritten=True)
    assert [n for n, _ in headers if n.lower() == name.lower()] == []


def test_a_step_never_shows_its_body() -> None:
    assert "secret-token" not in repr(Step(None, b'embed-token="secret-token"'))


async def test_trailers_after_a_rewritten_stream_are_forwarded(upstream: respx.MockRouter) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
                "trailers": True,
            }
        )
        await send({"type": "http.response.body", "body": b"<p>a</p>", "more_body": True})
        await send({"type": "http.response.body", "body": PAGE})
        await send({"type": "http.response.trailers", "headers": [], "more_trailers": False})

    messages = await call_asgi(wrap(app), http_scope())
    assert [m["type"] for m in messages][-1] == "http.response.trailers"
    assert b'embed-token="tok-1"' in body_of(messages)
    assert (b"cache-control", b"private, no-store") in headers_of(messages)
