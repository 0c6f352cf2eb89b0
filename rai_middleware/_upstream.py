"""Talking to Returning.AI: one function per token flow, each returning (token, lifetime).

- Access Key Embed: ``POST {api_base_url}/v2/api/widget-access-keys/token`` with JSON
  ``{accessId, accessKey, userIdentifiers}``; the token is ``data.embedToken`` and its
  lifetime ``data.expiresIn`` seconds.
- Authenticated Widgets (legacy, iframe): ``POST {widgets_base_url}/widget/{community}/signin``
  with the ``returningai-api-key`` and ``email`` headers and no body; the token is ``token``.
  Its lifetime is read from the JWT's ``exp`` claim when there is one (not verified: it
  only decides how long we reuse the token, the widget verifies it).

Anything else (non-2xx, not JSON, no token, a token that is not a plausible JWT) raises
``TokenError`` with a message that names the failure and never a credential.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from typing import Any, TypeGuard

import httpx

from ._config import Settings
from ._exceptions import TokenError
from ._identity import Identity

__all__ = ["request_access_key_token", "request_signin_token"]

_MAX_TOKEN_LENGTH = 16 * 1024


async def request_access_key_token(
    client: httpx.AsyncClient, settings: Settings, identity: Identity
) -> tuple[str, float | None]:
    assert settings.access_id is not None and settings.access_key is not None
    payload = {
        "accessId": settings.access_id.reveal(),
        "accessKey": settings.access_key.reveal(),
        "userIdentifiers": dict(identity.identifiers),
    }
    response = await client.post(settings.token_url, json=payload, timeout=settings.timeout)
    body = _json_body(response)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise TokenError("the answer has no data object", status_code=response.status_code)
    value = data.get("embedToken")
    if not _plausible_token(value):
        raise TokenError(
            "the answer has no usable data.embedToken", status_code=response.status_code
        )
    raw = data.get("expiresIn")
    if raw is None:
        return value, None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise TokenError("the answer's data.expiresIn is not a number of seconds")
    return value, float(raw)


async def request_signin_token(
    client: httpx.AsyncClient, settings: Settings, identity: Identity
) -> tuple[str, float | None]:
    assert settings.widget_api_key is not None
    email = identity.identifiers.get("data-email")
    if not email:  # checked before minting; kept here so this function stands on its own
        raise TokenError("the visitor has no data-email, which the signin flow needs")
    headers = {
        "returningai-api-key": settings.widget_api_key.reveal(),
        "email": email,
        "content-type": "application/json",
    }
    response = await client.post(settings.token_url, headers=headers, timeout=settings.timeout)
    body = _json_body(response)
    value = body.get("token") if isinstance(body, dict) else None
    if not _plausible_token(value):
        raise TokenError("the answer has no usable token", status_code=response.status_code)
    exp = _jwt_expiry(value)
    return value, None if exp is None else exp - time.time()


def _json_body(response: httpx.Response) -> Any:
    if not response.is_success:
        raise TokenError(f"HTTP {response.status_code}", status_code=response.status_code)
    try:
        return response.json()
    except ValueError:
        raise TokenError(
            f"HTTP {response.status_code} with a body that is not JSON",
            status_code=response.status_code,
        ) from None


def _plausible_token(value: object) -> TypeGuard[str]:
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
