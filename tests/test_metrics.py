"""Counters and events (issue 15, item 6), unit by unit: the counters, the ``on_event``
dispatcher, failure kinds, the token policy's counts and the page rewrite's. The same
behaviours on every entrance are in ``tests/test_entrances.py``."""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
import typing
from pathlib import Path
from typing import Any

import httpx
import pytest

import rai_middleware
from rai_middleware import EVENTS, FAILURE_KINDS, ConfigurationError, Event, Stats, TokenError
from rai_middleware import _metrics as metrics_module
from rai_middleware._core import Core
from rai_middleware._identity import Identity
from rai_middleware._metrics import Metrics
from rai_middleware._needs import Grant, Identify, TokenNeed
from rai_middleware._page import PageRewrite
from rai_middleware._token_flow import Deliver, Post, mint_flow, resume
from rai_middleware._upstream import IdentityRefused, TimedOut, Unreachable, failure_kind
from tests.test_entrances import expected_stats
from tests.test_tokens import settings, user

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
PLACEHOLDER = b'<rai-placeholder widget="store">fallback</rai-placeholder>'
HTML = [(b"content-type", b"text/html; charset=utf-8")]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recorded(event: Event) -> None:
    """A dotted-path ``on_event`` for the option tests."""


# -- the names are public, stable and documented --------------------------------------------


def test_the_stats_keys_are_the_typed_snapshot_keys() -> None:
    snapshot = Core(settings(), compression_advice="").stats()
    assert list(snapshot) == list(typing.get_type_hints(Stats))
    assert snapshot == expected_stats()
    assert list(snapshot["mint_failures"]) == list(FAILURE_KINDS)


def test_the_public_names_are_exported() -> None:
    for name in ("EVENTS", "FAILURE_KINDS", "Event", "Stats"):
        assert name in rai_middleware.__all__
    assert Event.__module__ == "rai_middleware"
    assert len(set(EVENTS)) == len(EVENTS) == 11


def test_docs_list_every_stats_key_event_and_failure_kind() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+)`", text, re.MULTILINE))
    assert set(typing.get_type_hints(Stats)) <= documented
    assert set(EVENTS) <= documented
    assert set(FAILURE_KINDS) <= documented


def test_an_event_is_an_immutable_tuple() -> None:
    event = Event("mint", "0123abcd", 0.25)
    assert event._asdict() == {
        "name": "mint",
        "identity_hash": "0123abcd",
        "duration": 0.25,
        "kind": None,
    }
    with pytest.raises(AttributeError):
        event.name = "other"  # type: ignore[misc]
    assert tuple(event) == ("mint", "0123abcd", 0.25, None)


# -- counting -------------------------------------------------------------------------------


def test_counters_are_exact_under_threads() -> None:
    metrics = Metrics()

    def count() -> None:
        for _ in range(20_000):
            metrics.page(True, None)
            metrics.mint_started()

    threads = [threading.Thread(target=count) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = metrics.snapshot("closed")
    assert (snapshot["pages_rewritten"], snapshot["mints"]) == (80_000, 80_000)


def test_without_on_event_no_event_is_built_and_no_thread_started() -> None:
    metrics = Metrics()
    metrics.lookup("0123abcd", hit=True)
    assert metrics._dispatcher is None
    assert metrics.flush(0.0) is True
    assert repr(metrics) == "Metrics(mints=0, on_event=False)"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (TimedOut("timed out after 3 s"), "timeout"),
        (Unreachable("ConnectError: refused"), "network"),
        (TokenError("HTTP 502", status_code=502), "server_error"),
        (TokenError("HTTP 401", status_code=401), "unauthorized"),
        (TokenError("HTTP 403", status_code=403), "unauthorized"),
        (TokenError("HTTP 429", status_code=429), "rate_limited"),
        (TokenError("HTTP 404", status_code=404), "refused"),
        (IdentityRefused("HTTP 400", status_code=400), "refused"),
        (IdentityRefused("the visitor's data-email holds a control character"), "invalid_identity"),
        (TokenError("the answer has no data object", status_code=200), "bad_answer"),
        (TokenError("HTTP 302", status_code=302), "bad_answer"),
        (TokenError("the token lives 10 s, less than min_token_ttl"), "bad_answer"),
        (RuntimeError("the HTTP client raised KeyError"), "error"),
    ],
)
def test_each_failure_has_its_kind(error: BaseException, kind: str) -> None:
    assert failure_kind(error) == kind
    assert kind in FAILURE_KINDS


# -- the token policy's counts ----------------------------------------------------------------


def policy(**options: Any) -> tuple[Any, Clock, list[Event]]:
    from rai_middleware._tokens import TokenPolicy

    events: list[Event] = []
    clock = Clock()
    made = TokenPolicy(settings(on_event=events.append, **options), clock=clock)
    return made, clock, events


def test_a_mint_event_carries_the_request_duration_on_the_clock() -> None:
    made, clock, events = policy()
    flight, leader = made.join(user(1), deadline=time.monotonic() + 5)
    assert leader
    flow = mint_flow(made, user(1), deadline=clock.now + 5, store=False, timer=clock)
    op = resume(flow)
    assert isinstance(op, Post)
    clock.now += 0.25
    answer = httpx.Response(200, json={"data": {"embedToken": "t.o.k", "expiresIn": 900}})
    op = resume(flow, answer)
    assert isinstance(op, Deliver)
    made.deliver(flight, op.token, op.error)
    assert made.metrics.flush(5.0)
    assert events == [Event("mint", user(1).tag, 0.25)]
    assert made.mint_count == 1


def test_an_identifier_that_cannot_be_sent_is_a_failure_without_a_mint() -> None:
    made, clock, events = policy()
    bad = Identity.create({"data-customer-id": "a\nb"}, b"secret")
    flight, _ = made.join(bad, deadline=time.monotonic() + 5)
    clock.now += 1.0
    op = resume(mint_flow(made, bad, deadline=clock.now + 5, store=False, timer=clock))
    assert isinstance(op, Deliver) and op.error is not None
    made.deliver(flight, op.token, op.error)
    stats = made.metrics.snapshot(made.breaker_state())
    assert stats == expected_stats(failures={"invalid_identity": 1})
    assert made.metrics.flush(5.0)
    assert events == [Event("mint_failure", bad.tag, 1.0, "invalid_identity")]


def test_a_waiter_deadline_is_a_timeout_and_the_late_answer_is_not_counted_again() -> None:
    made, clock, events = policy()
    flight, _ = made.join(user(1), deadline=time.monotonic() + 5)
    clock.now += 3.0
    made.expire(flight)
    made.deliver(flight, error=TokenError("HTTP 503", status_code=503))  # too late
    stats = made.metrics.snapshot(made.breaker_state())
    assert stats["mint_failures"] == {**dict.fromkeys(FAILURE_KINDS, 0), "timeout": 1}
    assert made.metrics.flush(5.0)
    assert events == [Event("mint_failure", user(1).tag, 3.0, "timeout")]


def test_a_driver_bug_counts_as_an_error_and_a_shutdown_counts_nothing() -> None:
    made, _, _ = policy()
    bug, _ = made.join(user(1), deadline=time.monotonic() + 5)
    made.abandon(bug, KeyError("driver bug"))
    closing, _ = made.join(user(2), deadline=time.monotonic() + 5)
    made.abandon(closing, TokenError("the token service is closing"))
    failures = made.metrics.snapshot("closed")["mint_failures"]
    assert failures == {**dict.fromkeys(FAILURE_KINDS, 0), "error": 1}


def test_the_breaker_state_goes_open_half_open_closed() -> None:
    made, clock, events = policy(failure_threshold=1, failure_cooldown=30.0)
    assert made.breaker_state() == "closed"
    flight, _ = made.join(user(1), deadline=time.monotonic() + 5)
    made.deliver(flight, error=TokenError("HTTP 500", status_code=500))
    assert made.breaker_state() == "open"
    clock.now += 30.0
    assert made.breaker_state() == "half_open"
    made.accept(user(1), ("t.o.k", 900.0), clock.now)
    assert made.breaker_state() == "closed"
    assert made.metrics.snapshot("closed")["breaker_openings"] == 1
    assert made.metrics.flush(5.0)
    assert [event.name for event in events] == [
        "mint_failure",
        "breaker_open",
        "mint",
        "breaker_close",
    ]


def test_keep_warm_and_refresh_ahead_both_count_as_refresh_ahead_mints() -> None:
    made, _, events = policy()
    assert made.lead(user(1), deadline=time.monotonic() + 5) is not None
    assert made.lead(user(1), deadline=time.monotonic() + 5) is None  # one under way
    assert made.metrics.snapshot("closed")["refresh_ahead_mints"] == 1
    assert made.metrics.flush(5.0)
    assert events == [Event("refresh_ahead", user(1).tag)]


# -- the page rewrite's counts ----------------------------------------------------------------


def drive(rewrite: PageRewrite, flow: Any, identity: Identity | None, grant: Grant | None) -> Any:
    """Run a page flow by hand: the visitor is ``identity``, the token ``grant``."""
    try:
        need = next(flow)
        while True:
            if isinstance(need, Identify):
                need = flow.send(identity)
            else:
                assert isinstance(need, TokenNeed)
                need = flow.send(grant)
    except StopIteration as done:
        return done.value


def page_core() -> Core:
    return Core(settings(), compression_advice="")


def stream(core: Core) -> PageRewrite:
    rewrite = core.page("GET", 200, HTML, path="/", stream=True)
    assert rewrite is not None
    return rewrite


GRANT = Grant("t.o.k", 600)


def test_a_stream_the_app_stops_without_a_last_chunk_is_counted_once() -> None:
    core = page_core()
    rewrite = stream(core)
    step = drive(rewrite, rewrite.feed(b"<p>" + PLACEHOLDER, more=True), user(1), GRANT)
    assert b"rai-store-widget" in step.body
    rewrite.finish()
    rewrite.finish()
    plain = stream(core)
    drive(plain, plain.feed(b"<p>no widget</p>", more=True), user(1), GRANT)
    plain.finish()
    assert core.stats() == expected_stats(pages_rewritten=1, pages_passed_through=1)


def test_a_stream_the_app_abandons_is_counted_as_what_left_so_far() -> None:
    core = page_core()
    rewrite = stream(core)
    drive(rewrite, rewrite.feed(PLACEHOLDER, more=True), user(1), GRANT)
    rewrite.abandon()
    drive(rewrite, rewrite.feed(PLACEHOLDER, more=False), user(1), GRANT)  # sent as it is
    untouched = stream(core)
    drive(untouched, untouched.feed(b"<p>", more=True), None, None)
    untouched.abandon()
    assert core.stats() == expected_stats(pages_rewritten=1, pages_passed_through=1)


def test_a_stream_that_fails_open_on_its_first_chunk_is_passed_through(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("attribute parser bug")

    core = page_core()
    rewrite = stream(core)
    monkeypatch.setattr("rai_middleware._core.read_placeholder", broken)
    with caplog.at_level(logging.ERROR, logger="rai_middleware"):
        step = drive(rewrite, rewrite.feed(PLACEHOLDER, more=False), user(1), GRANT)
        step = drive(rewrite, rewrite.feed(b"<p>", more=True), user(1), GRANT)
    assert step.body == b"<p>" or step.body == b""
    assert core.stats()["pages_passed_through"] == 1
    assert core.stats()["pages_rewritten"] == 0


def test_a_page_without_a_token_for_a_known_visitor_is_a_fallback_served() -> None:
    core = page_core()
    rewrite = core.page("GET", 200, HTML, path="/", stream=False)
    assert rewrite is not None
    step = drive(rewrite, rewrite.feed(b"<p>" + PLACEHOLDER, more=False), user(1), None)
    assert step.body == b"<p>fallback"
    anonymous = core.page("GET", 200, HTML, path="/", stream=False)
    assert anonymous is not None
    drive(anonymous, anonymous.feed(PLACEHOLDER, more=False), None, None)
    assert core.stats() == expected_stats(pages_rewritten=2, fallbacks_served=1)


# -- the on_event dispatcher ------------------------------------------------------------------


def test_events_reach_on_event_in_order_on_one_thread_of_their_own() -> None:
    threads: set[str] = set()
    received: list[Event] = []

    def on_event(event: Event) -> None:
        threads.add(threading.current_thread().name)
        received.append(event)

    metrics = Metrics(on_event)
    for n in range(100):
        metrics.lookup(f"{n:08x}", hit=n % 2 == 0)
    assert metrics.flush(5.0)
    assert [event.identity_hash for event in received] == [f"{n:08x}" for n in range(100)]
    assert threads == {"rai-on-event"}


def test_a_stuck_on_event_never_blocks_and_drops_past_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics_module, "EVENT_QUEUE_LIMIT", 5)
    release = threading.Event()
    started = threading.Event()
    received: list[str] = []

    def on_event(event: Event) -> None:
        started.set()
        release.wait(10.0)
        received.append(event.name)

    metrics = Metrics(on_event)
    metrics.breaker_opened()  # taken by the worker, which then blocks
    assert started.wait(5.0)
    began = time.monotonic()
    for _ in range(20):
        metrics.store_failed()
    assert time.monotonic() - began < 1.0
    assert metrics.flush(0.05) is False  # still stuck
    release.set()
    assert metrics.flush(5.0)
    assert received == ["breaker_open"] + ["store_fallback"] * 5
    assert metrics.snapshot("closed")["events_dropped"] == 15


def test_after_a_fork_the_child_starts_its_own_thread() -> None:
    received: list[Event] = []
    metrics = Metrics(received.append)
    metrics.fallback_served("0123abcd")
    assert metrics.flush(5.0)
    metrics_module._after_fork()  # what os.register_at_fork runs in a child
    assert metrics._dispatcher is not None and metrics._dispatcher._thread is None
    metrics.fallback_served("4567cdef")
    assert metrics.flush(5.0)
    assert [event.identity_hash for event in received] == ["0123abcd", "4567cdef"]


# -- the option ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["tests.test_metrics.recorded", "tests.test_metrics:recorded"])
def test_on_event_may_be_a_dotted_path(path: str) -> None:
    assert settings(on_event=path).on_event is recorded


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (42, "on_event must be a callable or its dotted path, got int"),
        ("tests.test_metrics.nothing_here", "on_event: cannot import 'tests.test_metrics."),
        ("no_such_module_xyz.f", "on_event: cannot import 'no_such_module_xyz.f'"),
    ],
)
def test_a_bad_on_event_is_refused_at_construction(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        settings(on_event=value)
    assert str(caught.value).startswith(message)


def test_the_settings_repr_does_not_show_on_event() -> None:
    def export(secret: str, event: Event) -> None:
        """An exporter holding a credential."""

    made = settings(on_event=functools.partial(export, "s3cr3t-exporter-key"))
    assert "s3cr3t" not in repr(made)
    assert "s3cr3t" not in repr(Core(made, compression_advice=""))


def test_flask_stats_reads_the_current_app() -> None:
    from flask import Flask

    from rai_middleware.flask import ReturningAI

    app = Flask(__name__)
    extension = ReturningAI(app, community_id="c", access_id="i", access_key="k")
    with app.app_context():
        assert extension.stats() == expected_stats()
    assert extension.stats(app) == expected_stats()
    ReturningAI.core(app).close()


# -- the recipes of docs/metrics.md, with the real libraries ----------------------------------

SNIPPET_ENV = {
    "RAI_COMMUNITY_ID": "snippet-community",
    "RAI_ACCESS_ID": "snippet-access-id",
    "RAI_ACCESS_KEY": "snippet-access-key",
    "RAI_SECRET_KEY": "snippet-secret-key-of-at-least-32-bytes",
    "RAI_API_BASE_URL": "http://127.0.0.1:9",
}


@pytest.fixture
def recipes(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every ```python block of docs/metrics.md run (as the snippet collector runs them),
    and what they define."""
    for name, value in SNIPPET_ENV.items():
        monkeypatch.setenv(name, value)
    text = DOCS.read_text(encoding="utf-8")
    defined: dict[str, Any] = {}
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 5
    for code in blocks:
        namespace: dict[str, Any] = {"__name__": "__snippet__"}
        exec(compile(code, str(DOCS), "exec"), namespace)
        defined.update(namespace)
    return defined


def busy_middleware() -> Any:
    """An ASGI middleware that has served one widget page (one miss, one mint), against
    the in-process fake."""
    import anyio

    from rai_middleware import ReturningAIMiddleware
    from rai_middleware.testing import FakeReturningAI
    from tests.conftest import ACCESS_ID, ACCESS_KEY, call_asgi, html_app, http_scope

    fake = FakeReturningAI(access_id=ACCESS_ID, access_key=ACCESS_KEY)

    async def serve() -> Any:
        async with fake.client() as client:
            middleware = ReturningAIMiddleware(
                html_app(b"<p>" + PLACEHOLDER),
                community_id="c",
                access_id=ACCESS_ID,
                access_key=ACCESS_KEY,
                identify=lambda scope: {"data-customer-id": "alice"},
                http_client=client,
            )
            await call_asgi(middleware, http_scope())
            await middleware.aclose()
            return middleware

    return anyio.run(serve)


def test_the_prometheus_recipe_exposes_the_stats(recipes: dict[str, Any]) -> None:
    prometheus = pytest.importorskip("prometheus_client", reason="prometheus_client not installed")
    middleware = busy_middleware()
    registry = prometheus.CollectorRegistry()
    recipes["register_prometheus"](middleware, registry)
    exposed = prometheus.generate_latest(registry).decode()
    assert "rai_mints_total 1.0" in exposed
    assert "rai_cache_misses_total 1.0" in exposed
    assert "rai_pages_rewritten_total 1.0" in exposed
    assert 'rai_mint_failures_total{kind="timeout"} 0.0' in exposed
    assert "rai_breaker_open 0.0" in exposed


def test_the_prometheus_on_event_recipe_counts_events(recipes: dict[str, Any]) -> None:
    prometheus = pytest.importorskip("prometheus_client", reason="prometheus_client not installed")
    registry = prometheus.CollectorRegistry()
    on_event = recipes["prometheus_on_event"](registry)
    metrics = Metrics(on_event)
    metrics.mint_failed("server_error", "0123abcd", 0.5)
    metrics.lookup("0123abcd", hit=True)
    assert metrics.flush(5.0)
    exposed = prometheus.generate_latest(registry).decode()
    assert 'rai_events_total{kind="server_error",name="mint_failure"} 1.0' in exposed
    assert 'rai_events_total{kind="",name="cache_hit"} 1.0' in exposed


def test_the_opentelemetry_recipe_exposes_the_stats(recipes: dict[str, Any]) -> None:
    pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk not installed")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

    middleware = busy_middleware()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    recipes["register_opentelemetry"](middleware, provider)
    data = reader.get_metrics_data()
    assert data is not None
    points = {
        (metric.name, tuple(sorted((point.attributes or {}).items()))): point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint)
    }
    assert points[("rai.mints", ())] == 1
    assert points[("rai.pages_rewritten", ())] == 1
    assert points[("rai.mint_failures", (("kind", "server_error"),))] == 0
    assert points[("rai.breaker_open", ())] == 0
    provider.shutdown()


def test_opentelemetry_httpx_instrumentation_traces_each_mint_without_the_key() -> None:
    pytest.importorskip("opentelemetry.instrumentation.httpx", reason="not installed")
    import anyio
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from rai_middleware import ReturningAIMiddleware
    from rai_middleware.testing import FakeReturningAI
    from tests.conftest import ACCESS_ID, ACCESS_KEY, call_asgi, html_app, http_scope

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    fake = FakeReturningAI(access_id=ACCESS_ID, access_key=ACCESS_KEY)

    async def serve() -> None:
        async with fake.client() as client:
            HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
            middleware = ReturningAIMiddleware(
                html_app(b"<p>" + PLACEHOLDER),
                community_id="c",
                access_id=ACCESS_ID,
                access_key=ACCESS_KEY,
                identify=lambda scope: {"data-customer-id": "alice"},
                http_client=client,
            )
            await call_asgi(middleware, http_scope())
            await middleware.aclose()

    anyio.run(serve)
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert span.name == "POST"
    assert any(
        str(value).endswith("/v2/api/widget-access-keys/token") for value in attributes.values()
    )
    assert 200 in attributes.values()
    assert ACCESS_KEY not in repr(attributes) and ACCESS_ID not in repr(attributes)
    provider.shutdown()


def test_the_delivering_thread_ends_with_its_middleware() -> None:
    import gc

    metrics = Metrics(lambda event: None)
    metrics.breaker_opened()
    assert metrics.flush(5.0)
    assert metrics._dispatcher is not None
    thread = metrics._dispatcher._thread
    assert thread is not None and thread.is_alive()
    del metrics
    gc.collect()
    thread.join(5.0)
    assert not thread.is_alive()


def test_flush_before_any_event_and_a_second_start_do_nothing() -> None:
    received: list[Event] = []
    metrics = Metrics(received.append)
    assert metrics.flush(0.0) is True  # no thread yet: nothing to wait for
    dispatcher = metrics._dispatcher
    assert dispatcher is not None
    dispatcher._start()
    thread = dispatcher._thread
    dispatcher._start()  # as a second thread would, having seen no thread before the lock
    assert dispatcher._thread is thread
    metrics.breaker_closed()
    assert metrics.flush(5.0)
    assert received == [Event("breaker_close")]
