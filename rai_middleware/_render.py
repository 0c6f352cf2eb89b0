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
from collections.abc import Mapping, Sequence

__all__ = [
    "Attribute",
    "ContainerIds",
    "container_id",
    "inline_script",
    "parse_attributes",
    "quote_attribute",
    "widget_attributes",
]

Attribute = tuple[str, str]

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
