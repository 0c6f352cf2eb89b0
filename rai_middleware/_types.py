"""ASGI type aliases, kept in one place (as ``starlette.types`` does)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from types import TracebackType
from typing import Any, Protocol, TypeAlias

__all__ = [
    "ASGIApp",
    "Environ",
    "ExcInfo",
    "Identifiers",
    "IdentifyCallable",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "StartResponse",
    "WSGIApp",
    "WriteCallable",
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

# WSGI (PEP 3333).
Environ: TypeAlias = dict[str, Any]
ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
WriteCallable: TypeAlias = Callable[[bytes], object]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /
    ) -> WriteCallable: ...


WSGIApp: TypeAlias = Callable[[Environ, StartResponse], Iterable[bytes]]
