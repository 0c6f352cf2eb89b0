"""Talking to Returning.AI, without doing I/O: what to send, and how to read the answer.

Each auth mode builds its own request and reads its own answer (``_modes``); the token
services call them through ``token_request`` and ``read_token`` below. Anything unusable
(non-2xx, not JSON, no token, a token that is not plausibly a JWT) raises ``TokenError``
with a message that names the failure and never a credential.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from ._clients import is_network_error, is_timeout
from ._exceptions import TokenError

if TYPE_CHECKING:
    from ._clients import HTTPResponse
    from ._config import Settings
    from ._identity import Identity

__all__ = [
    "IdentityRefused",
    "TimedOut",
    "TokenRequest",
    "Unreachable",
    "blames_identity",
    "checked_identifiers",
    "encode_json",
    "failure_kind",
    "header_value",
    "json_body",
    "plausible_token",
    "read_token",
    "token_request",
    "transport_error",
]

_MAX_TOKEN_LENGTH = 16 * 1024

# Statuses that say nothing about one visitor: Returning.AI (or what is in front of it) is
# down or overloaded, or refuses our credentials. They count towards the circuit breaker;
# every other 4xx is about the identity that was sent.
UPSTREAM_WIDE_4XX = frozenset({401, 403, 429})

# What a header value may hold: visible latin-1 and spaces, no control character
# (CR and LF above all: they would end the header).
_HEADER_VALUE = re.compile(r"[\x20-\x7e\x80-\xff]*\Z")
# Control characters; lone surrogates (which no encoding sends) are checked apart.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class IdentityRefused(TokenError):
    """This identity's problem, not Returning.AI's: an identifier that cannot be sent, or
    a 4xx about the identity. It never counts towards the circuit breaker; the identity
    gets its fallback for a short backoff instead."""


class TimedOut(TokenError):
    """No answer within the time there was: the request's timeout, or a waiting page's
    deadline."""


class Unreachable(TokenError):
    """Returning.AI could not be talked to: a connection, DNS, TLS or protocol error."""


def transport_error(exc: BaseException, timeout: float) -> TokenError:
    """The TokenError for an exception raised while talking to Returning.AI (minting, or
    fetching a widget page in mode proxy). Its message
    names the failure, never what was sent (no credential, no identifier): the text of a
    network error (connection refused, a TLS failure) is kept, that of any other (a
    protocol error may quote a header) is not."""
    if is_timeout(exc):
        return TimedOut(f"timed out after {timeout:g} s")
    if is_network_error(exc):
        return Unreachable(f"{type(exc).__name__}: {exc}"[:300])
    return Unreachable(type(exc).__name__)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One POST to Returning.AI, encoded: the HTTP client is given bytes, and has nothing
    left to encode (and so nothing to fail on with a credential in its message or its
    locals). The repr shows neither headers nor body: they hold secrets."""

    url: str
    headers: Mapping[bytes, bytes] = field(repr=False)
    body: bytes | None = field(default=None, repr=False)


def token_request(settings: Settings, identity: Identity) -> TokenRequest:
    """The mode's request for ``identity``; ``IdentityRefused`` (naming the field, never its
    value) for an identifier that cannot be sent."""
    return settings.auth.token_request(identity)


def blames_identity(error: BaseException) -> bool:
    """Whether a failed mint was about the identity (and so is no reason to stop calling
    Returning.AI for everyone): an unsendable identifier, or a 4xx other than 401, 403 and
    429. Timeouts, transport and TLS errors, 5xx, 401/403/429 and unusable answers are
    upstream-wide."""
    if isinstance(error, IdentityRefused):
        return True
    status = getattr(error, "status_code", None)
    return status is not None and 400 <= status < 500 and status not in UPSTREAM_WIDE_4XX


def failure_kind(error: BaseException) -> str:
    """Which of ``_metrics.FAILURE_KINDS`` a failed mint was."""
    if isinstance(error, TimedOut):
        return "timeout"
    if isinstance(error, Unreachable):
        return "network"
    if not isinstance(error, TokenError):
        return "error"
    status = error.status_code
    if status is None:
        return "invalid_identity" if isinstance(error, IdentityRefused) else "bad_answer"
    if status >= 500:
        return "server_error"
    if status in (401, 403):
        return "unauthorized"
    if status == 429:
        return "rate_limited"
    return "refused" if status >= 400 else "bad_answer"


def checked_identifiers(identity: Identity, *, in_headers: frozenset[str] = frozenset()) -> None:
    """``IdentityRefused`` naming the first identifier whose value cannot be sent: a lone
    surrogate or a control character anywhere; outside visible latin-1 in a header. The
    value itself never appears in the message (nor in a log line made from it)."""
    for name, value in identity.identifiers.items():
        if _SURROGATE.search(value):
            problem = "is not valid Unicode (a lone surrogate)"
        elif _CONTROL.search(value):
            problem = "holds a control character"
        elif name in in_headers and not _HEADER_VALUE.match(value):
            problem = "cannot be sent in an HTTP header (not latin-1)"
        else:
            continue
        raise IdentityRefused(f"the visitor's {name} {problem}; no token is asked for")


def header_value(value: str) -> bytes | None:
    """``value`` as the bytes of a header value, or None if it cannot be one. Callers pass
    a revealed secret as a temporary: the refusal is raised in their frame, which holds
    no revealed string."""
    return value.encode("latin-1") if _HEADER_VALUE.match(value) else None


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """A JSON body, ASCII only (so that nothing is left to encode). Call it only with
    checked identifiers: it does not fail then."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def read_token(settings: Settings, response: HTTPResponse) -> tuple[str, float | None]:
    """(token, lifetime in seconds or None when the answer does not say)."""
    return settings.auth.read_token(response)


def json_body(response: HTTPResponse) -> Any:
    """The JSON of a 2xx answer; TokenError for anything else."""
    if not response.is_success:
        raise TokenError(f"HTTP {response.status_code}", status_code=response.status_code)
    try:
        return response.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested too deep
        raise TokenError(
            f"HTTP {response.status_code} with a body that is not JSON",
            status_code=response.status_code,
        ) from None


def plausible_token(value: object) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_TOKEN_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )
