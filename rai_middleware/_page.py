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

A compressed stream (gzip or deflate from a compression middleware further in) is relayed:
while nothing in it needs rewriting, the client gets the app's own compressed bytes, each
chunk decoded only to be scanned (and fed to our encoder, whose output is dropped, so that
it shares the client's history). At the first chunk that must change, our encoder's
continuation takes over, checked first against a copy of the decoder as it was before
that chunk: it is used only if it inflates, after the app's bytes so far, to exactly the
rewritten text (so only where the app flushed its stream at the end of its previous
chunk, as compression middleware does). Otherwise the page goes on unchanged. So a stream
that cannot be decoded before anything was rewritten goes out unchanged from its first
byte to its last; one that breaks after rewritten bytes left ends there, with an error
logged that says so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._codec import BodyCodec, codec_for
from ._http import RawHeaders, ResponseInfo, rewrite_headers, streamed_headers
from ._identity import Identity
from ._modes import PageAuth, PageContext, Widget
from ._needs import IDENTIFY, Flow, Grant, TokenNeed
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
    """The app's compressed body cannot be decoded (the reason is the message)."""


#: How a sync or full flush of a deflate stream ends (an empty stored block).
_FLUSHED = b"\x00\x00\xff\xff"


def quick_matcher(tag: str, *also: str) -> Callable[[bytes], object]:
    """The cheap test that decides whether a whole body needs scanning at all."""
    names = b"|".join(re.escape(name.encode("ascii")) for name in (tag, *also))
    return re.compile(b"<(?:" + names + b")", re.IGNORECASE).search


#: A document's own elements: a body with none of them before its first widget is a
#: fragment (whatever the request said).
_DOCUMENT_TAG = re.compile(rb"<(?:html|head|body)[\t\n\f\r />]", re.IGNORECASE)


class PageRewrite:
    """Per response. Not shared between requests."""

    __slots__ = (
        "_auth",
        "_auth_resolved",
        "_buffer",
        "_buffered",
        "_codec",
        "_core",
        "_counted",
        "_ctx",
        "_document",
        "_ended",
        "_failed",
        "_headers",
        "_identity",
        "_identity_resolved",
        "_info",
        "_passthrough",
        "_relaying",
        "_replaced",
        "_runtime_tag",
        "_scanner",
        "_sent_headers",
        "_tail",
        "_ticket",
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
        #: A compressed stream still sent as the app's own bytes (nothing rewritten yet).
        self._relaying = info.content_encoding is not None
        self._failed = False  # a rewrite error mid-stream: scan nothing more
        self._ended = False
        self._identity: Identity | None = None
        self._identity_resolved = False
        self._auth: PageAuth | None = None
        self._auth_resolved = False
        self._ticket: str | None = None
        self._runtime_tag = core.settings.runtime_tag.encode("ascii")
        #: ``<html>``, ``<head>`` or ``<body>`` seen so far; ``_tail``: the last bytes
        #: scanned, for one cut by a chunk's end.
        self._document = False
        self._tail = b""
        #: Widgets written so far (also numbers their containers).
        self.widgets = 0
        #: A token or an identity was written into the page: it must stay private.
        self.token_used = False
        #: Rewritten bytes of a stream have left (a placeholder was replaced).
        self._replaced = False
        #: Counted in the metrics (as rewritten or passed through).
        self._counted = False

    # -- what adapters call ------------------------------------------------------------

    def feed(self, chunk: bytes | bytearray | memoryview, *, more: bool) -> Flow[Step]:
        """One body chunk of the app's; ``more`` as in ASGI's ``more_body``."""
        if self._ended:
            return _NOTHING
        if self._passthrough:
            step = self._unchanged(bytes(chunk))
        else:
            if self._whole or (not more and not self._sent_headers):
                self._buffer.append(bytes(chunk))
                self._buffered += len(chunk)
                if not more:
                    body = b"".join(self._buffer)
                    self._buffer.clear()
                    step = yield from self._whole_page(body)
                    self._count(step.changed)
                    return step
                if self._buffered <= WHOLE_PAGE_LIMIT:
                    return _NOTHING
                # Larger than a whole page may be: stream it from here.
                self._whole = False
                chunk = b"".join(self._buffer)
                self._buffer.clear()
            step = yield from self._stream(bytes(chunk), more=more)
        if not more or step.end:
            self._count(self._replaced)
        return step

    def headers_now(self) -> Flow[Step]:
        """Decide a stream's headers before any body (frameworks whose response object
        must carry them before its body is iterated)."""
        self._whole = False
        return (yield from self._stream(b"", more=True))

    def finish(self) -> Step:
        """The app stopped without a last chunk: whatever is held, unchanged."""
        held = b"".join(self._buffer)
        self._buffer.clear()
        self._count(self._replaced)
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
        self._count(self._replaced)  # nothing is rewritten from here on
        if self._sent_headers:
            held += self._release_scanner()
            if self._codec is not None and not self._relaying:
                # Our compressed stream cannot be continued with the app's own: finish it.
                logger.error(
                    "the app on %s left its compressed stream mid-page; ending the response",
                    self._path,
                )
                self._ended = True
                return Step(None, self._codec.encode(held, final=True), end=True)
        self._passthrough = True
        return self._unchanged(held)

    def _count(self, rewritten: bool) -> None:
        """Count the page once, as rewritten (a placeholder was replaced in what left) or
        passed through (the app's bytes as they were)."""
        if not self._counted:
            self._counted = True
            identity = self._identity
            self._core.metrics.page(rewritten, None if identity is None else identity.tag)

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
            if decoded is not body and quick_match(decoded) is None:
                return unchanged
            items = self._scan(decoded, final=True)
            if not any(isinstance(item, Placeholder) for item in items):
                return unchanged
            yield from self._authenticate(items)
            out = self._render(items, final=True)
            headers = rewrite_headers(
                self._headers, content_length=len(out), private=self._private, rewritten=True
            )
        except _CorruptBody as exc:
            logger.error(
                "rewriting the page failed on %s: its %s body is corrupt (%s); sending it "
                "unchanged",
                self._path,
                self._info.content_encoding,
                exc,
            )
            return unchanged
        except Exception:  # the app's bytes go out as they are
            logger.exception("rewriting the page failed on %s; sending it unchanged", self._path)
            return unchanged
        return Step(headers, out)

    # -- streams -----------------------------------------------------------------------

    def _stream(self, chunk: bytes, *, more: bool) -> Flow[Step]:
        first = not self._sent_headers
        final = not more
        items: list[Item] = []
        relaying = self._relaying
        replaced = False
        before: Any = None  # the decoder before this chunk (what the client's is in)
        try:
            if first:
                # The headers leave with these bytes, before later chunks are seen: whether
                # the page is private depends on who the visitor is.
                yield from self._identify()
            if relaying and not first and self._codec is not None:
                before = self._codec.decoder_copy()
            data = self._decode(chunk, final=final)
            items = self._scan(data, final=final)
            if relaying and self._unchanged_items(items) and self._relayable(chunk, final):
                # Nothing to change: the app's own bytes; our encoder only keeps up.
                assert self._codec is not None
                if chunk:
                    self._codec.encode(self._text(data), final=final)
                out = chunk
            else:
                if not self._auth_resolved:
                    yield from self._authenticate(items)
                text = self._render_text(items)
                replaced = not self._failed and any(isinstance(i, Placeholder) for i in items)
                out = self._encode(text, final=final)
                if relaying:
                    self._relaying = False
                    if before is not None and not self._continues(before, out, text, final):
                        return self._relay_rest(chunk)
            if first:
                headers = streamed_headers(self._headers, private=self._private)
        except _CorruptBody as exc:
            return self._corrupt(chunk, str(exc), relaying=relaying)
        except Exception:
            logger.exception("rewriting the page failed on %s; sending it unchanged", self._path)
            if first or relaying:
                self._passthrough = True
                return self._unchanged(chunk)
            # The headers are out: the rest goes as the app wrote it (decoded and encoded
            # again, so that a compressed stream stays one stream).
            rest = b"".join(item if isinstance(item, bytes) else item.raw for item in items)
            return Step(None, self._encode(rest + self._release_scanner(), final=final))
        if replaced:
            self._replaced = True
        if not first:
            return Step(None, out)
        self._sent_headers = True
        return Step(headers, out)

    def _unchanged_items(self, items: list[Item]) -> bool:
        """This chunk's text needs no change and the scanner holds nothing back."""
        scanner = self._scanner
        return (
            not self._failed
            and all(isinstance(item, bytes) for item in items)
            and (scanner is None or not scanner.pending)
        )

    def _relayable(self, chunk: bytes, final: bool) -> bool:
        """May this chunk go out as the app's own bytes? Only if a later chunk can still be
        rewritten after it: it ends the stream, or ends flushed (the ``00 00 ff ff`` of a
        sync or full flush, as compression middleware sends; a coincidence is caught by
        ``_continues``). A stream compressed in one piece and cut anywhere is re-encoded
        from its first chunk instead."""
        codec = self._codec
        return final or not chunk or chunk.endswith(_FLUSHED) or (codec is not None and codec.ended)

    def _continues(self, before: Any, out: bytes, text: bytes, final: bool) -> bool:
        """Does our encoder's ``out``, after the app's compressed bytes so far, inflate to
        exactly the rewritten text? Only if the app flushed its stream at the end of its
        previous chunk; ``before`` is a copy of the decoder at that point."""
        try:
            got = before.decompress(out)
            if final:
                got += before.flush()
                return bool(got == text and before.eof and not before.unused_data)
            return bool(got == text)
        except Exception:  # zlib.error: not a continuation
            return False

    def _relay_rest(self, chunk: bytes) -> Step:
        logger.warning(
            "the app's %s stream on %s is not flushed at the end of each chunk, so it cannot "
            "be rewritten mid-stream; sending it unchanged",
            self._info.content_encoding,
            self._path,
        )
        self._passthrough = True
        return self._unchanged(chunk)

    def _corrupt(self, chunk: bytes, reason: str, *, relaying: bool) -> Step:
        encoding = self._info.content_encoding
        if relaying:
            # Only the app's own bytes have left: the rest of them follow, as they are.
            logger.error(
                "the app's %s body on %s is corrupt (%s); nothing of it was rewritten: "
                "sending it unchanged from its first byte to its last",
                encoding,
                self._path,
                reason,
            )
            self._passthrough = True
            return self._unchanged(chunk)
        logger.error(
            "the app's %s body on %s is corrupt (%s) after rewritten bytes had left; "
            "ending the response there",
            encoding,
            self._path,
            reason,
        )
        self._ended = True
        return Step(None, b"", end=True)

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
            data = self._codec.decode(chunk, final=final)
        except Exception as exc:  # zlib.error, MemoryError...
            raise _CorruptBody(str(exc)) from None
        if self._codec.ended and self._codec.trailing:
            raise _CorruptBody("bytes after the end of the compressed stream")
        return data

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
                settings.placeholder_tag,
                max_size=settings.max_placeholder_size,
                also=(settings.runtime_tag,),
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
        tokens, the token. At a runtime tag before any widget: who it is for."""
        if self._auth_resolved or self._failed:
            return
        widget = any(map(self._is_widget, items))
        if not widget and not any(map(self._is_runtime, items)):
            return
        identity = yield from self._identify()
        if not widget:
            return
        self._auth_resolved = True
        if identity is None:
            logger.debug("anonymous visitor on %s: serving fallbacks", self._path)
            return
        mode = self._core.mode
        if not mode.uses_token:
            self._auth = PageAuth(identity)
            return
        grant: Grant | None = yield TokenNeed(identity)
        if grant is None:
            self._core.metrics.fallback_served(identity.tag)
            return
        self._auth = PageAuth(identity, grant.token, self._ticket_for(identity), grant.expires_in)

    def _ticket_for(self, identity: Identity) -> str:
        if self._ticket is None:
            self._ticket = self._core.tickets.issue(identity.key)
        return self._ticket

    def _is_runtime(self, item: Item) -> bool:
        return isinstance(item, Placeholder) and item.tag == self._runtime_tag

    def _is_widget(self, item: Item) -> bool:
        if not isinstance(item, Placeholder) or item.tag == self._runtime_tag:
            return False
        return self._core.widget_spec(item.attributes, self._info.encoding)[1] is not None

    def _render(self, items: list[Item], *, final: bool) -> bytes:
        """Widget markup in place of each placeholder, encoded for the response."""
        return self._encode(self._render_text(items), final=final)

    def _render_text(self, items: list[Item]) -> bytes:
        if len(items) == 1 and isinstance(items[0], bytes):
            return self._text(items[0])
        try:
            return b"".join(
                self._text(item) if isinstance(item, bytes) else self._placeholder(item)
                for item in items
            )
        except Exception:
            logger.exception(
                "rewriting the page failed on %s; sending the rest unchanged", self._path
            )
            self._failed = True
            out = b"".join(item if isinstance(item, bytes) else item.raw for item in items)
            if self._scanner is not None:
                out += self._scanner.pending
            return out

    def _text(self, data: bytes) -> bytes:
        """Passthrough bytes, looked at until the page shows it is a whole document."""
        if not self._document:
            self._document = _DOCUMENT_TAG.search(self._tail + data) is not None
            self._tail = data[-6:]
        return data

    def _runtime(self) -> bytes:
        """A runtime tag: the runtime for a signed-in visitor (once per response), else
        nothing."""
        identity, ctx = self._identity, self._ctx
        if identity is None or ctx.runtime_written:
            return b""
        ctx.fragment = ctx.fragment or not self._document
        auth = self._auth or PageAuth(identity, ticket=self._ticket_for(identity))
        html = self._core.mode.render_runtime(ctx, auth)
        ctx.runtime_written = True
        if not html:
            self._core.warn_once(
                "runtime",
                "<%s> on %s: mode=%r has no browser runtime (no endpoint); it is removed",
                self._core.settings.runtime_tag,
                self._path,
                self._core.mode.name,
            )
            return b""
        self.token_used = True  # the ticket names the visitor
        return html.encode(self._info.encoding, "xmlcharrefreplace")

    def _placeholder(self, placeholder: Placeholder) -> bytes:
        if placeholder.tag == self._runtime_tag:
            return self._runtime()
        encoding = self._info.encoding
        written, element, attributes = self._core.widget_spec(placeholder.attributes, encoding)
        if element is None or written is None:
            self._log_bad_widget(written)
            return placeholder.inner
        auth = self._auth
        if auth is None:
            return placeholder.inner
        mode = self._core.mode
        ctx = self._ctx
        suffix = self._core.container_ids.next()
        widget = Widget(written.strip().lower(), element, attributes, self.widgets + 1, suffix)
        html = mode.render(ctx, widget, auth)
        if html is None:
            return placeholder.inner
        self.widgets += 1
        self.token_used = True  # a token or the identity is in the page
        if self.widgets == 1:
            ctx.fragment = ctx.fragment or not self._document
            html += mode.render_once(ctx, auth)
            ctx.scripts_written = True
            if mode.uses_token and not ctx.runtime_written:
                html += mode.render_runtime(ctx, auth)
                ctx.runtime_written = True
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
        if unfinished and (b"<" + settings.placeholder_tag.encode("ascii")) in unfinished.lower():
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
