"""The Flask extension (rai_middleware.flask): Flask's test client and a real server."""

from __future__ import annotations

import gzip
import html
import io
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

if not os.environ.get("CI"):
    pytest.importorskip("flask")
    pytest.importorskip("flask_login")

from flask import Flask, Response, abort, g, request, send_file, stream_with_context
from flask_login import LoginManager, login_user, logout_user
from werkzeug.serving import make_server

from rai_middleware import ConfigurationError
from rai_middleware.flask import ReturningAI, config_key, default_identify
from tests.conftest import ACCESS_ID, ACCESS_KEY, COMMUNITY_ID

PAGE = (
    b"<html><body><!-- <rai-placeholder widget=store></rai-placeholder> -->"
    b'<rai-placeholder widget="channel" channel-id="abc">fallback</rai-placeholder>'
    b'<rai-placeholder widget="store"/></body></html>'
)
ANONYMOUS = (
    b"<html><body><!-- <rai-placeholder widget=store></rai-placeholder> -->fallback</body></html>"
)
TICKET = re.compile(rb'data-rai-ticket="([^"]+)"')
TOKENS = re.compile(rb'embed-token="([^"]+)"')


class Upstream:
    """The token endpoint as an httpx.MockTransport handler: ``tok-<customer id>-<n>``."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.identifiers: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.calls += 1
            number = self.calls
        if self.fail:
            return httpx.Response(500)
        payload = json.loads(request.content)
        assert payload["accessKey"] == ACCESS_KEY
        identifiers = payload["userIdentifiers"]
        self.identifiers.append(identifiers)
        user = identifiers.get("data-customer-id", "?")
        return httpx.Response(
            200, json={"data": {"embedToken": f"tok-{user}-{number}", "expiresIn": 900}}
        )


class User:
    """A Flask-Login user (what UserMixin provides, spelled out)."""

    is_active = True
    is_anonymous = False

    def __init__(self, user_id: str | None, email: str | None) -> None:
        self.id = user_id
        self.email = email

    @property
    def is_authenticated(self) -> bool:
        return True

    def get_id(self) -> str | None:
        return self.id


USERS = {"7": User("7", "ada@example.com")}


def chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def build_app(http_client: httpx.Client, *, with_login: bool = True, **options: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="tests-flask-secret-key",
        RAI_COMMUNITY_ID=COMMUNITY_ID,
        RAI_ACCESS_ID=ACCESS_ID,
        RAI_ACCESS_KEY=ACCESS_KEY,
        RAI_HTTP_CLIENT=http_client,
    )
    if with_login:
        manager = LoginManager(app)
        manager.user_loader(USERS.get)

    @app.before_request
    def csrf_like() -> Any:
        # Stands for Flask-WTF's CSRFProtect: every POST without a token is refused.
        if request.method == "POST" and request.path != "/login":
            abort(400)
        return None

    @app.post("/login")
    def login() -> str:
        login_user(USERS["7"])
        return "ok"

    @app.get("/logout")
    def logout() -> str:
        logout_user()
        return "bye"

    @app.get("/page")
    def page() -> Response:
        return Response(PAGE, headers={"ETag": '"v1"', "Cache-Control": "max-age=60"})

    @app.get("/plain")
    def plain() -> Response:
        return Response(b"<p>no widgets</p>", headers={"ETag": '"v1"'})

    @app.get("/json")
    def as_json() -> Any:
        return {"html": PAGE.decode()}

    @app.get("/missing")
    def missing() -> Any:
        return PAGE, 404

    @app.get("/stream")
    def stream() -> Response:
        return Response(stream_with_context(chunks(PAGE)), mimetype="text/html")

    @app.get("/stream-text")
    def stream_text() -> Response:
        # str chunks and no request context: Werkzeug encodes them, we rewrite.
        return Response(iter([PAGE.decode()[:20], PAGE.decode()[20:]]), mimetype="text/html")

    @app.get("/file")
    def file() -> Response:
        return send_file(io.BytesIO(PAGE), mimetype="text/html")

    @app.get("/gzipped")
    def gzipped() -> Response:
        return Response(
            gzip.compress(PAGE), mimetype="text/html", headers={"Content-Encoding": "gzip"}
        )

    @app.get("/corrupt-stream")
    def corrupt_stream() -> Response:
        return Response(
            chunks(b"this is not gzip"), mimetype="text/html", headers={"Content-Encoding": "gzip"}
        )

    @app.get("/gzip-stream")
    def gzip_stream() -> Response:
        return Response(
            chunks(gzip.compress(PAGE), 16),
            mimetype="text/html",
            headers={"Content-Encoding": "gzip"},
        )

    @app.get("/brotli")
    def brotli() -> Response:
        return Response(b"...", mimetype="text/html", headers={"Content-Encoding": "br"})

    @app.get("/nonce")
    def nonce() -> Response:
        request.csp_nonce = "talisman-nonce"  # type: ignore[attr-defined]
        return Response(PAGE)

    @app.get("/g-nonce")
    def g_nonce() -> Response:
        g.csp_nonce = "g-nonce"
        return Response(PAGE)

    @app.get("/csp")
    def csp() -> Response:
        return Response(PAGE, headers={"Content-Security-Policy": "script-src 'nonce-fromheader'"})

    ReturningAI(app, **options)
    return app


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


@pytest.fixture
def http_client(upstream: Upstream) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(upstream)) as client:
        yield client


@pytest.fixture
def app(http_client: httpx.Client) -> Flask:
    return build_app(http_client)


def ticket_of(body: bytes) -> str:
    match = TICKET.search(body)
    assert match is not None, body
    return html.unescape(match.group(1).decode())


def assert_no_secret(response: Any) -> None:
    everything = response.get_data() + str(response.headers).encode()
    assert ACCESS_KEY.encode() not in everything
    assert ACCESS_ID.encode() not in everything


def test_signed_in_user_gets_widgets_with_their_token(app: Flask, upstream: Upstream) -> None:
    client = app.test_client()
    client.post("/login")
    response = client.get("/page")
    body = response.get_data()
    assert TOKENS.findall(body) == [b"tok-7-1"] * 2
    assert response.headers["Content-Length"] == str(len(body))
    assert response.headers["Cache-Control"] == "private, no-store"
    assert "ETag" not in response.headers
    assert "Cookie" in response.headers["Vary"]
    assert upstream.identifiers == [{"data-customer-id": "7", "data-email": "ada@example.com"}]
    assert_no_secret(response)
    client.get("/logout")
    assert client.get("/page").get_data() == ANONYMOUS


def test_anonymous_visitor_gets_the_fallback(app: Flask, upstream: Upstream) -> None:
    response = app.test_client().get("/page")
    assert response.get_data() == ANONYMOUS
    assert response.headers["Content-Length"] == str(len(ANONYMOUS))
    assert response.headers["Cache-Control"] == "max-age=60"
    assert response.headers["Vary"] == "Cookie, Authorization"
    assert upstream.calls == 0


def test_other_responses_are_untouched(app: Flask, upstream: Upstream) -> None:
    client = app.test_client()
    client.post("/login")
    plain = client.get("/plain")
    assert plain.get_data() == b"<p>no widgets</p>"
    assert plain.headers["ETag"] == '"v1"'
    assert client.get("/json").get_json() == {"html": PAGE.decode()}
    assert client.get("/missing").get_data() == PAGE
    assert client.head("/page").status_code == 200
    assert upstream.calls == 0


def test_streamed_responses_are_rewritten(app: Flask, upstream: Upstream) -> None:
    client = app.test_client()
    client.post("/login")
    response = client.get("/stream")
    assert response.is_streamed
    assert TOKENS.findall(response.get_data()) == [b"tok-7-1"] * 2
    assert "Content-Length" not in response.headers
    assert response.headers["Cache-Control"] == "private, no-store"
    text = client.get("/stream-text")
    assert len(TOKENS.findall(text.get_data())) == 2
    anonymous = app.test_client().get("/stream")
    assert anonymous.get_data() == ANONYMOUS
    assert "Cache-Control" not in anonymous.headers
    assert upstream.calls == 1


def test_streamed_body_is_closed(http_client: httpx.Client) -> None:
    closed: list[bool] = []

    def body() -> Iterator[bytes]:
        try:
            yield from chunks(PAGE)
        finally:
            closed.append(True)

    app = Flask(__name__)
    ReturningAI(
        app,
        community_id=COMMUNITY_ID,
        access_id=ACCESS_ID,
        access_key=ACCESS_KEY,
        http_client=http_client,
        identify=lambda req: {"data-customer-id": "c"},
    )
    app.add_url_rule("/", view_func=lambda: Response(body(), mimetype="text/html"))
    response = app.test_client().get("/", buffered=False)
    iterator = iter(response.response)
    next(iterator)
    response.close()
    assert closed == [True]


def test_send_file_html_is_rewritten(app: Flask) -> None:
    client = app.test_client()
    client.post("/login")
    response = client.get("/file")
    assert len(TOKENS.findall(response.get_data())) == 2
    assert "Content-Length" not in response.headers


def test_refresh_endpoint_needs_no_route_and_runs_first(app: Flask, upstream: Upstream) -> None:
    client = app.test_client()
    client.post("/login")
    ticket = {"X-RAI-Ticket": ticket_of(client.get("/page").get_data())}
    refresh = client.post("/_rai/embed-token", headers=ticket)
    assert refresh.status_code == 200
    assert refresh.get_json()["embedToken"] == "tok-7-1"
    assert refresh.headers["Cache-Control"] == "no-store"
    assert refresh.headers["Content-Type"] == "application/json"
    assert_no_secret(refresh)
    assert client.post("/page").status_code == 400  # the app's own before_request still runs
    assert client.get("/_rai/embed-token", headers=ticket).status_code == 405
    cross = {**ticket, "Sec-Fetch-Site": "cross-site"}
    assert client.post("/_rai/embed-token", headers=cross).status_code == 403
    assert client.post("/_rai/embed-token").status_code == 403
    assert app.test_client().post("/_rai/embed-token", headers=ticket).status_code == 401
    assert upstream.calls == 1


def test_upstream_failure_gives_fallbacks_and_503(
    http_client: httpx.Client, upstream: Upstream
) -> None:
    def make() -> Flask:
        app = Flask(__name__)
        ReturningAI(
            app,
            community_id=COMMUNITY_ID,
            access_id=ACCESS_ID,
            access_key=ACCESS_KEY,
            http_client=http_client,
            identify=identify_header,
        )
        app.add_url_rule("/", view_func=lambda: Response(PAGE))
        return app

    user = {"X-User": "u-3"}
    ticket = ticket_of(make().test_client().get("/", headers=user).get_data())
    upstream.fail = True
    client = make().test_client()  # a new app: an empty token cache
    assert client.get("/", headers=user).get_data() == ANONYMOUS
    refresh = client.post("/_rai/embed-token", headers={**user, "X-RAI-Ticket": ticket})
    assert refresh.status_code == 503


def test_config_keys_kwargs_and_dotted_identify(http_client: httpx.Client) -> None:
    app = Flask(__name__)
    app.config.update(
        RAI_COMMUNITY_ID=COMMUNITY_ID,
        RAI_ACCESS_ID=ACCESS_ID,
        RAI_ACCESS_KEY=ACCESS_KEY,
        RAI_HTTP_CLIENT=http_client,
        RAI_ENDPOINT_PREFIX="/widgets",
        RAI_IDENTIFY=f"{__name__}:identify_header",
        RAI_MIN_TOKEN_TTL=60,
    )
    extension = ReturningAI()
    extension.init_app(app)
    app.add_url_rule("/", view_func=lambda: Response(PAGE))
    client = app.test_client()
    body = client.get("/", headers={"X-User": "u-1"}).get_data()
    assert TOKENS.findall(body) == [b"tok-u-1-1"] * 2
    refresh = client.post(
        "/widgets/embed-token", headers={"X-User": "u-1", "X-RAI-Ticket": ticket_of(body)}
    )
    assert refresh.get_json()["embedToken"] == "tok-u-1-1"
    settings = ReturningAI.core(app).settings
    assert settings.endpoint_prefix == "/widgets"
    assert settings.min_token_ttl == 60
    # Keyword arguments win over app.config.
    second = Flask(__name__)
    second.config.update(app.config)
    ReturningAI(second, endpoint_prefix="/other", identify=lambda req: None)
    assert ReturningAI.core(second).settings.endpoint_prefix == "/other"


def identify_header(req: Any) -> dict[str, str] | None:
    user = req.headers.get("X-User")
    return {"data-customer-id": user} if user else None


def test_init_app_twice_is_an_error(app: Flask) -> None:
    with pytest.raises(RuntimeError, match="already initialised"):
        ReturningAI().init_app(app)


def test_config_key_names() -> None:
    assert config_key("community_id") == "RAI_COMMUNITY_ID"
    assert config_key("min_token_ttl") == "RAI_MIN_TOKEN_TTL"


def test_bad_configuration(http_client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigurationError, match="unknown option 'acces_key'"):
        ReturningAI(acces_key="x")
    base = {
        "RAI_COMMUNITY_ID": "c",
        "RAI_ACCESS_ID": "i",
        "RAI_ACCESS_KEY": "k",
        "RAI_HTTP_CLIENT": http_client,
    }
    app = Flask(__name__)
    app.config.update(base, RAI_IDENTIFY="tests.test_flask:nonesuch")
    with pytest.raises(ConfigurationError, match="cannot import"):
        ReturningAI(app)
    app = Flask(__name__)
    app.config.update(base, RAI_IDENTIFY=42)
    with pytest.raises(ConfigurationError, match="must be a callable"):
        ReturningAI(app)
    with pytest.raises(ConfigurationError) as caught:
        ReturningAI(Flask(__name__), community_id="c", access_id="i")
    assert str(caught.value) == (
        "app.config['RAI_ACCESS_KEY'] is required in mode='access_key': set "
        "app.config['RAI_ACCESS_KEY'] (or pass access_key=... to ReturningAI) or set the "
        "RAI_ACCESS_KEY environment variable"
    )


def test_unknown_config_keys_raise_with_the_key_meant(http_client: httpx.Client) -> None:
    app = Flask(__name__)
    app.config.update(
        RAI_COMMUNITY_ID="c",
        RAI_ACCESS_ID="i",
        RAI_ACCES_KEY="typo",
        RAI_TIMEOUT=0,
        RAI_HTTP_CLIENT=http_client,
    )
    with pytest.raises(ConfigurationError) as caught:
        ReturningAI(app)
    assert caught.value.problems == (
        "unknown option app.config['RAI_ACCES_KEY'] (did you mean app.config['RAI_ACCESS_KEY']?)",
        "app.config['RAI_TIMEOUT'] must be greater than 0, got 0",
        "app.config['RAI_ACCESS_KEY'] is required in mode='access_key': set "
        "app.config['RAI_ACCESS_KEY'] (or pass access_key=... to ReturningAI) or set the "
        "RAI_ACCESS_KEY environment variable",
    )
    assert "rai_middleware" not in app.extensions


def test_credentials_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, http_client: httpx.Client
) -> None:
    monkeypatch.setenv("RAI_COMMUNITY_ID", COMMUNITY_ID)
    monkeypatch.setenv("RAI_ACCESS_ID", ACCESS_ID)
    monkeypatch.setenv("RAI_ACCESS_KEY", ACCESS_KEY)
    app = Flask(__name__)
    ReturningAI(app, http_client=http_client, identify=identify_header)
    app.add_url_rule("/", view_func=lambda: Response(PAGE))
    body = app.test_client().get("/", headers={"X-User": "env"}).get_data()
    assert TOKENS.findall(body) == [b"tok-env-1"] * 2


def test_without_flask_login_remote_user_is_the_visitor(http_client: httpx.Client) -> None:
    app = build_app(http_client, with_login=False)
    client = app.test_client()
    assert client.get("/page").get_data() == ANONYMOUS
    body = client.get("/page", environ_base={"REMOTE_USER": "bob"}).get_data()
    assert TOKENS.findall(body) == [b"tok-bob-1"] * 2


def test_default_identify_with_flask_login_users(http_client: httpx.Client) -> None:
    app = build_app(http_client)

    with app.test_request_context("/"):
        login_user(User("9", None))
        assert default_identify(request) == {"data-customer-id": "9"}
        login_user(User(None, "e@x.y"))
        assert default_identify(request) == {"data-email": "e@x.y"}
        logout_user()
        assert default_identify(request) is None


def test_one_extension_for_two_apps(http_client: httpx.Client) -> None:
    extension = ReturningAI(identify=identify_header, http_client=http_client)
    apps = []
    for community in ("one", "two"):
        app = Flask(__name__)
        app.config.update(RAI_COMMUNITY_ID=community, RAI_ACCESS_ID="i", RAI_ACCESS_KEY="k")
        extension.init_app(app)
        app.add_url_rule("/", view_func=lambda: Response(PAGE))
        apps.append(app)
    for app, community in zip(apps, ("one", "two"), strict=True):
        assert ReturningAI.core(app).settings.community_id == community


def test_compressed_pages(app: Flask, caplog: pytest.LogCaptureFixture) -> None:
    client = app.test_client()
    client.post("/login")
    response = client.get("/gzipped")
    assert response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Content-Length"] == str(len(response.get_data()))
    assert len(TOKENS.findall(gzip.decompress(response.get_data()))) == 2
    streamed = client.get("/gzip-stream")
    assert len(TOKENS.findall(gzip.decompress(streamed.get_data()))) == 2
    with caplog.at_level(logging.WARNING, logger="rai_middleware"):
        # Nothing could be rewritten: the app's bytes, all of them, unchanged.
        assert client.get("/corrupt-stream").get_data() == b"this is not gzip"
        assert client.get("/brotli").get_data() == b"..."
        assert client.get("/brotli").get_data() == b"..."
    assert "corrupt" in caplog.text
    assert caplog.text.count("Content-Encoding 'br'") == 1


def test_csp_nonces(app: Flask) -> None:
    client = app.test_client()
    client.post("/login")
    assert b'nonce="talisman-nonce"' in client.get("/nonce").get_data()
    assert b'nonce="g-nonce"' in client.get("/g-nonce").get_data()
    assert b'nonce="fromheader"' in client.get("/csp").get_data()


def test_script_root_prefixes_the_refresh_url(app: Flask) -> None:
    client = app.test_client()
    client.post("/login")
    body = client.get("/page", base_url="http://localhost/app/").get_data()
    assert b"/app/_rai/embed-token" in body


def test_a_failing_rewrite_sends_the_page_unchanged(
    app: Flask, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr("rai_middleware._page.rewrite_headers", broken)
    client = app.test_client()
    client.post("/login")
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        assert client.get("/page").get_data() == PAGE
    assert "sending it unchanged" in caplog.text


def test_pages_without_real_widgets(app: Flask, upstream: Upstream) -> None:
    page = b'<rai-placeholder widget="nonesuch">x</rai-placeholder>'
    comment = b"<!-- <rai-placeholder widget=store/> -->"
    app.add_url_rule("/nonesuch", "nonesuch", view_func=lambda: Response(page))
    app.add_url_rule("/comment", "comment", view_func=lambda: Response(comment))
    app.add_url_rule(
        "/gzip-plain",
        "gzip-plain",
        view_func=lambda: Response(
            gzip.compress(b"<p>x</p>"), headers={"Content-Encoding": "gzip"}
        ),
    )
    client = app.test_client()
    client.post("/login")
    assert client.get("/nonesuch").get_data() == b"x"
    assert client.get("/comment").get_data() == comment
    assert gzip.decompress(client.get("/gzip-plain").get_data()) == b"<p>x</p>"
    assert upstream.calls == 0


@pytest.mark.server
def test_real_server(app: Flask, upstream: Upstream) -> None:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/page").content == ANONYMOUS
            client.post("/login")
            response = client.get("/page")
            assert response.headers["content-length"] == str(len(response.content))
            assert TOKENS.findall(response.content) == [b"tok-7-1"] * 2
            streamed = client.get("/stream")
            assert "content-length" not in streamed.headers
            assert TOKENS.findall(streamed.content) == [b"tok-7-1"] * 2
            refresh = client.post(
                "/_rai/embed-token", headers={"X-RAI-Ticket": ticket_of(response.content)}
            )
            assert refresh.json()["embedToken"] == "tok-7-1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
