"""Talking to Returning.AI, without doing I/O: what to send, and how to read the answer.

- Access Key Embed: ``POST {api_base_url}/v2/api/widget-access-keys/token`` with JSON
  ``{accessId, accessKey, userIdentifiers}``; the token is ``data.embedToken`` and its
  lifetime ``data.expiresIn`` seconds.
- Authenticated Widgets (legacy, iframe): ``POST {widgets_base_url}/widget/{community}/signin``
  with the ``returningai-api-key`` and ``email`` headers and no body; the token is ``token``.
  Its lifetime is read from the JWT's ``exp`` claim when there is one (not verified: it
  only decides how long we reuse the token, the widget verifies it).

The async and the sync token services send ``token_request(...)`` with their own httpx
client and hand the answer to ``read_token(...)``. Anything unusable (non-2xx, not JSON,
no token, a token that is not plausibly a JWT) raises ``TokenError`` with a message that
names the failure and never a credential.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import httpx

from ._config import Settings
from ._exceptions import TokenError
from ._identity import Identity

__all__ = ["TokenRequest", "plausible_token", "read_token", "token_request"]

_MAX_TOKEN_LENGTH = 16 * 1024


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One POST to Returning.AI. The repr shows neither headers nor body: they hold secrets."""

    url: str
    headers: dict[str, str] = field(repr=False)
    json: dict[str, Any] | None = field(repr=False)


def token_request(settings: Settings, identity: Identity) -> TokenRequest:
    if settings.mode == "iframe":
        if settings.widget_api_key is None:  # pragma: no cover - Settings guarantees it
            raise TokenError("mode='iframe' has no widget_api_key")
        email = identity.identifiers.get("data-email")
        if not email:
            raise TokenError("the visitor has no data-email, which the signin flow needs")
        headers = {
            "returningai-api-key": settings.widget_api_key.reveal(),
            "email": email,
            "content-type": "application/json",
        }
        return TokenRequest(settings.token_url, headers, None)
    if settings.access_id is None or settings.access_key is None:  # pragma: no cover
        raise TokenError("mode='access_key' has no access_id/access_key")
    payload = {
        "accessId": settings.access_id.reveal(),
        "accessKey": settings.access_key.reveal(),
        "userIdentifiers": dict(identity.identifiers),
    }
    return TokenRequest(settings.token_url, {}, payload)


def read_token(settings: Settings, response: httpx.Response) -> tuple[str, float | None]:
    """(token, lifetime in seconds or None when the answer does not say)."""
    if not response.is_success:
        raise TokenError(f"HTTP {response.status_code}", status_code=response.status_code)
    try:
        body: Any = response.json()
    except ValueError:
        raise TokenError(
            f"HTTP {response.status_code} with a body that is not JSON",
            status_code=response.status_code,
        ) from None
    if settings.mode == "iframe":
        value = body.get("token") if isinstance(body, dict) else None
        if not plausible_token(value):
            raise TokenError("the answer has no usable token", status_code=response.status_code)
        exp = _jwt_expiry(value)
        return value, None if exp is None else exp - time.time()
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise TokenError("the answer has no data object", status_code=response.status_code)
    value = data.get("embedToken")
    if not plausible_token(value):
        raise TokenError(
            "the answer has no usable data.embedToken", status_code=response.status_code
        )
    raw = data.get("expiresIn")
    if raw is None:
        return value, None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise TokenError("the answer's data.expiresIn is not a number of seconds")
    return value, float(raw)


def plausible_token(value: object) -> TypeGuard[str]:
    return (
        isinstance(value, str)
        and 0 < len(value) <= _MAX_TOKEN_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    )


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified; None if it is not a JWT with one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None
    return float(exp)
