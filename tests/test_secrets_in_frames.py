"""No credential in any frame that can raise (issue 12, item 3).

Error reporters with default settings (Sentry, structlog's dict tracebacks, rich) print every
local variable of every frame of a traceback. So every failure this test can provoke is run
through each entrance, every logged and every raised exception is formatted with its locals
over the whole chain (``__cause__`` and ``__context__``), and none of the access id, access
key, widget API key or secret key may appear, nor in the log messages. A second variant does
the same with Sentry's SDK (default settings: locals captured) and a transport that collects
envelopes instead of sending them.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from rai_middleware.testing import FakeReturningAI
from tests import entrances
from tests.conftest import ACCESS_ID, ACCESS_KEY, SECRET_KEY
from tests.entrances import ENTRANCES, build_site

WIDGET_API_KEY = "widget-api-key-WWWWWWWWWWWWWWWWWWWW"
SECRETS = (ACCESS_ID, ACCESS_KEY, WIDGET_API_KEY, SECRET_KEY)
ASYNC_ENTRANCES = {"asgi", "django-async"}

#: Who the ``X-User`` header names -> what ``identify`` returns (or raises).
IDENTITIES: dict[str, Any] = {
    "alice": {"data-customer-id": "alice", "data-email": "alice@example.com"},
    # Not encodable: a lone surrogate cannot become UTF-8 JSON...
    "surrogate": {"data-customer-id": "al\ud800ice", "data-email": "s@example.com"},
    # ...and an HTTP header value must be ASCII without line breaks (mode iframe).
    "non-ascii": {"data-customer-id": "zoe", "data-email": "zo\u00eb@example.com"},
    "crlf": {"data-customer-id": "eve", "data-email": "eve@example.com\r\nX-Evil: 1"},
    "raises": RuntimeError("the user database is down"),
}


class FailingStore:
    """A token store whose every call raises something that is no ``StoreError``."""

    def _fail(self, *args: object) -> Any:
        raise ConnectionResetError("the store went away")

    load = save = acquire = release = close = _fail


class AsyncFailingStore:
    async def _fail(self, *args: object) -> Any:
        raise ConnectionResetError("the store went away")

    load = save = acquire = release = _fail

    async def aclose(self) -> None:
        pass


@dataclass(frozen=True)
class Case:
    user: str = "alice"
    mode: str = "access_key"
    #: FakeReturningAI.fail_always(**fail), if given.
    fail: dict[str, Any] | None = None
    refused: bool = False
    store: bool = False
    broken_render: bool = False
    timeout: float = 2.0


CASES: dict[str, Case] = {
    "upstream-500": Case(fail={"status": 500}),
    "upstream-401": Case(fail={"status": 401}),
    "garbage-body": Case(fail={"mode": "garbage"}),
    "missing-token": Case(fail={"mode": "missing_token"}),
    "timeout": Case(fail={"mode": "hang"}, timeout=0.3),
    "disconnect": Case(fail={"mode": "disconnect"}),
    "connection-refused": Case(refused=True),
    "lone-surrogate": Case(user="surrogate"),
    "iframe-500": Case(mode="iframe", fail={"status": 500}),
    "iframe-timeout": Case(mode="iframe", fail={"mode": "hang"}, timeout=0.3),
    "iframe-non-ascii-email": Case(user="non-ascii", mode="iframe"),
    "iframe-crlf-email": Case(user="crlf", mode="iframe"),
    "failing-store": Case(store=True),
    "failing-identify": Case(user="raises"),
    "broken-renderer": Case(broken_render=True),
}


def chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a half-built object (httpx.Headers mid-__init__)
        return f"<repr raised {type(exc).__name__}>"


def report(exc: BaseException) -> str:
    """What a locals-capturing reporter shows: every frame's locals over the whole chain,
    and each exception's repr (its args: a ``UnicodeEncodeError`` holds the whole object).

    ``TracebackException(capture_locals=True)`` first; it gives up when a local's repr
    raises, so every frame's locals are also written out with a repr that cannot."""
    parts: list[str] = []
    try:
        parts += traceback.TracebackException(
            type(exc), exc, exc.__traceback__, capture_locals=True
        ).format(chain=True)
    except Exception as error:
        parts.append(f"TracebackException gave up: {error!r}\n")
    for link in chain(exc):
        parts.append(safe_repr(link) + safe_repr(link.args) + "\n")
        tb = link.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            parts.append(f"  {frame.f_code.co_filename}:{tb.tb_lineno} {frame.f_code.co_name}\n")
            parts += [f"    {k} = {safe_repr(v)}\n" for k, v in frame.f_locals.items()]
            tb = tb.tb_next
    return "".join(parts)


#: The fake upstream's own server logs its injected failures, with the request the middleware
#: sent (credentials and all, as the real service receives them): not the middleware's logs.
FAKE_UPSTREAM_LOGGERS = ("uvicorn",)


def not_the_fake(event: Any, hint: Any) -> Any:
    return None if str(event.get("logger", "")).startswith(FAKE_UPSTREAM_LOGGERS) else event


class Capture(logging.Handler):
    """Every record, formatted at once (the frames' locals as they are when logged)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.messages: list[str] = []  # the package's own messages, without tracebacks
        self.exceptions = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(FAKE_UPSTREAM_LOGGERS):
            return
        text = f"{record.name}: {record.getMessage()}"
        if record.name.startswith("rai_middleware"):
            self.messages.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            self.exceptions += 1
            text += "\n" + report(record.exc_info[1])
        self.texts.append(text)


@contextlib.contextmanager
def captured_logs() -> Iterator[Capture]:
    capture = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)


@pytest.fixture(scope="module")
def fake_url() -> Iterator[str]:
    fake = FakeReturningAI(
        access_id=ACCESS_ID, access_key=ACCESS_KEY, widget_api_key=WIDGET_API_KEY
    )
    fake.hang_seconds = 2.0
    with fake.run_in_thread() as url:
        fake_url.fake = fake  # type: ignore[attr-defined]
        yield url


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def identify_table(user: str | None) -> dict[str, str] | None:
    found = IDENTITIES.get(user or "")
    if isinstance(found, BaseException):
        raise type(found)(*found.args)
    return dict(found) if found else None


def site_for(entrance: str, case: Case, base_url: str) -> entrances.Site:
    upstream = closed_port_url() if case.refused else base_url
    options: dict[str, Any] = {
        "api_base_url": upstream,
        "widgets_base_url": upstream,
        "timeout": case.timeout,
        "failure_threshold": 1000,  # every page tries the upstream
    }
    if case.mode == "iframe":
        options.update(mode="iframe", widget_api_key=WIDGET_API_KEY)
    if case.store:
        options["token_store"] = AsyncFailingStore() if entrance == "asgi" else FailingStore()
    return build_site(entrance, options=options)


def visit(site: entrances.Site, user: str, raised: list[str]) -> None:
    """Two pages for ``user``; an exception that escapes is reported, not raised. Nothing
    secret is a local here or in the caller frames the traceback reaches."""
    for _ in range(2):
        try:
            site.get("/page", headers={"X-User": user})
        except Exception as exc:
            raised.append(report(exc))


def run_case(
    entrance: str, name: str, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[str]]:
    """(log texts, raised-exception reports) of one failure on one entrance."""
    texts, raised, _ = run_case_logs(entrance, name, base_url, monkeypatch)
    return texts, raised


def run_case_logs(
    entrance: str, name: str, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[str], list[str]]:
    """(log texts, raised-exception reports, the package's log messages)."""
    case = CASES[name]
    fake: FakeReturningAI = fake_url.fake  # type: ignore[attr-defined]
    fake.recover()
    if case.fail is not None:
        fake.fail_always(**case.fail)
    monkeypatch.setattr(entrances, "identity", identify_table)
    if case.broken_render:

        def broken(*args: object, **kwargs: object) -> str:
            raise ValueError("the template engine broke")

        monkeypatch.setattr("rai_middleware._modes.access_key.render_widget", broken)
    raised: list[str] = []
    site = site_for(entrance, case, base_url)
    try:
        with captured_logs() as logs:
            visit(site, case.user, raised)
    finally:
        site.close()
        fake.recover()
    return logs.texts, raised, logs.messages


def leaks(texts: list[str]) -> list[str]:
    return [
        f"{secret[:12]}... in: {text[:200]!r}"
        for text in texts
        for secret in SECRETS
        if secret in text
    ]


@pytest.mark.parametrize("entrance", ENTRANCES)
@pytest.mark.parametrize("name", list(CASES))
def test_no_secret_in_any_frame(
    entrance: str, name: str, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    logs, raised = run_case(entrance, name, fake_url, monkeypatch)
    assert logs or raised, "the failure was not provoked: nothing logged, nothing raised"
    assert leaks(logs + raised) == []


@pytest.mark.parametrize("entrance", ["asgi", "wsgi"])
@pytest.mark.parametrize(
    "name",
    list(CASES),
)
def test_no_identifier_in_log_messages(
    entrance: str, name: str, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 8: the package's log lines name a visitor by a short keyed hash at most, never by
    an email or an id."""
    _, _, messages = run_case_logs(entrance, name, fake_url, monkeypatch)
    found = IDENTITIES[CASES[name].user]
    values = [] if isinstance(found, BaseException) else list(found.values())
    for value in values:
        for part in value.splitlines():
            assert not [m for m in messages if part in m], part


# -- Sentry ---------------------------------------------------------------------------------


@contextlib.contextmanager
def sentry_capture() -> Iterator[list[str]]:
    sentry_sdk = pytest.importorskip("sentry_sdk")
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.transport import Transport

    envelopes: list[str] = []

    class Collect(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            envelopes.append(envelope.serialize().decode("utf-8", "replace"))

    # Default settings (include_local_variables=True), no network; warnings become events
    # too, so that the token service's warnings with exc_info are reported in full.
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=Collect,
        default_integrations=False,
        before_send=not_the_fake,
        integrations=[LoggingIntegration(event_level=logging.WARNING)],
    )
    try:
        yield envelopes
        sentry_sdk.flush()
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


@pytest.mark.parametrize("entrance", ["asgi", "wsgi"])
@pytest.mark.parametrize("name", list(CASES))
def test_no_secret_in_sentry_events(
    entrance: str, name: str, fake_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with sentry_capture() as envelopes:
        _, raised = run_case(entrance, name, fake_url, monkeypatch)
    texts = envelopes + raised
    assert leaks(texts) == []
    if raised or name not in ("failing-identify",):
        return
    assert any('"vars"' in text for text in envelopes), "Sentry captured no frame locals"


def test_sentry_capture_sees_frame_locals() -> None:
    """The Sentry variant would catch a leak: a secret in a frame of a logged exception is
    in the captured event."""

    def fails(key: str) -> None:
        raise RuntimeError("boom")

    with sentry_capture() as envelopes:
        try:
            fails(ACCESS_KEY)
        except RuntimeError:
            logging.getLogger("rai_middleware").exception("failed")
    assert leaks(envelopes)


def test_report_sees_frame_locals_and_exception_args() -> None:
    """The locals-capturing formatter would catch a leak, in a frame or in an exception's
    args anywhere in the chain."""

    def fails(key: str) -> None:
        raise RuntimeError("boom")

    try:
        fails(SECRET_KEY)
    except RuntimeError as exc:
        assert leaks([report(exc)])

    def encode() -> bytes:
        return (ACCESS_KEY + "\ud800").encode()  # the error's args hold the whole string

    try:
        try:
            encode()
        except UnicodeEncodeError:
            raise ValueError("wrapped") from None
    except ValueError as exc:
        assert leaks([report(exc)])  # __context__ is kept even under "from None"
