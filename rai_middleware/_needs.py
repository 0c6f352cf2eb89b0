"""What the protocol-free core asks an adapter's driver for, and what it gets back.

The page rewrite and the endpoint are generators that yield a need when they cannot go on
without I/O, and are sent the answer: ``IDENTIFY`` is answered with the visitor's
``Identity`` (or None: anonymous), ``TokenNeed`` with a ``Grant`` (or None: no token to be
had, already logged), ``PageNeed`` with the widget page's HTML (or None: none to be had,
already logged). Drivers (``_core.SyncDriver``, ``_core.AsyncDriver``) do that I/O.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from ._identity import Identity

__all__ = ["IDENTIFY", "Flow", "Grant", "Identify", "Need", "PageNeed", "TokenNeed"]

T = TypeVar("T")


class Identify:
    """Who is the visitor? (``identify`` for this request, checked.)"""

    __slots__ = ()

    def __repr__(self) -> str:
        return "IDENTIFY"


IDENTIFY = Identify()


@dataclass(frozen=True, slots=True)
class TokenNeed:
    """A token for this identity, from the cache or from Returning.AI."""

    identity: Identity


@dataclass(frozen=True, slots=True)
class Grant:
    """A token and how many seconds it has left."""

    token: str = field(repr=False)
    expires_in: int


@dataclass(frozen=True, slots=True)
class PageNeed:
    """A widget page of the widgets host (mode ``proxy``), from the page cache or fetched:
    its HTML with the ``<base>`` added and no token in it."""

    segment: str
    widget_id: str
    color: str


Need: TypeAlias = Identify | TokenNeed | PageNeed
#: A piece of core logic that may stop for I/O: yields needs, is sent answers, returns T.
Flow = Generator[Need, Any, T]
