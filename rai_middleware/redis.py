"""A token store on Redis: one mint per identity across every worker process and host.

    from rai_middleware import ReturningAIMiddleware
    from rai_middleware.redis import RedisTokenStore

    app = ReturningAIMiddleware(app, token_store=RedisTokenStore("redis://localhost:6379/0"))

Install with ``pip install "rai-middleware[redis]"`` (redis-py's asyncio client).

What is stored, under ``{prefix}tok:{key}`` where ``key`` is an HMAC of the visitor's
identifiers with the secret key (no email or customer id reaches Redis): the token, its
absolute expiry and its seal (an HMAC of key, token and expiry with the secret key), as
one flat JSON object, with a Redis TTL so that expired entries vanish on their own.
The mint lock is ``{prefix}lock:{key}``, taken with ``SET NX PX`` and a random owner value
and released only by its owner (a compare-and-delete script); a lock whose owner died
expires after its lease. Nothing read from Redis is trusted blindly: a value over 8 KiB,
nested, of another shape, or sealed for another key is ignored (logged once per store,
never raised) and overwritten by the next mint.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._store import (
    IgnoredValues,
    StoredToken,
    StoreError,
    decode_stored,
    encode_stored,
    lease_ms,
    ttl_ms,
)

__all__ = ["RedisTokenStore", "SyncRedisTokenStore"]

T = TypeVar("T")

# Delete the lock only if we still own it: a lock that expired and was taken by another
# process must not be released by us.
_RELEASE = """
if redis.call("get", KEYS[1]) == ARGV[1] then
    return redis.call("del", KEYS[1])
end
return 0
"""
logger = logging.getLogger("rai_middleware")


class RedisTokenStore:
    """``url_or_client``: a ``redis://`` URL, or a ``redis.asyncio.Redis`` you configured.

    ``op_timeout`` bounds every Redis command (seconds): a slow Redis costs pages at most
    that before the middleware mints on its own.
    """

    def __init__(
        self, url_or_client: str | Any, *, prefix: str = "rai:", op_timeout: float = 0.5
    ) -> None:
        self._client, self._owns_client = _client(url_or_client, op_timeout, asyncio=True)
        self._prefix = _checked_prefix(prefix)
        self._op_timeout = op_timeout
        self._ignored = IgnoredValues("Redis")

    def __repr__(self) -> str:
        # The URL may carry a password: never shown.
        return f"{type(self).__name__}(prefix={self._prefix!r})"

    async def _run(self, operation: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(operation, self._op_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            raise StoreError(f"Redis did not answer within {self._op_timeout:g} s") from None
        except Exception as exc:  # redis.RedisError, OSError, ...
            raise StoreError(f"Redis failed: {type(exc).__name__}") from None

    async def load(self, key: str) -> StoredToken | None:
        return decode_stored(
            await self._run(self._client.get(self._prefix + "tok:" + key)), self._ignored
        )

    async def save(self, key: str, token: StoredToken) -> None:
        left = ttl_ms(token)
        if left > 0:
            await self._run(
                self._client.set(self._prefix + "tok:" + key, encode_stored(token), px=left)
            )

    async def acquire(self, key: str, lease: float) -> str | None:
        owner = secrets.token_hex(16)
        lock = self._prefix + "lock:" + key
        taken = await self._run(self._client.set(lock, owner, nx=True, px=lease_ms(lease)))
        return owner if taken else None

    async def release(self, key: str, owner: str) -> None:
        await self._run(self._client.eval(_RELEASE, 1, self._prefix + "lock:" + key, owner))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class SyncRedisTokenStore:
    """The same store for ``ReturningAIWSGIMiddleware`` and the Django and Flask adapters,
    on redis-py's synchronous client (thread-safe through its connection pool)."""

    def __init__(
        self, url_or_client: str | Any, *, prefix: str = "rai:", op_timeout: float = 0.5
    ) -> None:
        # The socket timeouts bound every command: the sync client has no wait_for.
        self._client, self._owns_client = _client(url_or_client, op_timeout, asyncio=False)
        self._prefix = _checked_prefix(prefix)
        self._ignored = IgnoredValues("Redis")

    def __repr__(self) -> str:
        # The URL may carry a password: never shown.
        return f"{type(self).__name__}(prefix={self._prefix!r})"

    def _run(self, operation: Callable[[], T]) -> T:
        try:
            return operation()
        except Exception as exc:  # redis.RedisError (timeouts included), OSError, ...
            raise StoreError(f"Redis failed: {type(exc).__name__}") from None

    def load(self, key: str) -> StoredToken | None:
        raw = self._run(lambda: self._client.get(self._prefix + "tok:" + key))
        return decode_stored(raw, self._ignored)

    def save(self, key: str, token: StoredToken) -> None:
        left = ttl_ms(token)
        if left > 0:
            name, value = self._prefix + "tok:" + key, encode_stored(token)
            self._run(lambda: self._client.set(name, value, px=left))

    def acquire(self, key: str, lease: float) -> str | None:
        owner = secrets.token_hex(16)
        lock = self._prefix + "lock:" + key
        taken = self._run(lambda: self._client.set(lock, owner, nx=True, px=lease_ms(lease)))
        return owner if taken else None

    def release(self, key: str, owner: str) -> None:
        lock = self._prefix + "lock:" + key
        self._run(lambda: self._client.eval(_RELEASE, 1, lock, owner))

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def _client(url_or_client: str | Any, op_timeout: float, *, asyncio: bool) -> tuple[Any, bool]:
    """(client, whether we own it): a URL becomes a client with bounded socket timeouts."""
    if not isinstance(url_or_client, str):
        return url_or_client, False
    try:
        if asyncio:
            from redis.asyncio import Redis
        else:
            from redis import Redis  # type: ignore[assignment]
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the Redis token stores need redis-py: pip install 'rai-middleware[redis]'"
        ) from exc
    client = Redis.from_url(
        url_or_client, socket_timeout=op_timeout, socket_connect_timeout=op_timeout
    )
    return client, True


def _checked_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise TypeError("prefix must be a string")
    return prefix
