"""The demo site (examples/demo.py): in-process, over a real socket, and as a script."""

from __future__ import annotations

import contextlib
import html
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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from examples.demo import (
    DEMO_ACCESS_KEY,
    DEMO_WIDGET_API_KEY,
    MODES,
    REAL_MODE_VARS,
    build_app,
    customer_id_for,
    main,
    short_token_options,
)
from rai_middleware._config import MODES as PACKAGE_MODES
from rai_middleware.testing import FakeReturningAI

ROOT = Path(__file__).resolve().parents[1]
DEMO_SCRIPT = ROOT / "examples" / "demo.py"
FALLBACK = '<p><a href="/login">Sign in</a> to join the chat.</p>'
EMAIL = "ada@example.com"
NAME = "Ada <Lovelace>"
LOGIN = {"email": EMAIL, "name": NAME}
CHANNEL_WIDGET = re.compile(
    r'<rai-channel-widget community-id="demo-community" widget-id="demo-channel" '
    r'channel-id="general" theme="dark" embed-token="([^"]+)"></rai-channel-widget>'
)
STORE_WIDGET = re.compile(
    r'<rai-store-widget community-id="demo-community" widget-id="demo-store" '
    r'embed-token="([^"]+)"></rai-store-widget>'
)
TICKET = re.compile(r'data-rai-ticket="([^"]+)"')


WIDGETS = "https://widgets.test"
AUTH_DATA = re.compile(r'<script type="application/json">([^<]*)</script>')


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest clears the Access Key variables; the other modes' variables too."""
    for variables in REAL_MODE_VARS.values():
        for name in variables:
            monkeypatch.delenv(name, raising=False)


def the_token(page: str) -> str:
    match = CHANNEL_WIDGET.search(page)
    assert match is not None, page
    return html.unescape(match.group(1))


def the_ticket(page: str) -> str:
    match = TICKET.search(page)
    assert match is not None, page
    return html.unescape(match.group(1))


def assert_signed_in_claims(fake: FakeReturningAI, token: str) -> None:
    claims = fake.decode(token)
    assert claims["data-email"] == EMAIL
    assert claims["data-customer-id"] == customer_id_for(EMAIL)


# -- in-process ------------------------------------------------------------------------------


@pytest.fixture
async def site() -> AsyncIterator[tuple[FakeReturningAI, httpx.AsyncClient]]:
    fake = FakeReturningAI()
    async with fake.client() as upstream:
        app = build_app(api_base_url="https://api-v2.returning.ai", http_client=upstream)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client:
            yield fake, client


@pytest.mark.anyio
async def test_anonymous_visitor_sees_the_fallbacks(
    site: tuple[FakeReturningAI, httpx.AsyncClient],
) -> None:
    fake, client = site
    response = await client.get("/")
    assert response.status_code == 200
    assert FALLBACK in response.text
    assert "to spend your points in the rewards store" in response.text
    assert "Not signed in" in response.text
    assert "rai-placeholder" not in response.text
    assert "embed-token" not in response.text
    assert "data-rai-ticket" not in response.text
    assert response.headers["cache-control"] == "no-store"
    assert "cookie" in response.headers["vary"].lower()
    assert fake.calls == 0


@pytest.mark.anyio
async def test_sign_in_widgets_refresh_and_sign_out(
    site: tuple[FakeReturningAI, httpx.AsyncClient],
) -> None:
    fake, client = site

    response = await client.post("/login", data=LOGIN)
    assert response.status_code == 303
    assert response.headers["location"] == "/"

    response = await client.get("/")
    assert response.status_code == 200
    page = response.text
    assert response.headers["cache-control"] == "private, no-store"
    assert "Signed in as <strong>Ada &lt;Lovelace&gt;</strong> (ada@example.com)" in page
    assert FALLBACK not in page
    assert "rai-placeholder" not in page
    token = the_token(page)
    assert_signed_in_claims(fake, token)
    store = STORE_WIDGET.search(page)
    assert store is not None
    assert html.unescape(store.group(1)) == token
    assert page.count("<script src=") == 1
    assert DEMO_ACCESS_KEY not in page
    assert fake.calls == 1
    assert fake.requests[0]["userIdentifiers"] == {
        "data-customer-id": customer_id_for(EMAIL),
        "data-email": EMAIL,
    }

    # The refresh endpoint sees scope["user"]: ReturningAIMiddleware sits inside the auth.
    refresh = await client.post("/_rai/embed-token", headers={"X-RAI-Ticket": the_ticket(page)})
    assert refresh.status_code == 200, refresh.text
    assert refresh.json()["embedToken"] == token
    assert refresh.headers["cache-control"] == "no-store"
    assert fake.calls == 1  # served from the cache

    no_ticket = await client.post("/_rai/embed-token")
    assert no_ticket.status_code == 403

    response = await client.post("/logout")
    assert response.status_code == 303
    response = await client.get("/")
    assert FALLBACK in response.text
    assert "embed-token" not in response.text
    assert "Not signed in" in response.text

    signed_out = await client.post("/_rai/embed-token", headers={"X-RAI-Ticket": the_ticket(page)})
    assert signed_out.status_code == 401
    assert fake.calls == 1


@pytest.mark.anyio
async def test_login_form_and_validation(
    site: tuple[FakeReturningAI, httpx.AsyncClient],
) -> None:
    _, client = site
    form = await client.get("/login")
    assert form.status_code == 200
    assert '<form method="post" action="/login">' in form.text

    bad = await client.post("/login", data={"email": '"><script>x</script>', "name": "n"})
    assert bad.status_code == 400
    assert "valid email" in bad.text
    assert "<script>x</script>" not in bad.text
    assert "&quot;&gt;&lt;script&gt;" in bad.text
    assert "session" not in client.cookies

    assert (await client.get("/logout")).status_code == 405


@pytest.mark.anyio
async def test_health_is_left_alone(site: tuple[FakeReturningAI, httpx.AsyncClient]) -> None:
    _, client = site
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == b'{"status":"ok"}'
    assert int(response.headers["content-length"]) == len(response.content)
    assert "cache-control" not in response.headers


@pytest.mark.anyio
async def test_favicon_is_no_content(site: tuple[FakeReturningAI, httpx.AsyncClient]) -> None:
    _, client = site
    response = await client.get("/favicon.ico")  # so that browsers log no 404
    assert (response.status_code, response.content) == (204, b"")


@pytest.mark.anyio
async def test_real_mode_reads_the_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Real mode, but the "real" service is the fake (accepting these credentials): no network.
    monkeypatch.setenv("RAI_COMMUNITY_ID", "env-community")
    monkeypatch.setenv("RAI_ACCESS_ID", "env-access-id")
    monkeypatch.setenv("RAI_ACCESS_KEY", "env-access-key")
    fake = FakeReturningAI(access_id="env-access-id", access_key="env-access-key")
    async with fake.client() as upstream:
        app = build_app(http_client=upstream)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client:
            await client.post("/login", data=LOGIN)
            page = (await client.get("/")).text
    assert '<rai-channel-widget community-id="env-community" widget-id="demo-channel"' in page
    assert '<script src="https://unpkg.com/@returningai/widget-sdk@' in page
    assert "Offline mode" not in page
    assert fake.calls == 1


@pytest.mark.anyio
async def test_incomplete_credentials_mean_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAI_COMMUNITY_ID", "env-community")
    fake = FakeReturningAI()
    async with fake.client() as upstream:
        app = build_app(http_client=upstream)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as client:
            await client.post("/login", data=LOGIN)
            page = (await client.get("/")).text
    assert "Offline mode" in page
    assert_signed_in_claims(fake, the_token(page))


# -- --mode: every mode renders -----------------------------------------------------------


@contextlib.asynccontextmanager
async def signed_in(app: Starlette) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """The home page of ``app`` once signed in (anonymous visitors get the fallbacks), and the
    signed-in client."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        anonymous = (await client.get("/")).text
        assert FALLBACK in anonymous
        assert "rai-placeholder" not in anonymous
        assert "<iframe" not in anonymous
        assert "<script" not in anonymous
        assert (await client.post("/login", data=LOGIN)).status_code == 303
        yield (await client.get("/")).text, client


@pytest.mark.anyio
async def test_mode_access_key_renders_sdk_elements() -> None:
    fake = FakeReturningAI()
    async with fake.client() as upstream:
        app = build_app(mode="access_key", api_base_url=fake.base_url, http_client=upstream)
        async with signed_in(app) as (page, _):
            pass
    token = the_token(page)
    assert_signed_in_claims(fake, token)
    store = STORE_WIDGET.search(page)
    assert store is not None and html.unescape(store.group(1)) == token
    assert (
        f'<script src="{fake.base_url}/sdk/rai-widget.iife.js" data-turbo-eval="false"></script>'
        in page
    )
    assert 'data-rai-endpoint="/_rai/embed-token"' in page
    assert "Offline mode (access_key)" in page
    assert "<iframe" not in page


@pytest.mark.anyio
async def test_mode_proxy_frames_the_sites_own_widget_route() -> None:
    fake = FakeReturningAI()
    async with fake.client() as upstream:
        app = build_app(mode="proxy", widgets_base_url=WIDGETS, http_client=upstream)
        async with signed_in(app) as (page, client):
            framed = await client.get(
                "/_rai/widget/store-widget/demo-store?color=light",
                headers={"Sec-Fetch-Dest": "iframe", "Sec-Fetch-Site": "same-origin"},
            )

    assert FALLBACK not in page
    channel = '<iframe src="/_rai/widget/channel-widget/demo-channel?color=dark">'
    assert channel + "</iframe>" in page
    assert '<iframe src="/_rai/widget/store-widget/demo-store?color=light"></iframe>' in page
    assert page.count('<script data-rai-frames="/_rai/widget/">') == 1
    assert "Offline mode (proxy)" in page
    assert framed.status_code == 200
    assert f'<base href="{WIDGETS}/store-widget/">' in framed.text
    token = re.search(r'window\.__WIDGET_INIT__ = \{ token: "([^"]+)"', framed.text)
    assert token is not None
    assert fake.decode(token.group(1))["email"] == EMAIL
    assert token.group(1) not in page
    assert fake.signin_calls == 1


@pytest.mark.anyio
async def test_mode_iframe_renders_iframes_and_the_auth_script() -> None:
    fake = FakeReturningAI()
    async with fake.client() as upstream:
        app = build_app(mode="iframe", widgets_base_url=WIDGETS, http_client=upstream)
        async with signed_in(app) as (page, client):
            data = AUTH_DATA.search(page)
            assert data is not None, page
            auth = json.loads(data.group(1))
            refresh = await client.post("/_rai/signin", headers={"X-RAI-Ticket": auth["ticket"]})
            no_ticket = await client.post("/_rai/signin")

    assert FALLBACK not in page
    assert "rai-placeholder" not in page
    channel = f'<iframe src="{WIDGETS}/channel-widget/demo-channel" allow="clipboard-write">'
    store = f'<iframe src="{WIDGETS}/store-widget/demo-store" allow="clipboard-write">'
    assert channel + "</iframe>" in page
    assert store + "</iframe>" in page
    assert page.count('<script type="application/json">') == 1
    assert page.count("RETURNINGAI_WIDGET_REQUEST_TOKEN") == 1
    assert auth["origin"] == WIDGETS
    assert auth["endpoint"] == "/_rai/signin"
    assert fake.decode(auth["token"])["email"] == EMAIL
    assert fake.signin_requests == [{"community": "demo-community", "email": EMAIL}]
    assert "embed-token" not in page
    assert DEMO_WIDGET_API_KEY not in page
    assert "Offline mode (iframe)" in page
    assert refresh.status_code == 200, refresh.text
    assert refresh.json()["token"] == auth["token"]
    assert no_ticket.status_code == 403
    assert fake.signin_calls == 1


@pytest.mark.anyio
async def test_mode_attributes_renders_the_loader_with_the_identity() -> None:
    app = build_app(mode="attributes", widgets_base_url=WIDGETS)
    async with signed_in(app) as (page, client):
        no_endpoint = await client.post("/_rai/embed-token")

    customer = customer_id_for(EMAIL)
    identity = f'data-customer-id="{customer}" data-email="{EMAIL}"'
    assert (
        '<div id="returning-ai-widget-1"></div>'
        f'<script src="{WIDGETS}/widget-loader.js" data-widget-id="demo-channel" '
        'data-widget-type="channel" data-container="returning-ai-widget-1" '
        f'data-api-url="{WIDGETS}" data-widget-url="{WIDGETS}/channel-widget" '
        f'data-channel-id="general" data-theme="dark" {identity}></script>'
    ) in page
    assert (
        '<div id="returning-ai-widget-2"></div>'
        f'<script src="{WIDGETS}/widget-loader.js" data-widget-id="demo-store" '
        'data-widget-type="store" data-container="returning-ai-widget-2" '
        f'data-api-url="{WIDGETS}" data-widget-url="{WIDGETS}/store-widget" {identity}></script>'
    ) in page
    assert FALLBACK not in page
    assert "embed-token" not in page
    assert "data-rai-ticket" not in page
    assert "Offline mode (attributes)" in page
    assert no_endpoint.status_code == 404  # this mode has no token endpoint


@pytest.mark.anyio
async def test_offline_modes_default_to_the_fake_for_the_widgets() -> None:
    fake_url = "http://127.0.0.1:9"
    app = build_app(mode="attributes", api_base_url=fake_url + "/")
    async with signed_in(app) as (page, _):
        pass
    assert f'<script src="{fake_url}/widget-loader.js" data-widget-id="demo-channel"' in page
    assert f'data-widget-url="{fake_url}/channel-widget"' in page


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        build_app(mode="bogus")
    with pytest.raises(SystemExit) as exit_info:
        main(["--mode", "bogus"])
    assert exit_info.value.code == 2


@pytest.mark.anyio
async def test_real_iframe_mode_reads_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAI_COMMUNITY_ID", "env-community")
    monkeypatch.setenv("RAI_WIDGET_API_KEY", "env-widget-key")
    fake = FakeReturningAI(widget_api_key="env-widget-key")
    async with (
        fake.client() as upstream,
        signed_in(build_app(mode="iframe", http_client=upstream)) as (page, _),
    ):
        pass
    assert '<iframe src="https://prod-widgets.returning.ai/channel-widget/demo-channel"' in page
    assert fake.signin_requests == [{"community": "env-community", "email": EMAIL}]
    assert "Offline mode" not in page


@pytest.mark.server
@pytest.mark.parametrize("mode", MODES)
def test_main_runs_the_chosen_mode_against_the_fake(
    mode: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``main(["--mode", ...])`` up to ``uvicorn.run``, which instead checks the app it got."""
    seen: list[str] = []

    def run(app: Starlette, *, host: str, port: int) -> None:
        assert (host, port) == ("127.0.0.1", 8123)
        with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
            client.post("/login", data=LOGIN)
            page = client.get("/").text
            seen.append(page)
            # Whatever the page points at is really served, by the fake started by main().
            urls = re.findall(r'(?:src|data-widget-url)="(http://127\.0\.0\.1:[^"]+)"', page)
            if mode == "proxy":  # the site's own frames, which the fake's pages fill
                urls = [base_url + url for url in re.findall(r'src="(/_rai/widget/[^"]+)"', page)]
            assert urls, page
            for url in urls:
                target = url + "/demo-channel" if url.endswith("-widget") else url
                got = client.get(target) if mode == "proxy" else httpx.get(target, timeout=10)
                assert got.status_code == 200, target

    monkeypatch.setattr(uvicorn, "run", run)
    main(["--mode", mode, "--port", "8123"])

    (page,) = seen
    banner = capsys.readouterr().out
    described = "offline" if mode == "access_key" else f"{mode}, offline"
    assert banner.startswith(f"rai-middleware demo ({described}, fake Returning.AI at http://")
    assert "open http://127.0.0.1:8123/" in banner
    marker = {
        "access_key": "<rai-channel-widget ",
        "iframe": '<script type="application/json">',
        "attributes": 'data-widget-type="channel"',
        "proxy": '<iframe src="/_rai/widget/channel-widget/demo-channel?color=dark"',
    }[mode]
    assert marker in page
    assert FALLBACK not in page


# -- --mode lists the package's modes; --token-ttl ---------------------------------------------


def test_modes_are_the_packages_with_the_default_first() -> None:
    assert tuple(PACKAGE_MODES) == MODES
    assert MODES[0] == "access_key"
    assert REAL_MODE_VARS["access_key"] == ("RAI_COMMUNITY_ID", "RAI_ACCESS_ID", "RAI_ACCESS_KEY")
    assert REAL_MODE_VARS["iframe"] == ("RAI_COMMUNITY_ID", "RAI_WIDGET_API_KEY")
    assert REAL_MODE_VARS["attributes"] == ("RAI_WIDGETS_BASE_URL",)
    assert REAL_MODE_VARS.keys() == PACKAGE_MODES.keys()


def test_short_tokens_scale_the_middlewares_margins() -> None:
    assert short_token_options(60) == {"min_token_ttl": 15.0, "refresh_ahead": 10.0}
    assert short_token_options(10) == {"min_token_ttl": 2.5, "refresh_ahead": 10 / 6}
    assert short_token_options(3600) == {"min_token_ttl": 300.0, "refresh_ahead": 120.0}
    for bad in (9.9, 0, -60, float("nan")):
        with pytest.raises(ValueError, match="token_ttl must be at least 10 seconds"):
            short_token_options(bad)


@pytest.mark.parametrize("value", ["5", "abc", "nan", "-60"])
def test_token_ttl_must_be_ten_seconds_or_more(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--token-ttl", value])
    assert exit_info.value.code == 2
    assert "--token-ttl" in capsys.readouterr().err


def test_token_ttl_is_refused_against_the_real_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in REAL_MODE_VARS["access_key"]:
        monkeypatch.setenv(name, "set")
    with pytest.raises(SystemExit) as exit_info:
        main(["--token-ttl", "60"])
    assert exit_info.value.code == 2
    assert "--token-ttl works offline only" in capsys.readouterr().err


@pytest.mark.server
def test_main_with_short_tokens_mints_them_and_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    lifetimes: list[float] = []

    def run(app: Starlette, *, host: str, port: int) -> None:
        with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
            client.post("/login", data=LOGIN)
            page = client.get("/").text
            assert "Tokens live 60 s." in page
            claims = FakeReturningAI().decode(the_token(page))
            lifetimes.append(claims["exp"] - claims["iat"])

    monkeypatch.setattr(uvicorn, "run", run)
    main(["--token-ttl", "60", "--port", "8124"])

    assert lifetimes == [60]
    assert ", tokens live 60 s): open http://127.0.0.1:8124/" in capsys.readouterr().out


@pytest.mark.anyio
async def test_short_tokens_are_served_to_pages() -> None:
    """With 60-second tokens, a page still gets one (the default min_token_ttl, 300 s, would
    refuse every token the fake mints) and the refresh endpoint answers with it."""
    fake = FakeReturningAI(token_lifetime=60)
    async with fake.client() as upstream:
        app = build_app(api_base_url=fake.base_url, http_client=upstream, token_ttl=60)
        async with signed_in(app) as (page, client):
            refresh = await client.post(
                "/_rai/embed-token", headers={"X-RAI-Ticket": the_ticket(page)}
            )
    token = the_token(page)
    assert_signed_in_claims(fake, token)
    assert refresh.json() == {"embedToken": token, "expiresIn": refresh.json()["expiresIn"]}
    assert 45 < refresh.json()["expiresIn"] <= 60
    assert fake.calls == 1


# -- over real sockets -----------------------------------------------------------------------


@contextlib.contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread, on a port of our own; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "the demo server failed to start"
            assert time.monotonic() < deadline, "the demo server did not start within 10 s"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
    assert not thread.is_alive(), "the demo server did not stop"


@pytest.mark.server
def test_demo_over_a_real_socket() -> None:
    fake = FakeReturningAI()
    with fake.run_in_thread() as fake_url:
        app = build_app(api_base_url=fake_url)
        with serve(app) as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
            anonymous = client.get("/")
            assert anonymous.status_code == 200
            assert FALLBACK in anonymous.text

            assert client.post("/login", data=LOGIN).status_code == 303
            response = client.get("/")
            assert response.status_code == 200
            assert int(response.headers["content-length"]) == len(response.content)
            assert response.headers["cache-control"] == "private, no-store"
            page = response.text
            assert "rai-placeholder" not in page
            assert_signed_in_claims(fake, the_token(page))
            everything = page + "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
            assert DEMO_ACCESS_KEY not in everything

            # The page loads the fake's SDK stand-in, which is really there.
            sdk_url = f"{fake_url}/sdk/rai-widget.iife.js"
            assert f'<script src="{sdk_url}" data-turbo-eval="false"></script>' in page
            assert httpx.get(sdk_url, timeout=10).status_code == 200

            refresh = client.post("/_rai/embed-token", headers={"X-RAI-Ticket": the_ticket(page)})
            assert refresh.status_code == 200
            assert refresh.json()["embedToken"] == the_token(page)

            health = client.get("/health")
            assert health.status_code == 200
            assert health.headers["content-type"] == "application/json"
            assert health.content == b'{"status":"ok"}'
            assert int(health.headers["content-length"]) == len(health.content)
            assert "cache-control" not in health.headers
    assert fake.calls == 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


@pytest.mark.server
def test_running_the_script_prints_the_url_and_serves_the_site() -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAI_")}
    output: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "-u", str(DEMO_SCRIPT.relative_to(ROOT)), "--port", str(port)],
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
        try:
            _wait_for_line(lines, output, f"open {url}", timeout=20)
            banner = next(line for line in output if f"open {url}" in line)
            assert "offline, fake Returning.AI at http://127.0.0.1:" in banner

            with httpx.Client(base_url=url, timeout=10) as client:
                response = _get_when_up(client, "/", timeout=20)
                assert response.status_code == 200
                assert FALLBACK in response.text
                assert client.post("/login", data=LOGIN).status_code == 303
                page = client.get("/").text
                assert CHANNEL_WIDGET.search(page) is not None, page
        finally:
            # Ctrl-C: uvicorn shuts down gracefully, then the fake's thread stops.
            if os.name == "posix":
                process.send_signal(signal.SIGINT)
            else:  # pragma: no cover
                process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover
                process.kill()
                process.wait()
            reader.join(timeout=5)
    _drain(lines, output)
    if os.name == "posix":
        assert process.returncode == 0, "".join(output)
    assert "Traceback" not in "".join(output), "".join(output)


def _drain(lines: queue.Queue[str | None], output: list[str]) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            line = lines.get_nowait()
            if line is not None:
                output.append(line)


def _wait_for_line(
    lines: queue.Queue[str | None], output: list[str], needle: str, *, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no {needle!r} within {timeout} s; output:\n{''.join(output)}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"the demo exited before printing {needle!r}; output:\n{''.join(output)}")
        output.append(line)
        if needle in line:
            return


def _get_when_up(client: httpx.Client, path: str, *, timeout: float) -> httpx.Response:
    """uvicorn binds the port just after the banner is printed: retry until it listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get(path)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- in Chromium: how the stand-in widgets look ----------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Headless Chromium, as tests/test_browser.py launches it (skipped where it is missing)."""
    from tests.services import require
    from tests.test_browser import HAVE_PLAYWRIGHT, LAUNCH_ARGS

    if not HAVE_PLAYWRIGHT:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    path = require("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _seconds_left(text: str) -> int:
    found = re.fullmatch(r"Token expires in (\d+):(\d\d)", text)
    assert found is not None, text
    return int(found.group(1)) * 60 + int(found.group(2))


@pytest.mark.server
@pytest.mark.parametrize("mode", ["access_key", "iframe"])
def test_widgets_count_their_token_down_and_show_its_renewal(mode: str, chromium: Any) -> None:
    """Tokens of 10 s: each card names the widget and the visitor, counts down, and shows
    "Token renewed" once the page's refresh has replaced the token, without a reload."""
    from playwright.sync_api import expect

    from examples.screenshot import wait_for_renewal
    from tests.test_browser import TIMEOUT_MS, Watch

    fake = FakeReturningAI(token_lifetime=10)
    with (
        fake.run_in_thread() as fake_url,
        serve(build_app(mode=mode, api_base_url=fake_url, token_ttl=10)) as url,
    ):
        context = chromium.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        try:
            page = context.new_page()
            watch = Watch(page)
            page.goto(f"{url}/login")
            page.get_by_label("Email").fill(EMAIL)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{url}/")
            if mode == "access_key":
                cards = [page.locator("rai-channel-widget"), page.locator("rai-store-widget")]
            else:
                cards = [
                    page.frame_locator(f'iframe[src*="/{kind}-widget/"]').locator("body")
                    for kind in ("channel", "store")
                ]
            for card, kind in zip(cards, ("Channel widget", "Store widget"), strict=True):
                expect(card.get_by_text(kind, exact=True)).to_be_visible()
                expect(card.get_by_text(f"Signed in as {EMAIL}", exact=True)).to_be_visible()
                expect(card.get_by_text("offline stand-in")).to_be_visible()
            countdown = cards[0].get_by_text(re.compile(r"^Token expires in \d+:\d\d$"))
            first = _seconds_left(countdown.inner_text())
            assert 0 < first <= 10
            page.wait_for_timeout(1600)
            assert _seconds_left(countdown.inner_text()) < first
            renewed = cards[0].get_by_text(re.compile("Token renewed at .*, without a reload"))
            expect(renewed).to_be_hidden()

            wait_for_renewal(page, 30)

            expect(renewed).to_be_visible()
            expect(cards[0].get_by_text(f"Signed in as {EMAIL}", exact=True)).to_be_visible()
            assert _seconds_left(countdown.inner_text()) > 2  # a fresh token's life
            if mode == "access_key":
                # Two widgets, one page: both got the renewed token.
                expect(cards[1]).to_have_attribute("data-fake-renewals", re.compile(r"^[1-9]"))
                assert fake.decode(cards[1].get_attribute("embed-token") or "")["exp"] > time.time()
            assert fake.calls + fake.signin_calls >= 2  # the first token, then a new one
            watch.assert_clean()
            page.close()
        finally:
            context.close()


@pytest.mark.server
def test_the_screenshot_script_saves_the_demo(tmp_path: Path, chromium: Any) -> None:
    """examples/screenshot.py (which made docs/images/demo.png), in the mode that has no token
    to wait for: a PNG of the signed-in page."""
    from examples.screenshot import capture

    output = tmp_path / "shots" / "demo.png"
    saved = capture(output, mode="attributes", token_ttl=10, browser=chromium)

    assert saved == tmp_path / "shots" / "demo.png"
    data = saved.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == 960 and height >= 600
