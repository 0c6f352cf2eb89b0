"""Turn a found placeholder into widget markup: pure functions from values to HTML.

Every value that reaches the page goes through ``html.escape(..., quote=True)`` and is
double-quoted; attribute names are kept only if they are plain HTML attribute names. The
generated markup never contains the placeholder tag, so a second rewriting layer finds
nothing to do.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "REFRESH_SCRIPT",
    "Attribute",
    "WidgetMarkup",
    "container_id",
    "inline_script",
    "parse_attributes",
    "quote_attribute",
    "render_scripts",
    "render_widget",
]

Attribute = tuple[str, str]

_ATTRIBUTE = re.compile(
    rb"""([^\s>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]*)))?""",
)
_SAFE_NAME = re.compile(r"[a-z_:][-a-z0-9_:.]*\Z")
# Attributes the middleware owns on the element it writes: a placeholder cannot set them.
_RESERVED = frozenset({"widget", "embed-token"})

# The token-refresh half of the docs' recipe for sessions longer than a token's life:
# on ``rai-error`` ask our endpoint for a token (POST, same origin, ticket in a header),
# set every widget's ``embed-token`` and reload. The token lives only in the DOM attribute
# the SDK reads; never in a URL or in storage. One refresh at a time; a failed refresh is
# retried with backoff (5 s doubling to 60 s), and so is an error that comes back within
# 30 s of a refresh (a token the widget keeps refusing must not become a request loop).
REFRESH_SCRIPT = (
    "(function(s){"
    "if(!s||window.__raiRefresh)return;window.__raiRefresh=1;"
    'var ticket=s.getAttribute("data-rai-ticket"),url=s.getAttribute("data-rai-endpoint"),'
    "busy=false,retry=null,lastOk=0,delay=5000;"
    "function later(){retry=setTimeout(refresh,delay);delay=Math.min(delay*2,60000);}"
    "function refresh(){"
    "retry=null;busy=true;"
    'fetch(url,{method:"POST",credentials:"same-origin",cache:"no-store",'
    'headers:{"X-RAI-Ticket":ticket}})'
    '.then(function(r){if(!r.ok)throw new Error("token refresh failed: "+r.status);'
    "return r.json();})"
    ".then(function(d){"
    'if(!d||typeof d.embedToken!=="string")throw new Error("token refresh: no token");'
    'var els=document.querySelectorAll("[embed-token]");'
    'for(var i=0;i<els.length;i++)els[i].setAttribute("embed-token",d.embedToken);'
    "lastOk=Date.now();var W=window.ReturningAIWidget;"
    'if(W&&typeof W.reload==="function")W.reload();})'
    '.catch(function(e){if(window.console)console.warn("rai-middleware:",e.message);later();})'
    ".then(function(){busy=false;});}"
    'document.addEventListener("rai-error",function(){'
    "if(busy||retry)return;"
    "if(Date.now()-lastOk<30000)later();else{delay=5000;refresh();}"
    "},true);"
    "})(document.currentScript);"
)


@dataclass(frozen=True, slots=True)
class WidgetMarkup:
    """What a page needs to show widgets to a signed-in visitor."""

    token: str = field(repr=False)
    ticket: str = field(repr=False)
    community_id: str
    sdk_url: str
    refresh_url: str
    nonce: str | None = None


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


def container_id(index: int) -> str:
    return f"returning-ai-widget-{index}"


def render_widget(
    element: str,
    attributes: Sequence[Attribute],
    *,
    index: int,
    token: str,
    community_id: str,
) -> str:
    """``<div id="returning-ai-widget-N"><rai-x-widget ... embed-token="..."></...></div>``.

    ``community-id`` comes first, from the configuration, unless the placeholder set it;
    the placeholder's other attributes follow in their order; ``embed-token`` is last.
    """
    parts = [f"<div id={quote_attribute(container_id(index))}><{element}"]
    names = {name for name, _ in attributes}
    if "community-id" not in names:
        parts.append(f" community-id={quote_attribute(community_id)}")
    for name, value in attributes:
        if name not in _RESERVED:
            parts.append(f" {name}={quote_attribute(value)}")
    parts.append(f" embed-token={quote_attribute(token)}></{element}></div>")
    return "".join(parts)


def render_scripts(markup: WidgetMarkup, *, xhtml: bool = False) -> str:
    """The SDK script and the refresh script, written once per page after the first widget."""
    nonce = f" nonce={quote_attribute(markup.nonce)}" if markup.nonce else ""
    return (
        f"<script src={quote_attribute(markup.sdk_url)}{nonce}></script>"
        f"<script{nonce} data-rai-ticket={quote_attribute(markup.ticket)}"
        f" data-rai-endpoint={quote_attribute(markup.refresh_url)}>"
        f"{inline_script(REFRESH_SCRIPT, xhtml=xhtml)}</script>"
    )


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
