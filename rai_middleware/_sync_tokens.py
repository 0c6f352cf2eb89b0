"""The thread driver: runs ``mint_flow`` with an ``httpx.Client`` and a ``SyncTokenStore``.

httpx's sync timeouts bound each phase (connecting, each read), not the exchange, so each
mint runs in a daemon thread of its own and the request threads wait for its flight until
the flight's deadline: a page has its token or a ``TokenError`` within ``timeout``
(1.5 x with a store) however slowly Returning.AI or the store answers. The thread goes on
after delivering (saving, releasing the lock) while the pages are on their way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx

from ._config import Settings
from ._exceptions import StoreError
from ._identity import Identity
from ._store import SyncTokenStore
from ._token_flow import Acquire, Deliver, Load, Op, Post, Save, Sleep, mint_flow, resume
from ._tokens import (
    EmbedToken,
    Flight,
    PolicyDriver,
    TokenPolicy,
    client_failure,
    client_options,
)
from ._upstream import TokenRequest

__all__ = ["SyncTokenService"]

logger = logging.getLogger("rai_middleware")


class SyncTokenService(PolicyDriver):
    """Gets a usable token for an identity, from the cache or from Returning.AI (threads).

    ``policy``: share one cache (and breaker) with another driver, e.g. the asyncio
    ``TokenService`` in the same process; ``clock`` and ``wall_clock`` are then the
    policy's own."""

    def __init__(
        self,
        settings: Settings,
        *,
        http_client: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: SyncTokenStore | None = None,
        wall_clock: Callable[[], float] = time.time,
        policy: TokenPolicy | None = None,
    ) -> None:
        super().__init__(settings, clock=clock, wall_clock=wall_clock, policy=policy)
        self._store = store
        self._client = http_client
        self._owns_client = http_client is None
        # Guards the client and the set of mint threads; never held during I/O.
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()

    @property
    def http_client(self) -> httpx.Client | None:
        return self._client

    def close(self) -> None:
        """Give running mints up to ``timeout`` to finish (other processes wait for what
        they save), then close the client if this service created it, and the store."""
        with self._lock:
            threads = list(self._threads)
        until = time.monotonic() + self._settings.timeout
        for thread in threads:
            thread.join(max(0.0, until - time.monotonic()))
        with self._lock:
            client, self._client = self._client, None
        if self._owns_client and client is not None:
            client.close()
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # closing must not fail a shutdown
                logger.warning("closing the token store failed", exc_info=True)

    # -- tokens ----------------------------------------------------------------------

    def get(self, identity: Identity) -> EmbedToken:
        """A token with at least ``min_token_ttl`` seconds to live, within the timeout
        (1.5 x with a store). Raises ``TokenError``."""
        policy = self._policy
        token = policy.lookup(identity)
        if token is not None:
            # Refresh ahead of expiry in a thread; this request keeps the valid token.
            if policy.due_for_refresh(token):
                background = policy.lead(identity, deadline=self._deadline())
                if background is not None:
                    self._launch(background, identity)
            return token
        flight, leader = policy.join(identity, deadline=self._deadline())
        if leader:
            self._launch(flight, identity)
        return self._wait(flight)

    def _deadline(self) -> float:
        return time.monotonic() + self._policy.budget(with_store=self._store is not None)

    def _wait(self, flight: Flight) -> EmbedToken:
        if not flight.settled:
            woken = threading.Event()
            self._policy.when_settled(flight, woken.set)
            if not woken.wait(max(0.0, flight.deadline - time.monotonic())):
                self._policy.expire(flight)
        return flight.outcome()

    def _launch(self, flight: Flight, identity: Identity) -> None:
        thread = threading.Thread(
            target=self._fly, args=(flight, identity), name="rai-token-mint", daemon=True
        )
        with self._lock:
            self._threads.add(thread)
        thread.start()

    # -- executing the flow ----------------------------------------------------------

    def _fly(self, flight: Flight, identity: Identity) -> None:
        flow = mint_flow(
            self._policy,
            identity,
            deadline=flight.deadline,
            store=self._store is not None,
            timer=time.monotonic,
        )
        try:
            op = resume(flow)
            while op is not None:
                try:
                    result = self._execute(op, flight)
                except Exception as exc:
                    op = resume(flow, error=exc)
                else:
                    op = resume(flow, result)
        except Exception as exc:  # a bug: the waiters raise it now, not at their deadline
            logger.warning("minting a token failed unexpectedly", exc_info=True)
            self._policy.abandon(flight, exc)
        finally:
            flow.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _execute(self, op: Op, flight: Flight) -> object:
        if isinstance(op, Post):
            return self._post(op)
        if isinstance(op, Deliver):
            self._policy.deliver(flight, op.token, op.error)
            return None
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            return None
        store = self._store
        if store is None:
            raise StoreError("no token store is configured")
        if isinstance(op, Load):
            return store.load(op.key)
        if isinstance(op, Acquire):
            return store.acquire(op.key, op.lease)
        if isinstance(op, Save):
            store.save(op.key, op.token)
        else:
            store.release(op.key, op.owner)
        return None

    def _post(self, op: Post) -> httpx.Response:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(**client_options(self._settings))
            client = self._client
        failure: Exception | None = None
        try:
            return _post_within(client, op.request, op.timeout)
        except httpx.HTTPError as exc:
            # The flow keeps its class and (for network errors) its text; not its frames.
            failure = exc.with_traceback(None)
            failure.__cause__ = failure.__context__ = None
        except Exception as exc:  # a bug or a broken client: no frame of it goes on
            failure = client_failure(exc)
        # Raised outside the except: the client's frames (which hold the request) are not
        # this exception's context.
        raise failure


def _post_within(client: httpx.Client, request: TokenRequest, timeout: float) -> httpx.Response:
    """POST and read the answer within ``timeout``, as far as a body read in chunks allows:
    the waiting pages never wait longer, and this bounds how long the mint thread lives."""
    deadline = time.monotonic() + timeout
    with client.stream(
        "POST", request.url, headers=request.headers, content=request.body, timeout=timeout
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
