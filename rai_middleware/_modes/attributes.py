"""Mode ``attributes``: Returning.AI's "Attribute Auth" flow, the documented loader snippet.

No secret and no token: the identity is written into the page as ``data-*`` attributes of
the ``widget-loader.js`` script, which is why Returning.AI calls it the weaker option (any
visitor can edit those attributes in their browser). Values are escaped like every other.
There is no endpoint: nothing to refresh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from rai_middleware._render import Attribute, quote_attribute

from ._base import Mode, PageAuth, PageContext, Widget, widget_page

__all__ = ["AttributesMode", "render_loader"]

# Consumed by the loader snippet itself rather than copied as data-* attributes.
_CONSUMED = frozenset({"widget", "widget-id", "embed-token"})


def render_loader(
    *,
    widget: str,
    widget_id: str,
    container: str,
    attributes: Sequence[Attribute],
    identifiers: Mapping[str, str],
    loader_url: str,
    widgets_base_url: str,
    segment: str,
    nonce: str | None,
) -> str:
    data: dict[str, str] = {
        "data-widget-id": widget_id,
        "data-widget-type": widget,
        "data-container": container,
        "data-api-url": widgets_base_url,
        "data-widget-url": f"{widgets_base_url}/{segment}",
    }
    for name, value in attributes:
        if name in _CONSUMED:
            continue
        data.setdefault(name if name.startswith("data-") else f"data-{name}", value)
    data.update(identifiers)  # the server's identity wins over anything in the page
    rendered = "".join(f" {name}={quote_attribute(value)}" for name, value in data.items())
    nonce_attr = f" nonce={quote_attribute(nonce)}" if nonce else ""
    return (
        f"<div id={quote_attribute(container)}></div>"
        f"<script src={quote_attribute(loader_url)}{nonce_attr}{rendered}></script>"
    )


class AttributesMode(Mode):
    name: ClassVar[str] = "attributes"
    uses_token = False

    def render(self, page: PageContext, widget: Widget, auth: PageAuth) -> str | None:
        target = widget_page(self, page, widget)
        if target is None:
            return None
        segment, widget_id = target
        settings = self.settings
        return render_loader(
            widget=widget.name,
            widget_id=widget_id,
            container=widget.container,
            attributes=widget.attributes,
            identifiers=auth.identity.identifiers,
            loader_url=settings.loader_url,
            widgets_base_url=settings.widgets_base_url,
            segment=segment,
            nonce=page.nonce,
        )
