"""One page's rewrite, with no protocol in it: the core every adapter drives.

An adapter (ASGI, WSGI, a framework's middleware) creates a ``PageRewriter`` for a
candidate response and, for each body chunk, calls::

    out = rewriter.process(chunk, final=..., auth=resolve)   # or: await rewriter.aprocess(...)

which is decode (gzip/deflate from an inner middleware), scan (passthrough bytes and
placeholders), ``auth()`` once at the first real widget (who is the page for?), and
render (widget markup, re-encoded).

Resolving the visitor and the token is the adapter's job (async or threads); everything
else (which widget, what markup, which scripts once per page, failing open) is here.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from ._codec import BodyCodec, codec_for
from ._config import Settings
from ._http import ResponseInfo, csp_nonce
from ._identity import Identity
from ._iframe import IframeAuth, render_iframe, render_iframe_auth
from ._loader import render_loader
from ._render import (
    Attribute,
    WidgetMarkup,
    container_id,
    parse_attributes,
    render_scripts,
    render_widget,
    widget_attributes,
)
from ._scanner import Item, Placeholder, PlaceholderScanner

__all__ = ["CorruptBody", "PageAuth", "PageRewriter", "has_placeholder", "quick_matcher"]

logger = logging.getLogger("rai_middleware")


@dataclass(frozen=True, slots=True)
class PageAuth:
    """Who the page is for, and (for token modes) the token, its ticket and remaining life."""

    identity: Identity
    token: str | None = field(default=None, repr=False)
    ticket: str | None = field(default=None, repr=False)
    expires_in: int = 0


class CorruptBody(Exception):
    """The app's compressed body cannot be decoded: the response has to end."""


def quick_matcher(settings: Settings) -> Callable[[bytes], object]:
    """The cheap test that decides whether a whole body needs scanning at all."""
    return re.compile(
        re.escape(b"<" + settings.placeholder_tag.encode("ascii")), re.IGNORECASE
    ).search


def has_placeholder(items: list[Item]) -> bool:
    return any(isinstance(item, Placeholder) for item in items)


class PageRewriter:
    """Per response. Holds the scanner, the codec, and what was resolved for the page."""

    __slots__ = (
        "_auth",
        "_auth_resolved",
        "_codec",
        "_encoding",
        "_failed",
        "_nonce",
        "_path",
        "_refresh_url",
        "_scanner",
        "_settings",
        "_xhtml",
        "token_used",
        "widgets",
    )

    def __init__(
        self,
        settings: Settings,
        info: ResponseInfo,
        *,
        path: str,
        refresh_url: str,
        state_nonce: str | None = None,
    ) -> None:
        self._settings = settings
        self._encoding = info.encoding
        self._xhtml = info.xhtml
        self._codec: BodyCodec | None = (
            codec_for(info.content_encoding) if info.content_encoding else None
        )
        self._nonce = csp_nonce(info.csp) or state_nonce
        self._path = path
        self._refresh_url = refresh_url
        self._scanner = PlaceholderScanner(
            settings.placeholder_tag, max_size=settings.max_placeholder_size
        )
        self._failed = False
        self._auth: PageAuth | None = None
        self._auth_resolved = False
        #: Widgets written so far (also numbers their containers).
        self.widgets = 0
        #: A token or an identity was written into the page: it must stay private.
        self.token_used = False

    # -- decode / encode -------------------------------------------------------------

    def decode(self, chunk: bytes | bytearray | memoryview, *, final: bool) -> bytes:
        if self._codec is None:
            return chunk if isinstance(chunk, bytes) else bytes(chunk)
        try:
            return self._codec.decode(bytes(chunk), final=final)
        except Exception as exc:  # zlib.error, MemoryError...
            logger.error(
                "the app's %s body on %s is corrupt (%s); ending the response",
                self._codec.name,
                self._path,
                exc,
            )
            raise CorruptBody from None

    def encode(self, data: bytes, *, final: bool) -> bytes:
        return data if self._codec is None else self._codec.encode(data, final=final)

    # -- scan ------------------------------------------------------------------------

    def scan(self, data: bytes, *, final: bool) -> list[Item]:
        """Passthrough bytes and placeholders. After a failure of our own, everything
        passes through unscanned (fail open), nothing lost."""
        if self._failed:
            return [data] if data else []
        scanner = self._scanner
        held = scanner.pending
        try:
            items = scanner.feed(data)
            if final:
                unfinished = scanner.pending
                items += scanner.close()
                self._log_leftovers(unfinished)
            return items
        except Exception:
            logger.exception("rewriting the page failed; sending the rest unchanged")
            self._failed = True
            return [held + data]

    def _log_leftovers(self, unfinished: bytes) -> None:
        settings = self._settings
        if self._scanner.oversized:
            logger.warning(
                "%d <%s> element(s) on %s exceeded max_placeholder_size (%d bytes) and were "
                "sent unchanged",
                self._scanner.oversized,
                settings.placeholder_tag,
                self._path,
                settings.max_placeholder_size,
            )
        if (b"<" + settings.placeholder_tag.encode("ascii")) in unfinished.lower():
            logger.warning(
                "an unterminated <%s> on %s was sent unchanged",
                settings.placeholder_tag,
                self._path,
            )

    # -- auth ------------------------------------------------------------------------

    def needs_auth(self, items: list[Item]) -> bool:
        """True when the page holds a real widget and its visitor is not resolved yet."""
        if self._auth_resolved or self._failed:
            return False
        for item in items:
            if isinstance(item, Placeholder):
                attributes = parse_attributes(item.attributes, self._encoding)
                if widget_attributes(attributes, self._settings.widgets)[1] is not None:
                    return True
        return False

    def provide_auth(self, auth: PageAuth | None) -> None:
        """What the adapter resolved for this page (None: fallbacks for every widget)."""
        self._auth = auth
        self._auth_resolved = True

    # -- the whole step, for adapters ------------------------------------------------

    def process(
        self,
        chunk: bytes | bytearray | memoryview,
        *,
        final: bool,
        auth: Callable[[], PageAuth | None],
        flush: bool = False,
    ) -> bytes:
        """One body chunk through decode, scan, (auth once) and render. ``auth`` resolves
        the page's visitor and token with the adapter's own I/O; ``flush`` releases what the
        scanner holds without ending the encoded stream (an app that stopped early)."""
        items = self.scan(self.decode(chunk, final=final), final=final or flush)
        if self.needs_auth(items):
            self.provide_auth(auth())
        return self.render(items, final=final)

    async def aprocess(
        self,
        chunk: bytes | bytearray | memoryview,
        *,
        final: bool,
        auth: Callable[[], Awaitable[PageAuth | None]],
        flush: bool = False,
    ) -> bytes:
        """``process`` for adapters whose ``auth`` is a coroutine."""
        items = self.scan(self.decode(chunk, final=final), final=final or flush)
        if self.needs_auth(items):
            self.provide_auth(await auth())
        return self.render(items, final=final)

    # -- render ----------------------------------------------------------------------

    def render(self, items: list[Item], *, final: bool) -> bytes:
        """Widget markup in place of each placeholder, encoded for the response."""
        if len(items) == 1 and isinstance(items[0], bytes):
            out = items[0]
        else:
            try:
                out = b"".join(
                    item if isinstance(item, bytes) else self._render_placeholder(item)
                    for item in items
                )
            except Exception:
                logger.exception("rewriting the page failed; sending the rest unchanged")
                self._failed = True
                out = b"".join(item if isinstance(item, bytes) else item.raw for item in items)
                out += self._scanner.pending
        return self.encode(out, final=final)

    def _render_placeholder(self, placeholder: Placeholder) -> bytes:
        settings = self._settings
        attributes = parse_attributes(placeholder.attributes, self._encoding)
        written, element = widget_attributes(attributes, settings.widgets)
        if element is None or written is None:
            self._log_bad_widget(written)
            return placeholder.inner
        auth = self._auth
        if auth is None:
            return placeholder.inner
        html: str | None
        if settings.mode == "access_key":
            html = self._sdk_widget(element, attributes, auth)
        else:
            html = self._legacy_widget(written.strip().lower(), attributes, auth)
        if html is None:
            return placeholder.inner
        return html.encode(self._encoding, "xmlcharrefreplace")

    def _sdk_widget(self, element: str, attributes: list[Attribute], auth: PageAuth) -> str:
        """Access Key Embed: the SDK's custom element with the token as ``embed-token``."""
        settings = self._settings
        assert auth.token is not None and auth.ticket is not None
        self.widgets += 1
        self.token_used = True
        html = render_widget(
            element,
            attributes,
            index=self.widgets,
            token=auth.token,
            community_id=settings.community_id or "",
        )
        if self.widgets == 1:
            html += render_scripts(
                WidgetMarkup(
                    token=auth.token,
                    ticket=auth.ticket,
                    community_id=settings.community_id or "",
                    sdk_url=settings.sdk_url,
                    refresh_url=self._refresh_url,
                    nonce=self._nonce,
                ),
                xhtml=self._xhtml,
            )
        return html

    def _legacy_widget(
        self, widget: str, attributes: list[Attribute], auth: PageAuth
    ) -> str | None:
        """Modes ``iframe`` and ``attributes``: both address a widget by id and path segment."""
        settings = self._settings
        widget_id = next((value for name, value in attributes if name == "widget-id"), "")
        widget_id = widget_id.strip()
        segment = settings.iframe_segments.get(widget)
        if not widget_id or segment is None:
            needed = (
                "a widget-id attribute"
                if segment is not None
                else "one of the iframe_segments widgets: " + ", ".join(settings.iframe_segments)
            )
            logger.error(
                "a <%s widget=%r> on %s needs %s in mode=%r; serving its fallback content",
                settings.placeholder_tag,
                widget,
                self._path,
                needed,
                settings.mode,
            )
            return None
        self.widgets += 1
        self.token_used = True  # a token or the identity is in the page
        if settings.mode == "attributes":
            return render_loader(
                widget=widget,
                widget_id=widget_id,
                container=container_id(self.widgets),
                attributes=attributes,
                identifiers=auth.identity.identifiers,
                loader_url=settings.loader_url,
                widgets_base_url=settings.widgets_base_url,
                segment=segment,
                nonce=self._nonce,
            )
        assert auth.token is not None and auth.ticket is not None
        html = render_iframe(settings.widgets_base_url, segment, widget_id, attributes)
        if self.widgets == 1:
            html += render_iframe_auth(
                IframeAuth(
                    token=auth.token,
                    expires_in=auth.expires_in,
                    widgets_origin=settings.widgets_origin,
                    refresh_url=self._refresh_url,
                    ticket=auth.ticket,
                    nonce=self._nonce,
                ),
                xhtml=self._xhtml,
            )
        return html

    def _log_bad_widget(self, written: str | None) -> None:
        settings = self._settings
        known = ", ".join(sorted(settings.widgets))
        if written is None:
            logger.error(
                "a <%s> on %s has no widget attribute; expected one of %s. "
                "Serving its fallback content.",
                settings.placeholder_tag,
                self._path,
                known,
            )
        else:
            logger.error(
                "unknown widget %r in a <%s> on %s; expected one of %s. "
                "Serving its fallback content.",
                written,
                settings.placeholder_tag,
                self._path,
                known,
            )


def state_nonce(state: object) -> str | None:
    """``scope["state"]["csp_nonce"]`` (or a framework's equivalent mapping), if set."""
    if isinstance(state, Mapping):
        nonce = state.get("csp_nonce")
        if isinstance(nonce, str) and nonce:
            return nonce
    return None
