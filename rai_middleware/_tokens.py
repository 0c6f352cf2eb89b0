"""Mint, cache and share Returning.AI embed tokens. No ASGI here: just an async service.

- One token per identity, reused while it has at least ``min_token_ttl`` seconds left.
  Expiry is computed locally, from the moment the request was sent plus ``expiresIn``,
  on a monotonic clock: wall-clock jumps cannot make a stale token look fresh.
- Single flight: concurrent requests for one identity share one upstream call (an
  ``asyncio`` task, shielded so that a cancelled waiter cannot cancel it for the others).
- Failures are not cached. After ``failure_threshold`` failures in a row the service stops
  calling upstream for ``failure_cooldown`` seconds (a circuit breaker), so an outage costs
  pages no latency, and it logs once per cool-down rather than once per request.
- Bounded memory: an LRU of ``cache_maxsize`` identities; the in-flight map drains itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpx
from cachetools import LRUCache

from ._config import Settings
from ._exceptions import TokenError
from ._identity import Identity
from ._upstream import request_access_key_token, request_signin_token

__all__ = ["EmbedToken", "TokenService"]

logger = logging.getLogger("rai_middleware")


@dataclass(frozen=True, slots=True)
class EmbedToken:
    """A token and the monotonic time at which it expires. The repr hides the token."""

    value: str = field(repr=False)
    expires_at: float

    def remaining(self, now: float) -> float:
        return self.expires_at - now


class TokenService:
    """Gets a usable token for an identity, from the cache or from Returning.AI."""

    def __init__(
        self,
        settings: Settings,
        *,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._client = http_client
        self._owns_client = http_client is None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._flow = request_signin_token if settings.mode == "iframe" else request_access_key_token
        self._cache: LRUCache[str, EmbedToken] = LRUCache(maxsize=settings.cache_maxsize)
        self._inflight: dict[str, asyncio.Task[EmbedToken]] = {}
        self._consecutive_failures = 0
        self._open_until = -math.inf
        #: Upstream calls made (successful or not); useful in tests and benchmarks.
        self.mint_count = 0

    def __repr__(self) -> str:
        return (
            f"TokenService(api={self._settings.token_url!r}, cached={len(self._cache)}, "
            f"in_flight={len(self._inflight)})"
        )

    # -- lifecycle -------------------------------------------------------------------

    async def startup(self) -> None:
        """Create the HTTP client now (lifespan startup) rather than on the first page."""
        self._http_client()

    async def aclose(self) -> None:
        """Cancel in-flight mints and close the client if this service created it."""
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    @property
    def http_client(self) -> httpx.AsyncClient | None:
        return self._client

    def _http_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or (self._owns_client and self._client_loop is not loop):
            # A client's connection pool belongs to the loop it was used on; a new loop
            # (tests, a restarted server) gets a new client.
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._settings.timeout),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                # Nothing upstream sets should be sent back on the next mint.
                cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
                follow_redirects=False,
                headers={"Accept": "application/json"},
            )
            self._client_loop = loop
        return self._client

    # -- the cache -------------------------------------------------------------------

    def now(self) -> float:
        """The service's clock (monotonic seconds), against which expiries are kept."""
        return self._clock()

    def cached(self, identity: Identity) -> EmbedToken | None:
        """The cached token for ``identity`` if it may still be served."""
        token = self._cache.get(identity.key)
        if token is not None and token.remaining(self._clock()) >= self._settings.min_token_ttl:
            return token
        return None

    def forget(self, identity: Identity) -> None:
        """Drop the identity's token (after a logout or a change of permissions)."""
        self._cache.pop(identity.key, None)

    async def get(self, identity: Identity) -> EmbedToken:
        """A token with at least ``min_token_ttl`` seconds to live. Raises ``TokenError``."""
        token = self.cached(identity)
        if token is not None:
            return token
        task = self._inflight.get(identity.key)
        if task is None:
            if self._clock() < self._open_until:
                raise TokenError("not calling Returning.AI during the failure cool-down")
            task = asyncio.get_running_loop().create_task(self._mint(identity))
            self._inflight[identity.key] = task
            task.add_done_callback(lambda done: self._mint_done(identity.key, done))
        return await asyncio.shield(task)

    def _mint_done(self, key: str, task: asyncio.Task[EmbedToken]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled():
            return
        # Retrieve the exception so that a mint nobody awaits any more logs nothing extra.
        if task.exception() is None:
            self._cache[key] = task.result()

    # -- upstream --------------------------------------------------------------------

    async def _mint(self, identity: Identity) -> EmbedToken:
        self.mint_count += 1
        try:
            token = await self._request(identity)
        except TokenError as exc:
            self._record_failure(exc)
            raise
        self._consecutive_failures = 0
        return token

    def _record_failure(self, exc: TokenError) -> None:
        self._consecutive_failures += 1
        settings = self._settings
        if self._consecutive_failures >= settings.failure_threshold:
            self._open_until = self._clock() + settings.failure_cooldown
            self._consecutive_failures = 0
            logger.warning(
                "Returning.AI token request failed (%s); %d failures in a row, so widgets fall "
                "back to their placeholder content and no token is requested for %.0f s",
                exc,
                settings.failure_threshold,
                settings.failure_cooldown,
            )
        else:
            logger.warning(
                "Returning.AI token request failed (%s); serving the placeholder fallback", exc
            )

    async def _request(self, identity: Identity) -> EmbedToken:
        settings = self._settings
        started = self._clock()
        try:
            # httpx's timeout bounds each phase; wait_for bounds the whole exchange, so a
            # server that trickles its answer cannot hold a page longer than ``timeout``.
            value, lifetime = await asyncio.wait_for(
                self._flow(self._http_client(), settings, identity), settings.timeout
            )
        except (httpx.TimeoutException, asyncio.TimeoutError):
            raise TokenError(f"timed out after {settings.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise TokenError(f"{type(exc).__name__}: {exc}"[:300]) from None
        if lifetime is None:
            lifetime = settings.default_token_lifetime
        if lifetime < settings.min_token_ttl or lifetime <= 0:
            raise TokenError(
                f"the token lives {lifetime:g} s, less than min_token_ttl "
                f"({settings.min_token_ttl:g} s)"
            )
        return EmbedToken(value=value, expires_at=started + lifetime)
