"""Mode ``proxy``: Returning.AI's "Server Proxy" flow.

The visitor is signed in exactly as in mode ``iframe`` (``POST
{widgets_base_url}/widget/{community_id}/signin`` with the Widget API key and the visitor's
``email``; same cache, single flight and breaker). The placeholder becomes a same-origin
``<iframe src="{endpoint_prefix}/widget/{segment}/{widget_id}?color=...">``; the middleware
answers that route itself (``_endpoint.widget_answer``): it fetches the widget page from
``{widgets_base_url}/{segment}/{widget_id}?color=...`` (cached without any token, see
``_widget_pages``), puts the visitor's token into the page's
``window.__WIDGET_INIT__ = { token: "" }`` (escaped for a JavaScript string inside HTML),
adds ``<base href="{widgets_base_url}/{segment}/">`` to its head, and serves it from the
site's own origin. No token is ever in a URL or in the parent page.
"""

from __future__ import annotations

import json
import logging
import re
from typing import ClassVar

from rai_middleware._render import quote_attribute

from ._base import PageAuth, PageContext, Widget, widget_page
from ._height import height_attributes, render_height_script
from .iframe import IframeMode, carried

__all__ = [
    "DEFAULT_COLOR",
    "ROUTE",
    "ProxyMode",
    "add_base",
    "has_token_slot",
    "inject_token",
    "js_string",
    "parse_route",
    "valid_color",
    "valid_widget_id",
]

logger = logging.getLogger("rai_middleware")

#: Where widget pages are served, under ``endpoint_prefix``.
ROUTE = "/widget/"
DEFAULT_COLOR = "light"
_WIDGET_ID = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
_COLOR = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
# The empty token of the page's ``window.__WIDGET_INIT__ = { token: "", ... }``: only inside
# that object literal (no ``}`` before it), whatever the spacing.
_TOKEN_SLOT = re.compile(r"""(window\.__WIDGET_INIT__\s*=\s*\{[^}]*?\btoken\s*:\s*)(?:""|'')""")
_HEAD = re.compile(r"<head(?:\s[^>]*)?>", re.IGNORECASE)
_DOCTYPE = re.compile(r"\A\s*<!doctype[^>]*>", re.IGNORECASE)
# In a JavaScript string inside an HTML <script>: nothing may close the element, open a
# comment or end the line (U+2028/U+2029 end a line in older engines).
_JS_ESCAPES = str.maketrans(
    {
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "'": "\\u0027",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)


def valid_widget_id(widget_id: str) -> bool:
    return _WIDGET_ID.match(widget_id) is not None


def valid_color(color: str) -> bool:
    return _COLOR.match(color) is not None


def parse_route(rest: str) -> tuple[str, str] | None:
    """(segment, widget id) of the route's path after ``{endpoint_prefix}/widget/``."""
    segment, slash, widget_id = rest.partition("/")
    if not slash or not valid_widget_id(widget_id):
        return None
    return segment, widget_id


def js_string(value: str) -> str:
    """``value`` as a double-quoted JavaScript string literal that is safe inside an HTML
    ``<script>`` element (quotes, backslashes, ``</script>``, ``<!--``, line separators)."""
    return json.dumps(value, ensure_ascii=True).translate(_JS_ESCAPES)


def inject_token(page: str, token: str) -> str | None:
    """The page with ``token`` in its ``window.__WIDGET_INIT__``; None if it has no empty
    ``token`` there."""
    found = _TOKEN_SLOT.search(page)
    if found is None:
        return None
    return page[: found.end(1)] + js_string(token) + page[found.end() :]


def has_token_slot(page: str) -> bool:
    return _TOKEN_SLOT.search(page) is not None


def add_base(page: str, href: str) -> str:
    """``<base href=...>`` first in the page's head (after ``<head>``, else after the
    doctype, else at the very start: an HTML parser puts it in the head either way)."""
    tag = f"<base href={quote_attribute(href)}>"
    found = _HEAD.search(page) or _DOCTYPE.match(page)
    at = found.end() if found is not None else 0
    return page[:at] + tag + page[at:]


class ProxyMode(IframeMode):
    name: ClassVar[str] = "proxy"
    endpoint: ClassVar[str | None] = None
    widget_route = True

    def render_runtime(self, page: PageContext, auth: PageAuth) -> str:
        """None here: each frame gets its token from the widget route, so the page needs
        neither the refresh endpoint nor the browser runtime (``<rai-runtime>`` is removed)."""
        return ""

    def route_prefix(self, root: str = "") -> str:
        """Where the widget pages are served (``/_rai/widget/``), under the app's mount."""
        return root + self.settings.endpoint_prefix + ROUTE

    def render(self, page: PageContext, widget: Widget, auth: PageAuth) -> str | None:
        target = widget_page(self, page, widget)
        if target is None:
            return None
        segment, widget_id = target
        color = widget.attribute("theme") or widget.attribute("color") or DEFAULT_COLOR
        problem = None
        if not valid_widget_id(widget_id):
            problem = f"widget-id {widget_id[:40]!r}: it must be 1 to 128 of A-Z a-z 0-9 _ -"
        elif not valid_color(color):
            problem = f"theme/color {color[:40]!r}: it must be 1 to 32 of A-Z a-z 0-9 _ -"
        if problem is not None:
            logger.error(
                "a <%s widget=%r> on %s has a bad %s; serving its fallback content",
                self.settings.placeholder_tag,
                widget.name,
                page.path,
                problem,
            )
            return None
        src = f"{self.route_prefix(page.root)}{segment}/{widget_id}?color={color}"
        attrs = carried(widget.attributes) + height_attributes(widget.attributes, page.path)
        return f"<iframe src={quote_attribute(src)}{attrs}></iframe>"

    def render_once(self, page: PageContext, auth: PageAuth) -> str:
        return render_height_script(
            self.route_prefix(page.root), nonce=page.nonce, xhtml=page.xhtml
        )
