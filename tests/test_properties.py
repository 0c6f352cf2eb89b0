"""Properties of the whole middleware: any chunking gives the same page, memory stays bounded."""

from __future__ import annotations

import asyncio
import itertools
import tracemalloc
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TOKEN_URL, Message, body_of, call_asgi, html_app, http_scope, wrap

PLACEHOLDERS = [
    b'<rai-placeholder widget="store">fallback</rai-placeholder>',
    b'<RAI-PLACEHOLDER WIDGET="channel" channel-id="c">fb</RAI-PLACEHOLDER>',
    b"<rai-placeholder widget='custom' widget-id='x' />",
    b'<rai-placeholder widget="nope">unknown</rai-placeholder>',
]
OTHER = [
    b"<p>text &amp; more</p>",
    b"<div class='a'>x</div>",
    b"<!-- <rai-placeholder widget=store></rai-placeholder> -->",
    b"<script>var s = '<rai-placeholder widget=\"store\"/>';</script>",
    b"<style>.x{}</style>",
    b"<textarea><rai-placeholder widget=store/></textarea>",
    b"caf\xc3\xa9 \xe2\x82\xac",
    b"< not a tag > < ",  # a "<" that opens nothing (a space follows it)
]


class _FixedTickets:
    def issue(self, key: str) -> str:
        return "TICKET"


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(cut, 0), len(data)) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    parts=st.lists(st.sampled_from(PLACEHOLDERS + OTHER), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8),
    signed_in=st.booleans(),
)
def test_any_chunking_gives_the_one_message_page(
    parts: list[bytes], cuts: list[int], signed_in: bool
) -> None:
    page = b"".join(parts)
    chunks = _split(page, cuts)

    async def run() -> tuple[bytes, bytes]:
        with respx.mock:
            respx.post(TOKEN_URL).mock(
                return_value=httpx.Response(200, json={"data": {"embedToken": "T"}})
            )
            results = []
            for body in (page, chunks):
                middleware: Any = wrap(
                    html_app(body), identify=lambda s: {"data-x": "1"} if signed_in else None
                )
                middleware.core.tickets = _FixedTickets()
                results.append(body_of(await call_asgi(middleware, http_scope())))
        return results[0], results[1]

    whole, streamed = asyncio.run(run())
    assert streamed == whole
    # Every byte outside placeholders survives: with no placeholder, the page is untouched.
    if not any(part in PLACEHOLDERS for part in parts):
        assert whole == page


@pytest.mark.anyio
async def test_50_mb_streamed_page_is_rewritten_in_bounded_memory(
    upstream: respx.MockRouter,
) -> None:
    chunk = 1024 * 1024
    count = 50
    placeholder = b'<rai-placeholder widget="store">fallback</rai-placeholder>'
    filler = b"<p>" + b"x" * 1000 + b"</p>\n"

    def make_chunk(n: int) -> bytes:
        body = filler * (chunk // len(filler))
        # A placeholder in every chunk, some of them cut across the chunk boundary.
        cut = len(body) - 20 if n % 2 else len(body) // 2
        return (body[:cut] + placeholder + body[cut:])[:chunk]

    # Built before measuring, so that the peak is the middleware's, not the app's.
    chunks = [make_chunk(0), make_chunk(1)]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        for n in range(count):
            await send({"type": "http.response.body", "body": chunks[n % 2], "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    received = 0
    widgets = 0
    tail = b""

    async def send(message: Message) -> None:
        nonlocal received, widgets, tail
        if message["type"] == "http.response.body":
            data = message.get("body", b"")
            received += len(data)
            # Counted without copying the body (the peak is the middleware's); a widget cut
            # across two messages is found in the small seam of both.
            widgets += data.count(b"<rai-store-widget")
            widgets += (tail + data[:32]).count(b"<rai-store-widget")
            tail = data[-32:]

    async def receive() -> Message:  # pragma: no cover - never read
        return {"type": "http.disconnect"}

    middleware = wrap(app)
    await call_asgi(wrap(html_app(b"<rai-placeholder widget='store'/>")), http_scope())  # warm
    tracemalloc.start()
    try:
        await middleware(http_scope(), receive, send)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received > count * chunk * 0.9
    assert widgets >= count - 1
    # The app's own chunk (1 MB) plus the scanner's lowered copy and the output: a few
    # chunks at most, never the page.
    print(f"tracemalloc peak while streaming 50 MB: {peak / 1e6:.2f} MB")
    assert peak < 5 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"
