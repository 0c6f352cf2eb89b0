"""Shared by the modes' renderers: reading a placeholder's attributes, writing escaped ones.

Every value that reaches the page goes through ``html.escape(..., quote=True)`` and is
double-quoted; attribute names are kept only if they are plain HTML attribute names. The
generated markup never contains the placeholder tag, so a second rewriting layer finds
nothing to do.
"""

from __future__ import annotations

import html
import itertools
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar

__all__ = [
    "Attribute",
    "ContainerIds",
    "Memo",
    "WidgetSpec",
    "container_id",
    "inline_script",
    "parse_attributes",
    "quote_attribute",
    "read_placeholder",
    "widget_attributes",
]

Attribute = tuple[str, str]
#: A placeholder's attributes, understood: its ``widget`` value as written (None: none),
#: the element it maps to (None: unknown) and every attribute (``parse_attributes``).
WidgetSpec = tuple[str | None, str | None, tuple[Attribute, ...]]

K = TypeVar("K")
V = TypeVar("V")

_ATTRIBUTE = re.compile(
    rb"""([^\s>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]*)))?""",
)
_SAFE_NAME = re.compile(r"[a-z_:][-a-z0-9_:.]*\Z")


def parse_attributes(raw: bytes, encoding: str) -> list[Attribute]:
    """Attributes of a placeholder's open tag, decoded and unescaped, first one wins.

    Names are lower-cased; names that are not plain HTML attribute names are dropped.
    A value-less attribute gets the empty string, as in the DOM.
    """
    seen: set[str] = set()
    attributes: list[Attribute] = []
    for match in _ATTRIBUTE.finditer(raw):
        name = match.group(1).decode("ascii", "replace").lower()
        if name in seen or not _SAFE_NAME.match(name):
            continue
        seen.add(name)
        value_bytes = next((g for g in match.groups()[1:] if g is not None), b"")
        attributes.append((name, html.unescape(value_bytes.decode(encoding, "replace"))))
    return attributes


def read_placeholder(raw: bytes, encoding: str, widgets: Mapping[str, str]) -> WidgetSpec:
    """``parse_attributes`` and ``widget_attributes`` in one: what a placeholder asks for."""
    attributes = tuple(parse_attributes(raw, encoding))
    written, element = widget_attributes(attributes, widgets)
    return written, element, attributes


class Memo(Generic[K, V]):
    """Results that do not change between pages (a placeholder's parsed attributes, the
    markup of a widget for a token), kept across responses.

    Bounded: at ``size`` entries it forgets them all, which costs nothing on the hot path
    (no recency bookkeeping) and keeps a hostile page from growing it. Safe to share
    between threads: the worst a race does is lose an entry, or hold a few more than
    ``size`` for a moment."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int) -> None:
        self._entries: dict[K, V] = {}
        self._size = size

    def __repr__(self) -> str:
        return f"Memo({len(self._entries)}/{self._size})"  # keys may hold tokens

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> V:
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[key] = value
        return value

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The value kept for ``key``, or ``make()``'s, kept."""
        value = self._entries.get(key)
        if value is None:
            value = self.put(key, make())
        return value


def container_id(suffix: int | str) -> str:
    """``returning-ai-widget-<suffix>``, the container form the SDK's docs show."""
    return f"returning-ai-widget-{suffix}"


def new_prefix() -> str:
    """A random prefix for one middleware's container ids (8 hex digits)."""
    return secrets.token_hex(4)


class ContainerIds:
    """Container id suffixes, unique across responses: a counter per middleware (every
    response of this process) after a random prefix (other processes and hosts, whose
    fragments may be swapped into the same document). Thread-safe."""

    __slots__ = ("_count", "_lock", "prefix")

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = new_prefix() if prefix is None else prefix
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ContainerIds(prefix={self.prefix!r})"

    def next(self) -> str:
        with self._lock:
            number = next(self._count)
        return f"{self.prefix}-{number}" if self.prefix else str(number)


def inline_script(code: str, *, xhtml: bool) -> str:
    """Script text as it goes between the tags: in an XHTML page (an XML parser reads it)
    inside a CDATA section, so that its ``<`` and ``&`` are not markup."""
    return f"//<![CDATA[\n{code}\n//]]>" if xhtml else code


def widget_attributes(
    attributes: Sequence[Attribute], widgets: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """(``widget`` value as written, the element it maps to or None if unknown)."""
    for name, value in attributes:
        if name == "widget":
            return value, widgets.get(value.strip().lower())
    return None, None


def quote_attribute(value: str) -> str:
    """An attribute value, escaped for HTML and double-quoted."""
    return '"' + html.escape(value, quote=True) + '"'
