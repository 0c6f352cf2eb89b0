"""Widget frames that size themselves (modes ``iframe`` and ``proxy``).

A widget page posts ``{type: "WIDGET_HEIGHT_UPDATE", payload: {height: N}}`` to its parent
(Returning.AI's iframe-to-parent messages). The page script below, written once per page,
sets that frame's height, bounded by the placeholder's ``min-height`` and ``max-height``
(carried onto the frame as ``data-rai-min-height`` / ``data-rai-max-height``, in pixels).
It acts only on a message whose ``event.origin`` is exactly the widgets origin (mode
``iframe``; the page's own origin for mode ``proxy``) and whose ``event.source`` is the window
of an ``<iframe>`` of this page whose ``src`` is a widget URL; a frame with an explicit
``height`` attribute keeps it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from rai_middleware._render import Attribute, inline_script, quote_attribute

__all__ = ["HEIGHT_SCRIPT", "height_attributes", "render_height_script"]

logger = logging.getLogger("rai_middleware")

HEIGHT_SCRIPT = (
    "(function(s){"
    "if(!s||window.__raiHeight)return;window.__raiHeight=1;"
    'var origin=s.getAttribute("data-rai-origin")||location.origin,'
    'prefix=new URL(s.getAttribute("data-rai-frames"),location.href).href;'
    "function px(v){var n=parseFloat(v);return isFinite(n)&&n>=0?n:null;}"
    'window.addEventListener("message",function(e){'
    "if(e.origin!==origin||!e.source)return;"
    'var m=e.data;if(!m||typeof m!=="object"||m.type!=="WIDGET_HEIGHT_UPDATE")return;'
    'var h=m.payload&&m.payload.height;h=typeof h==="number"?h:parseFloat(h);'
    "if(!isFinite(h)||h<0)return;"
    'var fs=document.getElementsByTagName("iframe");'
    "for(var i=0;i<fs.length;i++){var f=fs[i];"
    "if(f.contentWindow!==e.source)continue;"
    'if(f.src.indexOf(prefix)!==0||f.hasAttribute("height"))return;'
    'var lo=px(f.getAttribute("data-rai-min-height")),'
    'hi=px(f.getAttribute("data-rai-max-height"));'
    "if(lo!==null&&h<lo)h=lo;if(hi!==null&&h>hi)h=hi;"
    'f.style.height=Math.round(h)+"px";return;}'
    "});"
    "})(document.currentScript);"
)

# "200px", "200", "200.5 PX": a CSS pixel length or a plain number of pixels.
_PIXELS = re.compile(r"\s*(\d{1,6}(?:\.\d{1,3})?)\s*(?:px)?\s*\Z", re.IGNORECASE)
_BOUNDS = (("min-height", "data-rai-min-height"), ("max-height", "data-rai-max-height"))


def height_attributes(attributes: Sequence[Attribute], where: str) -> str:
    """The frame's ``data-rai-min-height`` / ``data-rai-max-height`` from the placeholder's
    ``min-height`` / ``max-height`` (pixels); a value that is not pixels is logged and left
    out."""
    out = []
    for name, target in _BOUNDS:
        value = next((v for k, v in attributes if k == name), None)
        if value is None:
            continue
        match = _PIXELS.match(value)
        if match is None:
            logger.warning(
                "%s=%r on a widget on %s is not a number of pixels (such as 200px); ignored",
                name,
                value[:40],
                where,
            )
            continue
        number = match.group(1).rstrip("0").rstrip(".") if "." in match.group(1) else match[1]
        out.append(f" {target}={quote_attribute(number)}")
    return "".join(out)


def render_height_script(
    frames: str, *, origin: str | None = None, nonce: str | None = None, xhtml: bool = False
) -> str:
    """The listener, once per page. ``frames``: the URL (or same-origin path) every widget
    frame's ``src`` starts with; ``origin``: the widgets origin (None: the page's own)."""
    attrs = f" data-rai-origin={quote_attribute(origin)}" if origin else ""
    nonce_attr = f" nonce={quote_attribute(nonce)}" if nonce else ""
    return (
        f"<script{nonce_attr}{attrs} data-rai-frames={quote_attribute(frames)}>"
        f"{inline_script(HEIGHT_SCRIPT, xhtml=xhtml)}</script>"
    )
