"""Shared token stores: where processes and hosts find each other's tokens.

The token service keeps its own small LRU in front of a store, so a hot identity costs no
store round trip. A store only has to keep tokens (with their absolute expiry, as Unix
time, since monotonic clocks mean nothing across processes) and a lease-based lock per
identity key, so that one process mints while the others wait for its token.

A store that cannot answer raises ``StoreError``; the token service then mints on its own
(per process), logs once per cool-down, and tries the store again after it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

# Defined with the other exceptions (a ReturningAIError); importable from here as before.
from ._exceptions import StoreError

__all__ = [
    "STORE_POLL",
    "IgnoredValues",
    "StoreError",
    "StoredToken",
    "SyncTokenStore",
    "TokenStore",
    "decode_stored",
    "encode_stored",
    "lease_ms",
    "ttl_ms",
]

logger = logging.getLogger("rai_middleware")

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


# -- the stored value, as every shipped store writes and reads it ----------------------------

_MAX_VALUE = 8 * 1024
# JSON strings, to look at the structure around them without parsing (a value nested
# thousands deep would make json.loads raise RecursionError).
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


class IgnoredValues:
    """Says why a stored value was ignored, once per reason (a store per process: once
    per process), not once per page. ``where`` names the store in the log line."""

    def __init__(self, where: str) -> None:
        self._where = where
        self._lock = threading.Lock()
        self._said: set[str] = set()

    def __call__(self, reason: str) -> None:
        with self._lock:
            if reason in self._said:
                return
            self._said.add(reason)
        logger.warning(
            "a token value in %s is %s; ignored (a new token is minted and stored over "
            "it). Said once.",
            self._where,
            reason,
        )


def encode_stored(token: StoredToken) -> str:
    """One flat JSON object: the token, its expiry (Unix time) and its seal."""
    return json.dumps(
        {"t": token.value, "exp": token.expires_at, "m": token.seal}, separators=(",", ":")
    )


def ttl_ms(token: StoredToken) -> int:
    """Milliseconds until the token expires: the TTL that makes it vanish on time."""
    return int((token.expires_at - time.time()) * 1000)


def lease_ms(lease: float) -> int:
    return max(1, int(lease * 1000))


def decode_stored(raw: object, ignored: Callable[[str], None]) -> StoredToken | None:
    """The stored token, or None: absent, or not one flat object of the expected fields
    (``ignored`` says why, once). Never raises."""
    if raw is None:
        return None
    if not isinstance(raw, (bytes, str)):
        ignored("not a string")
        return None
    if len(raw) > _MAX_VALUE:
        ignored(f"over {_MAX_VALUE // 1024} KiB")
        return None
    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        ignored("not UTF-8")
        return None
    bare = _JSON_STRING.sub('""', text)
    if bare.count("{") + bare.count("[") > 1:
        ignored("nested (one flat object was expected)")
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        ignored("not JSON")
        return None
    if not isinstance(data, dict):
        ignored("not a JSON object")
        return None
    value, expires_at, seal = data.get("t"), data.get("exp"), data.get("m", "")
    if (
        not isinstance(value, str)
        or not value
        or not value.isascii()
        or not value.isprintable()
        or isinstance(expires_at, bool)
        or not isinstance(expires_at, (int, float))
        or not math.isfinite(expires_at)
        or not isinstance(seal, str)
    ):
        ignored("not a token, an expiry and a seal")
        return None
    return StoredToken(value, float(expires_at), seal=seal)
