"""Issue 12, item 1, end to end: a real nginx ``proxy_cache`` in front of the middleware.

nginx (Debian's, ``apt-get install nginx``) runs with a config and prefix of its own in a
temporary directory, on 127.0.0.1, in front of an ASGI app served by uvicorn. Visitors are
identified by HTTP Basic auth, so ``Vary: Cookie`` does not tell them apart; the app sends
``X-Accel-Expires: 600`` (which nginx obeys over ``Cache-Control``) and ``Cache-Control:
public, max-age=600``, and nginx's cache key has no identity in it. Alice, bob and carol
each get only their own token, round after round, and a signed-in visitor's fallback page
(the upstream down) is not kept either. A control path shows that the cache does serve
one visitor's page to another when the page does not go through the middleware.
"""

from __future__ import annotations

import base64
import re
import subprocess
import time
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from rai_middleware import ReturningAIMiddleware
from rai_middleware.testing import FakeReturningAI
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID, SECRET_KEY, free_port, serve
from tests.services import require

USERS = ("alice", "bob", "carol")
PAGE = (
    b"<!doctype html><html><body><p>news</p>"
    b'<rai-placeholder widget="channel" channel-id="abc">sign in</rai-placeholder>'
    b"</body></html>"
)
CACHING = [
    (b"cache-control", b"public, max-age=600"),
    (b"x-accel-expires", b"600"),
    (b"surrogate-control", b"max-age=600"),
]
TOKEN = re.compile(rb'embed-token="([^"]+)"')


def basic_user(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization" and value[:6].lower() == b"basic ":
            return base64.b64decode(value[6:]).decode().split(":", 1)[0]
    return None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/control":  # no placeholder: the middleware leaves it alone
        body = f"<html><body>hello {basic_user(scope['headers'])}</body></html>".encode()
    else:
        body = PAGE
    headers = [(b"content-type", b"text/html; charset=utf-8"), *CACHING]
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def identify(scope: MutableMapping[str, Any]) -> dict[str, str] | None:
    user = basic_user(scope["headers"])
    return {"data-customer-id": user} if user else None


CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    proxy_cache_path {tmp}/cache levels=1 keys_zone=pages:1m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_cache pages;
            proxy_cache_key $scheme$host$request_uri;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[tuple[str, FakeReturningAI]]:
    program = require("nginx")
    fake = FakeReturningAI(access_id=ACCESS_ID, access_key=ACCESS_KEY)
    with fake.run_in_thread() as api_base_url:
        middleware = ReturningAIMiddleware(
            app,
            identify=identify,
            community_id=COMMUNITY_ID,
            access_id=ACCESS_ID,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            api_base_url=api_base_url,
        )
        with serve(middleware) as upstream:
            port = free_port()
            conf = tmp_path / "nginx.conf"
            conf.write_text(CONFIG.format(tmp=tmp_path, port=port, upstream=upstream))
            nginx = subprocess.Popen(
                [program, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            try:
                url = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 5
                while True:
                    try:
                        httpx.get(url + "/ready", timeout=1)
                        break
                    except httpx.TransportError:
                        if nginx.poll() is not None or time.monotonic() > deadline:
                            log = (tmp_path / "error.log").read_text(errors="replace")
                            raise RuntimeError(f"nginx did not start: {log}") from None
                        time.sleep(0.02)
                yield url, fake
            finally:
                nginx.terminate()
                nginx.wait(5)


def get(url: str, user: str) -> httpx.Response:
    return httpx.get(url, auth=(user, "pw"), timeout=5)


def test_nginx_proxy_cache_never_serves_one_visitors_token_to_another(
    nginx_in_front: tuple[str, FakeReturningAI],
) -> None:
    url, fake = nginx_in_front
    # The control: this nginx does keep a page with these headers and serves it to anyone.
    assert "hello alice" in get(url + "/control", "alice").text
    control = get(url + "/control", "bob")
    assert control.headers["x-cache-status"] == "HIT"
    assert "hello alice" in control.text

    # Alice's first page comes while the upstream is down: her fallback page.
    fake.fail_next(1, status=503)
    down = get(url + "/page", "alice")
    assert b"embed-token" not in down.content and b"sign in" in down.content
    assert down.headers["cache-control"] == "private, no-store"
    assert "x-accel-expires" not in down.headers

    for _ in range(4):
        for user in USERS:
            response = get(url + "/page", user)
            assert response.status_code == 200
            assert response.headers["x-cache-status"] != "HIT", (user, response.headers)
            tokens = TOKEN.findall(response.content)
            assert len(tokens) == 1, (user, response.text)
            assert fake.decode(tokens[0].decode())["data-customer-id"] == user
            assert response.headers["cache-control"] == "private, no-store"
            assert "x-accel-expires" not in response.headers
            assert "surrogate-control" not in response.headers
