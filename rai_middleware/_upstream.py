"""Talking to Returning.AI, without doing I/O: what to send, and how to read the answer.

Each auth mode builds its own request and reads its own answer (``_modes``); the token
services call them through ``token_request`` and ``read_token`` below. Anything unusable
(non-2xx, not JSON, no token, a token that is not plausibly a JWT) raises ``TokenError``
with a message that names the failure and never a credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from ._exceptions import TokenError

if TYPE_CHECKING:
    import httpx

    from ._config import Settings
    from ._identity import Identity

__all__ = ["TokenRequest", "json_body", "plausible_token", "read_token", "token_request"]

_MAX_TOKEN_LENGTH = 16 * 1024


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One POST to Returning.AI. The repr shows neither headers nor body: they hold secrets."""

    url: str
    headers: dict[str, str] = field(repr=False)
    json: dict[str, Any] | None = field(repr=False)


def token_request(settings: Settings, identity: Identity) -> TokenRequest:
    return settings.auth.token_request(identity)


def read_token(settings: Settings, response: httpx.Response) -> tuple[str, float | None]:
    """(token, lifetime in seconds or None when the answer does not say)."""
    return settings.auth.read_token(response)


def json_body(response: httpx.Response) -> Any:
    """The JSON of a 2xx answer; TokenError for anything else."""
    if not response.is_success:
        raise TokenError(f"HTTP {response.status_code}", status_code=response.status_code)
    try:
        return response.json()
    except ValueError:
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
