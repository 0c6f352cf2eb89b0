"""Mode ``iframe``: Returning.AI's "Authenticated Widgets" flow (legacy signin + postMessage).

The server signs the visitor in by email with the Widget API key
(``POST {widgets_base_url}/widget/{community_id}/signin`` with the ``returningai-api-key``
and ``email`` headers; the token is ``token``, its lifetime the JWT's ``exp``). The
placeholder becomes an ``<iframe>`` on the widgets host (no token in its URL). Once per
page, a JSON data block carries the first token and a small script answers the widget's
postMessage requests for it: only from the widgets origin (exact string equality), only to
the frame that asked, with that frame's origin as the target (never ``"*"``). When the
token has expired, the script fetches a fresh one from ``POST {endpoint_prefix}/signin``.
The token stays in memory: never in a URL or storage.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

from rai_middleware._exceptions import TokenError
from rai_middleware._identity import Identity
from rai_middleware._render import Attribute, inline_script, quote_attribute
from rai_middleware._runtime import RuntimeConfig, render_runtime
from rai_middleware._upstream import (
    IdentityRefused,
    TokenRequest,
    checked_identifiers,
    header_value,
    json_body,
    plausible_token,
)

from ._base import Mode, PageAuth, PageContext, Widget, widget_page
from ._height import height_attributes, render_height_script

if TYPE_CHECKING:
    from rai_middleware._clients import HTTPResponse

__all__ = [
    "IFRAME_AUTH_SCRIPT",
    "IframeAuth",
    "IframeMode",
    "carried",
    "render_iframe",
    "render_iframe_auth",
]

# Identifiers the signin request sends as header values.
_IN_HEADERS = frozenset({"data-email"})

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
    widgets_base_url: str,
    segment: str,
    widget_id: str,
    attributes: Sequence[Attribute],
    *,
    extra: str = "",
) -> str:
    """The widget's frame; ``extra``: more attributes, already escaped (the height bounds)."""
    src = f"{widgets_base_url}/{segment}/{quote(widget_id, safe='')}"
    attrs = carried(attributes) + extra
    return f'<iframe src={quote_attribute(src)} allow="clipboard-write"{attrs}></iframe>'


def carried(attributes: Sequence[Attribute]) -> str:
    """The placeholder's attributes that belong on the frame itself, escaped."""
    return "".join(
        f" {name}={quote_attribute(value)}" for name, value in attributes if name in _CARRIED
    )


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


class IframeMode(Mode):
    name: ClassVar[str] = "iframe"
    required = ("community_id", "widget_api_key")
    key_seed = "widget_api_key"
    needs_identifiers = ("data-email",)
    endpoint: ClassVar[str | None] = "/signin"
    token_field = "token"

    @property
    def token_url(self) -> str:
        return f"{self.settings.widgets_base_url}/widget/{self.settings.community_id}/signin"

    @property
    def widgets_origin(self) -> str:
        parts = urlsplit(self.settings.widgets_base_url)
        return f"{parts.scheme}://{parts.netloc}"

    def token_request(self, identity: Identity) -> TokenRequest:
        key = self.settings.widget_api_key
        if key is None:  # pragma: no cover - Settings guarantees it
            raise TokenError("mode='iframe' has no widget_api_key")
        email = identity.identifiers.get("data-email")
        if not email:
            raise IdentityRefused("the visitor has no data-email, which the signin flow needs")
        # The email travels in a header: checked (no CR/LF, latin-1) before any request.
        checked_identifiers(identity, in_headers=_IN_HEADERS)
        api_key = header_value(key.reveal())  # a temporary: no local holds the revealed key
        if api_key is None:
            raise TokenError("widget_api_key cannot be sent in an HTTP header")
        headers = {
            b"returningai-api-key": api_key,
            b"email": email.encode("latin-1"),
            b"content-type": b"application/json",
        }
        return TokenRequest(self.token_url, headers)

    def read_token(self, response: HTTPResponse) -> tuple[str, float | None]:
        body: Any = json_body(response)
        value = body.get("token") if isinstance(body, dict) else None
        if not plausible_token(value):
            raise TokenError("the answer has no usable token", status_code=response.status_code)
        exp = _jwt_expiry(value)
        return value, None if exp is None else exp - time.time()

    def render(self, page: PageContext, widget: Widget, auth: PageAuth) -> str | None:
        target = widget_page(self, page, widget)
        if target is None:
            return None
        segment, widget_id = target
        bounds = height_attributes(widget.attributes, page.path)
        base = self.settings.widgets_base_url
        return render_iframe(base, segment, widget_id, widget.attributes, extra=bounds)

    def render_runtime(self, page: PageContext, auth: PageAuth) -> str:
        assert auth.ticket is not None
        settings = self.settings
        answerer = "" if page.scripts_written else self.render_once(page, auth)
        page.scripts_written = True
        config = RuntimeConfig(
            frames=True,
            endpoint=page.refresh_url,
            token_field=self.token_field,
            ticket=auth.ticket,
            tag=settings.placeholder_tag,
            widgets=dict(settings.widgets),
            widgets_base=settings.widgets_base_url,
            segments=dict(settings.iframe_segments),
            token=auth.token,
            expires_in=auth.expires_in,
        )
        return answerer + render_runtime(config, nonce=page.nonce, xhtml=page.xhtml)

    def render_once(self, page: PageContext, auth: PageAuth) -> str:
        assert auth.ticket is not None
        iframe_auth = IframeAuth(
            token=auth.token or "",  # none (an SPA shell): the script asks the endpoint
            expires_in=auth.expires_in,
            widgets_origin=self.widgets_origin,
            refresh_url=page.refresh_url,
            ticket=auth.ticket,
            nonce=page.nonce,
        )
        frames = render_height_script(
            self.settings.widgets_base_url + "/",
            origin=self.widgets_origin,
            nonce=page.nonce,
            xhtml=page.xhtml,
        )
        return render_iframe_auth(iframe_auth, xhtml=page.xhtml) + frames


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified (it only decides how long we reuse the token;
    the widget verifies it); None if it is not a JWT with one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        return None
    return float(exp)
