"""``{% load rai_middleware %}``: the ``{% rai_widget %}`` tag writes the placeholder for you.

With ``"rai_middleware.django"`` in ``INSTALLED_APPS``::

    {% load rai_middleware %}
    {% rai_widget "store" theme="dark" %}<a href="/login">Sign in</a> to shop{% end_rai_widget %}
    {% rai_widget "custom" widget_id="NjlmMzJi" only %}

The first argument is the widget (a literal or a variable); then ``name=value`` attributes,
whose ``_`` becomes ``-`` in the attribute name (``channel_id`` -> ``channel-id``); values are
literals or variables, and always escaped. The content up to ``{% end_rai_widget %}`` is the
fallback shown to anonymous visitors (rendered as the rest of the template, so autoescaped);
``only`` at the end means no fallback and no end tag. The tag name and the widget names are
the ``placeholder_tag`` and ``widgets`` of ``settings.RETURNING_AI`` (defaults otherwise).

An invalid attribute name is a ``TemplateSyntaxError`` when the template is compiled; an
unknown widget is a ``PlaceholderError`` when it renders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django import template
from django.conf import settings
from django.utils.safestring import mark_safe

from rai_middleware._exceptions import ConfigurationError, PlaceholderError
from rai_middleware._placeholder import PlaceholderWriter, attribute_name

__all__ = ["RaiWidgetNode", "rai_widget", "register"]

register = template.Library()

#: The settings dict the middleware reads (``rai_middleware.django.SETTING``).
SETTING = "RETURNING_AI"
END_TAG = "end_rai_widget"
_KEYWORD = re.compile(r"([^=]+)=(.+)\Z", re.DOTALL)
_writers: dict[str, PlaceholderWriter] = {}


def writer() -> PlaceholderWriter:
    """The writer for the current ``settings.RETURNING_AI`` (kept while it is unchanged)."""
    configured = getattr(settings, SETTING, None) or {}
    if not isinstance(configured, Mapping):
        raise ConfigurationError(f"settings.{SETTING} must be a dict of options")
    tag = configured.get("placeholder_tag")
    widgets = configured.get("widgets")
    key = repr((tag, widgets))
    found = _writers.get(key)
    if found is None:
        found = PlaceholderWriter(tag, widgets)
        if len(_writers) >= 8:  # settings overridden in tests: keep a few, not all
            _writers.clear()
        _writers[key] = found
    return found


class RaiWidgetNode(template.Node):  # type: ignore[misc]  # Django ships no stubs
    def __init__(
        self,
        widget: Any,
        attributes: list[tuple[str, Any]],
        nodelist: Any | None,
    ) -> None:
        self.widget = widget
        self.attributes = attributes
        self.nodelist = nodelist

    def render(self, context: Any) -> str:
        fallback = None if self.nodelist is None else self.nodelist.render(context)
        attributes = [(name, value.resolve(context)) for name, value in self.attributes]
        html = writer().write(self.widget.resolve(context), attributes, fallback)
        return mark_safe(html)  # type: ignore[no-any-return]  # escaped by the writer


def rai_widget(parser: Any, token: Any) -> RaiWidgetNode:
    """``{% rai_widget "widget" name=value ... %}fallback{% end_rai_widget %}``, or with
    ``only`` at the end and no fallback nor end tag."""
    bits = token.split_contents()
    tag_name = bits.pop(0)
    only = bool(bits) and bits[-1] == "only"
    if only:
        bits.pop()
    if not bits or _KEYWORD.match(bits[0]):
        raise template.TemplateSyntaxError(
            f'{{% {tag_name} %}} needs the widget first, e.g. {{% {tag_name} "store" %}}'
        )
    widget = parser.compile_filter(bits.pop(0))
    attributes: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for bit in bits:
        match = _KEYWORD.match(bit)
        if match is None:
            raise template.TemplateSyntaxError(
                f"{{% {tag_name} %}} takes the widget, then name=value attributes, then "
                f"optionally 'only'; got {bit!r}"
            )
        keyword, value = match.groups()
        try:
            name = attribute_name(keyword)
        except PlaceholderError as error:
            raise template.TemplateSyntaxError(f"{{% {tag_name} %}}: {error}") from error
        if name in seen:
            raise template.TemplateSyntaxError(
                f"{{% {tag_name} %}}: attribute {name!r} is given twice"
            )
        seen.add(name)
        attributes.append((keyword, parser.compile_filter(value)))
    nodelist = None
    if not only:
        nodelist = parser.parse((END_TAG,))
        parser.delete_first_token()
    return RaiWidgetNode(widget, attributes, nodelist)


register.tag("rai_widget", rai_widget)
