"""Shared token stores: where processes and hosts find each other's tokens.

The token service keeps its own small LRU in front of a store, so a hot identity costs no
store round trip. A store only has to keep tokens (with their absolute expiry, as Unix
time, since monotonic clocks mean nothing across processes) and a lease-based lock per
identity key, so that one process mints while the others wait for its token.

A store that cannot answer raises ``StoreError``; the token service then mints on its own
(per process), logs once per cool-down, and tries the store again after it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# Defined with the other exceptions (a ReturningAIError); importable from here as before.
from ._exceptions import StoreError

__all__ = ["STORE_POLL", "StoreError", "StoredToken", "SyncTokenStore", "TokenStore"]

#: How often a process waiting for another's mint looks in the shared store (seconds).
STORE_POLL = 0.05


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A token as stores keep it. A store keeps all three fields and gives them back as
    they were: the token service refuses a value whose ``seal`` does not match the key it
    was loaded from."""

    value: str = field(repr=False)
    #: Absolute expiry, Unix time (seconds).
    expires_at: float
    #: An HMAC of (key, value, expiry) with the secret key, written by the token service.
    seal: str = field(default="", repr=False)


@runtime_checkable
class TokenStore(Protocol):
    async def load(self, key: str) -> StoredToken | None:
        """The token stored under ``key``, or None (absent, expired or malformed)."""

    async def save(self, key: str, token: StoredToken) -> None:
        """Store ``token``; it must disappear on its own once expired."""

    async def acquire(self, key: str, lease: float) -> str | None:
        """Take the mint lock for ``key`` for ``lease`` seconds: the owner value, or None
        if another process holds it."""

    async def release(self, key: str, owner: str) -> None:
        """Release the lock, only if ``owner`` still holds it."""

    async def aclose(self) -> None:
        """Release connections."""


@runtime_checkable
class SyncTokenStore(Protocol):
    """The same, for the WSGI side (threads)."""

    def load(self, key: str) -> StoredToken | None: ...

    def save(self, key: str, token: StoredToken) -> None: ...

    def acquire(self, key: str, lease: float) -> str | None: ...

    def release(self, key: str, owner: str) -> None: ...

    def close(self) -> None: ...
