"""One mint, written once as a generator of operations (sans-IO, like httpx's
``Auth.auth_flow``): the flow decides, the drivers do the I/O.

    build the request -> load from the store -> take the lock -> (not the owner: poll the
    store) / (the owner: load again) -> post upstream -> deliver -> save -> release

The request is built (identifiers checked, body and headers encoded) before anything
else: an identity that cannot be sent costs no store round trip and no upstream call.
The lookup in the store (load, lock, load, polls) has half a timeout: a store op that has
not answered by then (the asyncio driver stops waiting; the thread driver notices once it
returns) ends the lookup as a store failure, and the mint still has a whole timeout, so
the page has its answer within 1.5 x ``timeout``.

The flow yields an op; the driver executes it and sends back its result (``Load``:
``StoredToken | None``, ``Acquire``: the owner or None, ``Post``: the client's response,
read in full; anything else: None) or throws in its failure (``StoreError`` from a store
op; an ``HTTPError`` of httpx or httpx2, or a ``TimeoutError``, from ``Post``; anything else
is a bug
and ends the flow, the driver then fails the flight with it). ``Deliver`` answers
every waiter, so saving and releasing happen while the page is already on its way.
Breaker and store accounting happen here and in the policy, never in a driver.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from ._clients import HTTPResponse, is_http_error
from ._exceptions import StoreError, TokenError
from ._identity import Identity
from ._store import STORE_POLL, StoredToken
from ._tokens import EmbedToken, TokenPolicy
from ._upstream import TimedOut, TokenRequest, read_token, token_request, transport_error

__all__ = [
    "Acquire",
    "Deliver",
    "Flow",
    "Load",
    "Op",
    "Post",
    "Release",
    "Save",
    "Sleep",
    "mint_flow",
    "resume",
]


@dataclass(frozen=True, slots=True)
class Load:
    """Read the stored token for ``key``, within ``timeout`` seconds if one is given (a
    driver that can stop waiting raises ``StoreError`` after it)."""

    key: str
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Acquire:
    """Take the mint lock for ``key`` for ``lease`` seconds (within ``timeout``, as Load)."""

    key: str
    lease: float
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Post:
    """Send ``request`` and read the whole answer within ``timeout`` seconds."""

    request: TokenRequest
    timeout: float


@dataclass(frozen=True, slots=True)
class Deliver:
    """Settle the flight: wake every waiter with the token or the failure."""

    token: EmbedToken | None = None
    error: TokenError | None = None


@dataclass(frozen=True, slots=True)
class Save:
    key: str
    token: StoredToken = field(repr=False)


@dataclass(frozen=True, slots=True)
class Release:
    key: str
    owner: str = field(repr=False)


Op = Load | Acquire | Sleep | Post | Deliver | Save | Release
Flow = Generator[Op, Any, None]


def resume(flow: Flow, result: object = None, error: Exception | None = None) -> Op | None:
    """Hand the last op's result (or failure) to the flow: its next op, or None when done."""
    try:
        return flow.throw(error) if error is not None else flow.send(result)
    except StopIteration:
        return None


def mint_flow(
    policy: TokenPolicy,
    identity: Identity,
    *,
    deadline: float,
    store: bool,
    timer: Callable[[], float],
) -> Flow:
    """One mint for ``identity``, to deliver by ``deadline`` (on ``timer``). With ``store``,
    one mint for every process sharing the store."""
    settings = policy.settings
    key = identity.key
    try:
        request = token_request(settings, identity)
    except TokenError as exc:  # raised before any request, naming a field at most
        refused: TokenError | None = exc
    else:
        refused = None
    if refused is not None:
        yield Deliver(error=refused)
        return
    token: EmbedToken | None = None
    owner: str | None = None
    store = store and policy.store_in_use()
    if store:
        # The lookup must leave a whole timeout for the mint.
        until = deadline - settings.timeout
        try:
            token = policy.adopt(identity, (yield Load(key, _left(until, timer))))
            _in_time(until, timer)
            if token is None:
                owner = yield Acquire(key, settings.timeout + 1.0, _left(until, timer))
                _in_time(until, timer)
                if owner is not None:
                    # Another process may have minted, saved and unlocked since we looked.
                    token = policy.adopt(identity, (yield Load(key, _left(until, timer))))
                    _in_time(until, timer)
                else:
                    # Another process is minting: wait for its token, but only while a whole
                    # timeout is left for minting ourselves (if it failed or vanished).
                    while token is None and timer() + STORE_POLL < until:
                        yield Sleep(STORE_POLL)
                        token = policy.adopt(identity, (yield Load(key, _left(until, timer))))
                        _in_time(until, timer)
        except StoreError as exc:
            policy.store_failed(exc)
            store = False  # a lock we hold is still released, after delivery
    if token is not None:
        yield Deliver(token)
    else:
        try:
            token = yield from _mint(policy, identity, request, deadline, timer)
        except TokenError as exc:
            yield Deliver(error=exc)
        else:
            yield Deliver(token)
            if store:
                try:
                    yield Save(key, policy.stored(identity, token))
                except StoreError as exc:
                    policy.store_failed(exc)
    if owner is not None:
        try:
            yield Release(key, owner)
        except StoreError as exc:
            policy.store_failed(exc)


def _left(until: float, timer: Callable[[], float]) -> float:
    """What is left of the lookup's time for the next store op (never zero)."""
    return max(until - timer(), 0.001)


def _in_time(until: float, timer: Callable[[], float]) -> None:
    if timer() > until:
        raise StoreError("the shared token store took longer than half the timeout")


def _mint(
    policy: TokenPolicy,
    identity: Identity,
    request: TokenRequest,
    deadline: float,
    timer: Callable[[], float],
) -> Generator[Op, Any, EmbedToken]:
    """Ask Returning.AI, within what is left of the deadline. Raises ``TokenError``, never
    chained to what the HTTP client raised (whose frames hold the request)."""
    settings = policy.settings
    remaining = min(settings.timeout, deadline - timer())
    if remaining <= 0:
        raise TimedOut("timed out before asking Returning.AI (the shared store was slow)")
    policy.count_mint()
    started = policy.now()
    failure: TokenError | None = None
    response: HTTPResponse | None = None
    try:
        response = yield Post(request, remaining)
    except Exception as exc:
        if not (is_http_error(exc) or isinstance(exc, TimeoutError)):
            raise  # a bug: the driver fails the flight with it
        failure = transport_error(exc, settings.timeout)
    if failure is not None:
        raise failure  # outside the except: no __context__ either
    assert response is not None
    return policy.accept(identity, read_token(settings, response), started)
