"""Mint, cache and share Returning.AI tokens. No ASGI or WSGI here.

``TokenPolicy`` holds what both front ends share: the cache, the expiry rules, the circuit
breaker and the logging. ``TokenService`` (asyncio) and ``SyncTokenService`` (threads,
in ``_sync_tokens.py``) only add single flight and I/O with their kind of httpx client.

- One token per identity, reused while it has at least ``min_token_ttl`` seconds left.
  Expiry is computed locally, from the moment the request was sent plus its lifetime,
  on a monotonic clock: wall-clock jumps cannot make a stale token look fresh.
- Single flight: concurrent requests for one identity share one upstream call.
- Refresh ahead: a token with less than ``min_token_ttl + refresh_ahead`` left is still
  served while one background mint replaces it, so after its first page no visitor waits
  for a mint again (as long as Returning.AI answers).
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
from typing import Any

import httpx
from cachetools import LRUCache

from ._config import Settings
from ._exceptions import TokenError
from ._identity import Identity
from ._store import STORE_POLL, StoredToken, StoreError, TokenStore
from ._upstream import plausible_token, read_token, token_request

__all__ = ["EmbedToken", "TokenPolicy", "TokenService", "client_options"]

logger = logging.getLogger("rai_middleware")

# How often keep_warm looks for tokens about to stop being servable (seconds).
_WARM_INTERVAL = 5.0
# A token read from a shared store claiming to live longer than this is not believed.
_MAX_STORED_LIFETIME = 24 * 60 * 60


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


class TokenPolicy:
    """The cache and the rules, shared by the async and the sync service."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._wall = wall_clock
        self._store_down_until = -math.inf
        self._cache: LRUCache[str, EmbedToken] = LRUCache(maxsize=settings.cache_maxsize)
        self._consecutive_failures = 0
        self._open_until = -math.inf
        #: Upstream calls made (successful or not); useful in tests and benchmarks.
        self.mint_count = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api={self._settings.token_url!r}, cached={len(self._cache)})"

    def now(self) -> float:
        """The service's clock (monotonic seconds), against which expiries are kept."""
        return self._clock()

    def cached(self, identity: Identity) -> EmbedToken | None:
        """The cached token for ``identity`` if it may still be served."""
        token = self._cache.get(identity.key)
        if token is not None and token.remaining(self._clock()) >= self._settings.min_token_ttl:
            return token
        return None

    def _due_for_refresh(self, token: EmbedToken) -> bool:
        """In the refresh-ahead window, and past half its servable life: a short-lived token
        (whose whole life is inside the window) is not renewed on every page."""
        settings = self._settings
        now = self._clock()
        remaining = token.remaining(now)
        if remaining >= settings.min_token_ttl + settings.refresh_ahead:
            return False
        servable = token.expires_at - token.issued_at - settings.min_token_ttl
        return now - token.issued_at >= servable / 2

    def forget(self, identity: Identity) -> None:
        """Drop the identity's token (after a logout or a change of permissions)."""
        self._cache.pop(identity.key, None)

    def _check_breaker(self) -> None:
        if self._clock() < self._open_until:
            raise TokenError("not calling Returning.AI during the failure cool-down")

    def _accept(
        self, identity: Identity, answer: tuple[str, float | None], started: float
    ) -> EmbedToken:
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
        self._cache[identity.key] = token
        self._consecutive_failures = 0
        return token

    # -- shared store ----------------------------------------------------------------

    def _store_in_use(self) -> bool:
        return self._clock() >= self._store_down_until

    def _adopt(self, identity: Identity, stored: StoredToken | None) -> EmbedToken | None:
        """A token read from the shared store, if it is believable and still servable, and
        (when renewing ours) newer than the one we have."""
        if stored is None or not plausible_token(stored.value):
            return None
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

    def _stored(self, token: EmbedToken) -> StoredToken:
        return StoredToken(token.value, self._wall() + token.remaining(self._clock()))

    def _store_failed(self, exc: StoreError) -> None:
        """Mint per process for a cool-down, and say so once, not once per request."""
        cooldown = self._settings.failure_cooldown
        self._store_down_until = self._clock() + cooldown
        logger.warning(
            "the shared token store failed (%s); minting per process for %.0f s", exc, cooldown
        )

    def _failed(self, exc: TokenError) -> None:
        self._consecutive_failures += 1
        settings = self._settings
        if self._consecutive_failures >= settings.failure_threshold:
            self._open_until = self._clock() + settings.failure_cooldown
            # Half-open after the cool-down: one more failure opens it again at once, so a
            # lasting outage costs one timed-out request per cool-down, not a threshold's.
            self._consecutive_failures = settings.failure_threshold - 1
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


def transport_error(exc: Exception, timeout: float) -> TokenError:
    """The TokenError for an exception raised while talking to Returning.AI."""
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)):
        return TokenError(f"timed out after {timeout:g} s")
    return TokenError(f"{type(exc).__name__}: {exc}"[:300])


class TokenService(TokenPolicy):
    """Gets a usable token for an identity, from the cache or from Returning.AI (asyncio)."""

    def __init__(
        self,
        settings: Settings,
        *,
        http_client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: TokenStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, clock=clock, wall_clock=wall_clock)
        self._client = http_client
        self._owns_client = http_client is None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[str, asyncio.Task[EmbedToken]] = {}
        self._store = store
        # keep_warm: identities seen lately (key -> identity, when last seen), and the task
        # that refreshes their tokens before they stop being servable.
        self._warm: LRUCache[str, tuple[Identity, float]] = LRUCache(settings.cache_maxsize)
        self._warmer: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def startup(self) -> None:
        """Create the HTTP client now (lifespan startup) rather than on the first page."""
        self._http_client()

    async def aclose(self) -> None:
        """Cancel in-flight mints and close the client if this service created it."""
        if self._warmer is not None:
            self._warmer.cancel()
            self._warmer = None
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        if self._store is not None:
            try:
                await self._store.aclose()
            except Exception:  # closing must not fail a shutdown
                logger.warning("closing the token store failed", exc_info=True)

    @property
    def http_client(self) -> httpx.AsyncClient | None:
        return self._client

    def _http_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or (self._owns_client and self._client_loop is not loop):
            # A client's connection pool belongs to the loop it was used on; a new loop
            # (tests, a restarted server) gets a new client.
            self._client = httpx.AsyncClient(**client_options(self._settings))
            self._client_loop = loop
        return self._client

    # -- tokens ----------------------------------------------------------------------

    async def get(self, identity: Identity) -> EmbedToken:
        """A token with at least ``min_token_ttl`` seconds to live. Raises ``TokenError``."""
        if self._settings.keep_warm > 0:
            self._seen(identity)
        token = self.cached(identity)
        if token is not None:
            # Refresh ahead of expiry, in the background: this request (and every one until
            # the new token lands) is served the still-valid token.
            if (
                self._due_for_refresh(token)
                and identity.key not in self._inflight
                and self._clock() >= self._open_until
            ):
                self._start_mint(identity)
            return token
        task = self._inflight.get(identity.key)
        if task is None:
            self._check_breaker()
            task = self._start_mint(identity)
        # Shielded: a waiter cancelled (client gone) must not cancel the mint for the others.
        return await asyncio.shield(task)

    # -- keep warm -------------------------------------------------------------------

    def _seen(self, identity: Identity) -> None:
        self._warm[identity.key] = (identity, self._clock())
        if self._warmer is None or self._warmer.done():
            self._warmer = asyncio.get_running_loop().create_task(self._keep_warm())

    async def _keep_warm(self) -> None:
        while True:
            await asyncio.sleep(_WARM_INTERVAL)
            self.refresh_due()

    def refresh_due(self) -> int:
        """Start a background mint for every identity seen within ``keep_warm`` seconds
        whose token would stop being servable before the next check. Runs every few
        seconds on its own (``keep_warm`` > 0); returns how many mints it started."""
        settings = self._settings
        now = self._clock()
        if now < self._open_until:
            return 0
        # Refresh while the old token is still servable, with room for a slow mint.
        horizon = settings.min_token_ttl + 2 * _WARM_INTERVAL + settings.timeout
        started = 0
        for key, (identity, last_seen) in list(self._warm.items()):
            if now - last_seen > settings.keep_warm:
                del self._warm[key]  # gone quiet: let its token lapse
                continue
            token = self._cache.get(key)
            if key in self._inflight or (token is not None and token.remaining(now) >= horizon):
                continue
            if token is None and last_seen < now - _WARM_INTERVAL:
                continue  # nothing to keep warm: its last mint failed, the next page retries
            self._start_mint(identity)
            started += 1
        return started

    def _start_mint(self, identity: Identity) -> asyncio.Task[EmbedToken]:
        task = asyncio.get_running_loop().create_task(self._mint(identity))
        self._inflight[identity.key] = task
        task.add_done_callback(lambda done: self._mint_done(identity.key, done))
        return task

    def _mint_done(self, key: str, task: asyncio.Task[EmbedToken]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved, so that a mint nobody awaits logs nothing extra

    async def _mint(self, identity: Identity) -> EmbedToken:
        store = self._store if self._store_in_use() else None
        if store is None:
            return await self._mint_upstream(identity)
        owner: str | None = None
        try:
            token = await self._from_store(store, identity)
            if token is not None:
                return token
            owner = await store.acquire(identity.key, self._settings.timeout + 1.0)
            if owner is None:
                # Another process is minting: wait for its token, as long as a mint may take.
                token = await self._wait_for_store(store, identity)
            else:
                # Another process may have minted, saved and unlocked since we looked.
                token = await self._from_store(store, identity)
            if token is not None:
                return token
        except StoreError as exc:
            self._store_failed(exc)
            store = None
        try:
            token = await self._mint_upstream(identity)
            if store is not None:
                await self._to_store(store, identity, token)
            return token
        finally:
            if store is not None and owner is not None:
                try:
                    await store.release(identity.key, owner)
                except StoreError as exc:
                    self._store_failed(exc)

    async def _from_store(self, store: TokenStore, identity: Identity) -> EmbedToken | None:
        return self._adopt(identity, await store.load(identity.key))

    async def _wait_for_store(self, store: TokenStore, identity: Identity) -> EmbedToken | None:
        # Half the timeout for the winner's token, so that minting ourselves after it (if
        # the winner failed or vanished) still keeps a page within 1.5 x timeout.
        deadline = self._clock() + self._settings.timeout / 2
        while self._clock() < deadline:
            await asyncio.sleep(STORE_POLL)
            token = await self._from_store(store, identity)
            if token is not None:
                return token
        return None

    async def _to_store(self, store: TokenStore, identity: Identity, token: EmbedToken) -> None:
        try:
            await store.save(identity.key, self._stored(token))
        except StoreError as exc:
            self._store_failed(exc)

    async def _mint_upstream(self, identity: Identity) -> EmbedToken:
        self.mint_count += 1
        settings = self._settings
        started = self._clock()
        try:
            request = token_request(settings, identity)
            # httpx's timeout bounds each phase; wait_for bounds the whole exchange, so a
            # server that trickles its answer cannot hold a page longer than ``timeout``.
            response = await asyncio.wait_for(
                self._http_client().post(
                    request.url,
                    headers=request.headers,
                    json=request.json,
                    timeout=settings.timeout,
                ),
                settings.timeout,
            )
            return self._accept(identity, read_token(settings, response), started)
        except TokenError as exc:
            self._failed(exc)
            raise
        except (httpx.HTTPError, asyncio.TimeoutError) as exc:
            error = transport_error(exc, settings.timeout)
            self._failed(error)
            raise error from None
