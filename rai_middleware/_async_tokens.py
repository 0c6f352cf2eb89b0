"""The asyncio driver: runs ``mint_flow`` with an asynchronous client (``httpx.AsyncClient``,
``httpx2.AsyncClient``) and a ``TokenStore``.

Each mint is a task; the pages that want its token wait for its flight until the flight's
deadline, then fail fast with ``TokenError``. The task goes on after delivering (saving
to the store, releasing the lock) while the pages are already on their way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import httpx

from ._clients import AsyncHTTPClient, HTTPResponse, detached, is_http_error
from ._config import Settings
from ._exceptions import StoreError, TokenError
from ._identity import Identity
from ._needs import PageNeed
from ._store import TokenStore
from ._token_flow import Acquire, Deliver, Load, Op, Post, Save, Sleep, mint_flow, resume
from ._tokens import (
    _WARM_INTERVAL,
    EmbedToken,
    Flight,
    PolicyDriver,
    TokenPolicy,
    client_failure,
    client_options,
)
from ._widget_pages import MAX_PAGE_BYTES, PAGE_HEADERS, Fetched, PageFlight, PageTooLarge

__all__ = ["TokenService"]

logger = logging.getLogger("rai_middleware")

T = TypeVar("T")


class TokenService(PolicyDriver):
    """Gets a usable token for an identity, from the cache or from Returning.AI (asyncio).

    ``policy``: share one cache (and breaker) with another driver, e.g. a
    ``SyncTokenService`` in the same process; ``clock`` and ``wall_clock`` are then the
    policy's own."""

    def __init__(
        self,
        settings: Settings,
        *,
        http_client: AsyncHTTPClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        store: TokenStore | None = None,
        wall_clock: Callable[[], float] = time.time,
        policy: TokenPolicy | None = None,
    ) -> None:
        super().__init__(settings, clock=clock, wall_clock=wall_clock, policy=policy)
        self._client = http_client
        self._owns_client = http_client is None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._store = store
        # Mint tasks: those still minting, and those saving and releasing after delivery.
        self._minting: set[asyncio.Task[None]] = set()
        self._finishing: set[asyncio.Task[None]] = set()
        # keep_warm: the task that refreshes recent visitors' tokens before they lapse.
        self._warmer: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def startup(self) -> None:
        """Create the HTTP client now (lifespan startup) rather than on the first page."""
        self._http_client()

    async def aclose(self) -> None:
        """Let delivered mints finish saving (other processes wait for them), cancel the
        rest, and close the client if this service created it, and the store."""
        if self._warmer is not None:
            self._warmer.cancel()
            self._warmer = None
        loop = asyncio.get_running_loop()
        # Tasks of an earlier event loop died with it.
        minting = [task for task in self._minting if task.get_loop() is loop]
        finishing = [task for task in self._finishing if task.get_loop() is loop]
        self._minting.clear()
        self._finishing.clear()
        for task in minting:
            task.cancel()
        if finishing:
            await asyncio.wait(finishing, timeout=self._settings.timeout)
        for task in finishing:
            task.cancel()
        # Wait for the cancellations to land before the client they use is closed.
        await asyncio.gather(*minting, *finishing, return_exceptions=True)
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
        if self._store is not None:
            try:
                await self._store.aclose()
            except Exception:  # closing must not fail a shutdown
                logger.warning("closing the token store failed", exc_info=True)

    @property
    def http_client(self) -> Any:
        """The client in use: the one given, or the ``httpx.AsyncClient`` made (or None)."""
        return self._client

    def _http_client(self) -> AsyncHTTPClient:
        loop = asyncio.get_running_loop()
        if self._client is None or (self._owns_client and self._client_loop is not loop):
            # A client's connection pool belongs to the loop it was used on; a new loop
            # (tests, a restarted server) gets a new client.
            self._client = httpx.AsyncClient(**client_options(self._settings))
            self._client_loop = loop
        return self._client

    # -- tokens ----------------------------------------------------------------------

    async def get(self, identity: Identity) -> EmbedToken:
        """A token with at least ``min_token_ttl`` seconds to live, within the timeout
        (1.5 x with a store). Raises ``TokenError``."""
        policy = self._policy
        if self._settings.keep_warm > 0:
            policy.seen(identity)
            self._start_warmer()
        token = policy.lookup(identity)
        if token is not None:
            # Refresh ahead of expiry, in the background: this request (and every one until
            # the new token lands) is served the still-valid token.
            if policy.due_for_refresh(token):
                self._lead(identity)
            return token
        flight, leader = policy.join(identity, deadline=self._deadline())
        if leader:
            self._launch(flight, identity)
        return await self._wait(flight)

    def refresh_due(self) -> int:
        """Start a background mint for every identity seen within ``keep_warm`` seconds
        whose token would stop being servable before the next check. Runs every few
        seconds on its own (``keep_warm`` > 0); returns how many mints it started."""
        return sum(self._lead(identity) for identity in self._policy.warm_due())

    def _start_warmer(self) -> None:
        if self._warmer is None or self._warmer.done():
            self._warmer = asyncio.get_running_loop().create_task(self._keep_warm())

    async def _keep_warm(self) -> None:
        while True:
            await asyncio.sleep(_WARM_INTERVAL)
            self.refresh_due()

    def _deadline(self) -> float:
        return time.monotonic() + self._policy.budget(with_store=self._store is not None)

    def _lead(self, identity: Identity) -> bool:
        flight = self._policy.lead(identity, deadline=self._deadline())
        if flight is not None:
            self._launch(flight, identity)
        return flight is not None

    def _launch(self, flight: Flight, identity: Identity) -> None:
        task = asyncio.get_running_loop().create_task(self._fly(flight, identity))
        self._minting.add(task)
        task.add_done_callback(self._landed)

    def _landed(self, task: asyncio.Task[None]) -> None:
        self._minting.discard(task)
        self._finishing.discard(task)

    async def _wait(self, flight: Flight) -> EmbedToken:
        if flight.settled:
            return flight.outcome()
        if not await _settled(partial(self._policy.when_settled, flight), flight.deadline):
            self._policy.expire(flight)
        return flight.outcome()

    # -- widget pages (mode proxy) ---------------------------------------------------

    async def widget_page(self, need: PageNeed) -> str | None:
        """The widget page (``<base>`` added, no token) from the cache or the widgets host,
        within ``timeout``; None (logged) if there is none to be had."""
        pages = self.pages
        page = pages.cached(need)
        if page is not None or pages.refused(need):
            return page
        timeout = self._settings.timeout
        flight, leader = pages.join(need, deadline=time.monotonic() + timeout)
        if not leader:
            return await self._wait_page(flight)
        try:
            page = await self._fetch_page(need, timeout)
        finally:
            pages.settle(need, flight, page)
        return page

    async def _wait_page(self, flight: PageFlight) -> str | None:
        if not await _settled(partial(self.pages.when_settled, flight), flight.deadline):
            return None  # the leader logs why
        return flight.page

    async def _fetch_page(self, need: PageNeed, timeout: float) -> str | None:
        pages = self.pages
        failure: BaseException | None = None
        try:
            fetched = await asyncio.wait_for(self._get(pages.url(need), timeout), timeout)
        except asyncio.TimeoutError:
            failure = TimeoutError()
        except Exception as exc:  # httpx errors, PageTooLarge, a broken client
            failure = exc
        if failure is not None:
            pages.failed(need, failure)
            return None
        return pages.accept(need, fetched)

    async def _get(self, url: str, timeout: float) -> Fetched:
        # Mode proxy needs a client's ``stream`` too, beyond what AsyncHTTPClient promises
        # (httpx's and httpx2's have it); a client without it is a failed fetch, logged.
        client: Any = self._http_client()
        async with client.stream("GET", url, headers=PAGE_HEADERS, timeout=timeout) as answer:
            body = bytearray()
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > MAX_PAGE_BYTES:
                    raise PageTooLarge()
            return Fetched(answer.status_code, answer.headers.get("content-type", ""), bytes(body))

    # -- executing the flow ----------------------------------------------------------

    async def _fly(self, flight: Flight, identity: Identity) -> None:
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
                    result = await self._execute(op, flight)
                except Exception as exc:
                    op = resume(flow, error=exc)
                else:
                    op = resume(flow, result)
        except asyncio.CancelledError:
            self._policy.abandon(flight, TokenError("the token service is closing"))
            raise
        except Exception as exc:  # a bug: the waiters raise it now, not at their deadline
            logger.warning("minting a token failed unexpectedly", exc_info=True)
            self._policy.abandon(flight, exc)
        finally:
            flow.close()

    async def _execute(self, op: Op, flight: Flight) -> object:
        if isinstance(op, Post):
            return await self._post(op)
        if isinstance(op, Deliver):
            self._policy.deliver(flight, op.token, op.error)
            task = asyncio.current_task()
            if task is not None and task in self._minting:
                self._minting.discard(task)
                self._finishing.add(task)
            return None
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        store = self._store
        if store is None:
            raise StoreError("no token store is configured")
        if isinstance(op, Load):
            return await _within(store.load(op.key), op.timeout)
        if isinstance(op, Acquire):
            return await _within(store.acquire(op.key, op.lease), op.timeout)
        if isinstance(op, Save):
            await store.save(op.key, op.token)
        else:
            await store.release(op.key, op.owner)
        return None

    async def _post(self, op: Post) -> HTTPResponse:
        request = op.request
        failure: Exception | None = None
        try:
            # httpx's timeout bounds each phase; wait_for bounds the whole exchange, so a
            # server that trickles its answer cannot hold a page past its deadline.
            return await asyncio.wait_for(
                self._http_client().post(
                    request.url, headers=request.headers, content=request.body, timeout=op.timeout
                ),
                op.timeout,
            )
        except asyncio.TimeoutError:
            failure = TimeoutError()  # one class for the flow (asyncio's differs on 3.10)
        except Exception as exc:  # an HTTPError, or a bug or a broken client: no frame goes on
            failure = detached(exc) if is_http_error(exc) else client_failure(exc)
        # Raised outside the except: the client's frames (which hold the request) are not
        # this exception's context.
        raise failure


async def _within(operation: Awaitable[T], timeout: float | None) -> T:
    """A store op within the lookup's time: ``StoreError`` after it."""
    if timeout is None:
        return await operation
    try:
        return await asyncio.wait_for(operation, timeout)
    except asyncio.TimeoutError:
        raise StoreError("the shared token store took longer than half the timeout") from None


async def _settled(subscribe: Callable[[Callable[[], None]], None], deadline: float) -> bool:
    """Wait for a flight that another request leads: ``subscribe(wake)`` has ``wake``
    called, from whichever thread or loop settles it, once it is settled. False if the
    ``time.monotonic()`` deadline came first."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(_resolve, woken)
        except RuntimeError:
            pass  # that loop has closed: nobody waits there any more

    subscribe(wake)
    try:
        await asyncio.wait_for(woken, max(0.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        return False
    return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
