"""Mode ``access_key``: Returning.AI's Access Key Embed, the documented default.

The server mints a token with the site's access id and key
(``POST {api_base_url}{token_path}`` with ``{accessId, accessKey, userIdentifiers}``; the
token is ``data.embedToken``, its lifetime ``data.expiresIn``). A placeholder becomes the
SDK's custom element with the token as ``embed-token``; the page carries the SDK script and
a refresh script once, which asks ``POST {endpoint_prefix}/embed-token`` for a new token on
``rai-error`` (the docs' recipe for sessions longer than a token).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from rai_middleware._exceptions import TokenError
from rai_middleware._identity import Identity
from rai_middleware._render import Attribute, Memo, container_id, inline_script, quote_attribute
from rai_middleware._runtime import RuntimeConfig, render_runtime
from rai_middleware._upstream import (
    TokenRequest,
    checked_identifiers,
    encode_json,
    json_body,
    plausible_token,
)

from ._base import Mode, PageAuth, PageContext, Widget

if TYPE_CHECKING:
    from rai_middleware._clients import HTTPResponse
    from rai_middleware._config import Settings

__all__ = [
    "REFRESH_SCRIPT",
    "AccessKeyMode",
    "WidgetMarkup",
    "render_scripts",
    "render_sdk",
    "render_widget",
]

# Attributes the middleware owns on the element it writes: a placeholder cannot set them.
_RESERVED = frozenset({"widget", "embed-token"})
# The most attribute text whose widget markup is kept between pages (1,024 entries).
_KEPT_LENGTH = 512

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
    #: Subresource Integrity of the SDK script (``sdk_integrity``); None: no check.
    integrity: str | None = None


def render_widget(
    element: str,
    attributes: Sequence[Attribute],
    *,
    index: int | str,
    token: str,
    community_id: str,
) -> str:
    """``<div id="returning-ai-widget-N"><rai-x-widget ... embed-token="..."></...></div>``.

    ``community-id`` comes first, from the configuration, unless the placeholder set it;
    the placeholder's other attributes follow in their order; ``embed-token`` is last.
    """
    return _container(index) + _element(element, attributes, token, community_id)


def _container(index: int | str) -> str:
    return f"<div id={quote_attribute(container_id(index))}>"


def _element(element: str, attributes: Sequence[Attribute], token: str, community_id: str) -> str:
    """The SDK element and the container's end: the same for every page of a visitor."""
    parts = [f"<{element}"]
    names = {name for name, _ in attributes}
    if "community-id" not in names:
        parts.append(f" community-id={quote_attribute(community_id)}")
    for name, value in attributes:
        if name not in _RESERVED:
            parts.append(f" {name}={quote_attribute(value)}")
    parts.append(f" embed-token={quote_attribute(token)}></{element}></div>")
    return "".join(parts)


def render_sdk(markup: WidgetMarkup) -> str:
    """The SDK ``<script src>`` of a full page. ``data-turbo-eval="false"``: Turbo Drive does
    not run it again on each visit (the runtime loads the SDK where a document lacks it)."""
    nonce = f" nonce={quote_attribute(markup.nonce)}" if markup.nonce else ""
    integrity = (
        f' integrity={quote_attribute(markup.integrity)} crossorigin="anonymous"'
        if markup.integrity
        else ""
    )
    return (
        f'<script src={quote_attribute(markup.sdk_url)}{integrity}{nonce} data-turbo-eval="false">'
        "</script>"
    )


def render_scripts(markup: WidgetMarkup, *, xhtml: bool = False, sdk: bool = True) -> str:
    """The SDK script (``sdk``: not in a fragment, whose document has the runtime load it
    once) and the refresh script, written once per response after the first widget."""
    nonce = f" nonce={quote_attribute(markup.nonce)}" if markup.nonce else ""
    return (
        (render_sdk(markup) if sdk else "")
        + f"<script{nonce} data-rai-ticket={quote_attribute(markup.ticket)}"
        f" data-rai-endpoint={quote_attribute(markup.refresh_url)}>"
        f"{inline_script(REFRESH_SCRIPT, xhtml=xhtml)}</script>"
    )


class AccessKeyMode(Mode):
    name: ClassVar[str] = "access_key"
    required = ("community_id", "access_id", "access_key")
    key_seed = "access_key"
    endpoint = "/embed-token"
    token_field = "embedToken"

    __slots__ = ("_elements",)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        # A visitor's widgets are the same markup on every page but for their container
        # ids: written once per token and placeholder (keyed by the token, so never shown
        # to anyone else).
        self._elements: Memo[tuple[str, tuple[Attribute, ...], str], str] = Memo(1024)

    @property
    def token_url(self) -> str:
        return self.settings.api_base_url + self.settings.token_path

    def token_request(self, identity: Identity) -> TokenRequest:
        settings = self.settings
        if settings.access_id is None or settings.access_key is None:  # pragma: no cover
            raise TokenError("mode='access_key' has no access_id/access_key")
        # Checked first, and encoded here: nothing that can fail is left for the HTTP
        # client, and no local of this frame holds a revealed credential.
        checked_identifiers(identity)
        body = encode_json(
            {
                "accessId": settings.access_id.reveal(),
                "accessKey": settings.access_key.reveal(),
                "userIdentifiers": dict(identity.identifiers),
            }
        )
        return TokenRequest(self.token_url, {b"content-type": b"application/json"}, body)

    def read_token(self, response: HTTPResponse) -> tuple[str, float | None]:
        body: Any = json_body(response)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise TokenError("the answer has no data object", status_code=response.status_code)
        value = data.get("embedToken")
        if not plausible_token(value):
            raise TokenError(
                "the answer has no usable data.embedToken", status_code=response.status_code
            )
        raw = data.get("expiresIn")
        if raw is None:
            return value, None
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise TokenError("the answer's data.expiresIn is not a number of seconds")
        return value, float(raw)

    def render(self, page: PageContext, widget: Widget, auth: PageAuth) -> str | None:
        assert auth.token is not None
        token, community = auth.token, self.settings.community_id or ""

        def element() -> str:
            return _element(widget.element, widget.attributes, token, community)

        container = _container(widget.suffix or widget.index)
        if sum(len(name) + len(value) for name, value in widget.attributes) > _KEPT_LENGTH:
            return container + element()  # unusually long: written each time, not kept
        key = (widget.element, tuple(widget.attributes), token)
        return container + self._elements.get_or_make(key, element)

    def render_once(self, page: PageContext, auth: PageAuth) -> str:
        assert auth.token is not None and auth.ticket is not None
        markup = self._markup(page, auth)
        sdk = not page.fragment and not page.scripts_written
        page.scripts_written = True
        return render_scripts(markup, xhtml=page.xhtml, sdk=sdk)

    def render_runtime(self, page: PageContext, auth: PageAuth) -> str:
        assert auth.ticket is not None
        settings = self.settings
        sdk = "" if page.fragment or page.scripts_written else render_sdk(self._markup(page, auth))
        page.scripts_written = True
        config = RuntimeConfig(
            frames=False,
            endpoint=page.refresh_url,
            token_field=self.token_field,
            ticket=auth.ticket,
            tag=settings.placeholder_tag,
            widgets=dict(settings.widgets),
            community=settings.community_id or "",
            sdk=settings.sdk_url,
            integrity=settings.sdk_integrity,
            sdk_tag=not page.fragment,
            token=auth.token,
            expires_in=auth.expires_in,
        )
        return sdk + render_runtime(config, nonce=page.nonce, xhtml=page.xhtml)

    def _markup(self, page: PageContext, auth: PageAuth) -> WidgetMarkup:
        settings = self.settings
        return WidgetMarkup(
            token=auth.token or "",
            ticket=auth.ticket or "",
            community_id=settings.community_id or "",
            sdk_url=settings.sdk_url,
            refresh_url=page.refresh_url,
            nonce=page.nonce,
            integrity=settings.sdk_integrity,
        )
