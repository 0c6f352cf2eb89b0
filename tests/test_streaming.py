"""Streamed bodies and the ASGI protocol's edge cases, through a strict raw harness."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
import respx

from tests.conftest import (
    Message,
    body_of,
    call_asgi,
    headers_of,
    html_app,
    http_scope,
    wrap,
)

pytestmark = pytest.mark.anyio

PAGE = (
    b"<html><body><!-- <rai-placeholder widget=store></rai-placeholder> -->\n"
    b"<script>var s = '<rai-placeholder widget=\"store\"></rai-placeholder>';</script>\n"
    b'<rai-placeholder widget="channel" channel-id="abc">fallback one</rai-placeholder>\n'
    b"<p>" + b"x" * 300 + b"</p>\n"
    b'<rai-placeholder widget="store" />\n'
    b"</body></html>"
)


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class _FixedTickets:
    def issue(self, key: str) -> str:
        return "TICKET"


def pinned(app: Any, **options: Any) -> Any:
    middleware: Any = wrap(app, **options)
    middleware.core.tickets = _FixedTickets()
    return middleware


@pytest.mark.parametrize("size", [1, 2, 7, 16, 64, 1000])
async def test_streamed_page_equals_one_message_page(upstream: respx.MockRouter, size: int) -> None:
    whole = body_of(await call_asgi(pinned(html_app(PAGE)), http_scope()))
    middleware = pinned(html_app(chunked(PAGE, size), content_length=False))
    streamed = await call_asgi(middleware, http_scope())
    assert body_of(streamed).replace(b"tok-2", b"tok-1") == whole
    assert upstream["token"].call_count == 2  # one per middleware instance: one per response
    # ... and the stream was not buffered into one message.
    bodies = [m for m in streamed if m["type"] == "http.response.body"]
    assert len(bodies) > 1 or size >= len(PAGE)


async def test_streamed_page_drops_content_length_and_is_private_for_signed_in(
    upstream: respx.MockRouter,
) -> None:
    app = html_app(
        [b"<p>no placeholder in the first chunk</p>", PAGE, b"<p>tail</p>"],
        headers=[(b"etag", b"x")],
        content_length=False,
    )
    headers = headers_of(await call_asgi(wrap(app), http_scope()))
    names = [name for name, _ in headers]
    assert b"content-length" not in names
    assert b"transfer-encoding" not in names
    assert b"etag" not in names
    assert (b"cache-control", b"private, no-store") in headers


async def test_streamed_page_for_anonymous_drops_validators_and_varies_on_cookie(
    upstream: respx.MockRouter,
) -> None:
    app = html_app(
        [b"<p>first</p>", b"<p>second</p>", b"<p>third</p>"],
        headers=[(b"etag", b"x")],
        content_length=False,
    )
    messages = await call_asgi(wrap(app, identify=lambda s: None), http_scope())
    # A later chunk could have held a placeholder (a fallback for this visitor, a widget for
    # a signed-in one): the app's ETag would let a browser revalidate into the wrong page.
    assert headers_of(messages) == [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"vary", b"Cookie, Authorization"),
    ]
    assert body_of(messages) == b"<p>first</p><p>second</p><p>third</p>"


async def test_first_bytes_of_a_stream_leave_before_the_app_finishes(
    upstream: respx.MockRouter,
) -> None:
    release = asyncio.Event()
    sent: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        await send({"type": "http.response.body", "body": b"<p>head</p>", "more_body": True})
        await send({"type": "http.response.body", "body": b"<p>more</p>", "more_body": True})
        await release.wait()
        await send({"type": "http.response.body", "body": b"<p>tail</p>"})

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:  # pragma: no cover - never read
        return {"type": "http.disconnect"}

    task = asyncio.create_task(wrap(app)(http_scope(), receive, send))
    for _ in range(100):
        if len(sent) >= 3:
            break
        await asyncio.sleep(0.001)
    # Without a Content-Length, each message's safe bytes leave as it arrives.
    assert [m["type"] for m in sent] == [
        "http.response.start",
        "http.response.body",
        "http.response.body",
    ]
    assert body_of(sent) == b"<p>head</p><p>more</p>"
    release.set()
    await task
    assert body_of(sent) == b"<p>head</p><p>more</p><p>tail</p>"


@pytest.mark.parametrize("page", [PAGE, b"<p>no placeholder</p>"])
async def test_body_then_empty_last_message_is_handled_as_a_whole_page(
    upstream: respx.MockRouter, page: bytes
) -> None:
    """Django's ASGI handler and Quart send a whole page as [body, more] + [b"", last]."""
    app = html_app([page, b""], headers=[(b"etag", b'"v1"'), (b"cache-control", b"max-age=60")])
    messages = await call_asgi(
        wrap(app, identify=lambda s: {"data-customer-id": "c"}), http_scope()
    )
    body = body_of(messages)
    lengths = [value for name, value in headers_of(messages) if name == b"content-length"]
    assert lengths == [str(len(body)).encode()]
    if page == PAGE:
        assert b"embed-token" in body
    else:
        untouched = await call_asgi(app, http_scope())
        assert body_of(messages) == body_of(untouched)
        assert headers_of(messages) == headers_of(untouched)


async def test_token_is_minted_once_per_response_and_never_without_placeholder(
    upstream: respx.MockRouter,
) -> None:
    await call_asgi(wrap(html_app(chunked(b"<p>plain</p>" * 100, 10))), http_scope())
    assert upstream["token"].call_count == 0
    middleware = wrap(html_app(chunked(PAGE * 3, 5)))
    await call_asgi(middleware, http_scope())
    assert upstream["token"].call_count == 1


async def test_body_and_more_body_keys_may_be_absent_and_bodies_may_be_memoryviews(
    upstream: respx.MockRouter,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": memoryview(b'<rai-placeholder widget="store"'),
                "more_body": True,
            }
        )
        await send({"type": "http.response.body", "body": bytearray(b"/>"), "more_body": True})
        await send({"type": "http.response.body"})

    body = body_of(await call_asgi(pinned(app), http_scope()))
    assert body.startswith(b'<div id="returning-ai-widget-1"><rai-store-widget ')


async def test_http_response_debug_before_start_is_forwarded(upstream: respx.MockRouter) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.debug", "info": {"template": "x"}})
        await html_app(b'<rai-placeholder widget="store"/>')(scope, receive, send)

    messages = await call_asgi(wrap(app), http_scope())
    assert [m["type"] for m in messages] == [
        "http.response.debug",
        "http.response.start",
        "http.response.body",
    ]


async def test_pathsend_extension_is_hidden_from_the_app_on_candidate_requests(
    upstream: respx.MockRouter,
) -> None:
    seen: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope["extensions"]))
        await html_app(b'<rai-placeholder widget="store"/>')(scope, receive, send)

    scope = http_scope()
    scope["extensions"] = {"http.response.pathsend": {}, "http.response.zerocopysend": {}, "x": {}}
    messages = await call_asgi(wrap(app), scope)
    assert seen == [{"x": {}}]
    assert scope["extensions"] == {
        "http.response.pathsend": {},
        "http.response.zerocopysend": {},
        "x": {},
    }
    assert body_of(messages).startswith(b'<div id="returning-ai-widget-1">')


async def test_pathsend_sent_anyway_flushes_the_held_start_first(
    upstream: respx.MockRouter,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        await send({"type": "http.response.pathsend", "path": "/tmp/page.html"})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:  # pragma: no cover - never read
        return {"type": "http.disconnect"}

    await wrap(app)(http_scope(), receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.pathsend"]
    assert sent[0]["headers"] == [(b"content-type", b"text/html")]


async def test_trailers_follow_the_rewritten_body(upstream: respx.MockRouter) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "trailers": True,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        await send(
            {
                "type": "http.response.body",
                "body": b'<rai-placeholder widget="store"/>',
                "more_body": True,
            }
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"x-checksum", b"1")],
                "more_trailers": False,
            }
        )

    messages = await call_asgi(wrap(app), http_scope())
    assert messages[0]["trailers"] is True
    assert messages[-1] == {
        "type": "http.response.trailers",
        "headers": [(b"x-checksum", b"1")],
        "more_trailers": False,
    }
    assert body_of(messages).startswith(b'<div id="returning-ai-widget-1">')


async def test_second_layer_does_not_rewrite_again(upstream: respx.MockRouter) -> None:
    upstream["token"].mock(return_value=httpx.Response(200, json={"data": {"embedToken": "t"}}))
    inner = pinned(html_app(PAGE))
    once = body_of(await call_asgi(inner, http_scope()))
    outer = pinned(pinned(html_app(PAGE)))
    twice = body_of(await call_asgi(outer, http_scope()))
    assert twice == once
    assert b'rai-placeholder widget="channel"' not in twice
    assert upstream["token"].call_count == 2  # one per middleware instance, not per layer pass


async def test_inner_layer_with_another_tag_still_rewrites_its_tag(
    upstream: respx.MockRouter,
) -> None:
    page = b'<rai-placeholder widget="store"/><my-tag widget="channel"/>'
    both = wrap(wrap(html_app(page), placeholder_tag="my-tag"))
    body = body_of(await call_asgi(both, http_scope()))
    assert b"<rai-placeholder" not in body
    assert b"<my-tag" not in body
    assert body.count(b"returning-ai-widget-1") == 2  # each layer numbers its own widgets


async def test_app_exception_before_start_propagates_and_nothing_is_sent(
    upstream: respx.MockRouter,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("view crashed")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:  # pragma: no cover
        return {"type": "http.disconnect"}

    with pytest.raises(RuntimeError, match="view crashed"):
        await wrap(app)(http_scope(), receive, send)
    assert sent == []


async def test_app_exception_after_start_held_sends_nothing(upstream: respx.MockRouter) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        raise RuntimeError("template crashed")

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:  # pragma: no cover
        return {"type": "http.disconnect"}

    with pytest.raises(RuntimeError, match="template crashed"):
        await wrap(app)(http_scope(), receive, send)
    assert sent == []  # so the server's or framework's 500 can still be sent


async def test_client_disconnect_oserror_propagates(upstream: respx.MockRouter) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        await send({"type": "http.response.body", "body": b"<p>a</p>", "more_body": True})
        await send({"type": "http.response.body", "body": b"<p>b</p>", "more_body": True})

    calls = 0

    async def send(message: Message) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("client went away")

    async def receive() -> Message:  # pragma: no cover
        return {"type": "http.disconnect"}

    with pytest.raises(OSError, match="client went away"):
        await wrap(app)(http_scope(), receive, send)


async def test_rendering_failure_fails_open_with_original_bytes(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rai_middleware._modes.access_key as access_key

    def broken(*args: Any, **kwargs: Any) -> str:
        raise ValueError("renderer bug")

    monkeypatch.setattr(access_key, "_element", broken)
    for body in (PAGE, chunked(PAGE, 50), [b"<p>lead</p>", *chunked(PAGE, 50)]):
        with caplog.at_level(logging.ERROR, logger="rai_middleware"):
            messages = await call_asgi(wrap(html_app(body)), http_scope())
        assert body_of(messages) == (PAGE if isinstance(body, bytes) else b"".join(body))
        assert "rewriting the page failed" in caplog.text
        caplog.clear()


async def test_scanner_failure_mid_stream_fails_open_without_losing_bytes(
    upstream: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rai_middleware._scanner import PlaceholderScanner

    original = PlaceholderScanner.feed
    calls = 0

    def flaky(self: PlaceholderScanner, data: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ValueError("scanner bug")
        return original(self, data)

    monkeypatch.setattr(PlaceholderScanner, "feed", flaky)
    chunks = chunked(PAGE, 40)
    app = html_app(chunks, content_length=False)
    messages = await call_asgi(wrap(app, identify=lambda s: None), http_scope())
    # The failure came before the first placeholder: every byte the app sent arrives, once,
    # in order, and the rest of the page passes through.
    assert body_of(messages) == b"".join(chunks)


async def test_oversized_placeholder_passes_through_with_a_warning(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    big = b'<rai-placeholder widget="store">' + b"y" * 5000 + b"</rai-placeholder>"
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        messages = await call_asgi(
            wrap(html_app(chunked(big, 100)), max_placeholder_size=1024), http_scope()
        )
    assert body_of(messages) == big
    assert "exceeded max_placeholder_size" in caplog.text


async def test_unterminated_placeholder_passes_through_with_a_warning(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    page = b'<p>x</p><rai-placeholder widget="store">never closed'
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        messages = await call_asgi(wrap(html_app(page)), http_scope())
    assert body_of(messages) == page
    assert "unterminated <rai-placeholder>" in caplog.text


async def test_latin1_page_keeps_every_byte_outside_placeholders(
    upstream: respx.MockRouter,
) -> None:
    page = b"<p>caf\xe9 \xa9</p><rai-placeholder widget='store' title='r\xe9sum\xe9'/><p>\xff</p>"
    app = html_app(page, content_type=b"text/html; charset=ISO-8859-1")
    body = body_of(await call_asgi(pinned(app), http_scope()))
    assert body.startswith(b"<p>caf\xe9 \xa9</p><div id=")
    assert b'title="r\xe9sum\xe9"' in body
    assert body.endswith(b"<p>\xff</p>")


async def test_windows_1252_page_writes_unencodable_characters_as_references(
    upstream: respx.MockRouter,
) -> None:
    page = "<rai-placeholder widget='store' title='&#x4e2d;\u20ac'/>".encode("cp1252")
    app = html_app(page, content_type=b"text/html; charset=windows-1252")
    body = body_of(await call_asgi(pinned(app), http_scope()))
    assert b'title="&#20013;\x80"' in body


@pytest.mark.parametrize(
    "label", [b"x-nope", b"ucs-2", b"unicode", b"UTF-16", b"utf-7", b"cp037", b"iso-2022-jp"]
)
async def test_a_charset_that_is_unknown_or_not_ascii_compatible_passes_through(
    upstream: respx.MockRouter, caplog: pytest.LogCaptureFixture, label: bytes
) -> None:
    page = '<rai-placeholder widget="store">fallback</rai-placeholder>'.encode("utf-16")
    app = html_app(page, content_type=b"text/html; charset=" + label)
    middleware = wrap(app)
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        for _ in range(3):
            assert await call_asgi(middleware, http_scope()) == await call_asgi(app, http_scope())
    # One warning per process, naming the label.
    assert caplog.text.count(f"in charset {label.decode()!r}") == 1
    assert upstream["token"].call_count == 0


@pytest.mark.parametrize("label", [b"shift_jis", b"windows-1252", b"latin1", b"gb18030"])
async def test_ascii_compatible_charsets_are_rewritten(
    upstream: respx.MockRouter, label: bytes
) -> None:
    app = html_app(
        b'<rai-placeholder widget="store"/>', content_type=b"text/html; charset=" + label
    )
    assert b'embed-token="tok-1"' in body_of(await call_asgi(pinned(app), http_scope()))


async def test_app_that_returns_mid_stream_still_gets_held_bytes_out(
    upstream: respx.MockRouter,
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        await send({"type": "http.response.body", "body": b"<p>a</p><rai-place", "more_body": True})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:  # pragma: no cover
        return {"type": "http.disconnect"}

    await wrap(app)(http_scope(), receive, send)
    assert body_of(sent) == b"<p>a</p><rai-place"
