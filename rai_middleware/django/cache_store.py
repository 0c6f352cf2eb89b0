"""A token store on Django's cache framework: the site's ``CACHES`` as the shared store.

    RETURNING_AI = {
        ...,
        "token_store": DjangoCacheTokenStore(alias="default"),
    }

Each identity is minted once for every process and host that shares the cache (memcached,
Redis, the database cache), with no extra service or setting. What is stored, as in the
Redis store: under ``{prefix}tok:{key}`` (``key`` an HMAC of the visitor's identifiers with
the secret key, so no email or customer id reaches the cache) the token, its absolute
expiry and its seal, as one flat JSON object, with the cache timeout set to the token's
life. Nothing read back is trusted blindly: a value over 8 KiB, nested, of another shape,
or sealed for another key is ignored (logged once per store) and overwritten.

The mint lock is ``{prefix}lock:{key}``, taken with ``cache.add`` (atomic on memcached,
Redis and the database cache; the local-memory and file caches are per process or per
host), holding a random owner value, for a lease of whole seconds (memcached counts in
seconds). It is released only by its owner, and only while its lease has more than
``RELEASE_MARGIN`` left: the cache API has no atomic compare-and-delete, so a lock that is
about to lapse (and may then be another process's) is left to expire instead.

A cache that fails raises ``StoreError``; the token service then mints on its own (per
process), logs once per cool-down, and tries the store again after it.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rai_middleware._store import (
    IgnoredValues,
    StoredToken,
    StoreError,
    decode_stored,
    encode_stored,
)

__all__ = ["DjangoCacheTokenStore"]

T = TypeVar("T")

#: A lock is released only if at least this long (seconds) is left of its lease.
RELEASE_MARGIN = 0.5


class DjangoCacheTokenStore:
    """``alias``: the ``CACHES`` entry to use. ``prefix`` starts every key the store writes
    (the cache's own ``KEY_PREFIX`` and version apply as well).

    A synchronous store: the Django middleware runs its token service in threads with it,
    in sync and in async mode alike."""

    def __init__(self, alias: str = "default", *, prefix: str = "rai:") -> None:
        if not isinstance(alias, str) or not alias:
            raise TypeError("alias must be the name of a CACHES entry")
        if not isinstance(prefix, str):
            raise TypeError("prefix must be a string")
        self._alias = alias
        self._prefix = prefix
        self._ignored = IgnoredValues(f"Django's cache {alias!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alias={self._alias!r}, prefix={self._prefix!r})"

    @property
    def alias(self) -> str:
        return self._alias

    def _cache(self) -> Any:
        # Looked up per operation: Django keeps one cache object per thread and alias.
        from django.core.cache import caches

        return caches[self._alias]

    def _run(self, operation: Callable[[Any], T]) -> T:
        failure = ""
        try:
            return operation(self._cache())
        except Exception as exc:  # a backend error, a missing alias, OSError...
            failure = type(exc).__name__
        # Raised outside the except: the backend's exception (which may quote a location
        # with a password) is not even its context.
        raise StoreError(f"Django's cache {self._alias!r} failed: {failure}")

    def load(self, key: str) -> StoredToken | None:
        name = self._prefix + "tok:" + key
        return decode_stored(self._run(lambda cache: cache.get(name)), self._ignored)

    def save(self, key: str, token: StoredToken) -> None:
        left = token.expires_at - time.time()
        if left > 0:
            name, value = self._prefix + "tok:" + key, encode_stored(token)
            # Whole seconds, rounded up: memcached would read 0 as "never expires". The
            # token service checks the expiry inside the value, not the cache's timeout.
            self._run(lambda cache: cache.set(name, value, timeout=math.ceil(left)))

    def acquire(self, key: str, lease: float) -> str | None:
        seconds = max(1, math.ceil(lease))
        # The owner value carries when its lease ends, for release() to check.
        owner = f"{secrets.token_hex(16)}.{time.time() + seconds:.3f}"
        lock = self._prefix + "lock:" + key
        taken = self._run(lambda cache: cache.add(lock, owner, timeout=seconds))
        return owner if taken else None

    def release(self, key: str, owner: str) -> None:
        try:
            ends = float(owner.partition(".")[2])  # "<random hex>.<end of the lease>"
        except ValueError:
            return  # not an owner this store gave: nothing of ours to release
        if time.time() > ends - RELEASE_MARGIN:
            return  # about to lapse: let it expire rather than delete another's lock
        lock = self._prefix + "lock:" + key

        def compare_and_delete(cache: Any) -> None:
            if cache.get(lock) == owner:
                cache.delete(lock)

        self._run(compare_and_delete)

    def close(self) -> None:
        """Nothing to close: Django closes its cache connections at the end of requests."""
