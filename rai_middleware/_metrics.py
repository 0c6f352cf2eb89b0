"""Counters and events: what a middleware has done, for dashboards and alerts.

One ``Metrics`` per token policy (so one per middleware, shared by both drivers when they
share a policy). The token policy counts cache lookups, mints, failures, the breaker and
the store; the page rewrite counts pages. ``Core.stats()`` reads a snapshot, and every
entrance's middleware object has a one-line ``stats()`` that returns it.

Counting is cheap and lock-free: each counter is an ``itertools.count`` whose ``next()``
runs as one C call, which the GIL never interrupts, so threads cannot lose an increment
(a ``self.n += 1`` is three bytecodes, between which Python 3.10 may switch threads). No
lock is taken for a count (an uncontended ``threading.Lock`` would cost several times the
increment on every page); those counted by the token policy happen inside its own critical
sections anyway. On CPython with the GIL each count is exact (a free-threaded build gives
no such promise for ``itertools.count``). A snapshot reads the counts one after the other,
so a page counted while it is taken may show in one count and not yet in another.

``on_event`` callables get each event on one background thread of their own, in order,
never on the request's thread: a slow callable cannot delay a page, and one that raises
is logged once (with its traceback) and counted. At most ``EVENT_QUEUE_LIMIT`` events wait
for it; past that, events are dropped and counted. Putting an event on the queue costs a
tuple and a ``SimpleQueue.put`` (well under a microsecond); without ``on_event`` nothing is
built at all.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Literal, NamedTuple, TypedDict

__all__ = [
    "EVENTS",
    "EVENT_QUEUE_LIMIT",
    "FAILURE_KINDS",
    "BreakerState",
    "Event",
    "EventCallback",
    "Metrics",
    "Stats",
]

logger = logging.getLogger("rai_middleware")

#: Every event name, in the order the documentation lists them.
EVENTS = (
    "cache_hit",
    "cache_miss",
    "mint",
    "mint_failure",
    "refresh_ahead",
    "breaker_open",
    "breaker_close",
    "store_fallback",
    "page_rewritten",
    "page_passed_through",
    "fallback_served",
)

#: Every kind of mint failure (the keys of ``Stats["mint_failures"]``).
FAILURE_KINDS = (
    "timeout",  # no answer within the timeout
    "network",  # connection, DNS, TLS or protocol error
    "server_error",  # HTTP 5xx
    "unauthorized",  # HTTP 401 or 403: the credentials were refused
    "rate_limited",  # HTTP 429
    "refused",  # any other 4xx: about the visitor's identifiers
    "invalid_identity",  # an identifier that cannot be sent: no request was made
    "bad_answer",  # an answer without a usable token
    "error",  # the HTTP client or a token store raised something unexpected
)

#: Events that wait for a slow ``on_event`` before newer ones are dropped.
EVENT_QUEUE_LIMIT = 10_000

BreakerState = Literal["closed", "open", "half_open"]


class Event(NamedTuple):
    """One thing the middleware did, as ``on_event`` receives it.

    ``identity_hash`` names the visitor as the log lines do (8 hex digits of an HMAC of
    their identifiers with the secret key), never by an identifier; None when the event is
    about no one visitor. ``duration`` is in seconds, on the middleware's ``clock``, for
    ``mint`` (the request to Returning.AI) and ``mint_failure`` (from the start of the
    mint to the failure); None otherwise. ``kind`` is one of ``FAILURE_KINDS`` for
    ``mint_failure``, None otherwise."""

    name: str
    identity_hash: str | None = None
    duration: float | None = None
    kind: str | None = None


EventCallback = Callable[[Event], object]


class Stats(TypedDict):
    """A snapshot of a middleware's counters since it was built (``middleware.stats()``).

    A plain dict, made afresh by each call: ``json.dumps`` it, log it, or loop over it to
    feed a metrics library. The keys are stable; new ones may be added."""

    cache_hits: int
    cache_misses: int
    mints: int
    mint_failures: dict[str, int]
    breaker_state: BreakerState
    breaker_openings: int
    store_fallbacks: int
    refresh_ahead_mints: int
    pages_rewritten: int
    pages_passed_through: int
    fallbacks_served: int
    events_dropped: int
    event_errors: int


def _value(counter: itertools.count[int]) -> int:
    """What ``next(counter)`` would return: the number of increments so far. (``count``
    offers no other read-out; its repr is ``count(N)`` on every Python version.)"""
    return int(repr(counter)[6:-1])


class Metrics:
    """The counters of one middleware, and its ``on_event`` dispatcher."""

    __slots__ = (
        "_breaker_openings",
        "_cache_hits",
        "_cache_misses",
        "_dispatcher",
        "_failures",
        "_fallbacks",
        "_mints",
        "_passed_through",
        "_refresh_ahead",
        "_rewritten",
        "_store_fallbacks",
    )

    def __init__(self, on_event: EventCallback | None = None) -> None:
        self._cache_hits = itertools.count()
        self._cache_misses = itertools.count()
        self._mints = itertools.count()
        self._failures = {kind: itertools.count() for kind in FAILURE_KINDS}
        self._breaker_openings = itertools.count()
        self._store_fallbacks = itertools.count()
        self._refresh_ahead = itertools.count()
        self._rewritten = itertools.count()
        self._passed_through = itertools.count()
        self._fallbacks = itertools.count()
        self._dispatcher = _Dispatcher(on_event) if on_event is not None else None

    def __repr__(self) -> str:
        return f"Metrics(mints={self.mints}, on_event={self._dispatcher is not None})"

    @property
    def mints(self) -> int:
        return _value(self._mints)

    # -- what the token policy counts ------------------------------------------------

    def lookup(self, identity_hash: str, hit: bool) -> None:
        if hit:
            next(self._cache_hits)
            if self._dispatcher is not None:
                self._dispatcher.put(Event("cache_hit", identity_hash))
        else:
            next(self._cache_misses)
            if self._dispatcher is not None:
                self._dispatcher.put(Event("cache_miss", identity_hash))

    def mint_started(self) -> None:
        next(self._mints)

    def minted(self, identity_hash: str, duration: float) -> None:
        if self._dispatcher is not None:
            self._dispatcher.put(Event("mint", identity_hash, duration))

    def mint_failed(self, kind: str, identity_hash: str, duration: float | None) -> None:
        next(self._failures[kind])
        if self._dispatcher is not None:
            self._dispatcher.put(Event("mint_failure", identity_hash, duration, kind))

    def refresh_started(self, identity_hash: str) -> None:
        next(self._refresh_ahead)
        if self._dispatcher is not None:
            self._dispatcher.put(Event("refresh_ahead", identity_hash))

    def breaker_opened(self) -> None:
        next(self._breaker_openings)
        if self._dispatcher is not None:
            self._dispatcher.put(Event("breaker_open"))

    def breaker_closed(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.put(Event("breaker_close"))

    def store_failed(self) -> None:
        next(self._store_fallbacks)
        if self._dispatcher is not None:
            self._dispatcher.put(Event("store_fallback"))

    # -- what the page rewrite counts ------------------------------------------------

    def page(self, rewritten: bool, identity_hash: str | None) -> None:
        if rewritten:
            next(self._rewritten)
            if self._dispatcher is not None:
                self._dispatcher.put(Event("page_rewritten", identity_hash))
        else:
            next(self._passed_through)
            if self._dispatcher is not None:
                self._dispatcher.put(Event("page_passed_through", identity_hash))

    def fallback_served(self, identity_hash: str) -> None:
        next(self._fallbacks)
        if self._dispatcher is not None:
            self._dispatcher.put(Event("fallback_served", identity_hash))

    # -- reading -----------------------------------------------------------------------

    def snapshot(self, breaker_state: BreakerState) -> Stats:
        dispatcher = self._dispatcher
        return {
            "cache_hits": _value(self._cache_hits),
            "cache_misses": _value(self._cache_misses),
            "mints": _value(self._mints),
            "mint_failures": {kind: _value(count) for kind, count in self._failures.items()},
            "breaker_state": breaker_state,
            "breaker_openings": _value(self._breaker_openings),
            "store_fallbacks": _value(self._store_fallbacks),
            "refresh_ahead_mints": _value(self._refresh_ahead),
            "pages_rewritten": _value(self._rewritten),
            "pages_passed_through": _value(self._passed_through),
            "fallbacks_served": _value(self._fallbacks),
            "events_dropped": 0 if dispatcher is None else _value(dispatcher.dropped),
            "event_errors": 0 if dispatcher is None else _value(dispatcher.errors),
        }

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until ``on_event`` has seen every event put so far (for tests and for a
        clean shutdown); False if ``timeout`` passed first."""
        return True if self._dispatcher is None else self._dispatcher.flush(timeout)


class _Delivery:
    """What the delivering thread holds: the callable and its error count. Not the
    dispatcher, so that a middleware that is gone takes its thread with it."""

    __slots__ = ("callback", "errors", "logged")

    def __init__(self, callback: EventCallback) -> None:
        self.callback = callback
        self.errors = itertools.count()
        self.logged = False

    def run(self, events: queue.SimpleQueue[Event | threading.Event | None]) -> None:
        while True:
            item = events.get()
            if item is None:  # the dispatcher was collected
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self.callback(item)
            except Exception:
                next(self.errors)
                if not self.logged:
                    self.logged = True
                    logger.exception(
                        "on_event raised on the %r event; pages are not affected and events "
                        "go on being delivered. Logged once; see stats()['event_errors']",
                        item.name,
                    )


class _Dispatcher:
    """Hands events to one ``on_event`` callable on a daemon thread of its own, started
    with the first event (and again in a forked child, where it does not exist), and
    stopped once the dispatcher is garbage collected."""

    def __init__(self, callback: EventCallback) -> None:
        self._delivery = _Delivery(callback)
        self._queue: queue.SimpleQueue[Event | threading.Event | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()  # taken only to start the thread
        self.dropped = itertools.count()
        _DISPATCHERS.add(self)

    @property
    def errors(self) -> itertools.count[int]:
        return self._delivery.errors

    def put(self, event: Event) -> None:
        if self._thread is None:
            self._start()
        if self._queue.qsize() >= EVENT_QUEUE_LIMIT:
            next(self.dropped)
            return
        self._queue.put(event)

    def flush(self, timeout: float | None) -> bool:
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _start(self) -> None:
        with self._starting:
            if self._thread is None:
                events = self._queue
                thread = threading.Thread(
                    target=self._delivery.run, args=(events,), name="rai-on-event", daemon=True
                )
                thread.start()
                weakref.finalize(self, events.put, None)
                self._thread = thread

    def _forked(self) -> None:
        """In a forked child: the parent's thread is not here, nor should its queue be."""
        self._queue = queue.SimpleQueue()
        self._thread = None
        self._starting = threading.Lock()


_DISPATCHERS: weakref.WeakSet[_Dispatcher] = weakref.WeakSet()


def _after_fork() -> None:
    for dispatcher in list(_DISPATCHERS):
        dispatcher._forked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - every POSIX Python has it
    os.register_at_fork(after_in_child=_after_fork)
