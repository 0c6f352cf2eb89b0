"""ASGI type aliases, kept in one place (as ``starlette.types`` does)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TypeAlias

__all__ = [
    "ASGIApp",
    "Identifiers",
    "IdentifyCallable",
    "Message",
    "Receive",
    "Scope",
    "Send",
]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The Returning.AI ``userIdentifiers`` mapping: ``{"data-customer-id": "c-42", ...}``.
Identifiers: TypeAlias = Mapping[str, str]

#: ``identify(scope)``: sync or async, returns identifiers or None for an anonymous visitor.
IdentifyCallable: TypeAlias = Callable[
    [Scope], "Identifiers | Awaitable[Identifiers | None] | None"
]
