"""Pages compressed by an inner middleware: gzip and deflate are rewritten, others left alone."""

from __future__ import annotations

import gzip
import logging
import zlib
from typing import Any

import pytest
import respx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import Message, body_of, call_asgi, headers_of, html_app, http_scope, wrap

pytestmark = pytest.mark.anyio

# Varied enough that gzip cannot squeeze it into a few bytes: streams need several chunks.
FILLER = b"".join(f"<p>item {n} costs {n * 7919 % 1000}</p>".encode() for n in range(300))
PAGE = (
    b"<html><body>" + FILLER + b'<rai-placeholder widget="store">'
    b"fallback</rai-placeholder>" + FILLER + b"</body></html>"
)


def header(messages: list[Message], name: bytes) -> list[bytes]:
    return [value for key, value in headers_of(messages) if key.lower() == name]


def deflate_zlib(data: bytes) -> bytes:
    return zlib.compress(data)


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def inflate(data: bytes, encoding: bytes) -> bytes:
    if encoding == b"gzip":
        return gzip.decompress(data)
    try:
        return zlib.decompress(data)
    except zlib.error:
        return zlib.decompress(data, -zlib.MAX_WBITS)


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [(b"gzip", gzip.compress), (b"deflate", deflate_zlib), (b"deflate", deflate_raw)],
)
async def test_compressed_page_in_one_message_is_rewritten_and_recompressed(
    upstream: respx.MockRouter, encoding: bytes, compress: Any
) -> None:
    app = html_app(compress(PAGE), headers=[(b"content-encoding", encoding)])
    messages = await call_asgi(wrap(app), http_scope())
    body = body_of(messages)
    assert header(messages, b"content-encoding") == [encoding]
    assert header(messages, b"content-length") == [str(len(body)).encode()]
    assert header(messages, b"cache-control") == [b"private, no-store"]
    page = inflate(body, encoding)
    assert b'<rai-store-widget community-id="community-123" embed-token="tok-1">' in page
    assert b"rai-placeholder" not in page


@pytest.mark.parametrize("size", [1, 50, 700])
async def test_compressed_stream_is_rewritten_chunk_by_chunk(
    upstream: respx.MockRouter, size: int
) -> None:
    compressed = gzip.compress(PAGE)
    chunks = [compressed[i : i + size] for i in range(0, len(compressed), size)]
    messages = await call_asgi(
        wrap(html_app(chunks, headers=[(b"content-encoding", b"gzip")], content_length=False)),
        http_scope(),
    )
    assert header(messages, b"content-length") == []
    page = gzip.decompress(body_of(messages))
    plain = body_of(await call_asgi(wrap(html_app(PAGE)), http_scope()))
    assert (
        page.replace(b"tok-1", b"X").split(b"data-rai-ticket")[0]
        == (plain.replace(b"tok-2", b"X").split(b"data-rai-ticket")[0])
    )


async def test_compressed_page_without_placeholder_is_byte_identical(
    upstream: respx.MockRouter,
) -> None:
    app = html_app(gzip.compress(b"<p>plain</p>" * 100), headers=[(b"content-encoding", b"gzip")])
    assert await call_asgi(wrap(app), http_scope()) == await call_asgi(app, http_scope())
    assert upstream["token"].call_count == 0


async def test_corrupt_gzip_in_one_message_is_sent_unchanged(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    app = html_app(b"\x1f\x8bnot really gzip", headers=[(b"content-encoding", b"gzip")])
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        messages = await call_asgi(wrap(app), http_scope())
    assert messages == await call_asgi(app, http_scope())
    assert "rewriting the page failed" in caplog.text


async def test_corrupt_gzip_mid_stream_ends_the_response_cleanly(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    whole = gzip.compress(PAGE)
    bad_crc = bytes([whole[-8] ^ 0xFF]) + whole[-7:]  # the trailer's checksum, corrupted
    app = html_app(
        [whole[:200], whole[200:-8], bad_crc],
        headers=[(b"content-encoding", b"gzip")],
        content_length=False,
    )
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        messages = await call_asgi(wrap(app), http_scope())
    assert messages[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert "is corrupt" in caplog.text


@pytest.mark.parametrize("encoding", [b"br", b"zstd", b"gzip, br", b"compress"])
async def test_other_encodings_pass_through_with_one_warning_about_order(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture, encoding: bytes
) -> None:
    app = html_app(b"\x00binary", headers=[(b"content-encoding", encoding)])
    middleware = wrap(app)
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        for _ in range(5):
            assert await call_asgi(middleware, http_scope()) == await call_asgi(app, http_scope())
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "Put the compression middleware outside ReturningAIMiddleware" in warnings[0]


async def test_starlette_gzip_middleware_inside_is_handled(
    upstream: respx.MockRouter, client_factory: Any
) -> None:
    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.decode())

    async def stream(request: Request) -> Response:
        async def chunks() -> Any:
            for start in range(0, len(PAGE), 700):
                yield PAGE[start : start + 700]

        return StreamingResponse(chunks(), media_type="text/html")

    inner = Starlette(
        routes=[Route("/", page), Route("/stream", stream)],
        middleware=[Middleware(GZipMiddleware, minimum_size=10)],
    )
    client = client_factory(wrap(inner))
    for path in ("/", "/stream"):
        response = await client.get(path, headers={"accept-encoding": "gzip"})
        assert response.headers["content-encoding"] == "gzip"
        assert b"<rai-store-widget" in response.content  # httpx decoded it
        assert b"rai-placeholder" not in response.content


async def test_a_decompression_bomb_is_sent_unchanged_in_bounded_memory(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    import tracemalloc

    from rai_middleware._codec import MAX_INFLATED

    page = b'<rai-placeholder widget="store"/>' + b" " * (4 * MAX_INFLATED)
    bomb = gzip.compress(page)  # a few dozen KB that inflate to 64 MB
    app = html_app(bomb, headers=[(b"content-encoding", b"gzip")])
    tracemalloc.start()
    try:
        with caplog.at_level(logging.ERROR, logger="rai_middleware"):
            messages = await call_asgi(wrap(app), http_scope())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body_of(messages) == bomb  # unchanged: still the app's own valid gzip
    # Bounded by the cap (zlib's output buffer may briefly take twice it), not by the page,
    # which inflates to four times the cap.
    assert peak < 2.5 * MAX_INFLATED
    assert "inflates past" in caplog.text
