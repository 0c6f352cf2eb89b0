"""The token rules, written once for both drivers. No I/O and no ASGI or WSGI here.

``TokenPolicy`` holds the cache and decides; ``_token_flow.mint_flow`` is the mint as a
sequence of steps; the drivers do the I/O: ``TokenService`` (asyncio, ``_async_tokens``)
and ``SyncTokenService`` (threads, ``_sync_tokens``).

- One token per identity, reused while it has at least ``min_token_ttl`` seconds left.
  Expiry is computed locally, from the moment the request was sent plus its lifetime,
  on a monotonic clock: wall-clock jumps cannot make a stale token look fresh.
- Single flight: concurrent requests for one identity share one upstream call, and wait
  for it until one deadline (the first request's), so a page never waits longer than
  ``timeout`` (1.5 x ``timeout`` with a shared store) for a token.
- Refresh ahead: a token with less than ``min_token_ttl + refresh_ahead`` left is still
  served while one background mint replaces it, so after its first page no visitor waits
  for a mint again (as long as Returning.AI answers).
- Failures are not cached. After ``failure_threshold`` upstream-wide failures in a row
  (a timeout, a connection or TLS error, a 5xx, 401, 403 or 429, an unusable answer) the
  service stops calling upstream for ``failure_cooldown`` seconds (a circuit breaker), so
  an outage costs pages no latency, and it logs once per cool-down rather than once per
  request. After the cool-down one request probes (half-open); the others get their
  fallback at once until the probe answers.
- A failure about one identity (any other 4xx, an identifier that cannot be sent) never
  counts towards the breaker: that identity alone gets its fallback, without an upstream
  call, for ``IDENTITY_BACKOFF`` seconds (logged once per backoff).
- Bounded memory: an LRU of ``cache_maxsize`` identities; the in-flight map drains itself.

Every change to the policy's state happens under one ``threading.Lock``, never held
during I/O (nor while logging), so one policy can serve an asyncio and a thread driver.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
from cachetools import LRUCache, TTLCache

from ._config import Settings
from ._exceptions import ConfigurationError, StoreError, TokenError
from ._identity import Identity
from ._metrics import BreakerState, Metrics
from ._store import StoredToken
from ._upstream import TimedOut, blames_identity, failure_kind, plausible_token

__all__ = [
    "IDENTITY_BACKOFF",
    "EmbedToken",
    "Flight",
    "PolicyDriver",
    "TokenPolicy",
    "client_failure",
    "client_options",
]

logger = logging.getLogger("rai_middleware")

# How often keep_warm looks for tokens about to stop being servable (seconds).
_WARM_INTERVAL = 5.0
# A token read from a shared store claiming to live longer than this is not believed.
_MAX_STORED_LIFETIME = 24 * 60 * 60
#: Seconds during which an identity that Returning.AI refused with a 4xx about it (not 401,
#: 403 or 429), or whose identifiers cannot be sent, gets its fallback without a request.
IDENTITY_BACKOFF = 30.0


@dataclass(frozen=True, slots=True)
class EmbedToken:
    """A token and the monotonic time at which it expires. The repr hides the token."""

    value: str = field(repr=False)
    expires_at: float
    #: When it was minted (monotonic); -inf when unknown (adopted from a shared store).
    issued_at: float = -math.inf

    def remaining(self, now: float) -> float:
        return self.expires_at - now


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for the httpx client the services create for themselves."""
    return {
        "timeout": httpx.Timeout(settings.timeout),
        "limits": httpx.Limits(max_connections=100, max_keepalive_connections=20),
        # Nothing upstream sets should be sent back on the next mint.
        "cookies": CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        "follow_redirects": False,
        "headers": {"Accept": "application/json"},
    }


def client_failure(exc: Exception) -> RuntimeError:
    """What a driver raises for an HTTP client that failed other than with an
    ``httpx.HTTPError`` (a bug, a closed or broken client): its class and, for a
    RuntimeError, its message; not the exception itself, whose traceback runs through
    frames that hold the request (credentials), nor its repr (a UnicodeError's holds
    the text it could not encode)."""
    detail = f": {str(exc)[:200]}" if type(exc) is RuntimeError else ""
    return RuntimeError(f"the HTTP client raised {type(exc).__name__}{detail}")


class Flight:
    """One mint in progress for one identity key. Anyone may wait for it (a thread or an
    event loop) by asking to be woken; the first outcome settles it, later ones are ignored.
    Only ``TokenPolicy`` changes it, under its lock."""

    __slots__ = ("_wakers", "deadline", "error", "key", "settled", "started", "token")

    def __init__(self, key: str, deadline: float, started: float | None = None) -> None:
        self.key = key
        #: ``time.monotonic()`` by which every waiter has its answer.
        self.deadline = deadline
        #: When it began, on the policy's clock (None: unknown).
        self.started = started
        self.settled = False
        self.token: EmbedToken | None = None
        #: A TokenError, or what a driver's bug raised (the caller logs that one loudly).
        self.error: Exception | None = None
        self._wakers: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"Flight(settled={self.settled}, failed={self.error is not None})"

    def outcome(self) -> EmbedToken:
        """The token, or raise the failure. Each waiter raises its own TokenError: one
        shared exception would collect the tracebacks of every thread that raised it."""
        if self.token is not None:
            return self.token
        error = self.error or TokenError("no token yet")
        if isinstance(error, TokenError):
            raise type(error)(str(error), status_code=error.status_code)
        raise error


class TokenPolicy:
    """The cache and the rules, thread-safe, shared by the async and the sync driver."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._wall = wall_clock
        # Guards everything below. Never held during I/O, logging included.
        self._lock = threading.Lock()
        self._cache: LRUCache[str, EmbedToken] = LRUCache(maxsize=settings.cache_maxsize)
        self._inflight: dict[str, Flight] = {}
        # keep_warm: identities seen lately (key -> identity, when last seen).
        self._warm: LRUCache[str, tuple[Identity, float]] = LRUCache(settings.cache_maxsize)
        self._consecutive_failures = 0
        self._open_until = -math.inf
        # Opened at least once and no success since: after the cool-down, one probe at a time.
        self._tripped = False
        self._probe: Flight | None = None
        self._probe_until = -math.inf
        # Identities refused lately (key -> True): their fallback, without an upstream call.
        self._backoff: TTLCache[str, bool] = TTLCache(
            maxsize=settings.cache_maxsize, ttl=IDENTITY_BACKOFF, timer=clock
        )
        self._store_down_until = -math.inf
        #: The counters ``stats()`` reads, and the ``on_event`` dispatcher.
        self.metrics = Metrics(settings.on_event)
        # Seals store values to their key; derived, so that it is no other key's twin.
        self._seal_key = hmac.new(
            settings.secret_key.reveal().encode(), b"rai-middleware/stored-token/v1", "sha256"
        ).digest()
        self._distrusted: set[str] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api={self._settings.token_url!r}, cached={len(self._cache)})"

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def mint_count(self) -> int:
        """Upstream calls made (successful or not); useful in tests and benchmarks."""
        return self.metrics.mints

    def now(self) -> float:
        """The policy's clock (monotonic seconds), against which expiries are kept."""
        return self._clock()

    # -- the cache -------------------------------------------------------------------

    def cached(self, identity: Identity) -> EmbedToken | None:
        """The cached token for ``identity`` if it may still be served."""
        with self._lock:
            return self._servable(identity.key)

    def lookup(self, identity: Identity) -> EmbedToken | None:
        """``cached``, counted as a cache hit or miss: a driver's first look for a page."""
        with self._lock:
            token = self._servable(identity.key)
        self.metrics.lookup(identity.tag, token is not None)
        return token

    def _servable(self, key: str) -> EmbedToken | None:
        token = self._cache.get(key)
        if token is not None and token.remaining(self._clock()) >= self._settings.min_token_ttl:
            return token
        return None

    def due_for_refresh(self, token: EmbedToken) -> bool:
        """In the refresh-ahead window, and past half its servable life: a short-lived token
        (whose whole life is inside the window) is not renewed on every page."""
        settings = self._settings
        now = self._clock()
        if token.remaining(now) >= settings.min_token_ttl + settings.refresh_ahead:
            return False
        servable = token.expires_at - token.issued_at - settings.min_token_ttl
        return now - token.issued_at >= servable / 2

    def forget(self, identity: Identity) -> None:
        """Drop the identity's token (after a logout or a change of permissions)."""
        with self._lock:
            self._cache.pop(identity.key, None)

    def accept(
        self, identity: Identity, answer: tuple[str, float | None], started: float
    ) -> EmbedToken:
        """Cache the token upstream gave (``started``: when the request was sent)."""
        value, lifetime = answer
        settings = self._settings
        if lifetime is None:
            lifetime = settings.default_token_lifetime
        if lifetime < settings.min_token_ttl or lifetime <= 0:
            raise TokenError(
                f"the token lives {lifetime:g} s, less than min_token_ttl "
                f"({settings.min_token_ttl:g} s)"
            )
        token = EmbedToken(value=value, expires_at=started + lifetime, issued_at=started)
        with self._lock:
            self._cache[identity.key] = token
            self._consecutive_failures = 0
            was_open, self._tripped = self._tripped, False  # it answered: the breaker is closed
        self.metrics.minted(identity.tag, self._clock() - started)
        if was_open:
            self.metrics.breaker_closed()
        return token

    # -- single flight ---------------------------------------------------------------

    def budget(self, *, with_store: bool) -> float:
        """How long a page may wait for a token: ``timeout``, or 1.5 x that with a store
        (half a timeout waiting for another process's token, then a mint of our own)."""
        timeout = self._settings.timeout
        return timeout * 1.5 if with_store and self.store_in_use() else timeout

    def join(self, identity: Identity, *, deadline: float) -> tuple[Flight, bool]:
        """The identity's flight and whether the caller leads it (and must start the mint).
        Raises ``TokenError`` at once, unless a flight is under way: during the failure
        cool-down, while the probe after it is out, and during the identity's backoff."""
        key = identity.key
        with self._lock:
            flight = self._inflight.get(key)
            if flight is not None:
                return flight, False
            token = self._servable(key)
            if token is not None:  # a flight landed since the caller looked in the cache
                landed = Flight(key, deadline, self._clock())
                landed.token, landed.settled = token, True
                return landed, False
            if key in self._backoff:
                raise TokenError("not asking again for this visitor yet (refused lately)")
            refusal = self._breaker_refusal()
            if refusal is not None:
                raise TokenError(refusal)
            flight = self._inflight[key] = Flight(key, deadline, self._clock())
            if self._tripped:  # half-open: this flight is the one probe
                self._probe = flight
                self._probe_until = self._clock() + 2 * self._settings.timeout
            return flight, True

    def lead(self, identity: Identity, *, deadline: float) -> Flight | None:
        """A new flight for a background mint, or None (one is under way, the identity is
        backing off, or the breaker is not closed: a background mint is never the probe)."""
        key = identity.key
        with self._lock:
            if key in self._inflight or key in self._backoff or self._tripped:
                return None
            if self._clock() < self._open_until:
                return None
            flight = self._inflight[key] = Flight(key, deadline, self._clock())
        self.metrics.refresh_started(identity.tag)
        return flight

    def _breaker_refusal(self) -> str | None:
        """Why no new mint may start (under the lock), or None."""
        now = self._clock()
        if now < self._open_until:
            return "not calling Returning.AI during the failure cool-down"
        if self._tripped and self._probe is not None:
            if now < self._probe_until:
                return "not calling Returning.AI until the probe after the cool-down answers"
            self._probe = None  # its outcome is long overdue: let another request probe
        return None

    def in_flight(self) -> int:
        """How many mints have not delivered yet."""
        return len(self._inflight)

    def when_settled(self, flight: Flight, wake: Callable[[], None]) -> None:
        """Call ``wake`` (from whichever thread settles it) once ``flight`` has an outcome;
        at once if it has one already."""
        with self._lock:
            if not flight.settled:
                flight._wakers.append(wake)
                return
        wake()

    def deliver(
        self, flight: Flight, token: EmbedToken | None = None, error: TokenError | None = None
    ) -> None:
        """The flow's outcome: wake the waiters; an upstream-wide failure counts towards
        the breaker (unless the flight had already timed out, which counted), a failure
        about the identity starts its backoff."""
        self._settle(flight, token, error, count=error is not None)

    def expire(self, flight: Flight) -> None:
        """A waiter's deadline passed with no outcome: fail the flight for every waiter,
        and count it towards the breaker once (the late outcome will not count again)."""
        self._settle(flight, None, TimedOut("timed out waiting for a token"), count=True)

    def abandon(self, flight: Flight, error: Exception) -> None:
        """Fail the flight without blaming Returning.AI (shutdown, a bug in a driver). A
        ``TokenError`` (shutdown) is no mint failure; anything else is counted as kind
        ``error``."""
        self._settle(flight, None, error, count=False)

    def _settle(
        self, flight: Flight, token: EmbedToken | None, error: Exception | None, *, count: bool
    ) -> None:
        warning: tuple[Any, ...] | None = None
        with self._lock:
            if flight.settled:
                return
            # The outcome before the flag: a waiter may read them without the lock.
            flight.token, flight.error, flight.settled = token, error, True
            wakers, flight._wakers = flight._wakers, []
            if self._inflight.get(flight.key) is flight:
                del self._inflight[flight.key]
            if self._probe is flight:
                self._probe = None
            if error is not None and (count or not isinstance(error, TokenError)):
                started = flight.started
                self.metrics.mint_failed(
                    failure_kind(error),
                    flight.key[:8],  # Identity.tag
                    None if started is None else self._clock() - started,
                )
            if count and isinstance(error, TokenError):
                if blames_identity(error):
                    warning = self._refused(flight.key, error)
                else:
                    warning = self._failed(error)
        if warning is not None:
            logger.warning(*warning)
        for wake in wakers:
            wake()

    # -- the circuit breaker ---------------------------------------------------------

    def count_mint(self) -> None:
        self.metrics.mint_started()

    def breaker_state(self) -> BreakerState:
        """``"open"`` during the cool-down, ``"half_open"`` after it until a mint succeeds
        (one probe at a time), ``"closed"`` otherwise."""
        with self._lock:
            if self._clock() < self._open_until:
                return "open"
            return "half_open" if self._tripped else "closed"

    def _refused(self, key: str, exc: TokenError) -> tuple[Any, ...]:
        """Back off from one identity (under the lock); the warning to log afterwards. The
        message names a field at most, never an identifier's value."""
        self._backoff[key] = True
        return (
            "Returning.AI token request failed for one visitor (%s); that visitor gets the "
            "placeholder fallback for %.0f s without a request (not counted by the breaker)",
            exc,
            IDENTITY_BACKOFF,
        )

    def _failed(self, exc: TokenError) -> tuple[Any, ...]:
        """Count a failure (under the lock); the warning to log once the lock is released."""
        self._consecutive_failures += 1
        settings = self._settings
        if self._consecutive_failures < settings.failure_threshold:
            return ("Returning.AI token request failed (%s); serving the placeholder fallback", exc)
        self._open_until = self._clock() + settings.failure_cooldown
        self._tripped = True
        self.metrics.breaker_opened()
        # Half-open after the cool-down: one probe, and one more failure opens it again at
        # once, so a lasting outage costs one timed-out request per cool-down.
        self._consecutive_failures = settings.failure_threshold - 1
        return (
            "Returning.AI token request failed (%s); %d failures in a row, so widgets fall "
            "back to their placeholder content and no token is requested for %.0f s",
            exc,
            settings.failure_threshold,
            settings.failure_cooldown,
        )

    # -- the shared store ------------------------------------------------------------

    def store_in_use(self) -> bool:
        return self._clock() >= self._store_down_until

    def adopt(self, identity: Identity, stored: StoredToken | None) -> EmbedToken | None:
        """A token read from the shared store, if it is believable and still servable, and
        (when renewing ours) newer than the one we have. It must carry the seal of this
        identity's key: a value copied under another key is not adopted."""
        if stored is None:
            return None
        if (
            not isinstance(stored, StoredToken)
            or not plausible_token(stored.value)
            or isinstance(stored.expires_at, bool)
            or not isinstance(stored.expires_at, (int, float))
            or not math.isfinite(stored.expires_at)
        ):
            self._distrust("shape", "is not a token and an expiry")
            return None
        seal = stored.seal
        if not (isinstance(seal, str) and seal.isascii()) or not hmac.compare_digest(
            seal, self._seal(identity.key, stored.value, stored.expires_at)
        ):
            self._distrust(
                "seal",
                "was not sealed for its key (copied from another key, altered, or written "
                "with another secret_key or by an older version)",
            )
            return None
        with self._lock:
            # Wall-clock expiry from the store, kept locally on our monotonic clock.
            remaining = stored.expires_at - self._wall()
            ours = self._cache.get(identity.key)
            least = self._settings.min_token_ttl
            if ours is not None:
                least = max(least, ours.remaining(self._clock()) + 1.0)
            if not least <= remaining <= _MAX_STORED_LIFETIME:
                return None  # too old, or an expiry nobody could have been given: not trusted
            token = EmbedToken(stored.value, self._clock() + remaining)
            self._cache[identity.key] = token
            return token

    def stored(self, identity: Identity, token: EmbedToken) -> StoredToken:
        """``token`` as the store keeps it under ``identity``'s key: with a wall-clock
        expiry, and sealed (an HMAC of key, token and expiry with the secret key)."""
        expires_at = self._wall() + token.remaining(self._clock())
        return StoredToken(
            token.value, expires_at, seal=self._seal(identity.key, token.value, expires_at)
        )

    def _seal(self, key: str, value: str, expires_at: float) -> str:
        message = f"{key}\n{value}\n{float(expires_at)!r}".encode()
        return hmac.new(self._seal_key, message, hashlib.sha256).hexdigest()

    def _distrust(self, reason: str, what: str) -> None:
        """Log a refused store value once per reason (per process), not once per page."""
        with self._lock:
            first = reason not in self._distrusted
            self._distrusted.add(reason)
        if first:
            logger.warning(
                "a value in the shared token store %s; ignored (a token is minted and "
                "stored instead). Said once.",
                what,
            )

    def store_failed(self, exc: StoreError) -> None:
        """Mint per process for a cool-down, and say so once, not once per failure."""
        cooldown = self._settings.failure_cooldown
        with self._lock:
            now = self._clock()
            first = now >= self._store_down_until
            self._store_down_until = now + cooldown
        self.metrics.store_failed()
        if first:
            logger.warning(
                "the shared token store failed (%s); minting per process for %.0f s",
                exc,
                cooldown,
            )

    # -- keep warm -------------------------------------------------------------------

    def seen(self, identity: Identity) -> None:
        """Note a page for ``identity`` (keep_warm keeps the tokens of recent visitors)."""
        with self._lock:
            self._warm[identity.key] = (identity, self._clock())

    def warm_due(self) -> list[Identity]:
        """The identities seen within ``keep_warm`` seconds whose token would stop being
        servable before the next check; forgets those gone quiet."""
        settings = self._settings
        due: list[Identity] = []
        with self._lock:
            now = self._clock()
            if now < self._open_until:
                return due
            # Refresh while the old token is still servable, with room for a slow mint.
            horizon = settings.min_token_ttl + 2 * _WARM_INTERVAL + settings.timeout
            for key, (identity, last_seen) in list(self._warm.items()):
                if now - last_seen > settings.keep_warm:
                    del self._warm[key]  # gone quiet: let its token lapse
                    continue
                token = self._cache.get(key)
                if key in self._inflight or key in self._backoff:
                    continue
                if token is not None and token.remaining(now) >= horizon:
                    continue
                if token is None and last_seen < now - _WARM_INTERVAL:
                    continue  # nothing to keep warm: its last mint failed, the next page retries
                due.append(identity)
        return due


class PolicyDriver:
    """What both drivers share: a policy (their own, or one shared with the other driver)
    and the read-only views onto it."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        policy: TokenPolicy | None,
    ) -> None:
        if policy is not None and policy.settings != settings:
            raise ConfigurationError("policy= must be built from the same settings")
        self._settings = settings
        self._policy = policy or TokenPolicy(settings, clock=clock, wall_clock=wall_clock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._policy!r})"

    @property
    def policy(self) -> TokenPolicy:
        return self._policy

    @property
    def mint_count(self) -> int:
        return self._policy.mint_count

    def now(self) -> float:
        return self._policy.now()

    def cached(self, identity: Identity) -> EmbedToken | None:
        return self._policy.cached(identity)

    def forget(self, identity: Identity) -> None:
        self._policy.forget(identity)
