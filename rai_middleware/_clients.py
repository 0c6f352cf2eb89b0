"""The HTTP clients the middleware accepts: what it calls on them, as protocols.

A client from ``httpx`` or from its maintained fork ``httpx2`` (the same API) fits, and so
does any object with the same few methods. The middleware calls:

- asynchronous (``AsyncHTTPClient``): ``await client.post(url, headers=..., content=...,
  timeout=...)``, and, on a client it created itself, ``await client.aclose()``;
- synchronous (``SyncHTTPClient``): ``with client.stream("POST", url, headers=...,
  content=..., timeout=...) as response``, reading ``response.status_code``,
  ``response.headers.get("content-type", "")`` and ``response.iter_bytes()``; and
  ``client.close()`` on its own client.

An answer (``HTTPResponse``) is read through ``status_code``, ``is_success`` and ``json()``.

Failures are told apart by family, without importing ``httpx2``: an exception whose class
(or a base) comes from ``httpx`` or ``httpx2`` and is named ``HTTPError`` is a transport or
protocol failure, ``TimeoutException`` a timeout, ``NetworkError`` a network failure. Any
other exception from a client is a bug or a broken client.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "AsyncHTTPClient",
    "HTTPResponse",
    "StreamedResponse",
    "SyncHTTPClient",
    "detached",
    "error_family",
    "is_async_client",
    "is_http_error",
    "is_network_error",
    "is_sync_client",
    "is_timeout",
]

#: The top-level packages whose exceptions are an HTTP client's own.
_FAMILIES = frozenset({"httpx", "httpx2"})


class HTTPResponse(Protocol):
    """An answer, read in full."""

    @property
    def status_code(self) -> int: ...

    @property
    def is_success(self) -> bool: ...

    def json(self, **kwargs: Any) -> Any: ...


class StreamedResponse(Protocol):
    """An answer being read (the synchronous client's ``stream``)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Any: ...

    def iter_bytes(self) -> Iterator[bytes]: ...


@runtime_checkable
class AsyncHTTPClient(Protocol):
    """What the asyncio token service calls: ``httpx.AsyncClient``, ``httpx2.AsyncClient``."""

    async def post(
        self, url: str, *, content: bytes | None, headers: Mapping[bytes, bytes], timeout: float
    ) -> Any: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SyncHTTPClient(Protocol):
    """What the thread token service calls: ``httpx.Client``, ``httpx2.Client``."""

    def stream(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None,
        headers: Mapping[bytes, bytes],
        timeout: float,
    ) -> AbstractContextManager[Any]: ...

    def close(self) -> None: ...


def is_async_client(client: object) -> bool:
    """Whether ``client`` is an asynchronous client (its ``post`` is a coroutine function)."""
    return inspect.iscoroutinefunction(getattr(client, "post", None)) and callable(
        getattr(client, "aclose", None)
    )


def is_sync_client(client: object) -> bool:
    """Whether ``client`` is a synchronous client (``stream`` and ``close``, no async
    ``post``)."""
    return (
        callable(getattr(client, "stream", None))
        and callable(getattr(client, "close", None))
        and not inspect.iscoroutinefunction(getattr(client, "post", None))
    )


def error_family(exc: BaseException) -> frozenset[str]:
    """The names of the classes of ``exc`` that belong to an HTTP client's family."""
    return frozenset(
        cls.__name__ for cls in type(exc).__mro__ if cls.__module__.partition(".")[0] in _FAMILIES
    )


def is_http_error(exc: BaseException) -> bool:
    """An ``httpx.HTTPError`` or an ``httpx2.HTTPError`` (or a subclass)."""
    return "HTTPError" in error_family(exc)


def is_timeout(exc: BaseException) -> bool:
    """A client's timeout, or Python's ``TimeoutError`` (a deadline of ours)."""
    return isinstance(exc, TimeoutError) or "TimeoutException" in error_family(exc)


def is_network_error(exc: BaseException) -> bool:
    return "NetworkError" in error_family(exc)


def detached(exc: Exception) -> Exception:
    """A client's ``HTTPError`` as the token flow keeps it: its class and (for network
    errors) its text; not its frames (which hold the request), nor what it came from."""
    exc = exc.with_traceback(None)
    exc.__cause__ = exc.__context__ = None
    return exc
