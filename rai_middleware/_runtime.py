"""The browser runtime: tokens and placeholders for widgets rendered in the browser.

One inline script, written where a page has ``<rai-runtime></rai-runtime>`` (an SPA's
shell) and after the first server-rendered widget of any page or fragment, for a
signed-in visitor. Its configuration travels as JSON in its ``data-rai`` attribute
(escaped like every attribute). It is idempotent: the first copy in a document installs
``window.raiMiddleware``; a later one (a fragment swapped in, a Turbo Drive visit) only
hands it its configuration (a newer ticket, a fresh token) and loads the SDK if the
document does not have it yet. What it does:

* ``window.raiMiddleware.token()``: a Promise of a token with at least 60 s to live, from
  memory or ``POST {endpoint_prefix}/embed-token`` (``/signin`` in mode ``iframe``) with the
  page's ticket; concurrent calls share one request. ``pushState``, ``replaceState`` and
  ``popstate`` mark the token stale (the docs' "each view gets a fresh token"), so the
  first widget of the next view fetches one and the others share it. A failed request is
  not retried until the next navigation (no request loop for a signed-out visitor).
* The placeholder tag as a custom element: one connected by client-side code becomes, in
  a light-DOM child slotted into a shadow root that shows nothing else (so a framework
  that owns the element and its children keeps them), the element the server renders:
  ``<div id="returning-ai-widget-<suffix>"><rai-x-widget community-id=... embed-token=...>``
  in mode ``access_key``, the ``<iframe>`` in mode ``iframe`` (answered by the page's
  postMessage script). With no token (401, 503, offline) its own children stay: the
  fallback.
* The SDK script, requested at most once per document, with the nonce of the script that
  asks for it (or ``<meta name="csp-nonce">``), and the same integrity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from json.encoder import encode_basestring_ascii as encode_string

from ._render import Memo, inline_script, quote_attribute

__all__ = ["RUNTIME_SCRIPT", "RUNTIME_SCRIPT_FRAMES", "RuntimeConfig", "render_runtime"]

_RUNTIME_HEAD = (
    "(function(s){"
    "if(!s)return;"
    'var c=JSON.parse(s.getAttribute("data-rai")||"{}"),R=window.raiMiddleware;'
    "if(R&&R._set){R._set(c,s);return;}"
    "var tok=null,exp=0,stale=false,pending=null,failed=null,n=0,"
    'pre="c"+Math.random().toString(36).slice(2,8),'
    "NAME=/^[a-z_:][-a-z0-9_:.]*$/;"
    'function warn(m){if(window.console)console.warn("rai-middleware: "+m);}'
    "function nonceOf(e){"
    'var m=document.querySelector("meta[name=csp-nonce]");'
    'return(e&&(e.nonce||e.getAttribute("nonce")))||(m&&(m.nonce||m.getAttribute("content")))||"";}'
    "function sdk(e){"
    "if(!c.sdk||window.__raiSdk)return;window.__raiSdk=1;"
    'var x=document.createElement("script");x.src=c.sdk;'
    'if(c.integrity){x.integrity=c.integrity;x.crossOrigin="anonymous";}'
    'var v=nonceOf(e);if(v)x.setAttribute("nonce",v);'
    "(document.head||document.documentElement).appendChild(x);}"
    "function set(d,e){"
    "if(d.ticket&&d.ticket!==c.ticket)failed=null;c=d;"
    'if(typeof d.token==="string"){tok=d.token;exp=Date.now()+d.expiresIn*1000;stale=false;}'
    # An SDK tag parsed right before this script has just run: nothing to load.
    'if(d.sdkTag&&document.readyState==="loading")window.__raiSdk=1;'
    "sdk(e);}"
    "function token(){"
    "if(tok&&!stale&&exp-Date.now()>=60000)return Promise.resolve(tok);"
    "if(failed)return Promise.reject(failed);"
    'if(!pending){pending=fetch(c.endpoint,{method:"POST",credentials:"same-origin",'
    'cache:"no-store",headers:{"X-RAI-Ticket":c.ticket}})'
    '.then(function(r){if(!r.ok)throw new Error("token request failed: "+r.status);'
    "return r.json();})"
    '.then(function(d){var v=d&&d[c.field];if(typeof v!=="string")throw new Error("no token");'
    "tok=v;exp=Date.now()+(+d.expiresIn||0)*1000;stale=false;pending=null;return v;},"
    "function(e){pending=null;failed=e;throw e;});}"
    "return pending;}"
    "function nav(){stale=true;failed=null;}"
    '["pushState","replaceState"].forEach(function(k){var o=history[k];'
    "history[k]=function(){var r=o.apply(this,arguments);nav();return r;};});"
    'window.addEventListener("popstate",nav);'
    "function attrs(el){var out=[],seen={};"
    "for(var i=0;i<el.attributes.length;i++){var a=el.attributes[i],k=a.name.toLowerCase();"
    "if(!NAME.test(k)||seen[k])continue;seen[k]=1;out.push([k,a.value]);}return out;}"
    "function get(l,k){for(var i=0;i<l.length;i++)if(l[i][0]===k)return l[i][1];return null;}"
)

# What a placeholder becomes, given its attributes ``l`` and the token ``t`` (null: keep
# the fallback): the SDK element in its container, as ``access_key.render_widget`` writes.
_SDK_ELEMENT = (
    "function widget(el,l,t){"
    'var name=own(c.widgets,(get(l,"widget")||"").trim().toLowerCase()),'
    'div=document.createElement("div"),x=document.createElement(name);'
    'div.id="returning-ai-widget-"+pre+"-"+(++n);'
    'if(get(l,"community-id")===null)x.setAttribute("community-id",c.community);'
    'l.forEach(function(a){if(a[0]!=="widget"&&a[0]!=="embed-token")x.setAttribute(a[0],a[1]);});'
    'x.setAttribute("embed-token",t);div.appendChild(x);return div;}'
)

# Mode ``iframe``: the frame, as ``iframe.render_iframe`` writes it (no token in it; the
# page's postMessage answerer serves it). ``quote(id, safe="")`` is encodeURIComponent
# plus ``!'()*``.
_FRAME = (
    'var CARRIED=["width","height","class","style","title"];'
    "function widget(el,l,t){"
    'var w=(get(l,"widget")||"").trim().toLowerCase(),id=(get(l,"widget-id")||"").trim(),'
    "seg=own(c.segments,w);"
    'if(!id||!seg){warn("a <"+c.tag+" widget=\\""+w+"\\"> needs a widget-id");return null;}'
    'var f=document.createElement("iframe");'
    'f.src=c.widgets_base+"/"+seg+"/"+encodeURIComponent(id).replace(/[!\'()*]/g,'
    'function(ch){return"%"+ch.charCodeAt(0).toString(16).toUpperCase();});'
    'f.setAttribute("allow","clipboard-write");'
    "l.forEach(function(a){if(CARRIED.indexOf(a[0])>=0)f.setAttribute(a[0],a[1]);});"
    "return f;}"
)

_RUNTIME_TAIL = (
    # A widget name is the page author's: "constructor" or "__proto__" must not be found on
    # Object.prototype.
    "function own(o,k){return Object.prototype.hasOwnProperty.call(o,k)?o[k]:undefined;}"
    "function show(el,node){"
    'var root=el.shadowRoot||el.attachShadow({mode:"open"}),slot=document.createElement("slot");'
    'slot.name="rai-widget";root.replaceChildren(slot);node.slot="rai-widget";'
    'el.style.display="contents";el.appendChild(node);}'
    "function place(el){"
    "if(el.__rai)return;el.__rai=1;var l=attrs(el),"
    'w=(get(l,"widget")||"").trim().toLowerCase();'
    "if(!own(c.widgets,w)){"
    'warn("unknown widget \\""+w+"\\" in a <"+c.tag+">; showing its fallback");'
    "return;}"
    "token().then(function(t){if(!el.isConnected)return;var node=widget(el,l,t);"
    "if(node)show(el,node);},function(){});}"
    "window.raiMiddleware={token:token,_set:set};"
    "set(c,s);"
    'if(c.tag.indexOf("-")>0&&window.customElements&&!customElements.get(c.tag)){'
    "try{customElements.define(c.tag,class extends HTMLElement{"
    "connectedCallback(){place(this);}});}catch(e){warn(e.message);}}"
    "})(document.currentScript);"
)

#: The runtime of mode ``access_key`` (SDK elements) and of mode ``iframe`` (frames).
RUNTIME_SCRIPT = _RUNTIME_HEAD + _SDK_ELEMENT + _RUNTIME_TAIL
RUNTIME_SCRIPT_FRAMES = _RUNTIME_HEAD + _FRAME + _RUNTIME_TAIL


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """What the runtime needs to know; the repr leaves out the ticket and token."""

    #: Placeholders become iframes (mode ``iframe``), not SDK elements.
    frames: bool
    endpoint: str
    token_field: str
    ticket: str = field(repr=False)
    tag: str
    widgets: dict[str, str]
    community: str = ""
    #: The SDK to load when the document has none (None: no SDK in this mode).
    sdk: str | None = None
    integrity: str | None = None
    #: The SDK ``<script src>`` precedes the runtime in this response (a full page).
    sdk_tag: bool = False
    #: Mode ``iframe``: the widgets host and the path segments of its widget pages.
    widgets_base: str = ""
    segments: dict[str, str] = field(default_factory=dict)
    #: The page's token, when it has one: no request for this view.
    token: str | None = field(default=None, repr=False)
    expires_in: int = 0


def render_runtime(config: RuntimeConfig, *, nonce: str | None, xhtml: bool = False) -> str:
    """The runtime ``<script>``, its configuration in ``data-rai``. What does not depend
    on the visitor (everything but ``ticket``, ``token`` and ``expires_in``, which must be
    a string, a string or None, and an int) is rendered once per configuration."""
    key = (
        config.frames,
        config.endpoint,
        config.token_field,
        config.tag,
        tuple(config.widgets.items()),
        config.community,
        config.sdk,
        config.integrity,
        config.sdk_tag,
        config.widgets_base,
        tuple(config.segments.items()),
        xhtml,
    )
    head, middle, end = _PARTS.get_or_make(key, lambda: _parts(config, xhtml=xhtml))
    nonce_attr = f" nonce={quote_attribute(nonce)}" if nonce else ""
    visitor = ""
    if config.token is not None:
        visitor = escape(
            f',"token":{encode_string(config.token)},"expiresIn":{json.dumps(config.expires_in)}'
        )
    ticket = escape(encode_string(config.ticket))
    return f"<script{nonce_attr} data-rai={head}{ticket}{middle}{visitor}{end}"


#: What ``render_runtime`` writes around the visitor's ticket and token (the same for
#: every page of a configuration), by configuration.
_PARTS: Memo[tuple[object, ...], tuple[str, str, str]] = Memo(64)


def _parts(config: RuntimeConfig, *, xhtml: bool) -> tuple[str, str, str]:
    """The script to the ticket, after the ticket to the token, and its end: the
    configuration as JSON, escaped for a double-quoted attribute (escaping each part is
    escaping the whole, character by character)."""
    data: dict[str, object] = {
        "tag": config.tag,  # first: see below
        "frames": config.frames,
        "endpoint": config.endpoint,
        "field": config.token_field,
        "ticket": "",
        "widgets": config.widgets,
        "community": config.community,
        "sdk": config.sdk,
        "integrity": config.integrity,
        "sdkTag": config.sdk_tag,
        "widgets_base": config.widgets_base,
        "segments": config.segments,
    }
    payload = json.dumps(data, separators=(",", ":"))
    # The page never spells the placeholder tag (a second rewriting layer finds nothing):
    # its first letter as a JSON escape.
    written = json.dumps(config.tag)
    payload = payload.replace(written, f'"\\u{ord(config.tag[0]):04x}{written[2:]}', 1)
    at = payload.index('"ticket":""') + len('"ticket":')
    head, middle = payload[:at], payload[at + 2 : -1]
    code = inline_script(RUNTIME_SCRIPT_FRAMES if config.frames else RUNTIME_SCRIPT, xhtml=xhtml)
    return '"' + escape(head), escape(middle), '}">' + code + "</script>"
