"""Writing a placeholder tag, for the template helpers (Django's tag, the Jinja2 global).

Framework-free: both helpers hand their arguments to a ``PlaceholderWriter`` and put what it
returns in the page. The output is exactly what the middleware reads back::

    <rai-placeholder widget="store" theme="dark">fallback html</rai-placeholder>

* the tag is the middleware's ``placeholder_tag``, and the widget one of its ``widgets``
  (checked with the same rules as the options, so the helper and the middleware agree);
* an attribute keyword's ``_`` becomes ``-`` (``channel_id`` -> ``channel-id``); a name that
  is not a lower-case HTML attribute name after that, ``widget`` or ``embed-token`` (which
  the middleware writes) is refused;
* every value is escaped for a double-quoted attribute (``html.escape(quote=True)``); a value
  marked safe (it has ``__html__``, as Jinja2's ``Markup`` and Django's ``SafeString`` do) is
  HTML text, so its entities are decoded first and it is escaped all the same; ``True``
  writes the attribute with an empty value, ``False`` and ``None`` leave it out;
* a plain ``str`` fallback is text (escaped); one marked safe is inserted as HTML, and is
  refused if it holds the placeholder's end tag (which would end the placeholder early).

Errors are ``PlaceholderError`` (a ``ValueError``), raised when the template renders.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from ._exceptions import PlaceholderError
from ._options import DEFAULT_PLACEHOLDER_TAG, DEFAULT_WIDGETS, SETTINGS

__all__ = ["PlaceholderWriter", "attribute_name", "is_safe_html"]

# What the middleware keeps (``_render._SAFE_NAME``), minus ``_`` (a keyword's ``_`` is
# already ``-``) and ``:``/``.`` (no keyword can spell them), and starting with a letter.
_NAME: Final = re.compile(r"[a-z][a-z0-9-]*\Z")
#: Written by the middleware, never by the template.
_RESERVED: Final = {
    "widget": "the widget is the helper's first argument",
    "embed-token": "embed-token is the middleware's: it writes the visitor's token",
}


def attribute_name(keyword: str) -> str:
    """``channel_id`` -> ``channel-id``; ``PlaceholderError`` if that is no attribute name
    the middleware would copy onto the widget."""
    if not isinstance(keyword, str):
        raise PlaceholderError(f"attribute name {keyword!r} is not a string")
    name = keyword.replace("_", "-")
    if not _NAME.match(name):
        hint = (
            f" (attribute names are lower-case: did you mean {keyword.lower()!r}?)"
            if keyword != keyword.lower()
            else ""
        )
        raise PlaceholderError(
            f"{keyword!r} is not a valid attribute name: it must start with a letter and hold "
            f"only lower-case ASCII letters, digits and '_' or '-'{hint}"
        )
    if name in _RESERVED:
        raise PlaceholderError(f"{keyword!r} cannot be set: {_RESERVED[name]}")
    return name


def is_safe_html(value: object) -> bool:
    """Marked safe as HTML by the template engine (``Markup``, ``SafeString``)."""
    return callable(getattr(value, "__html__", None))


def _attribute_text(value: object) -> str:
    if is_safe_html(value):
        return html.unescape(str(value.__html__()))  # type: ignore[attr-defined]
    return str(value)


class PlaceholderWriter:
    """Writes ``<{tag} widget="..." ...>fallback</{tag}>`` for one middleware configuration.

    ``tag`` and ``widgets`` are the middleware's ``placeholder_tag`` and ``widgets`` options
    (None: their defaults), checked as the middleware checks them (``ConfigurationError``).
    """

    __slots__ = ("_end_tag", "tag", "widgets")

    def __init__(self, tag: str | None = None, widgets: Mapping[str, str] | None = None) -> None:
        self.tag: str = DEFAULT_PLACEHOLDER_TAG if tag is None else _parse("placeholder_tag", tag)
        self.widgets: Mapping[str, str] = (
            DEFAULT_WIDGETS if widgets is None else _parse("widgets", widgets)
        )
        self._end_tag = re.compile(rf"</{re.escape(self.tag)}[\s/>]", re.IGNORECASE)

    def __repr__(self) -> str:
        return f"PlaceholderWriter(tag={self.tag!r}, widgets={sorted(self.widgets)!r})"

    def widget_name(self, widget: object) -> str:
        """The ``widget=`` value as the middleware matches it, or ``PlaceholderError``."""
        name = widget.strip().lower() if isinstance(widget, str) else None
        if name is None or name not in self.widgets:
            raise PlaceholderError(
                f"unknown widget {widget!r}; the widgets are: {', '.join(sorted(self.widgets))}"
            )
        return name

    def write(
        self,
        widget: object,
        attributes: Iterable[tuple[str, object]] = (),
        fallback: object = None,
    ) -> str:
        """The placeholder, as HTML. ``attributes`` are (keyword, value) pairs in order."""
        parts = [f"<{self.tag} widget={_quote(self.widget_name(widget))}"]
        seen: set[str] = set()
        for keyword, value in attributes:
            name = attribute_name(keyword)
            if name in seen:
                raise PlaceholderError(f"attribute {name!r} is given twice")
            seen.add(name)
            if value is None or value is False:
                continue
            parts.append(f" {name}={_quote('' if value is True else _attribute_text(value))}")
        parts.append(f">{self._fallback(fallback)}</{self.tag}>")
        return "".join(parts)

    def _fallback(self, fallback: object) -> str:
        if fallback is None:
            return ""
        if not is_safe_html(fallback):
            return html.escape(str(fallback), quote=True)
        markup = str(fallback.__html__())  # type: ignore[attr-defined]
        if self._end_tag.search(markup):
            raise PlaceholderError(
                f"the fallback HTML holds </{self.tag}>, which would end the placeholder "
                "early: a placeholder cannot hold another one"
            )
        return markup


def _quote(value: str) -> str:
    return '"' + html.escape(value, quote=True) + '"'


def _parse(name: str, value: object) -> Any:
    parse = SETTINGS[name].parse
    assert parse is not None  # SETTINGS holds only the rows that parse
    return parse(name, value)
