from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, MutableMapping
from typing import Any

import httpx
import pytest
import respx

from rai_middleware import ReturningAIMiddleware

# The fake_returning_ai fixture, as users get it, but imported here rather than loaded by its
# pytest11 entry point (pyproject's addopts turn that off for this suite): an entry point is
# loaded before pytest-cov starts, and would import the whole package unmeasured.
from rai_middleware.pytest_plugin import fake_returning_ai  # noqa: F401
from tests import services

COMMUNITY_ID = "community-123"
ACCESS_ID = "access-id-AAAAAAAAAAAAAAAAAAAA"
ACCESS_KEY = "access-key-SSSSSSSSSSSSSSSSSSSSSSSS"
SECRET_KEY = "secret-key-KKKKKKKKKKKKKKKKKKKKKKKK"
TOKEN_URL = "https://api-v2.returning.ai/v2/api/widget-access-keys/token"
USER = {"data-customer-id": "c-42", "data-email": "a@b.c"}

Message = MutableMapping[str, Any]


# -- system services: skips, their summary, the coverage gate ---------------------------------

#: Stash key: the services missing at the start of the run.
_MISSING = pytest.StashKey[list[str]]()
#: Tests skipped per missing service (``pytest_runtest_logreport`` has no config to stash in).
_skip_counts: dict[str, int] = {}


def pytest_configure(config: pytest.Config) -> None:
    missing = [] if services.require_all() else services.missing()
    config.stash[_MISSING] = missing
    _skip_counts.clear()
    # The gate (pyproject's fail_under) holds where every service runs its tests; without
    # one, a fresh machine's run would fail on coverage alone. An explicit
    # --cov-fail-under still wins.
    cov = _coverage_options(config)
    if missing and cov is not None and "--cov-fail-under" not in _given_options(config):
        cov.cov_fail_under = 0


def _coverage_options(config: pytest.Config) -> Any:
    """pytest-cov's options (it reads them from its own namespace, not ``config.option``),
    or None when it is not measuring this run."""
    plugin = config.pluginmanager.get_plugin("_cov")
    options = getattr(plugin, "options", None)
    if options is None or getattr(options, "no_cov", False):
        return None
    return options


def _given_options(config: pytest.Config) -> set[str]:
    """The options on the command line (not addopts), without their values."""
    return {arg.split("=", 1)[0] for arg in config.invocation_params.args}


def pytest_report_header(config: pytest.Config) -> list[str]:
    missing = config.stash[_MISSING]
    if services.require_all():
        return [f"rai-middleware: {services.REQUIRE_ALL_ENV}=1, so any skipped test fails"]
    if not missing:
        return []
    gate = " and the coverage gate is off" if _gate_lowered(config) else ""
    return [
        f"rai-middleware: {', '.join(missing)} missing: their tests skip{gate} "
        "(.ci/run installs every service and applies the gate)"
    ]


def _gate_lowered(config: pytest.Config) -> bool:
    cov = _coverage_options(config)
    return bool(config.stash[_MISSING]) and cov is not None and cov.cov_fail_under == 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report: pytest.TestReport = yield
    if report.skipped and services.require_all() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        reason = str(reason).removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"{reason} ({services.REQUIRE_ALL_ENV}=1: no test may skip)"
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(services.SKIP_PREFIX):
            name = reason.removeprefix(services.SKIP_PREFIX).split(",", 1)[0]
            _skip_counts[name] = _skip_counts.get(name, 0) + 1


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _skip_counts:
        return
    terminalreporter.section("skipped: system services missing")
    for name, count in _skip_counts.items():
        service = services.SERVICES[name]
        terminalreporter.write_line(
            f"{name}: {count} skipped ({service.used_for}); install it: {service.install}"
        )
    if _gate_lowered(config):
        terminalreporter.write_line(
            "the coverage gate was off for this run; .ci/run installs every service and applies it"
        )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_rai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "RAI_COMMUNITY_ID",
        "RAI_ACCESS_ID",
        "RAI_ACCESS_KEY",
        "RAI_SECRET_KEY",
        "RAI_API_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _plain_container_ids(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Container ids without the random per-middleware prefix (``returning-ai-widget-1``,
    ``-2``... counted per middleware), so that tests can assert exact bytes; like a fake
    clock. Tests of the prefix itself mark themselves ``random_container_ids``."""
    if request.node.get_closest_marker("random_container_ids") is None:
        monkeypatch.setattr("rai_middleware._render.new_prefix", lambda: "")


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    """Returning.AI's token endpoint, mocked; answers a fresh numbered token each call."""
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        counter = iter(range(1, 1_000_000))
        router.post(TOKEN_URL, name="token").mock(
            side_effect=lambda request: httpx.Response(
                200,
                json={
                    "success": True,
                    "data": {"embedToken": f"tok-{next(counter)}", "expiresIn": 900},
                },
            )
        )
        yield router


def wrap(app: Any, **options: Any) -> ReturningAIMiddleware:
    options.setdefault("community_id", COMMUNITY_ID)
    options.setdefault("access_id", ACCESS_ID)
    options.setdefault("access_key", ACCESS_KEY)
    options.setdefault("identify", lambda scope: dict(USER))
    return ReturningAIMiddleware(app, **options)


def html_app(
    body: bytes | Iterable[bytes],
    *,
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    content_type: bytes = b"text/html; charset=utf-8",
    content_length: bool = True,
) -> Callable[..., Any]:
    """A raw ASGI app sending ``body`` in one message, or each item of a list as a message."""
    chunks = [body] if isinstance(body, bytes) else list(body)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        response_headers = [(b"content-type", content_type), *(headers or [])]
        if content_length:
            response_headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        for index, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1}
            )

    return app


def http_scope(
    path: str = "/", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers if headers is not None else [(b"host", b"testserver")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "extensions": {},
        "state": {},
    }


async def call_asgi(app: Any, scope: dict[str, Any], request_body: bytes = b"") -> list[Message]:
    """Drive ``app`` with a strict harness: exactly one start before any body, nothing after
    the final body (but trailers), and the response complete when the app returns."""
    sent: list[Message] = []
    received = False

    async def receive() -> Message:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": request_body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}  # pragma: no cover

    async def send(message: Message) -> None:
        kind = message["type"]
        starts = [m for m in sent if m["type"] == "http.response.start"]
        finished = any(
            m["type"] == "http.response.body" and not m.get("more_body", False) for m in sent
        )
        if kind == "http.response.start":
            assert not starts, "a second http.response.start"
        elif kind == "http.response.body":
            assert starts, "a body before http.response.start"
            assert not finished, "a body after the final body"
        elif kind == "http.response.trailers":
            assert finished
        sent.append(message)

    await app(scope, receive, send)
    return sent


def body_of(messages: list[Message]) -> bytes:
    return b"".join(
        bytes(m.get("body", b"")) for m in messages if m["type"] == "http.response.body"
    )


def headers_of(messages: list[Message]) -> list[tuple[bytes, bytes]]:
    start = next(m for m in messages if m["type"] == "http.response.start")
    return list(start.get("headers") or [])


@pytest.fixture
async def client_factory() -> AsyncIterator[Callable[[Any], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(app: Any) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


class SecretSpy(logging.Handler):
    """Collects every log record formatted, from every logger, at every level."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


@pytest.fixture
def all_logs() -> Iterator[SecretSpy]:
    spy = SecretSpy()
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(spy)
    try:
        yield spy
    finally:
        root.removeHandler(spy)
        root.setLevel(old_level)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on 127.0.0.1 (a free port) in a thread."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runtime_script(
    *,
    ticket: str = "TICKET",
    token: str | None = None,
    expires_in: int = 0,
    nonce: str = "",
    sdk: str | None = "https://unpkg.com/@returningai/widget-sdk@1.5.1/dist/rai-widget.iife.js",
    sdk_tag: bool = True,
    frames: bool = False,
    endpoint: str = "/_rai/embed-token",
    community: str = COMMUNITY_ID,
    widgets_base: str = "",
    segments: dict[str, str] | None = None,
    integrity: str | None = None,
) -> bytes:
    """The browser runtime's ``<script>`` exactly as a page carries it (mode ``access_key``
    unless ``frames``): its configuration as JSON in ``data-rai``, the tag name's first
    letter escaped so that the page never spells ``rai-placeholder``."""
    from rai_middleware._options import DEFAULT_IFRAME_SEGMENTS, DEFAULT_WIDGETS
    from rai_middleware._runtime import RUNTIME_SCRIPT, RUNTIME_SCRIPT_FRAMES

    config: dict[str, object] = {
        "tag": "TAG",
        "frames": frames,
        "endpoint": endpoint,
        "field": "token" if frames else "embedToken",
        "ticket": ticket,
        "widgets": dict(DEFAULT_WIDGETS),
        "community": "" if frames else community,
        "sdk": None if frames else sdk,
        "integrity": integrity,
        "sdkTag": sdk_tag and not frames,
        "widgets_base": widgets_base,
        "segments": dict(segments or (DEFAULT_IFRAME_SEGMENTS if frames else {})),
    }
    if token is not None:
        config["token"] = token
        config["expiresIn"] = expires_in
    data = json.dumps(config, separators=(",", ":")).replace('"TAG"', '"\\u0072ai-placeholder"')
    nonce_attr = f' nonce="{html.escape(nonce)}"' if nonce else ""
    code = RUNTIME_SCRIPT_FRAMES if frames else RUNTIME_SCRIPT
    return f'<script{nonce_attr} data-rai="{html.escape(data)}">{code}</script>'.encode()
