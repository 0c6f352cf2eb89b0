"""Who is the visitor? ``identify`` callables and the checks around them.

An identity is the Returning.AI ``userIdentifiers`` mapping (``data-*`` keys). Anything
that goes wrong here (an exception in the user's callable, a wrong return value) is
logged and makes the visitor anonymous: the page is served either way.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._render import Memo
from ._types import Scope

__all__ = [
    "Identity",
    "IdentityKey",
    "checked_identity",
    "default_identify",
    "identifiers_of",
    "resolve_identity",
    "resolve_identity_sync",
]

logger = logging.getLogger("rai_middleware")

# ``data-`` and an attribute-safe name: identifiers may be written as HTML attributes.
_IDENTIFIER_KEY = re.compile(r"data-[A-Za-z0-9_.:-]+\Z")
# Tried in order for the customer id; the first that exists and is not empty wins.
_ID_ATTRIBUTES = ("customer_id", "id", "pk", "identity", "username")


class IdentityKey:
    """The key identity hashes are made with, held so that no ``repr()`` shows it.

    It is passed down every call that resolves an identity, so it sits in frames that a
    locals-capturing error reporter (Sentry, structlog, rich) may print: raw bytes there
    would be the ``secret_key`` in the report."""

    __slots__ = ("_key", "_known")

    def __init__(self, key: bytes) -> None:
        self._key = key
        # A visitor comes back page after page: their identity is keyed once.
        self._known: Memo[tuple[tuple[str, str], ...], Identity] = Memo(1024)

    def digest(self, data: bytes) -> str:
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()

    def identity(self, identifiers: Mapping[str, str]) -> Identity:
        """``Identity.create(identifiers, self)``, remembered (at most 1,024 visitors' in
        memory) and shared: an ``Identity`` is immutable."""
        return self._known.get_or_make(
            tuple(identifiers.items()), lambda: Identity.create(identifiers, self)
        )

    def __repr__(self) -> str:
        return "IdentityKey('**********')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Identity:
    """A visitor's identifiers and the key that stands for them in caches and tickets.

    ``key`` is an HMAC of the identifiers with the secret key: it names the identity
    without revealing it (no email or customer id in cache keys or tickets). The repr
    shows only the identifier names.
    """

    identifiers: Mapping[str, str] = field(repr=False)
    key: str

    @classmethod
    def create(cls, identifiers: Mapping[str, str], secret: IdentityKey | bytes) -> Identity:
        holder = secret if isinstance(secret, IdentityKey) else IdentityKey(secret)
        canonical = json.dumps(dict(identifiers), sort_keys=True, separators=(",", ":"))
        # Read-only: one visitor's identity is shared by their concurrent requests.
        frozen = MappingProxyType(dict(identifiers))
        return cls(identifiers=frozen, key=holder.digest(canonical.encode()))

    @property
    def tag(self) -> str:
        """What logs may name the visitor by: the first 8 hex digits of ``key``, never an
        email or an id."""
        return self.key[:8]

    def __repr__(self) -> str:
        return f"Identity(fields={sorted(self.identifiers)!r})"


def _attribute(user: object, name: str) -> Any:
    # Starlette's BaseUser.identity raises NotImplementedError; a property may raise anything.
    try:
        return getattr(user, name, None)
    except Exception:
        return None


def default_identify(scope: Scope) -> dict[str, str] | None:
    """Read ``scope["user"]`` as set by Starlette's AuthenticationMiddleware or Channels.

    A user whose ``is_authenticated`` is true gives ``data-customer-id`` (from
    ``customer_id``, else ``id``, ``pk``, ``identity``, ``username``) and ``data-email``
    (from ``email``); anyone else is anonymous.
    """
    user = scope.get("user")
    if user is None or _attribute(user, "is_authenticated") is not True:
        return None
    identifiers: dict[str, str] = {}
    for name in _ID_ATTRIBUTES:
        value = _attribute(user, name)
        if value is not None and not callable(value) and str(value) != "":
            identifiers["data-customer-id"] = str(value)
            break
    email = _attribute(user, "email")
    if isinstance(email, str) and email:
        identifiers["data-email"] = email
    return identifiers or None


def identifiers_of(user: object, customer_id: Callable[[Any], object]) -> dict[str, str] | None:
    """A framework user's identifiers: ``customer_id(user)`` as ``data-customer-id`` and its
    ``email`` as ``data-email``, if ``user.is_authenticated`` is true; None otherwise."""
    if user is None or _attribute(user, "is_authenticated") is not True:
        return None
    identifiers: dict[str, str] = {}
    customer = customer_id(user)
    if customer is not None and str(customer) != "":
        identifiers["data-customer-id"] = str(customer)
    email = _attribute(user, "email")
    if isinstance(email, str) and email:
        identifiers["data-email"] = email
    return identifiers or None


def _validate(result: object, source: str) -> dict[str, str] | None:
    if result is None:
        return None
    if not isinstance(result, Mapping):
        logger.error(
            "%s returned %s; expected a mapping of 'data-*' identifier names to strings, "
            "or None for an anonymous visitor. Treating the visitor as anonymous.",
            source,
            type(result).__name__,
        )
        return None
    identifiers: dict[str, str] = {}
    for key, value in result.items():
        if not isinstance(key, str) or not _IDENTIFIER_KEY.match(key):
            logger.error(
                "%s returned the identifier key %r; keys must be the 'data-*' field names "
                "configured in Returning.AI (e.g. 'data-customer-id', 'data-email'). "
                "Treating the visitor as anonymous.",
                source,
                key,
            )
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            logger.error(
                "%s returned a %s for %r; identifier values must be strings. "
                "Treating the visitor as anonymous.",
                source,
                type(value).__name__,
                key,
            )
            return None
        if value == "":
            continue
        identifiers[key] = str(value)
    return identifiers or None


def _source(identify: object) -> str:
    return f"identify ({getattr(identify, '__qualname__', None) or identify!r})"


def checked_identity(
    result: object, identify: object, secret: IdentityKey | bytes
) -> Identity | None:
    """What ``identify`` returned, checked and keyed; None (logged) when unusable."""
    identifiers = _validate(result, _source(identify))
    if identifiers is None:
        return None
    if isinstance(secret, IdentityKey):
        return secret.identity(identifiers)
    return Identity.create(identifiers, secret)


async def resolve_identity(
    identify: Callable[[Any], object], request: object, secret: IdentityKey
) -> Identity | None:
    """Call ``identify`` (sync or async) and check its answer. Never raises."""
    try:
        result = identify(request)
        if inspect.isawaitable(result):
            result = await result
    except Exception:
        logger.exception("%s raised; treating the visitor as anonymous", _source(identify))
        return None
    return checked_identity(result, identify, secret)


def resolve_identity_sync(
    identify: Callable[[Any], object], request: object, secret: IdentityKey
) -> Identity | None:
    """The same for WSGI and framework adapters: ``identify`` must be a plain function."""
    try:
        result = identify(request)
    except Exception:
        logger.exception("%s raised; treating the visitor as anonymous", _source(identify))
        return None
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never awaited: close it so that Python does not warn
        logger.error(
            "%s returned an awaitable, but this adapter is synchronous: pass a plain "
            "function. Treating the visitor as anonymous.",
            _source(identify),
        )
        return None
    return checked_identity(result, identify, secret)
