"""A misconfigured ASGI middleware that a framework builds on its first call (Starlette and
FastAPI do, in the lifespan) stops the server at startup instead of serving 500s."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from rai_middleware import ConfigurationError, ReturningAIMiddleware
from rai_middleware._misconfigured import Misconfigured
from tests.conftest import ACCESS_KEY, Message

pytestmark = pytest.mark.server

MISSING = (
    "3 configuration problems:\n"
    "  - community_id is required in mode='access_key': pass community_id=... to the "
    "middleware or set the RAI_COMMUNITY_ID environment variable\n"
    "  - access_id is required in mode='access_key': pass access_id=... to the middleware "
    "or set the RAI_ACCESS_ID environment variable\n"
    "  - access_key is required in mode='access_key': pass access_key=... to the middleware "
    "or set the RAI_ACCESS_KEY environment variable"
)


def fastapi_app(**options: Any) -> FastAPI:
    app = FastAPI()
    app.add_middleware(ReturningAIMiddleware, **options)

    @app.get("/api")
    def api() -> dict[str, int]:
        return {"ok": 1}  # pragma: no cover - the middleware fails first

    return app


def run_uvicorn(
    app: Any, lifespan: Literal["auto", "on", "off"]
) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # log_config=None: uvicorn's records reach the root logger, where caplog reads them.
    config = uvicorn.Config(app, lifespan=lifespan, log_config=None, access_log=False)
    server = uvicorn.Server(config)

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except SystemExit as stop:  # uvicorn's way to say "startup failed"
            exits.append(stop.code)
        finally:
            sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server, thread, url


#: The exit codes of the uvicorn threads that exited.
exits: list[object] = []


def rai_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "rai_middleware" and r.levelno >= logging.ERROR
    ]


def test_uvicorn_lifespan_auto_refuses_to_start_a_misconfigured_fastapi_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    exits.clear()
    server, thread, _ = run_uvicorn(fastapi_app(), lifespan="auto")
    thread.join(15)
    assert not thread.is_alive()
    assert not server.started
    assert exits == [3]  # uvicorn's STARTUP_FAILURE
    assert rai_errors(caplog) == [
        f"rai-middleware is misconfigured, so the app cannot serve: {MISSING}"
    ]
    uvicorn_errors = [r.getMessage() for r in caplog.records if r.name == "uvicorn.error"]
    assert f"rai-middleware: {MISSING}" in uvicorn_errors
    assert "Application startup failed. Exiting." in uvicorn_errors
    assert "ASGI 'lifespan' protocol appears unsupported." not in uvicorn_errors


def test_without_lifespan_every_request_fails_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    server, thread, url = run_uvicorn(fastapi_app(), lifespan="off")
    try:
        deadline = time.monotonic() + 10
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        # A connection each: uvicorn closes one after an app's exception.
        statuses = [httpx.get(f"{url}/api").status_code for _ in range(3)]
    finally:
        server.should_exit = True
        thread.join(10)
        assert statuses == [500, 500, 500]
    assert rai_errors(caplog) == [
        f"rai-middleware is misconfigured, so the app cannot serve: {MISSING}"
    ]
    failures = [
        r for r in caplog.records if r.getMessage().startswith("Exception in ASGI application")
    ]
    assert len(failures) == 3
    assert all(r.exc_info and isinstance(r.exc_info[1], ConfigurationError) for r in failures)


async def inner(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
    pass


def test_built_outside_an_event_loop_the_error_raises_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ReturningAIMiddleware(inner)
    assert str(caught.value) == MISSING


@pytest.mark.anyio
async def test_built_directly_in_a_running_loop_the_error_raises_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ReturningAIMiddleware(inner)
    assert str(caught.value) == MISSING


@pytest.mark.anyio
async def test_built_by_build_middleware_stack_the_error_waits_for_the_first_call() -> None:
    def build_middleware_stack() -> ReturningAIMiddleware:
        return ReturningAIMiddleware(inner)

    middleware = build_middleware_stack()
    assert isinstance(middleware._misconfigured, Misconfigured)
    with pytest.raises(ConfigurationError) as caught:
        await middleware({"type": "http"}, None, None)
    assert str(caught.value) == MISSING
    assert len(caught.value.problems) == 3


def test_build_middleware_stack_outside_a_loop_raises_at_once() -> None:
    def build_middleware_stack() -> ReturningAIMiddleware:
        return ReturningAIMiddleware(inner)

    with pytest.raises(ConfigurationError):
        build_middleware_stack()


@pytest.mark.anyio
async def test_the_stand_in_fails_startup_without_showing_a_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = fastapi_app(community_id="c", access_id="i", access_key=ACCESS_KEY, timeout=-1)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    assert sent == [
        {
            "type": "lifespan.startup.failed",
            "message": "rai-middleware: timeout must be greater than 0, got -1",
        }
    ]
    for scope_type in ("http", "websocket"):
        with pytest.raises(ConfigurationError, match="timeout must be greater than 0"):
            await app({"type": scope_type, "path": "/api"}, receive, send)
    assert rai_errors(caplog) == [
        "rai-middleware is misconfigured, so the app cannot serve: "
        "timeout must be greater than 0, got -1"
    ]
    assert ACCESS_KEY not in caplog.text


@pytest.mark.anyio
async def test_a_lifespan_message_other_than_startup_gets_no_answer() -> None:
    stand_in = Misconfigured(ConfigurationError("x"))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "lifespan.shutdown"}

    async def send(message: Message) -> None:  # pragma: no cover - never called
        sent.append(message)

    await stand_in({"type": "lifespan"}, receive, send)
    assert sent == []


@pytest.mark.anyio
async def test_without_frame_introspection_the_error_raises_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("rai_middleware._misconfigured.inspect.currentframe", lambda: None)

    def build_middleware_stack() -> ReturningAIMiddleware:
        return ReturningAIMiddleware(inner)

    with pytest.raises(ConfigurationError):
        build_middleware_stack()
