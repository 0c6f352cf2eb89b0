"""A body iterable that closes the app's own, for WSGI servers (PEP 3333)."""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["ClosingIterable"]


class ClosingIterable:
    """The rewritten body, whose ``close()`` also closes the app's iterable, even when the
    server closes it without iterating (a client gone before the first byte)."""

    __slots__ = ("_iterator", "_original")

    def __init__(self, iterator: Iterator[bytes], original: object) -> None:
        self._iterator = iterator
        self._original = original

    def __iter__(self) -> Iterator[bytes]:
        return self._iterator

    def close(self) -> None:
        try:
            close_iterator = getattr(self._iterator, "close", None)
            if close_iterator is not None:
                close_iterator()
        finally:
            close = getattr(self._original, "close", None)
            if close is not None:
                close()
