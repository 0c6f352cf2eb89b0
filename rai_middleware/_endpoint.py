"""``POST {endpoint_prefix}/embed-token`` (or ``/signin`` in iframe mode): a fresh token.

The browser half of the docs' long-session recipe calls it on ``rai-error``; in iframe
mode the auth script calls it when a widget asks for a token after the first expired.
It is same-origin only (no CORS headers; ``Sec-Fetch-Site`` and ``Origin`` checked when the
browser sends them), needs the page's ticket for the same identity, goes through the same
cache as pages (so hammering it causes no extra upstream calls) and is never cached.

The decisions are protocol-free (``check_request``, ``check_ticket``, ``token_reply``); the
ASGI endpoint here and the WSGI one in ``_wsgi.py`` only do the I/O around them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._async_tokens import TokenService
from ._exceptions import TokenError
from ._http import same_origin
from ._identity import Identity
from ._tickets import TicketSigner
from ._tokens import EmbedToken
from ._types import Receive, Scope, Send

__all__ = [
    "UNAVAILABLE",
    "RefreshEndpoint",
    "Reply",
    "check_request",
    "check_ticket",
    "first_headers",
    "token_reply",
]

logger = logging.getLogger("rai_middleware")

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


def token_reply(token_field: str, token: EmbedToken, now: float) -> Reply:
    return Reply(200, {token_field: token.value, "expiresIn": int(token.remaining(now))})


class RefreshEndpoint:
    """Answers the token-refresh requests of the scripts the middleware puts in pages."""

    def __init__(
        self,
        *,
        tokens: TokenService,
        tickets: TicketSigner,
        identify: Callable[[Scope], Awaitable[Identity | None]],
        token_field: str = "embedToken",
    ) -> None:
        self._token_field = token_field
        self._tokens = tokens
        self._tickets = tickets
        self._identify = identify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._send(send, await self._answer(scope))

    async def _answer(self, scope: Scope) -> Reply:
        headers = first_headers(scope.get("headers") or ())
        reply = check_request(scope["method"], headers, scope.get("scheme", "http"))
        if reply is not None:
            return reply
        identity = await self._identify(scope)
        reply = check_ticket(identity, headers, self._tickets)
        if reply is not None or identity is None:
            return reply or NOT_SIGNED_IN
        try:
            token = await self._tokens.get(identity)
        except TokenError as exc:
            # The token service logged the failure itself, once per failure or cool-down.
            logger.debug("token refresh failed: %s", exc)
            return UNAVAILABLE
        except Exception:
            logger.exception("token refresh failed")
            return UNAVAILABLE
        return token_reply(self._token_field, token, self._tokens.now())

    @staticmethod
    async def _send(send: Send, reply: Reply) -> None:
        body = reply.body()
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": reply.headers(body)}
        )
        await send({"type": "http.response.body", "body": body})
