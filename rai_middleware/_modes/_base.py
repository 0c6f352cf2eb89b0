"""What every auth mode answers, and what the page rewrite hands it.

A mode is one Returning.AI authentication flow. It says which options it needs, how a
token is asked for and read (if it uses tokens at all), what a placeholder becomes, what
the page carries once (scripts, data) and what the middleware's own endpoint answers.
Everything protocol-shaped (ASGI, WSGI, frameworks) stays out of here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from rai_middleware._identity import Identity
from rai_middleware._render import container_id

if TYPE_CHECKING:
    from rai_middleware._clients import HTTPResponse
    from rai_middleware._config import Settings
    from rai_middleware._upstream import TokenRequest

__all__ = ["Mode", "PageAuth", "PageContext", "Widget", "widget_page"]

logger = logging.getLogger("rai_middleware")

Attribute = tuple[str, str]


@dataclass(frozen=True, slots=True)
class PageAuth:
    """Who the page is for, and (for token modes) the token, its ticket and remaining life."""

    identity: Identity
    token: str | None = field(default=None, repr=False)
    ticket: str | None = field(default=None, repr=False)
    expires_in: int = 0


class PageContext:
    """What a mode may know of the page it renders into.

    The CSP nonce may be given as a function, asked only when a widget is written: reading
    a framework's lazy nonce is what makes its CSP middleware send it."""

    __slots__ = (
        "_nonce",
        "_nonce_source",
        "fragment",
        "path",
        "refresh_url",
        "root",
        "runtime_written",
        "scripts_written",
        "xhtml",
    )

    def __init__(
        self,
        path: str,
        refresh_url: str,
        *,
        xhtml: bool = False,
        nonce: str | None = None,
        nonce_source: Callable[[], str | None] | None = None,
        root: str = "",
        fragment: bool = False,
    ) -> None:
        self.path = path
        #: A fragment of a page (htmx, Turbo, Unpoly, or no html/head/body before its
        #: first widget): its scripts must not repeat what the document has.
        self.fragment = fragment
        #: The page-level scripts (the SDK tag, iframe mode's auth script) are in this
        #: response already.
        self.scripts_written = False
        #: Set by the page rewrite: the browser runtime is in this response already.
        self.runtime_written = False
        self.refresh_url = refresh_url
        #: Where the app is mounted (ASGI ``root_path``, WSGI ``SCRIPT_NAME``): the prefix of
        #: the middleware's own URLs in the page.
        self.root = root
        self.xhtml = xhtml
        self._nonce = nonce
        self._nonce_source = None if nonce else nonce_source

    @property
    def nonce(self) -> str | None:
        if self._nonce_source is not None:
            source, self._nonce_source = self._nonce_source, None
            self._nonce = source()
        return self._nonce


@dataclass(frozen=True, slots=True)
class Widget:
    """One placeholder, understood: its ``widget=`` value (lower-cased), the SDK element it
    maps to, its attributes (unescaped, first one wins) and its number on the page."""

    name: str
    element: str
    attributes: Sequence[Attribute]
    index: int
    #: Its container's id suffix, unique across responses (default: ``index``).
    suffix: str = ""

    @property
    def container(self) -> str:
        return container_id(self.suffix or self.index)

    def attribute(self, name: str) -> str | None:
        return next((value for key, value in self.attributes if key == name), None)


class Mode:
    """One auth flow. Subclasses set the class attributes and override what they use."""

    #: The ``mode=`` value.
    name: ClassVar[str]
    #: Options that must have a value (keyword or environment variable) in this mode.
    required: ClassVar[tuple[str, ...]] = ()
    #: The credential the default ``secret_key`` is derived from (None: a random key).
    key_seed: ClassVar[str | None] = None
    #: Identifiers without which a visitor cannot use this mode (treated as anonymous).
    needs_identifiers: ClassVar[tuple[str, ...]] = ()
    #: Whether a page needs a token from Returning.AI (False: identity only).
    uses_token: ClassVar[bool] = True
    #: The middleware's own token endpoint under ``endpoint_prefix`` (None: no endpoint).
    endpoint: ClassVar[str | None] = None
    #: The JSON field of the endpoint's answer that holds the token.
    token_field: ClassVar[str] = "token"
    #: Whether the middleware serves widget pages at ``{endpoint_prefix}/widget/...``.
    widget_route: ClassVar[bool] = False

    __slots__ = ("settings",)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"<mode {self.name!r}>"

    @property
    def token_url(self) -> str | None:
        """Where tokens are minted; None in a mode that uses none."""
        return None

    @property
    def refresh_path(self) -> str | None:
        return None if self.endpoint is None else self.settings.endpoint_prefix + self.endpoint

    def token_request(self, identity: Identity) -> TokenRequest:
        """The upstream request that mints a token for ``identity``."""
        raise NotImplementedError

    def read_token(self, response: HTTPResponse) -> tuple[str, float | None]:
        """(token, lifetime in seconds or None) from the upstream's answer; TokenError if none."""
        raise NotImplementedError

    def missing_identifier(self, identity: Identity) -> str | None:
        """The first identifier this mode needs and ``identity`` lacks, or None."""
        return next((n for n in self.needs_identifiers if not identity.identifiers.get(n)), None)

    def render(self, page: PageContext, widget: Widget, auth: PageAuth) -> str | None:
        """What the placeholder becomes; None serves its fallback content (logged here)."""
        raise NotImplementedError

    def render_once(self, page: PageContext, auth: PageAuth) -> str:
        """What the page carries once, after its first widget (scripts, data)."""
        return ""

    def render_runtime(self, page: PageContext, auth: PageAuth) -> str:
        """The browser runtime (``_runtime``) and what it needs that the response does not
        carry yet; ``auth.token`` may be None (an SPA shell). "": not offered here."""
        return ""

    def endpoint_payload(self, token: str, expires_in: int) -> dict[str, Any]:
        """The endpoint's 200 answer."""
        return {self.token_field: token, "expiresIn": expires_in}


def widget_page(mode: Mode, page: PageContext, widget: Widget) -> tuple[str, str] | None:
    """(path segment, widget id) of the widgets-host page a placeholder names, for the modes
    that address a widget by id (``iframe``, ``attributes``); None (logged) if it names none."""
    settings = mode.settings
    widget_id = (widget.attribute("widget-id") or "").strip()
    segment = settings.iframe_segments.get(widget.name)
    if widget_id and segment is not None:
        return segment, widget_id
    needed = (
        "a widget-id attribute"
        if segment is not None
        else "one of the iframe_segments widgets: " + ", ".join(settings.iframe_segments)
    )
    logger.error(
        "a <%s widget=%r> on %s needs %s in mode=%r; serving its fallback content",
        settings.placeholder_tag,
        widget.name,
        page.path,
        needed,
        mode.name,
    )
    return None
