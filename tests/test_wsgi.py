"""The WSGI middleware: same behaviours, synchronous client, threads."""

from __future__ import annotations

import gzip
import json
import logging
import re
import threading
import time
import wsgiref.simple_server
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from rai_middleware import ConfigurationError, ReturningAIWSGIMiddleware
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID, USER

PAGE = (
    b"<html><body><!-- <rai-placeholder widget=store></rai-placeholder> -->"
    b'<rai-placeholder widget="channel" channel-id="abc">fallback</rai-placeholder>'
    b'<rai-placeholder widget="store"/></body></html>'
)
ANONYMOUS = (
    b"<html><body><!-- <rai-placeholder widget=store></rai-placeholder> -->fallback</body></html>"
)


class Upstream:
    """A counting stand-in for the token endpoint, as an httpx.MockTransport handler."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.fail: httpx.Response | Exception | None = None
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.calls += 1
            number = self.calls
        if self.delay:
            time.sleep(self.delay)
        if isinstance(self.fail, Exception):
            raise self.fail
        if self.fail is not None:
            return self.fail
        user = json.loads(request.content)["userIdentifiers"].get("data-customer-id", "?")
        return httpx.Response(200, json={"data": {"embedToken": f"tok-{user}-{number}"}})


def wsgi_page(
    body: bytes | list[bytes] | Callable[[], Iterator[bytes]],
    *,
    status: str = "200 OK",
    headers: list[tuple[str, str]] | None = None,
) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response(status, [("Content-Type", "text/html; charset=utf-8"), *(headers or [])])
        if callable(body):
            return body()
        return [body] if isinstance(body, bytes) else body

    return app


def wrap(app: Any, upstream: Upstream | None = None, **options: Any) -> ReturningAIWSGIMiddleware:
    options.setdefault("community_id", COMMUNITY_ID)
    options.setdefault("access_id", ACCESS_ID)
    options.setdefault("access_key", ACCESS_KEY)
    options.setdefault("identify", lambda environ: dict(USER))
    client = httpx.Client(transport=httpx.MockTransport(upstream or Upstream()))
    return ReturningAIWSGIMiddleware(app, http_client=client, **options)


def call(
    app: Any, path: str = "/", method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[str, list[tuple[str, str]], bytes]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "HTTP_HOST": "testserver",
        "wsgi.url_scheme": "http",
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None):
        started.append((status, response_headers))
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
    assert len(started) == 1
    return started[0][0], started[0][1], body


def header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]


def test_signed_in_page_gets_widgets_with_exact_content_length() -> None:
    upstream = Upstream()
    status, headers, body = call(wrap(wsgi_page(PAGE), upstream))
    assert status == "200 OK"
    assert body.count(b'embed-token="tok-c-42-1"') == 2
    assert (
        b'<div id="returning-ai-widget-1"><rai-channel-widget community-id="community-123" ' in body
    )
    assert header(headers, "content-length") == [str(len(body))]
    assert header(headers, "cache-control") == ["private, no-store"]
    assert upstream.calls == 1


def test_anonymous_gets_fallback_without_upstream_call() -> None:
    upstream = Upstream()
    _, _, body = call(wrap(wsgi_page(PAGE), upstream, identify=lambda e: None))
    assert body == ANONYMOUS
    assert upstream.calls == 0


def test_default_identify_reads_remote_user() -> None:
    upstream = Upstream()
    middleware = wrap(wsgi_page(PAGE), upstream, identify=None)
    _, _, anonymous = call(middleware)
    assert anonymous == ANONYMOUS

    def with_user(environ: dict[str, Any], start_response: Any) -> Any:
        environ["REMOTE_USER"] = "bob"
        return middleware(environ, start_response)

    _, _, body = call(with_user)
    assert b'embed-token="tok-bob-1"' in body


def test_non_candidates_pass_through_as_the_apps_own_iterable() -> None:
    marker = [b'{"a": 1}']

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/json")])
        return marker

    middleware = wrap(app)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"}
    assert middleware(environ, lambda *a: lambda d: None) is marker


@pytest.mark.parametrize("status", ["404 Not Found", "304 Not Modified", "500 Oops"])
def test_non_200_pages_are_untouched(status: str) -> None:
    _, _, body = call(wrap(wsgi_page(PAGE, status=status)))
    assert body == PAGE


def test_head_passes_through() -> None:
    upstream = Upstream()
    _, _, body = call(wrap(wsgi_page(PAGE), upstream), method="HEAD")
    assert body == PAGE
    assert upstream.calls == 0


def test_page_without_placeholder_is_byte_identical_with_headers() -> None:
    app = wsgi_page(b"<p>plain</p>", headers=[("ETag", '"x"'), ("Content-Length", "12")])
    assert call(wrap(app)) == call(app)


def test_streamed_generator_is_rewritten_and_closed() -> None:
    closed = []

    def chunks() -> Iterator[bytes]:
        try:
            for start in range(0, len(PAGE), 7):
                yield PAGE[start : start + 7]
        finally:
            closed.append(True)

    _, headers, body = call(wrap(wsgi_page(chunks)))
    assert body.count(b"embed-token=") == 2
    assert header(headers, "content-length") == []
    assert closed == [True]


def test_generator_app_that_calls_start_response_lazily() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        yield PAGE

    _, _, body = call(wrap(app))
    assert body.count(b"embed-token=") == 2


def test_iterable_close_is_called_even_when_the_client_stops_early() -> None:
    class Body:
        closed = False

        def __iter__(self) -> Iterator[bytes]:
            yield b"<p>a</p>"
            yield b'<rai-placeholder widget="store"/>'

        def close(self) -> None:
            Body.closed = True

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/html")])
        return Body()

    middleware = wrap(app)
    result = middleware(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"},
        lambda *a: lambda d: None,
    )
    iterator = iter(result)
    next(iterator)
    result.close()  # type: ignore[attr-defined]
    assert Body.closed


def test_write_callable_is_passed_through_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    written: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [("Content-Type", "text/html")])
        write(b'<rai-placeholder widget="store"/>')
        return []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return written.append

    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        result = wrap(app)(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"},
            start_response,
        )
        assert b"".join(result) == b""
    assert written == [b'<rai-placeholder widget="store"/>']
    assert "write() callable" in caplog.text


def test_gzip_page_is_rewritten() -> None:
    app = wsgi_page(gzip.compress(PAGE), headers=[("Content-Encoding", "gzip")])
    _, headers, body = call(wrap(app))
    assert gzip.decompress(body).count(b"embed-token=") == 2
    assert header(headers, "content-length") == [str(len(body))]


def test_upstream_failure_serves_fallback() -> None:
    upstream = Upstream()
    upstream.fail = httpx.Response(500)
    _, _, body = call(wrap(wsgi_page(PAGE), upstream))
    assert body == ANONYMOUS
    upstream.fail = httpx.ConnectError("refused")
    _, _, body = call(wrap(wsgi_page(PAGE), upstream))
    assert body == ANONYMOUS


def test_single_flight_across_threads() -> None:
    upstream = Upstream(delay=0.05)
    middleware = wrap(wsgi_page(PAGE), upstream)
    with ThreadPoolExecutor(max_workers=32) as pool:
        bodies = list(pool.map(lambda _: call(middleware)[2], range(100)))
    assert upstream.calls == 1
    assert all(body.count(b'embed-token="tok-c-42-1"') == 2 for body in bodies)


def test_different_users_never_share_across_threads() -> None:
    upstream = Upstream(delay=0.005)
    middleware = wrap(
        wsgi_page(PAGE),
        upstream,
        identify=lambda environ: {"data-customer-id": environ["PATH_INFO"].strip("/")},
    )
    paths = [f"/user{n % 10}" for n in range(200)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda path: (path, call(middleware, path)[2]), paths))
    for path, body in results:
        tokens = set(re.findall(rb'embed-token="tok-([^"-]*)-', body))
        assert tokens == {path.strip("/").encode()}
    assert upstream.calls == 10


def test_refresh_endpoint_status_codes() -> None:
    middleware = wrap(wsgi_page(PAGE))
    _, _, body = call(middleware)
    ticket = re.search(rb'data-rai-ticket="([^"]+)"', body)
    assert ticket is not None
    good = {"X-RAI-Ticket": ticket.group(1).decode()}
    status, headers, answer = call(middleware, "/_rai/embed-token", "POST", good)
    assert status == "200 OK"
    assert json.loads(answer)["embedToken"] == "tok-c-42-1"
    assert header(headers, "cache-control") == ["no-store"]
    assert call(middleware, "/_rai/embed-token", "GET", good)[0].startswith("405")
    cross = {**good, "Sec-Fetch-Site": "cross-site"}
    assert call(middleware, "/_rai/embed-token", "POST", cross)[0].startswith("403")
    assert call(middleware, "/_rai/embed-token", "POST", {})[0].startswith("403")
    anonymous = wrap(wsgi_page(PAGE), identify=lambda e: None)
    assert call(anonymous, "/_rai/embed-token", "POST", good)[0].startswith("401")
    broken = Upstream()
    broken.fail = httpx.Response(500)
    failing = wrap(wsgi_page(PAGE), broken)
    failing.core = failing.driver.core = middleware.core
    assert call(failing, "/_rai/embed-token", "POST", good)[0].startswith("503")


def test_async_identify_is_refused_with_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    async def identify(environ: Any) -> dict[str, str]:
        return dict(USER)

    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        _, _, body = call(wrap(wsgi_page(PAGE), identify=identify))
    assert body == ANONYMOUS
    assert "pass a plain function" in caplog.text


def test_bad_http_client_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"httpx\.Client"):
        ReturningAIWSGIMiddleware(
            wsgi_page(PAGE),
            community_id="c",
            access_id="i",
            access_key="k",
            http_client=object(),  # type: ignore[arg-type]
        )


def test_real_wsgiref_server_serves_rewritten_pages() -> None:
    middleware = wrap(wsgi_page(PAGE))

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = wsgiref.simple_server.make_server(
        "127.0.0.1",
        0,
        middleware,  # type: ignore[arg-type]  # typeshed's StartResponse is stricter
        handler_class=Quiet,
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}") as client:
            response = client.get("/")
        assert response.headers["content-length"] == str(len(response.content))
        assert response.content.count(b"embed-token=") == 2
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    middleware.close()


def test_app_iterable_is_closed_even_when_the_server_never_iterates() -> None:
    closed = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b'<rai-placeholder widget="store"/>'

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/html")])
        return Body()

    result = wrap(app)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.url_scheme": "http"},
        lambda *a: lambda d: None,
    )
    result.close()  # type: ignore[attr-defined]
    assert closed == [True]


def test_keep_warm_is_refused_on_the_wsgi_side() -> None:
    with pytest.raises(ConfigurationError, match="keep_warm"):
        wrap(wsgi_page(PAGE), keep_warm=60)


def test_a_trickling_upstream_cannot_hold_a_page_past_the_timeout() -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n")
            while not stop.wait(0.2):  # one byte at a time, never the whole answer
                try:
                    connection.sendall(b" ")
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    middleware = ReturningAIWSGIMiddleware(
        wsgi_page(PAGE),
        community_id=COMMUNITY_ID,
        access_id=ACCESS_ID,
        access_key=ACCESS_KEY,
        identify=lambda environ: dict(USER),
        api_base_url=f"http://127.0.0.1:{listener.getsockname()[1]}",
        timeout=1.0,
    )
    started = time.monotonic()
    try:
        _, _, body = call(middleware)
    finally:
        stop.set()
        middleware.close()
        thread.join(5)
        listener.close()
    assert body == ANONYMOUS
    assert time.monotonic() - started < 2.0
