"""One visitor must not hurt the others, and no failure may carry a credential (issue 12,
items 2, 3 and 5), on both drivers: the circuit breaker counts only upstream-wide
failures, an identity's own failures back off that identity alone, half-open lets one
probe through, and every failure's traceback, locals included, is free of secrets.

A fake clock for the policy (cool-downs, backoffs); real time only for waiting pages."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from rai_middleware import TokenError
from rai_middleware._async_tokens import TokenService
from rai_middleware._config import Settings
from rai_middleware._identity import Identity
from rai_middleware._sync_tokens import SyncTokenService
from rai_middleware._tokens import IDENTITY_BACKOFF, EmbedToken
from tests.conftest import ACCESS_ID, ACCESS_KEY, SECRET_KEY
from tests.test_tokens import settings

API_KEY = "widget-api-key-WWWWWWWWWWWWWWWWWWWW"
SECRETS = (ACCESS_KEY, ACCESS_ID, API_KEY, SECRET_KEY)
KINDS = ["async", "sync"]

Handler = Callable[[httpx.Request], Any]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def person(name: str, **more: str) -> Identity:
    return Identity.create({"data-customer-id": name, **more}, b"secret")


def fresh(answer: httpx.Response) -> httpx.Response:
    """A copy to send: a response object's stream is read only once."""
    return httpx.Response(answer.status_code, content=answer.content)


def who(request: httpx.Request) -> str:
    """The customer id (access_key mode) or the email header (iframe mode) of a request."""
    if request.content:
        identifiers: dict[str, str] = json.loads(request.content)["userIdentifiers"]
        return identifiers["data-customer-id"]
    return request.headers["email"]


def token_for(request: httpx.Request) -> httpx.Response:
    name = who(request)
    if request.content:
        return httpx.Response(200, json={"data": {"embedToken": f"tok-{name}", "expiresIn": 900}})
    return httpx.Response(200, json={"token": f"tok-{name}"})


class Service:
    """One driver, called synchronously: ``get`` answers the token or the TokenError."""

    def __init__(self, kind: str, config: Settings, handler: Handler, clock: Clock) -> None:
        self.kind = kind
        if kind == "async":
            self.runner = asyncio.Runner()
            self.async_client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
            self.service: Any = TokenService(config, http_client=self.async_client, clock=clock)
        else:
            self.sync_client = httpx.Client(transport=httpx.MockTransport(handler))
            self.service = SyncTokenService(config, http_client=self.sync_client, clock=clock)

    def get(self, identity: Identity) -> EmbedToken | TokenError:
        outcome = self.attempt(identity)
        if isinstance(outcome, (EmbedToken, TokenError)):
            return outcome
        raise outcome

    def attempt(self, identity: Identity) -> EmbedToken | Exception:
        """The token, or what ``get`` raised, caught here (its traceback starts here)."""
        try:
            if self.kind == "async":
                token: EmbedToken = self.runner.run(self.service.get(identity))
            else:
                token = self.service.get(identity)
        except Exception as exc:
            return exc
        return token

    def close(self) -> None:
        if self.kind == "async":
            self.runner.run(self.service.aclose())
            self.runner.run(self.async_client.aclose())
            self.runner.close()
        else:
            self.service.close()
            self.sync_client.close()


@contextmanager
def service(kind: str, handler: Handler, clock: Clock, **options: Any) -> Iterator[Service]:
    running = Service(kind, settings(**options), handler, clock)
    try:
        yield running
    finally:
        running.close()


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# -- item 2: one visitor cannot switch widgets off for everyone --------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("status", [400, 404, 409, 422])
def test_one_refused_visitor_does_not_trip_the_breaker_for_everyone(
    kind: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack run: 5 page loads per cool-down by one identity Returning.AI refuses,
    then new visitors. Before, those 5 failures in a row opened the breaker."""
    clock, calls = Clock(), Counter[str]()

    def handler(request: httpx.Request) -> httpx.Response:
        calls[who(request)] += 1
        if who(request) == "mallory":
            return httpx.Response(status, json={"message": "no such user"})
        return token_for(request)

    served: list[EmbedToken | TokenError] = []
    with (
        caplog.at_level(logging.WARNING, logger="rai_middleware"),
        service(kind, handler, clock) as running,
    ):
        for window in range(3):  # three cool-downs' worth (30 s each), 50 visitors each
            clock.now = 1000.0 + window * (IDENTITY_BACKOFF + 1)
            for _ in range(5):
                assert isinstance(running.get(person("mallory")), TokenError)
            for n in range(50):
                clock.now += 0.1
                served.append(running.get(person(f"good-{window}-{n}")))
        assert not running.service.policy._tripped
    assert all(isinstance(token, EmbedToken) for token in served)  # 150 of 150
    assert calls["mallory"] == 3  # one call per backoff, not one per page
    assert len(warnings(caplog, "for one visitor")) == 3
    assert not warnings(caplog, "failures in a row")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(503),
        httpx.Response(429),
        httpx.Response(401),
        httpx.Response(403),
        httpx.ConnectError("connection refused"),
        httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
        httpx.ReadTimeout("slow"),
        httpx.Response(200, content=b"<html>not json"),
    ],
    ids=lambda answer: str(getattr(answer, "status_code", type(answer).__name__)),
)
def test_upstream_wide_failures_count_towards_the_breaker(
    kind: str, answer: httpx.Response | Exception
) -> None:
    clock, calls = Clock(), Counter[str]()

    def handler(request: httpx.Request) -> httpx.Response:
        calls[who(request)] += 1
        if isinstance(answer, Exception):
            raise answer
        return fresh(answer)

    with service(kind, handler, clock, failure_threshold=2) as running:
        assert isinstance(running.get(person("a")), TokenError)
        assert isinstance(running.get(person("b")), TokenError)
        refused = running.get(person("c"))  # open: not asked
        assert isinstance(refused, TokenError) and "cool-down" in str(refused)
    assert calls == {"a": 1, "b": 1}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("mode", "identifiers", "field"),
    [
        ("iframe", {"data-email": "a@b.c\r\nX-Injected: 1"}, "data-email"),
        ("iframe", {"data-email": "a@b.c\n"}, "data-email"),
        ("iframe", {"data-email": "пользователь@example.com"}, "data-email"),
        ("access_key", {"data-customer-id": "abc\ud800"}, "data-customer-id"),
        ("access_key", {"data-customer-id": "x", "data-name": "a\x00b"}, "data-name"),
    ],
    ids=["crlf-header", "lf-header", "not-latin-1-header", "lone-surrogate", "nul"],
)
def test_an_identity_that_cannot_be_sent_is_refused_before_any_request(
    kind: str,
    mode: str,
    identifiers: dict[str, str],
    field: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, calls = Clock(), Counter[str]()

    def handler(request: httpx.Request) -> httpx.Response:
        calls[who(request)] += 1
        return token_for(request)

    options: dict[str, Any] = {"failure_threshold": 1}
    if mode == "iframe":
        options.update(mode="iframe", widget_api_key=API_KEY)
    bad = Identity.create(identifiers, b"secret")
    good = Identity.create({"data-customer-id": "ok", "data-email": "ok@example.com"}, b"secret")
    with (
        caplog.at_level(logging.DEBUG, logger="rai_middleware"),
        service(kind, handler, clock, **options) as running,
    ):
        for _ in range(5):
            assert isinstance(running.get(bad), TokenError)
        assert isinstance(running.get(good), EmbedToken)  # no breaker, even at threshold 1
    assert sum(calls.values()) == 1  # the good visitor's
    said = warnings(caplog, "for one visitor")
    assert len(said) == 1 and field in said[0]
    logged = caplog.text
    for value in identifiers.values():
        for line in value.splitlines():
            if len(line) > 1:
                assert line not in logged


@pytest.mark.parametrize("kind", KINDS)
def test_the_backoff_lasts_identity_backoff_seconds_then_the_identity_is_asked_again(
    kind: str,
) -> None:
    clock, calls = Clock(), Counter[str]()
    answers = iter([httpx.Response(404), httpx.Response(404)])

    def handler(request: httpx.Request) -> httpx.Response:
        calls[who(request)] += 1
        return next(answers, None) or token_for(request)

    with service(kind, handler, clock) as running:
        assert isinstance(running.get(person("x")), TokenError)
        clock.now += IDENTITY_BACKOFF - 1
        assert isinstance(running.get(person("x")), TokenError)
        assert calls["x"] == 1
        clock.now += 2
        assert isinstance(running.get(person("x")), TokenError)  # asked: 404 again
        clock.now += IDENTITY_BACKOFF + 1
        assert isinstance(running.get(person("x")), EmbedToken)
    assert calls["x"] == 3


def test_the_backoff_memory_is_bounded() -> None:
    clock = Clock()
    with service("sync", lambda request: httpx.Response(404), clock, cache_maxsize=10) as running:
        for n in range(50):
            running.get(person(f"p{n}"))
        assert len(running.service.policy._backoff) == 10


# -- item 5: half-open lets one probe through -------------------------------------------


def _open_the_breaker(running: Service, clock: Clock) -> None:
    assert isinstance(running.get(person("first")), TokenError)  # threshold 1: open
    assert running.service.policy._tripped
    clock.now += 31  # the cool-down is over: half-open


@pytest.mark.anyio
async def test_async_half_open_lets_exactly_one_probe_through() -> None:
    clock, calls = Clock(), Counter[str]()
    answer = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        calls[who(request)] += 1
        if who(request) == "first":
            return httpx.Response(502)
        await answer.wait()
        return token_for(request)

    config = settings(failure_threshold=1, failure_cooldown=30)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        running = TokenService(config, http_client=client, clock=clock)
        with pytest.raises(TokenError):
            await running.get(person("first"))
        clock.now += 31
        pages = [asyncio.create_task(running.get(person(f"v{n}"))) for n in range(60)]
        await asyncio.sleep(0.05)
        finished = [page for page in pages if page.done()]
        assert len(finished) == 59  # at once, without waiting for the probe
        assert all(isinstance(page.exception(), TokenError) for page in finished)
        assert sum(calls.values()) == 2  # the failure before, and one probe
        answer.set()
        (probe,) = [page for page in pages if not page.done()]
        assert isinstance(await probe, EmbedToken)
        assert isinstance(await running.get(person("after")), EmbedToken)  # closed again
        await running.aclose()


def test_sync_half_open_lets_exactly_one_probe_through() -> None:
    clock, calls = Clock(), Counter[str]()
    answer = threading.Event()
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            calls[who(request)] += 1
        if who(request) == "first":
            return httpx.Response(502)
        answer.wait(5)
        return token_for(request)

    with service("sync", handler, clock, failure_threshold=1, failure_cooldown=30) as running:
        _open_the_breaker(running, clock)
        outcomes: dict[int, EmbedToken | TokenError] = {}

        def page(n: int) -> None:
            outcomes[n] = running.get(person(f"v{n}"))

        threads = [threading.Thread(target=page, args=(n,)) for n in range(60)]
        for thread in threads:
            thread.start()
        for _ in range(200):
            if len(outcomes) >= 59:
                break
            threading.Event().wait(0.01)
        assert len(outcomes) == 59  # every other page answered while the probe is out
        assert all(isinstance(outcome, TokenError) for outcome in outcomes.values())
        assert sum(calls.values()) == 2
        answer.set()
        for thread in threads:
            thread.join(5)
        assert sum(isinstance(o, EmbedToken) for o in outcomes.values()) == 1
        assert isinstance(running.get(person("after")), EmbedToken)


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_probe_opens_the_breaker_again_and_a_refused_one_frees_the_probe(
    kind: str,
) -> None:
    clock, calls = Clock(), Counter[str]()

    def handler(request: httpx.Request) -> httpx.Response:
        calls[who(request)] += 1
        if who(request) in {"first", "down"}:
            return httpx.Response(502)
        if who(request) == "unknown":
            return httpx.Response(404)
        return token_for(request)

    with service(kind, handler, clock, failure_threshold=1, failure_cooldown=30) as running:
        _open_the_breaker(running, clock)
        assert isinstance(running.get(person("down")), TokenError)  # the probe fails
        refused = running.get(person("next"))
        assert isinstance(refused, TokenError) and "cool-down" in str(refused)
        clock.now += 31
        assert isinstance(running.get(person("unknown")), TokenError)  # about one visitor
        assert running.service.policy._tripped  # still half-open: nothing proved either way
        assert isinstance(running.get(person("next")), EmbedToken)  # the next probe
        assert not running.service.policy._tripped
    assert calls == {"first": 1, "down": 1, "unknown": 1, "next": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_background_refresh_is_no_probe(kind: str) -> None:
    clock = Clock()
    with service(kind, token_for, clock, failure_threshold=1, failure_cooldown=30) as running:
        policy = running.service.policy
        assert isinstance(running.get(person("kept")), EmbedToken)
        policy._tripped = True  # as after a cool-down
        assert policy.lead(person("kept"), deadline=0.0) is None


# -- item 3: no secret in any failure, locals included ------------------------------------


def _formatted(exc: BaseException) -> str:
    """What a locals-capturing reporter (Sentry's default, structlog, rich) would see."""
    shown = traceback.TracebackException(
        type(exc), exc, exc.__traceback__, capture_locals=True
    ).format(chain=True)
    return "".join(shown) + repr(exc) + str(exc)


def _failures() -> list[tuple[str, dict[str, str], Any]]:
    good = {"data-customer-id": "c-1", "data-email": "a@b.c"}
    return [
        ("access_key", good, httpx.ConnectError("connection refused")),
        ("access_key", good, httpx.ReadTimeout("slow")),
        ("access_key", good, httpx.LocalProtocolError("Illegal header value")),
        ("access_key", good, httpx.Response(500, text="boom")),
        ("access_key", good, httpx.Response(404)),
        ("access_key", good, httpx.Response(200, text="not json")),
        ("access_key", good, UnicodeEncodeError("ascii", "x" * 9, 0, 1, "broken client")),
        ("access_key", good, RuntimeError("the client is closed")),
        ("access_key", {"data-customer-id": "abc\ud800"}, None),
        ("access_key", {"data-customer-id": "a\r\nb"}, None),
        ("iframe", {"data-email": "josé@тест.example"}, None),
        ("iframe", {"data-email": "a@b.c\r\nx: y"}, None),
        ("iframe", good, httpx.ConnectError("connection refused")),
        ("iframe", good, RuntimeError("the client is closed")),
    ]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("mode", "identifiers", "answer"), _failures())
def test_no_secret_in_any_failure_with_locals_captured(
    kind: str,
    mode: str,
    identifiers: dict[str, str],
    answer: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return fresh(answer) if answer is not None else token_for(request)

    options: dict[str, Any] = {"secret_key": SECRET_KEY}
    if mode == "iframe":
        options.update(mode="iframe", widget_api_key=API_KEY)
    identity = Identity.create(identifiers, SECRET_KEY.encode())
    caught: list[BaseException] = []
    with (
        caplog.at_level(logging.DEBUG, logger="rai_middleware"),
        service(kind, handler, Clock(), **options) as running,
    ):
        outcome = running.attempt(identity)  # a broken client's error: the page fails open
        assert isinstance(outcome, (TokenError, RuntimeError))
        caught.append(outcome)
    shown = [_formatted(exc) for exc in caught]
    for record in caplog.records:
        shown.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            shown.append(_formatted(record.exc_info[1]))
    for text in shown:
        for secret in SECRETS:
            assert secret not in text
