"""Mode ``iframe``: Returning.AI's "Authenticated Widgets" flow, rendered.

The placeholder becomes an ``<iframe>`` on the widgets host (no token in its URL). Once
per page, a JSON data block carries the first token, minted server-side, and a small
script answers the widget's postMessage requests for it: only from the widgets origin
(exact string equality), only to the frame that asked, with that frame's origin as the
target (never ``"*"``). When the token has expired, the script fetches a fresh one from
``POST {endpoint_prefix}/signin``. The token stays in memory: never in a URL or storage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from ._render import Attribute, inline_script, quote_attribute

__all__ = ["IFRAME_AUTH_SCRIPT", "IframeAuth", "render_iframe", "render_iframe_auth"]

# Attributes of the placeholder that make sense on the iframe element itself.
_CARRIED = ("width", "height", "class", "style", "title")

IFRAME_AUTH_SCRIPT = (
    "(function(s){"
    "if(!s||window.__raiIframeAuth)return;window.__raiIframeAuth=1;"
    "var d=JSON.parse(s.previousElementSibling.textContent),token=d.token,"
    "deadline=Date.now()+d.expiresIn*1000,pending=null;"
    "function current(){"
    "if(Date.now()<deadline-5000)return Promise.resolve(token);"
    'if(!pending){pending=fetch(d.endpoint,{method:"POST",credentials:"same-origin",'
    'cache:"no-store",headers:{"X-RAI-Ticket":d.ticket}})'
    '.then(function(r){if(!r.ok)throw new Error("token refresh failed: "+r.status);'
    "return r.json();})"
    '.then(function(j){if(!j||typeof j.token!=="string")throw new Error("no token");'
    "token=j.token;deadline=Date.now()+j.expiresIn*1000;pending=null;return token;},"
    "function(e){pending=null;throw e;});}"
    "return pending;}"
    'window.addEventListener("message",function(e){'
    "if(e.origin!==d.origin||!e.source||e.source===window)return;"
    'var m=e.data,t=m&&typeof m==="object"?m.type:m;'
    'if(t!=="RETURNINGAI_WIDGET_REQUEST_TOKEN"&&t!=="RETURNINGAI_WIDGET_TOKEN")return;'
    "var frame=e.source,origin=e.origin;"
    'current().then(function(v){frame.postMessage({type:"RETURNINGAI_WIDGET_TOKEN",value:v},'
    "origin);},"
    'function(err){if(window.console)console.warn("rai-middleware:",err.message);});'
    "});"
    "})(document.currentScript);"
)

# JSON inside a <script> element: nothing in it may close the element or open a comment.
_JSON_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


@dataclass(frozen=True, slots=True)
class IframeAuth:
    """What the page's auth script needs."""

    token: str = field(repr=False)
    expires_in: int
    widgets_origin: str
    refresh_url: str
    ticket: str = field(repr=False)
    nonce: str | None = None


def render_iframe(
    widgets_base_url: str, segment: str, widget_id: str, attributes: Sequence[Attribute]
) -> str:
    src = f"{widgets_base_url}/{segment}/{quote(widget_id, safe='')}"
    carried = "".join(
        f" {name}={quote_attribute(value)}" for name, value in attributes if name in _CARRIED
    )
    return f'<iframe src={quote_attribute(src)} allow="clipboard-write"{carried}></iframe>'


def render_iframe_auth(auth: IframeAuth, *, xhtml: bool = False) -> str:
    data = json.dumps(
        {
            "token": auth.token,
            "expiresIn": auth.expires_in,
            "origin": auth.widgets_origin,
            "endpoint": auth.refresh_url,
            "ticket": auth.ticket,
        },
        separators=(",", ":"),
    ).translate(_JSON_ESCAPES)
    nonce = f" nonce={quote_attribute(auth.nonce)}" if auth.nonce else ""
    return (
        f'<script type="application/json">{data}</script>'
        f"<script{nonce}>{inline_script(IFRAME_AUTH_SCRIPT, xhtml=xhtml)}</script>"
    )
