"""``POST {endpoint_prefix}/embed-token`` (or ``/signin`` in iframe mode): a fresh token.

The browser half of the docs' long-session recipe calls it on ``rai-error``; in iframe
mode the auth script calls it when a widget asks for a token after the first expired. It is
same-origin only (no CORS headers; ``Sec-Fetch-Site`` and ``Origin`` checked when the
browser sends them), needs the page's ticket for the same identity, goes through the same
cache as pages (so hammering it causes no extra upstream calls) and is never cached.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ._exceptions import TokenError
from ._http import same_origin
from ._identity import Identity
from ._tickets import TicketSigner
from ._tokens import TokenService
from ._types import Receive, Scope, Send

__all__ = ["RefreshEndpoint"]

logger = logging.getLogger("rai_middleware")

_JSON_HEADERS = (
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
)


class RefreshEndpoint:
    """Answers the token-refresh requests of the script the middleware puts in pages."""

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
        if scope["method"] != "POST":
            await _respond(send, 405, {"error": "method_not_allowed"}, ((b"allow", b"POST"),))
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers") or ():
            headers.setdefault(name.lower(), value)
        fetch_site = headers.get(b"sec-fetch-site")
        if fetch_site is not None and fetch_site.strip().lower() != b"same-origin":
            await _respond(send, 403, {"error": "cross_origin"})
            return
        origin = headers.get(b"origin")
        if origin is not None and not same_origin(
            origin, scope.get("scheme", "http"), headers.get(b"host")
        ):
            await _respond(send, 403, {"error": "cross_origin"})
            return
        identity = await self._identify(scope)
        if identity is None:
            await _respond(send, 401, {"error": "not_signed_in"})
            return
        ticket = headers.get(b"x-rai-ticket")
        if not self._tickets.verify(ticket.decode("latin-1") if ticket else None, identity.key):
            await _respond(send, 403, {"error": "invalid_ticket"})
            return
        try:
            token = await self._tokens.get(identity)
        except TokenError as exc:
            logger.warning("token refresh failed: %s", exc)
            await _respond(send, 503, {"error": "token_unavailable"})
            return
        remaining = int(token.remaining(self._tokens.now()))
        await _respond(send, 200, {self._token_field: token.value, "expiresIn": remaining})


async def _respond(
    send: Send,
    status: int,
    payload: dict[str, Any],
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [*_JSON_HEADERS, *extra, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
