"""``POST {endpoint_prefix}/embed-token`` (or ``/signin`` in iframe mode): a fresh token.

The browser half of the docs' long-session recipe calls it on ``rai-error``; in iframe
mode the auth script calls it when a widget asks for a token after the first expired.
It is same-origin only (no CORS headers; ``Sec-Fetch-Site`` and ``Origin`` checked when the
browser sends them), needs the page's ticket for the same identity, goes through the same
cache as pages (so hammering it causes no extra upstream calls) and is never cached.

The decision is protocol-free (``answer``, a generator that asks its driver for the
visitor and the token); each adapter only translates the request and the ``Reply``.

In mode ``proxy`` the middleware answers ``GET {endpoint_prefix}/widget/{segment}/{widget_id}``
the same way (``widget_answer``, which also asks for the widget page): an ``HtmlReply``,
the widget page with the visitor's token in it, or a short neutral page for 401, 403, 404,
405 and 503. Only a frame of the site's own pages may load it (``Sec-Fetch-Dest: iframe``
and ``Sec-Fetch-Site: same-origin`` when the browser sends them; ``X-Frame-Options`` and
``frame-ancestors 'self'`` on every answer).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from ._http import same_origin
from ._identity import Identity
from ._modes import Mode
from ._modes.proxy import DEFAULT_COLOR, inject_token, parse_route, valid_color
from ._needs import IDENTIFY, Flow, Grant, PageNeed, TokenNeed
from ._tickets import TicketSigner

__all__ = [
    "REASONS",
    "HtmlReply",
    "Reply",
    "answer",
    "check_request",
    "check_ticket",
    "first_headers",
    "widget_answer",
]

#: Reason phrases of the statuses the endpoint answers (for WSGI's status line).
REASONS = {
    200: "OK",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
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


#: Every answer of the widget route (mode ``proxy``): a page only the site's own pages may
#: frame, never stored by any cache, that sends no referrer.
_HTML_HEADERS = (
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"private, no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy", b"frame-ancestors 'self'"),
    (b"x-content-type-options", b"nosniff"),
)


@dataclass(frozen=True, slots=True)
class HtmlReply(Reply):
    """An HTML answer of the widget route. The repr leaves out the page (it holds a token)."""

    text: str = field(default="", repr=False)

    def body(self) -> bytes:
        return self.text.encode("utf-8")

    def headers(self, body: bytes) -> list[tuple[bytes, bytes]]:
        length = (b"content-length", str(len(body)).encode())
        return [*_HTML_HEADERS, *self.extra_headers, length]


def _page(status: int, title: str, message: str, *extra: tuple[bytes, bytes]) -> HtmlReply:
    text = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"</head><body><p>{message}</p></body></html>"
    )
    return HtmlReply(status, {}, extra, text)


PAGE_NOT_FOUND = _page(404, "Not found", "There is no such widget.")
PAGE_NOT_ALLOWED = _page(405, "Method not allowed", "Only GET is allowed.", (b"allow", b"GET"))
PAGE_CROSS_SITE = _page(403, "Forbidden", "This widget is shown only in this site's own pages.")
PAGE_NOT_SIGNED_IN = _page(401, "Not signed in", "Sign in to see this widget.")
PAGE_UNAVAILABLE = _page(503, "Unavailable", "This widget is unavailable. Try again later.")

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


def widget_answer(
    method: str,
    rest: str,
    query: str | bytes,
    headers: Mapping[bytes, bytes],
    *,
    mode: Mode,
) -> Flow[Reply]:
    """``GET {endpoint_prefix}/widget/{rest}``: the widget page with the visitor's token in
    it. Yields ``IDENTIFY``, ``TokenNeed`` and ``PageNeed`` for a driver."""
    target = parse_route(rest)
    color = _color(query)
    if target is None or color is None or target[0] not in mode.settings.iframe_segments.values():
        return PAGE_NOT_FOUND
    if method != "GET":
        return PAGE_NOT_ALLOWED
    dest, site = headers.get(b"sec-fetch-dest"), headers.get(b"sec-fetch-site")
    if (dest is not None and dest.strip().lower() != b"iframe") or (
        site is not None and site.strip().lower() != b"same-origin"
    ):
        return PAGE_CROSS_SITE
    identity: Identity | None = yield IDENTIFY
    if identity is None:
        return PAGE_NOT_SIGNED_IN
    grant: Grant | None = yield TokenNeed(identity)
    if grant is None:
        return PAGE_UNAVAILABLE  # why was logged where it failed
    page: str | None = yield PageNeed(target[0], target[1], color)
    text = None if page is None else inject_token(page, grant.token)
    if text is None:
        return PAGE_UNAVAILABLE
    return HtmlReply(200, {}, (), text)


def _color(query: str | bytes) -> str | None:
    """The ``color`` of the query (``light`` when absent); None when it is not a plain name."""
    if isinstance(query, bytes):
        query = query.decode("latin-1")
    values = parse_qs(query).get("color")
    if not values:
        return DEFAULT_COLOR
    return values[0] if valid_color(values[0]) else None
