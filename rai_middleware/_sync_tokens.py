"""The token service for WSGI: the same cache and rules, single flight across threads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx

from ._config import Settings
from ._exceptions import TokenError
from ._identity import Identity
from ._store import STORE_POLL, StoreError, SyncTokenStore
from ._tokens import EmbedToken, TokenPolicy, client_options, transport_error
from ._upstream import TokenRequest, read_token, token_request

__all__ = ["SyncTokenService"]

logger = logging.getLogger("rai_middleware")


class _Flight:
    """One mint in progress; the threads that want the same token wait on it."""

    __slots__ = ("done", "error", "token")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.token: EmbedToken | None = None
        self.error: TokenError | None = None


class SyncTokenService(TokenPolicy):
    """Gets a usable token for an identity, from the cache or from Returning.AI (threads)."""

    def __init__(
        self,
        settings: Settings,
        *,
        http_client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: SyncTokenStore | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(settings, clock=clock, wall_clock=wall_clock)
        self._store = store
        self._client = http_client
        self._owns_client = http_client is None
        # Guards the cache, the breaker and the in-flight map; never held during I/O.
        self._lock = threading.Lock()
        self._inflight: dict[str, _Flight] = {}

    @property
    def http_client(self) -> httpx.Client | None:
        return self._client

    def close(self) -> None:
        """Close the client if this service created it, and the store."""
        with self._lock:
            client, self._client = self._client, None
        if self._owns_client and client is not None:
            client.close()
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # closing must not fail a shutdown
                logger.warning("closing the token store failed", exc_info=True)

    def get(self, identity: Identity) -> EmbedToken:
        """A token with at least ``min_token_ttl`` seconds to live. Raises ``TokenError``."""
        with self._lock:
            token = self.cached(identity)
            refresh = (
                token is not None
                and self._due_for_refresh(token)
                and identity.key not in self._inflight
                and self._clock() >= self._open_until
            )
            if refresh:
                self._inflight[identity.key] = _Flight()
        if token is not None:
            if refresh:
                # Refresh ahead of expiry in a thread; this request keeps the valid token.
                threading.Thread(
                    target=self._refresh, args=(identity,), name="rai-token-refresh", daemon=True
                ).start()
            return token
        with self._lock:
            flight = self._inflight.get(identity.key)
            leader = flight is None
            if flight is None:
                self._check_breaker()
                flight = self._inflight[identity.key] = _Flight()
        if not leader:
            # The leader's own request is bounded by ``timeout``; wait a little longer.
            if not flight.done.wait(self._settings.timeout + 1.0):
                raise TokenError("timed out waiting for another thread's token request")
            if flight.token is None:
                raise flight.error or TokenError("another thread's token request failed")
            return flight.token
        try:
            flight.token = self._mint(identity)
            return flight.token
        except TokenError as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._inflight.pop(identity.key, None)
            flight.done.set()

    def _refresh(self, identity: Identity) -> None:
        with self._lock:
            flight = self._inflight[identity.key]
        try:
            flight.token = self._mint(identity)
        except TokenError as exc:  # logged by _failed; the cached token serves on
            flight.error = exc
        finally:
            with self._lock:
                self._inflight.pop(identity.key, None)
            flight.done.set()

    def _mint(self, identity: Identity) -> EmbedToken:
        """One mint for this process; with a shared store, one for all processes."""
        with self._lock:
            store = self._store if self._store_in_use() else None
        if store is None:
            return self._mint_upstream(identity)
        owner: str | None = None
        try:
            token = self._from_store(store, identity)
            if token is not None:
                return token
            owner = store.acquire(identity.key, self._settings.timeout + 1.0)
            if owner is not None:
                # Another process may have minted, saved and unlocked since we looked.
                token = self._from_store(store, identity)
                if token is not None:
                    return token
            else:
                # Another process is minting: wait for its token (half the timeout, as on
                # the async side), then mint ourselves.
                deadline = self._clock() + self._settings.timeout / 2
                while self._clock() < deadline:
                    time.sleep(STORE_POLL)
                    token = self._from_store(store, identity)
                    if token is not None:
                        return token
        except StoreError as exc:
            with self._lock:
                self._store_failed(exc)
            store = None
        try:
            token = self._mint_upstream(identity)
            if store is not None:
                try:
                    store.save(identity.key, self._stored(token))
                except StoreError as exc:
                    with self._lock:
                        self._store_failed(exc)
            return token
        finally:
            if store is not None and owner is not None:
                try:
                    store.release(identity.key, owner)
                except StoreError as exc:
                    with self._lock:
                        self._store_failed(exc)

    def _from_store(self, store: SyncTokenStore, identity: Identity) -> EmbedToken | None:
        stored = store.load(identity.key)
        with self._lock:
            return self._adopt(identity, stored)

    def _mint_upstream(self, identity: Identity) -> EmbedToken:
        settings = self._settings
        with self._lock:
            self.mint_count += 1
            if self._client is None:
                self._client = httpx.Client(**client_options(settings))
            client = self._client
        started = self._clock()
        try:
            request = token_request(settings, identity)
            response = _post_within(
                client, request, settings.timeout, deadline=time.monotonic() + settings.timeout
            )
            answer = read_token(settings, response)
            with self._lock:
                return self._accept(identity, answer, started)
        except TokenError as exc:
            with self._lock:
                self._failed(exc)
            raise
        except httpx.HTTPError as exc:
            error = transport_error(exc, settings.timeout)
            with self._lock:
                self._failed(error)
            raise error from None


def _post_within(
    client: httpx.Client, request: TokenRequest, timeout: float, *, deadline: float
) -> httpx.Response:
    """POST and read the answer by the deadline. httpx's timeouts bound each phase (a
    read, not the whole body), so a server that trickles its answer is cut off here, as
    ``asyncio.wait_for`` does on the async side."""
    with client.stream(
        "POST", request.url, headers=request.headers, json=request.json, timeout=timeout
    ) as streamed:
        chunks = []
        for chunk in streamed.iter_bytes():
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("the answer took longer than the timeout")
        if time.monotonic() > deadline:
            raise httpx.ReadTimeout("the answer took longer than the timeout")
        return httpx.Response(
            streamed.status_code,
            content=b"".join(chunks),
            headers={"content-type": streamed.headers.get("content-type", "")},
        )
