"""The per-framework examples (examples/*_app.py): each one driven through its framework's test
client in-process, and each one run as a script, over a real socket on 127.0.0.1.

Every run goes through the same visit: anonymous fallbacks, sign in, widgets with the visitor's
own token (checked against the fake's signature and claims), the streamed page rewritten too,
the refresh endpoint with the page's ticket, no secret in any body or header, sign out.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from rai_middleware.testing import FakeReturningAI

ROOT = Path(__file__).resolve().parents[1]
EMAIL = "ada@example.com"
NAME = "Ada"
FALLBACK = '<p><a href="/login">Sign in</a> to join the chat.</p>'
ACCESS_KEY = "demo-access-key"
TOKENS = re.compile(r'embed-token="([^"]+)"')
TICKET = re.compile(r'data-rai-ticket="([^"]+)"')
CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')

#: Module to import for each example: outside CI, an example whose framework is missing is
#: skipped; in CI (env CI set) it must run.
FRAMEWORKS = {
    "fastapi_app": "fastapi",
    "starlette_app": "starlette",
    "django_app": "django",
    "flask_app": "flask_login",
    "litestar_app": "litestar",
    "quart_app": "quart",
}


def example(name: str) -> Any:
    if not os.environ.get("CI"):
        pytest.importorskip(FRAMEWORKS[name])
    return importlib.import_module(f"examples.{name}")


# -- one visit, whatever the client ----------------------------------------------------------


@dataclass
class Page:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


class Browser(Protocol):
    def get(self, path: str) -> Page: ...

    def post(
        self,
        path: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page: ...


def _lower(headers: Any) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in headers.items()}


class HttpxBrowser:
    """An ``httpx.Client``: a real server."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def get(self, path: str) -> Page:
        response = self.client.get(path)
        return Page(response.status_code, _lower(response.headers), response.content)

    def post(
        self,
        path: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page:
        response = self.client.post(path, data=data, headers=headers)
        return Page(response.status_code, _lower(response.headers), response.content)


class PortalBrowser:
    """An ``httpx.AsyncClient`` (ASGI apps in-process), driven from this thread through a
    portal: the client, the app and the middleware all live on the portal's event loop."""

    def __init__(self, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self.portal = portal
        self.client = client

    def get(self, path: str) -> Page:
        async def get() -> httpx.Response:
            return await self.client.get(path, follow_redirects=False)

        response = self.portal.call(get)
        return Page(response.status_code, _lower(response.headers), response.content)

    def post(
        self,
        path: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page:
        async def post() -> httpx.Response:
            return await self.client.post(path, data=data, headers=headers, follow_redirects=False)

        response = self.portal.call(post)
        return Page(response.status_code, _lower(response.headers), response.content)


class FlaskBrowser:
    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, path: str) -> Page:
        response = self.client.get(path)
        return Page(response.status_code, _lower(response.headers), response.get_data())

    def post(
        self,
        path: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page:
        response = self.client.post(path, data=dict(data or {}), headers=dict(headers or {}))
        return Page(response.status_code, _lower(response.headers), response.get_data())


class DjangoBrowser:
    def __init__(self, client: Any) -> None:
        self.client = client

    def _page(self, response: Any) -> Page:
        body = b"".join(response.streaming_content) if response.streaming else response.content
        return Page(response.status_code, _lower(response.headers), body)

    def get(self, path: str) -> Page:
        return self._page(self.client.get(path))

    def post(
        self,
        path: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page:
        return self._page(self.client.post(path, data=dict(data or {}), headers=headers))


class QuartBrowser:
    def __init__(self, portal: BlockingPortal, client: Any) -> None:
        self.portal = portal
        self.client = client

    def _call(self, method: str, path: str, **kwargs: Any) -> Page:
        async def call() -> Page:
            response = await getattr(self.client, method)(path, **kwargs)
            body = await response.get_data()
            return Page(response.status_code, _lower(response.headers), body)

        return self.portal.call(call)

    def get(self, path: str) -> Page:
        return self._call("get", path)

    def post(
        self,
        path: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page:
        return self._call("post", path, form=dict(data or {}), headers=dict(headers or {}))


def assert_no_secret(page: Page) -> None:
    everything = page.text + "\n".join(f"{k}: {v}" for k, v in page.headers.items())
    assert ACCESS_KEY not in everything
    assert "demo-access-id" not in everything


def csrf_field(page: Page) -> dict[str, str]:
    match = CSRF.search(page.text)
    return {"csrfmiddlewaretoken": match.group(1)} if match else {}


def visit(
    browser: Browser,
    customer_id: Callable[[], str],
    *,
    sees_stream_headers: bool = True,
    pages_have_length: bool = True,
    upstream: FakeReturningAI | None = None,
) -> None:
    """``upstream``: the fake the site talks to, when the test holds it (one mint per visit).
    ``sees_stream_headers`` False: a client that rebuilds headers for the whole body it
    collected (Quart's test client adds a Content-Length). ``pages_have_length`` False: a
    framework that sends every body as a stream (Quart: the body, then an empty last message),
    so that the middleware cannot know the rewritten length before sending the headers."""
    fake = FakeReturningAI()  # the same signing key as any other: it checks their tokens
    home = browser.get("/")
    assert home.status == 200, home.text
    assert FALLBACK in home.text
    assert "Not signed in" in home.text
    assert "embed-token" not in home.text
    assert "rai-placeholder" not in home.text

    form = browser.get("/login")
    assert form.status == 200
    signed_in = browser.post("/login", {"email": EMAIL, "name": NAME, **csrf_field(form)})
    assert signed_in.status in (302, 303), signed_in.text

    page = browser.get("/")
    assert page.status == 200
    assert f"Signed in as <strong>{NAME}</strong>" in page.text
    assert FALLBACK not in page.text
    assert "rai-placeholder" not in page.text
    tokens = TOKENS.findall(page.text)
    assert len(tokens) == 2 and tokens[0] == tokens[1], page.text
    token = html.unescape(tokens[0])
    claims = fake.decode(token)
    assert claims["data-email"] == EMAIL
    assert claims["data-customer-id"] == customer_id()
    assert page.headers["cache-control"] == "private, no-store"
    if pages_have_length:
        assert page.headers["content-length"] == str(len(page.body))
    assert_no_secret(page)

    streamed = browser.get("/stream")
    assert streamed.status == 200
    if sees_stream_headers:
        assert "content-length" not in streamed.headers
    assert streamed.headers["cache-control"] == "private, no-store"
    assert [html.unescape(t) for t in TOKENS.findall(streamed.text)] == [token, token]
    assert "rai-placeholder" not in streamed.text
    assert_no_secret(streamed)

    ticket = TICKET.search(page.text)
    assert ticket is not None
    refresh_headers = {"X-RAI-Ticket": html.unescape(ticket.group(1))}
    refresh = browser.post("/_rai/embed-token", headers=refresh_headers)
    assert refresh.status == 200, refresh.text
    assert json.loads(refresh.body)["embedToken"] == token
    assert refresh.headers["cache-control"] == "no-store"
    assert_no_secret(refresh)
    assert browser.post("/_rai/embed-token").status == 403  # no ticket

    signed_out = browser.post("/logout", csrf_field(page))
    assert signed_out.status in (302, 303), signed_out.text
    after = browser.get("/")
    assert FALLBACK in after.text
    assert "embed-token" not in after.text
    assert browser.post("/_rai/embed-token", headers=refresh_headers).status == 401
    if upstream is not None:
        # One mint for the whole visit: the pages, the stream and the refresh share it.
        assert upstream.calls == 1
        assert [r["userIdentifiers"]["data-email"] for r in upstream.requests] == [EMAIL]


def hashed_customer_id(module: Any) -> Callable[[], str]:
    return lambda: str(module.customer_id_for(EMAIL))


# -- in-process, through each framework's own client -------------------------------------------


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal(backend="asyncio") as running:
        yield running


@pytest.mark.parametrize("name", ["fastapi_app", "starlette_app"])
def test_starlette_family_in_process(name: str, portal: BlockingPortal) -> None:
    module = example(name)
    upstream = FakeReturningAI().client()
    app = module.build_app(FakeReturningAI.base_url, http_client=upstream)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    try:
        visit(PortalBrowser(portal, client), hashed_customer_id(module))
    finally:
        portal.call(client.aclose)
        portal.call(upstream.aclose)


def test_litestar_in_process(portal: BlockingPortal) -> None:
    module = example("litestar_app")
    from litestar.testing import AsyncTestClient

    upstream = FakeReturningAI().client()
    app = module.build_app(FakeReturningAI.base_url, http_client=upstream)
    try:
        # AsyncTestClient runs the lifespan too: through ReturningAIMiddleware into Litestar.
        with portal.wrap_async_context_manager(AsyncTestClient(app)) as client:
            visit(PortalBrowser(portal, client), hashed_customer_id(module))
    finally:
        portal.call(upstream.aclose)


def test_quart_in_process(portal: BlockingPortal) -> None:
    module = example("quart_app")
    upstream = FakeReturningAI().client()
    app = module.build_app(FakeReturningAI.base_url, http_client=upstream)
    try:
        with portal.wrap_async_context_manager(app.test_app()) as test_app:
            browser = QuartBrowser(portal, test_app.test_client())
            visit(browser, hashed_customer_id(module), sees_stream_headers=False)
    finally:
        portal.call(upstream.aclose)


def test_flask_in_process(fake_returning_ai: FakeReturningAI) -> None:
    # The pytest plugin's fixture: the fake with a sync client, as a Flask site's tests use it.
    module = example("flask_app")
    with fake_returning_ai.sync_client() as upstream:
        app = module.build_app(FakeReturningAI.base_url, http_client=upstream)
        visit(
            FlaskBrowser(app.test_client()), hashed_customer_id(module), upstream=fake_returning_ai
        )


def test_django_in_process(fake_returning_ai: FakeReturningAI) -> None:
    module = example("django_app")
    from django.contrib.auth import get_user_model
    from django.test import Client, override_settings

    from tests.test_django import configure_django, migrate_once

    configure_django()  # this process's settings (shared with test_django.py)
    migrate_once()
    with fake_returning_ai.sync_client() as upstream:
        overrides = {
            "ROOT_URLCONF": module.__name__,
            "MIDDLEWARE": module.MIDDLEWARE,
            "RETURNING_AI": module.rai_settings(FakeReturningAI.base_url, http_client=upstream),
        }
        with override_settings(**overrides):
            visit(
                DjangoBrowser(Client()),
                lambda: str(get_user_model().objects.get(username=EMAIL).pk),
                upstream=fake_returning_ai,
            )


# -- as scripts, over real sockets -----------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@contextlib.contextmanager
def running_script(name: str, *args: str) -> Iterator[tuple[str, list[str]]]:
    """``python examples/<name>.py --port N``: yields the URL it printed and its output so far;
    stops it with Ctrl-C (SIGINT) and checks that it exits cleanly."""
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAI_")}
    output: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    script = str(Path("examples") / f"{name}.py")
    with subprocess.Popen(
        [sys.executable, "-u", script, "--port", str(port), *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert process.stdout is not None
        reader = threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True)
        reader.start()
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + 60
            while not any(f"open {url}" in line for line in output):
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    pytest.fail(f"{name} printed no URL within 60 s:\n{''.join(output)}")
                if line is None:
                    pytest.fail(f"{name} exited early:\n{''.join(output)}")
                output.append(line)
            yield url, output
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:  # pragma: no cover
                process.kill()
                process.wait()
            reader.join(timeout=5)
    while True:
        try:
            line = lines.get_nowait()
        except queue.Empty:
            break
        if line is not None:
            output.append(line)
    text = "".join(output)
    assert process.returncode == 0, text
    assert "Traceback" not in text, text


def _wait_until_up(client: httpx.Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.get("/health-check-that-does-not-exist")
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.server
@pytest.mark.parametrize("name", list(FRAMEWORKS))
def test_script_serves_the_site(name: str) -> None:
    module = example(name)
    with running_script(name) as (url, output):
        assert "offline, fake Returning.AI at http://127.0.0.1:" in "".join(output)
        with httpx.Client(base_url=url, timeout=10) as client:
            _wait_until_up(client)
            if name == "django_app":
                # The pk of the user the script's own database gave: read it from the claims.
                ids: list[str] = []

                def customer_id() -> str:
                    return ids[0] if ids else "?"

                visit(_RecordingBrowser(HttpxBrowser(client), ids), customer_id)
            else:
                visit(
                    HttpxBrowser(client),
                    hashed_customer_id(module),
                    pages_have_length=name != "quart_app",
                )


class _RecordingBrowser:
    """For the Django script: its user's pk is only known from the page's own token, so the
    visit checks that the token's customer id is a positive integer (a primary key)."""

    def __init__(self, inner: HttpxBrowser, ids: list[str]) -> None:
        self.inner = inner
        self.ids = ids

    def get(self, path: str) -> Page:
        page = self.inner.get(path)
        tokens = TOKENS.findall(page.text)
        if tokens and not self.ids:
            claims = FakeReturningAI().decode(html.unescape(tokens[0]))
            customer = str(claims["data-customer-id"])
            assert customer.isdigit() and int(customer) > 0, claims
            self.ids.append(customer)
        return page

    def post(
        self,
        path: str,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Page:
        return self.inner.post(path, data, headers)


@pytest.mark.server
def test_django_script_under_asgi() -> None:
    example("django_app")
    with running_script("django_app", "--asgi") as (url, output):
        assert "ASGI" in "".join(output)
        with httpx.Client(base_url=url, timeout=10) as client:
            _wait_until_up(client)
            page = client.get("/")
            assert FALLBACK in page.text
