"""One mint, written once as a generator of operations (sans-IO, like httpx's
``Auth.auth_flow``): the flow decides, the drivers do the I/O.

    load from the store -> take the lock -> (not the owner: poll the store until half a
    timeout has gone) / (the owner: load again) -> post upstream -> deliver -> save -> release

The flow yields an op; the driver executes it and sends back its result (``Load``:
``StoredToken | None``, ``Acquire``: the owner or None, ``Post``: the ``httpx.Response``,
read in full; anything else: None) or throws in its failure (``StoreError`` from a store
op; an ``httpx.HTTPError`` or a ``TimeoutError`` from ``Post``; anything else is a bug
and ends the flow, the driver then fails the flight with it). ``Deliver`` answers
every waiter, so saving and releasing happen while the page is already on its way.
Breaker and store accounting happen here and in the policy, never in a driver.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._exceptions import StoreError, TokenError
from ._identity import Identity
from ._store import STORE_POLL, StoredToken
from ._tokens import EmbedToken, TokenPolicy
from ._upstream import TokenRequest, read_token, token_request

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
    "transport_error",
]


@dataclass(frozen=True, slots=True)
class Load:
    """Read the stored token for ``key``."""

    key: str


@dataclass(frozen=True, slots=True)
class Acquire:
    """Take the mint lock for ``key`` for ``lease`` seconds."""

    key: str
    lease: float


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
    token: EmbedToken | None = None
    owner: str | None = None
    store = store and policy.store_in_use()
    if store:
        try:
            token = policy.adopt(identity, (yield Load(key)))
            if token is None:
                owner = yield Acquire(key, settings.timeout + 1.0)
                if owner is not None:
                    # Another process may have minted, saved and unlocked since we looked.
                    token = policy.adopt(identity, (yield Load(key)))
                else:
                    # Another process is minting: wait for its token, but only while a whole
                    # timeout is left for minting ourselves (if it failed or vanished).
                    while token is None and timer() < deadline - settings.timeout:
                        yield Sleep(STORE_POLL)
                        token = policy.adopt(identity, (yield Load(key)))
        except StoreError as exc:
            policy.store_failed(exc)
            store, owner = False, None
    if token is not None:
        yield Deliver(token)
    else:
        try:
            token = yield from _mint(policy, identity, deadline, timer)
        except TokenError as exc:
            yield Deliver(error=exc)
        else:
            yield Deliver(token)
            if store:
                try:
                    yield Save(key, policy.stored(token))
                except StoreError as exc:
                    policy.store_failed(exc)
                    store = False
    if store and owner is not None:
        try:
            yield Release(key, owner)
        except StoreError as exc:
            policy.store_failed(exc)


def _mint(
    policy: TokenPolicy, identity: Identity, deadline: float, timer: Callable[[], float]
) -> Generator[Op, Any, EmbedToken]:
    """Ask Returning.AI, within what is left of the deadline. Raises ``TokenError``."""
    settings = policy.settings
    request = token_request(settings, identity)
    remaining = min(settings.timeout, deadline - timer())
    if remaining <= 0:
        raise TokenError("timed out before asking Returning.AI (the shared store was slow)")
    policy.count_mint()
    started = policy.now()
    try:
        response = yield Post(request, remaining)
    except (httpx.HTTPError, TimeoutError) as exc:
        raise transport_error(exc, settings.timeout) from None
    return policy.accept(identity, read_token(settings, response), started)


def transport_error(exc: httpx.HTTPError | TimeoutError, timeout: float) -> TokenError:
    """The TokenError for an exception raised while talking to Returning.AI. Its message
    names the failure, never what was sent (no credential)."""
    if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
        return TokenError(f"timed out after {timeout:g} s")
    return TokenError(f"{type(exc).__name__}: {exc}"[:300])
