"""One response's rewrite, sans-IO: the core every entrance drives.

An adapter makes a ``PageRewrite`` with ``Core.page(...)`` when a response starts (None:
not a page to rewrite, send it as it is), then feeds it the body::

    step = driver.run(rewrite.feed(chunk, more=...), request)

``feed`` is a generator: when it cannot go on without I/O it yields a need ("who is the
visitor?", "a token for this identity") that the adapter's driver answers. What it
returns is a ``Step``: the headers to send now (once, with the first bytes) and the bytes.

It owns every decision an adapter would otherwise copy: whole page or stream (a response
that announces its ``Content-Length`` is held up to ``WHOLE_PAGE_LIMIT`` and rewritten in
one piece with an exact length; anything else streams, its safe bytes leaving as soon as
they arrive), the quick match that lets a page without a placeholder through untouched,
compressed bodies, the header rules, and failing open.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ._codec import BodyCodec, codec_for
from ._http import RawHeaders, ResponseInfo, rewrite_headers, streamed_headers
from ._identity import Identity
from ._modes import PageAuth, PageContext, Widget
from ._needs import IDENTIFY, Flow, Grant, TokenNeed
from ._render import parse_attributes, widget_attributes
from ._scanner import Item, Placeholder, PlaceholderScanner

if TYPE_CHECKING:
    from ._core import Core

__all__ = ["WHOLE_PAGE_LIMIT", "PageRewrite", "Step", "quick_matcher"]

logger = logging.getLogger("rai_middleware")

#: The most a response with a ``Content-Length`` is held to be rewritten as a whole page;
#: past it, the page streams (and loses its ``Content-Length``).
WHOLE_PAGE_LIMIT = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Step:
    """What to send now: ``headers`` (not None once, with or before the first bytes) and
    ``body``. ``end`` says the response must end here (a corrupt compressed stream)."""

    headers: RawHeaders | None
    body: bytes = field(repr=False)  # may hold a token
    end: bool = False
    #: False when a whole page goes out exactly as the app wrote it (headers and bytes).
    changed: bool = True


_NOTHING = Step(None, b"")


class _CorruptBody(Exception):
    """The app's compressed body cannot be decoded."""


def quick_matcher(tag: str) -> Callable[[bytes], object]:
    """The cheap test that decides whether a whole body needs scanning at all."""
    return re.compile(re.escape(b"<" + tag.encode("ascii")), re.IGNORECASE).search


class PageRewrite:
    """Per response. Not shared between requests."""

    __slots__ = (
        "_auth",
        "_auth_resolved",
        "_buffer",
        "_buffered",
        "_codec",
        "_core",
        "_ctx",
        "_ended",
        "_failed",
        "_headers",
        "_identity",
        "_identity_resolved",
        "_info",
        "_passthrough",
        "_scanner",
        "_sent_headers",
        "_whole",
        "token_used",
        "widgets",
    )

    def __init__(
        self, core: Core, headers: RawHeaders, info: ResponseInfo, ctx: PageContext, *, whole: bool
    ) -> None:
        self._core = core
        self._headers = headers
        self._info = info
        self._ctx = ctx
        self._whole = whole
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._codec: BodyCodec | None = None
        self._scanner: PlaceholderScanner | None = None
        self._sent_headers = False
        self._passthrough = False  # failed open after the headers left: the rest as it is
        self._failed = False  # a rewrite error mid-stream: scan nothing more
        self._ended = False
        self._identity: Identity | None = None
        self._identity_resolved = False
        self._auth: PageAuth | None = None
        self._auth_resolved = False
        #: Widgets written so far (also numbers their containers).
        self.widgets = 0
        #: A token or an identity was written into the page: it must stay private.
        self.token_used = False

    # -- what adapters call ------------------------------------------------------------

    def feed(self, chunk: bytes | bytearray | memoryview, *, more: bool) -> Flow[Step]:
        """One body chunk of the app's; ``more`` as in ASGI's ``more_body``."""
        if self._ended:
            return _NOTHING
        if self._passthrough:
            return self._unchanged(bytes(chunk))
        if self._whole or (not more and not self._sent_headers):
            self._buffer.append(bytes(chunk))
            self._buffered += len(chunk)
            if not more:
                body = b"".join(self._buffer)
                self._buffer.clear()
                return (yield from self._whole_page(body))
            if self._buffered <= WHOLE_PAGE_LIMIT:
                return _NOTHING
            # Larger than a whole page may be: stream it from here.
            self._whole = False
            chunk = b"".join(self._buffer)
            self._buffer.clear()
        return (yield from self._stream(bytes(chunk), more=more))

    def headers_now(self) -> Flow[Step]:
        """Decide a stream's headers before any body (frameworks whose response object
        must carry them before its body is iterated)."""
        self._whole = False
        return (yield from self._stream(b"", more=True))

    def finish(self) -> Step:
        """The app stopped without a last chunk: whatever is held, unchanged."""
        held = b"".join(self._buffer)
        self._buffer.clear()
        if self._ended:
            return _NOTHING
        if not self._sent_headers:
            self._passthrough = True
            return self._unchanged(held)
        scanner = self._scanner
        pending = scanner.close() if scanner is not None and not self._failed else []
        out = b"".join(i if isinstance(i, bytes) else i.raw for i in pending)
        return Step(None, self._encode(out, final=False))

    def abandon(self) -> Step:
        """The app sends its body some other way (a file, WSGI's ``write()``...): from now
        on the response goes as the app writes it, starting with what is held."""
        held = b"".join(self._buffer)
        self._buffer.clear()
        if self._sent_headers:
            held += self._release_scanner()
            if self._codec is not None:
                # Our compressed stream cannot be continued with the app's own: finish it.
                logger.error(
                    "the app on %s left its compressed stream mid-page; ending the response",
                    self._path,
                )
                self._ended = True
                return Step(None, self._codec.encode(held, final=True), end=True)
        self._passthrough = True
        return self._unchanged(held)

    def _release_scanner(self) -> bytes:
        """What the scanner holds, raw; from now on nothing is scanned."""
        scanner, self._scanner = self._scanner, None
        self._failed = True
        return scanner.pending if scanner is not None else b""

    # -- whole pages -------------------------------------------------------------------

    def _whole_page(self, body: bytes) -> Flow[Step]:
        """The whole body is known: exact Content-Length, or the app's headers and bytes
        untouched when nothing changes (including when anything fails)."""
        self._sent_headers = True
        unchanged = Step(self._headers, body, changed=False)
        quick_match = self._core.quick_match
        if self._info.content_encoding is None and quick_match(body) is None:
            return unchanged  # the common case, kept to one search
        try:
            decoded = self._decode(body, final=True)
            if quick_match(decoded) is None:
                return unchanged
            items = self._scan(decoded, final=True)
            if not any(isinstance(item, Placeholder) for item in items):
                return unchanged
            yield from self._authenticate(items)
            out = self._render(items, final=True)
            headers = rewrite_headers(
                self._headers, content_length=len(out), private=self._private, rewritten=True
            )
        except Exception:  # _CorruptBody included: the app's bytes go out as they are
            logger.exception("rewriting the page failed on %s; sending it unchanged", self._path)
            return unchanged
        return Step(headers, out)

    # -- streams -----------------------------------------------------------------------

    def _stream(self, chunk: bytes, *, more: bool) -> Flow[Step]:
        first = not self._sent_headers
        items: list[Item] = []
        try:
            if first:
                # The headers leave with these bytes, before later chunks are seen: whether
                # the page is private depends on who the visitor is.
                yield from self._identify()
            data = self._decode(chunk, final=not more)
            items = self._scan(data, final=not more)
            yield from self._authenticate(items)
            out = self._render(items, final=not more)
            if first:
                headers = streamed_headers(self._headers, private=self._private)
        except _CorruptBody:
            if first:
                self._passthrough = True
                return self._unchanged(chunk)
            self._ended = True
            return Step(None, b"", end=True)
        except Exception:
            logger.exception("rewriting the page failed on %s; sending it unchanged", self._path)
            if first:
                self._passthrough = True
                return self._unchanged(chunk)
            # The headers are out: the rest goes as the app wrote it (decoded and encoded
            # again, so that a compressed stream stays one stream).
            rest = b"".join(item if isinstance(item, bytes) else item.raw for item in items)
            return Step(None, self._encode(rest + self._release_scanner(), final=not more))
        if not first:
            return Step(None, out)
        self._sent_headers = True
        return Step(headers, out)

    @property
    def _private(self) -> bool:
        """The page carries a token or an identity, or is for a signed-in visitor (a
        fallback page too): no shared cache may keep it."""
        return self.token_used or self._identity is not None

    def _unchanged(self, data: bytes) -> Step:
        if self._sent_headers:
            return Step(None, data)
        self._sent_headers = True
        return Step(self._headers, data)

    # -- decode, scan, authenticate, render -----------------------------------------------

    @property
    def _path(self) -> str:
        return self._ctx.path

    def _decode(self, chunk: bytes, *, final: bool) -> bytes:
        encoding = self._info.content_encoding
        if encoding is None:
            return chunk
        if self._codec is None:
            self._codec = codec_for(encoding)
        assert self._codec is not None
        try:
            return self._codec.decode(chunk, final=final)
        except Exception as exc:  # zlib.error, MemoryError...
            logger.error("the app's %s body on %s is corrupt (%s)", encoding, self._path, exc)
            raise _CorruptBody from None

    def _encode(self, data: bytes, *, final: bool) -> bytes:
        if self._codec is None or not (data or final):
            return data  # an empty flush would still cost a compressed block
        return self._codec.encode(data, final=final)

    def _scan(self, data: bytes, *, final: bool) -> list[Item]:
        """Passthrough bytes and placeholders. After a failure of our own, everything passes
        through unscanned (fail open), nothing lost."""
        if self._failed:
            return [data] if data else []
        scanner = self._scanner
        if scanner is None:
            settings = self._core.settings
            scanner = self._scanner = PlaceholderScanner(
                settings.placeholder_tag, max_size=settings.max_placeholder_size
            )
        held = scanner.pending
        try:
            items = scanner.feed(data)
            if final:
                unfinished = scanner.pending
                items += scanner.close()
                self._log_leftovers(scanner, unfinished)
            return items
        except Exception:
            logger.exception(
                "rewriting the page failed on %s; sending the rest unchanged", self._path
            )
            self._failed = True
            return [held + data]

    def _identify(self) -> Flow[Identity | None]:
        if not self._identity_resolved:
            self._identity = yield IDENTIFY
            self._identity_resolved = True
        return self._identity

    def _authenticate(self, items: list[Item]) -> Flow[None]:
        """Once per page, at its first real widget: who it is for and, if the mode uses
        tokens, the token."""
        if self._auth_resolved or self._failed or not any(map(self._is_widget, items)):
            return
        self._auth_resolved = True
        identity = yield from self._identify()
        if identity is None:
            logger.debug("anonymous visitor on %s: serving fallbacks", self._path)
            return
        mode = self._core.mode
        if not mode.uses_token:
            self._auth = PageAuth(identity)
            return
        grant: Grant | None = yield TokenNeed(identity)
        if grant is not None:
            ticket = self._core.tickets.issue(identity.key)
            self._auth = PageAuth(identity, grant.token, ticket, grant.expires_in)

    def _is_widget(self, item: Item) -> bool:
        if not isinstance(item, Placeholder):
            return False
        attributes = parse_attributes(item.attributes, self._info.encoding)
        return widget_attributes(attributes, self._core.settings.widgets)[1] is not None

    def _render(self, items: list[Item], *, final: bool) -> bytes:
        """Widget markup in place of each placeholder, encoded for the response."""
        if len(items) == 1 and isinstance(items[0], bytes):
            out = items[0]
        else:
            try:
                out = b"".join(
                    item if isinstance(item, bytes) else self._placeholder(item) for item in items
                )
            except Exception:
                logger.exception(
                    "rewriting the page failed on %s; sending the rest unchanged", self._path
                )
                self._failed = True
                out = b"".join(item if isinstance(item, bytes) else item.raw for item in items)
                if self._scanner is not None:
                    out += self._scanner.pending
        return self._encode(out, final=final)

    def _placeholder(self, placeholder: Placeholder) -> bytes:
        settings = self._core.settings
        encoding = self._info.encoding
        attributes = parse_attributes(placeholder.attributes, encoding)
        written, element = widget_attributes(attributes, settings.widgets)
        if element is None or written is None:
            self._log_bad_widget(written)
            return placeholder.inner
        auth = self._auth
        if auth is None:
            return placeholder.inner
        mode = self._core.mode
        widget = Widget(written.strip().lower(), element, attributes, self.widgets + 1)
        html = mode.render(self._ctx, widget, auth)
        if html is None:
            return placeholder.inner
        self.widgets += 1
        self.token_used = True  # a token or the identity is in the page
        if self.widgets == 1:
            html += mode.render_once(self._ctx, auth)
        return html.encode(encoding, "xmlcharrefreplace")

    # -- logs ----------------------------------------------------------------------------

    def _log_leftovers(self, scanner: PlaceholderScanner, unfinished: bytes) -> None:
        settings = self._core.settings
        if scanner.oversized:
            logger.warning(
                "%d <%s> element(s) on %s exceeded max_placeholder_size (%d bytes) and were "
                "sent unchanged",
                scanner.oversized,
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

    def _log_bad_widget(self, written: str | None) -> None:
        settings = self._core.settings
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
