"""``POST {endpoint_prefix}/embed-token`` (or ``/signin`` in iframe mode): a fresh token.

The browser half of the docs' long-session recipe calls it on ``rai-error``; in iframe
mode the auth script calls it when a widget asks for a token after the first expired.
It is same-origin only (no CORS headers; ``Sec-Fetch-Site`` and ``Origin`` checked when the
browser sends them), needs the page's ticket for the same identity, goes through the same
cache as pages (so hammering it causes no extra upstream calls) and is never cached.

The decision is protocol-free (``answer``, a generator that asks its driver for the
visitor and the token); each adapter only translates the request and the ``Reply``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._http import same_origin
from ._identity import Identity
from ._modes import Mode
from ._needs import IDENTIFY, Flow, Grant, TokenNeed
from ._tickets import TicketSigner

__all__ = ["REASONS", "Reply", "answer", "check_request", "check_ticket", "first_headers"]

#: Reason phrases of the statuses the endpoint answers (for WSGI's status line).
REASONS = {
    200: "OK",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}

_JSON_HEADERS = (
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
)


@dataclass(frozen=True, slots=True)
class Reply:
    """A JSON answer of the endpoint. The repr leaves out the payload (it may be a token)."""

    status: int
    payload: dict[str, Any] = field(repr=False)
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()

    def body(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()

    def headers(self, body: bytes) -> list[tuple[bytes, bytes]]:
        length = (b"content-length", str(len(body)).encode())
        return [*_JSON_HEADERS, *self.extra_headers, length]


NOT_ALLOWED = Reply(405, {"error": "method_not_allowed"}, ((b"allow", b"POST"),))
CROSS_ORIGIN = Reply(403, {"error": "cross_origin"})
NOT_SIGNED_IN = Reply(401, {"error": "not_signed_in"})
INVALID_TICKET = Reply(403, {"error": "invalid_ticket"})
UNAVAILABLE = Reply(503, {"error": "token_unavailable"})


def first_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Lower-cased header names to their first value."""
    headers: dict[bytes, bytes] = {}
    for name, value in raw:
        headers.setdefault(name.lower(), value)
    return headers


def check_request(method: str, headers: Mapping[bytes, bytes], scheme: str) -> Reply | None:
    """The checks that need no identity: method and same-origin. None: go on."""
    if method != "POST":
        return NOT_ALLOWED
    fetch_site = headers.get(b"sec-fetch-site")
    if fetch_site is not None and fetch_site.strip().lower() != b"same-origin":
        return CROSS_ORIGIN
    origin = headers.get(b"origin")
    if origin is not None and not same_origin(origin, scheme, headers.get(b"host")):
        return CROSS_ORIGIN
    return None


def check_ticket(
    identity: Identity | None, headers: Mapping[bytes, bytes], tickets: TicketSigner
) -> Reply | None:
    """Signed in, with a ticket issued for this very identity? None: go on."""
    if identity is None:
        return NOT_SIGNED_IN
    ticket = headers.get(b"x-rai-ticket")
    if not tickets.verify(ticket.decode("latin-1") if ticket else None, identity.key):
        return INVALID_TICKET
    return None


def answer(
    method: str,
    headers: Mapping[bytes, bytes],
    scheme: str,
    *,
    tickets: TicketSigner,
    mode: Mode,
) -> Flow[Reply]:
    """The endpoint's whole decision. Yields ``IDENTIFY`` and ``TokenNeed`` for a driver."""
    reply = check_request(method, headers, scheme)
    if reply is not None:
        return reply
    identity: Identity | None = yield IDENTIFY
    reply = check_ticket(identity, headers, tickets)
    if reply is not None or identity is None:
        return reply or NOT_SIGNED_IN
    grant: Grant | None = yield TokenNeed(identity)
    if grant is None:
        return UNAVAILABLE  # why was logged where it failed
    return Reply(200, mode.endpoint_payload(grant.token, grant.expires_in))
