"""Refresh tickets: a signed, timed proof that a page was rendered for an identity.

The page carries the ticket; the refresh endpoint accepts it only for the same identity
(compared with the identity key, an HMAC, in constant time) and only while it is younger
than ``max_age``. The payload is the identity key alone: no identifiers, no secret.
"""

from __future__ import annotations

import hmac
import threading
from typing import TYPE_CHECKING

from cachetools import TTLCache
from itsdangerous import BadSignature, URLSafeTimedSerializer

__all__ = ["TicketSigner"]

if TYPE_CHECKING:
    from ._config import Secret

_SALT = "rai-middleware.refresh-ticket.v1"
_REUSE_SECONDS = 60


class TicketSigner:
    __slots__ = ("_issued", "_lock", "_max_age", "_serializer")

    def __init__(self, secret: Secret | str, *, max_age: int) -> None:
        # Revealed only inside the serializer (whose repr does not show it): the holder is
        # what callers keep and pass.
        key = secret if isinstance(secret, str) else secret.reveal()
        self._serializer = URLSafeTimedSerializer(key, salt=_SALT)
        self._max_age = max_age
        # Signing costs more than the rest of a page's bookkeeping, and a ticket is good for
        # hours: one visitor's pages share a ticket for up to a minute.
        self._issued: TTLCache[str, str] = TTLCache(
            maxsize=10_000, ttl=min(_REUSE_SECONDS, max_age / 2)
        )
        self._lock = threading.Lock()  # the WSGI side calls from many threads

    def __repr__(self) -> str:
        return f"TicketSigner(max_age={self._max_age})"

    def issue(self, identity_key: str) -> str:
        with self._lock:
            ticket = self._issued.get(identity_key)
        if ticket is None:
            ticket = self._serializer.dumps({"i": identity_key})
            with self._lock:
                self._issued[identity_key] = ticket
        return ticket

    def verify(self, ticket: str | None, identity_key: str) -> bool:
        """True if ``ticket`` is genuine, fresh, and was issued for ``identity_key``."""
        if not ticket or len(ticket) > 1024:
            return False
        try:
            payload = self._serializer.loads(ticket, max_age=self._max_age)
        except BadSignature:  # also SignatureExpired, a subclass
            return False
        bound = payload.get("i") if isinstance(payload, dict) else None
        return isinstance(bound, str) and hmac.compare_digest(bound, identity_key)
