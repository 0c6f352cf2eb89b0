"""The ASGI adapter: translate messages, and leave every decision to the core.

Per request, one ``_PageResponder`` holds all state (the held start message, the scanner,
the visitor's identity and token); the middleware object itself only holds configuration
and the shared services, so it is safe under any concurrency.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from ._codec import BodyCodec, codec_for
from ._config import DEFAULT_LOADER_URL, DEFAULT_SDK_URL, DEFAULT_TOKEN_PATH, Settings
from ._endpoint import RefreshEndpoint
from ._exceptions import ConfigurationError, TokenError
from ._http import ResponseInfo, csp_nonce, inspect_response, rewrite_headers
from ._identity import Identity, default_identify, resolve_identity
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
from ._tickets import TicketSigner
from ._tokens import TokenService
from ._types import ASGIApp, IdentifyCallable, Message, Receive, Scope, Send

__all__ = ["ReturningAIMiddleware"]

logger = logging.getLogger("rai_middleware")

# Set in the scope by the outermost instance, so that a second instance for the same tag
# further in does not scan again.
_SCOPE_MARK = "rai_middleware.tags"
_UNRESOLVED: Any = object()
# Extensions that send a body without ``http.response.body`` messages: hidden from the
# app on candidate requests so that an HTML file is sent as body messages we can read.
_BODYLESS_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopysend")


class ReturningAIMiddleware:
    """Replace placeholder tags in HTML pages with Returning.AI widgets.

    See the README for every option. All options are keyword arguments; the three
    credentials fall back to the ``RAI_COMMUNITY_ID``, ``RAI_ACCESS_ID`` and
    ``RAI_ACCESS_KEY`` environment variables.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        community_id: str | None = None,
        access_id: str | None = None,
        access_key: str | None = None,
        identify: IdentifyCallable | None = None,
        mode: str | None = None,
        widget_api_key: str | None = None,
        api_base_url: str | None = None,
        token_path: str = DEFAULT_TOKEN_PATH,
        sdk_url: str = DEFAULT_SDK_URL,
        widgets_base_url: str | None = None,
        loader_url: str = DEFAULT_LOADER_URL,
        iframe_segments: Mapping[str, str] | None = None,
        endpoint_prefix: str = "/_rai",
        placeholder_tag: str = "rai-placeholder",
        widgets: Mapping[str, str] | None = None,
        timeout: float = 3.0,
        min_token_ttl: float = 300,
        cache_maxsize: int = 10_000,
        http_client: httpx.AsyncClient | None = None,
        secret_key: str | None = None,
        ticket_max_age: int = 12 * 60 * 60,
        max_placeholder_size: int = 64 * 1024,
        failure_threshold: int = 5,
        failure_cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if identify is not None and not callable(identify):
            raise ConfigurationError("identify must be a callable taking the ASGI scope")
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise ConfigurationError("http_client must be an httpx.AsyncClient")
        self.app = app
        self.settings = Settings.from_options(
            mode=mode,
            community_id=community_id,
            access_id=access_id,
            access_key=access_key,
            widget_api_key=widget_api_key,
            secret_key=secret_key,
            api_base_url=api_base_url,
            token_path=token_path,
            sdk_url=sdk_url,
            widgets_base_url=widgets_base_url,
            loader_url=loader_url,
            iframe_segments=iframe_segments,
            endpoint_prefix=endpoint_prefix,
            placeholder_tag=placeholder_tag,
            widgets=widgets,
            timeout=timeout,
            min_token_ttl=min_token_ttl,
            cache_maxsize=cache_maxsize,
            ticket_max_age=ticket_max_age,
            max_placeholder_size=max_placeholder_size,
            failure_threshold=failure_threshold,
            failure_cooldown=failure_cooldown,
        )
        self.identify: IdentifyCallable = identify or default_identify
        self.tokens = TokenService(self.settings, http_client=http_client, clock=clock)
        self.tickets = TicketSigner(
            self.settings.secret_key.reveal(), max_age=self.settings.ticket_max_age
        )
        self._identity_secret = self.settings.secret_key.reveal().encode()
        self._endpoint = RefreshEndpoint(
            tokens=self.tokens,
            tickets=self.tickets,
            identify=self.identify_visitor,
            token_field="token" if self.settings.mode == "iframe" else "embedToken",
        )
        # Process-wide, not per request: the encodings already warned about.
        self._warned_encodings: set[str] = set()
        # Precomputed once: the cheap test that decides whether a body needs scanning.
        self._quick_match = re.compile(
            re.escape(b"<" + self.settings.placeholder_tag.encode("ascii")), re.IGNORECASE
        ).search

    def __repr__(self) -> str:
        return (
            f"ReturningAIMiddleware(app={self.app!r}, "
            f"community_id={self.settings.community_id!r}, "
            f"placeholder_tag={self.settings.placeholder_tag!r})"
        )

    async def identify_visitor(self, scope: Scope) -> Identity | None:
        """The visitor's identity, or None: what ``identify`` says, checked. Never raises."""
        if self.identify is default_identify and "user" not in scope:
            logger.debug(
                "no scope['user'] for %s: the visitor is anonymous (put ReturningAIMiddleware "
                "inside AuthenticationMiddleware, or pass identify=)",
                scope.get("path"),
            )
        identity = await resolve_identity(self.identify, scope, self._identity_secret)
        needs_email = self.settings.mode == "iframe"
        if identity is not None and needs_email and not identity.identifiers.get("data-email"):
            logger.warning(
                "mode='iframe' signs visitors in by email, and identify gave no "
                "'data-email' for %s: treating the visitor as anonymous",
                scope.get("path"),
            )
            return None
        return identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope_type != "http":
            await self.app(scope, receive, send)
            return
        refresh_path = self.settings.refresh_path
        if refresh_path is not None:
            path = scope.get("path", "")
            if path == refresh_path or path == scope.get("root_path", "") + refresh_path:
                await self._endpoint(scope, receive, send)
                return
        tag = self.settings.placeholder_tag
        handled = scope.get(_SCOPE_MARK)
        if scope.get("method") == "HEAD" or (handled is not None and tag in handled):
            await self.app(scope, receive, send)
            return
        scope[_SCOPE_MARK] = (*(handled or ()), tag)
        extensions = scope.get("extensions")
        if extensions and any(name in extensions for name in _BODYLESS_EXTENSIONS):
            scope = dict(scope)
            scope["extensions"] = {
                key: value for key, value in extensions.items() if key not in _BODYLESS_EXTENSIONS
            }
        responder = _PageResponder(self, scope, send)
        await self.app(scope, receive, responder.send)
        await responder.finish()

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def lifespan_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.tokens.startup()
            return message

        async def lifespan_send(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.tokens.aclose()
            await send(message)

        await self.app(scope, lifespan_receive, lifespan_send)

    def warn_encoding(self, encoding: str) -> None:
        """Once per middleware: an HTML page we cannot decode, and how to fix the order."""
        if encoding in self._warned_encodings:
            return
        self._warned_encodings.add(encoding)
        logger.warning(
            "an HTML page with Content-Encoding %r was sent without replacing its <%s> "
            "placeholders: the middleware can only decode gzip and deflate. Put the "
            "compression middleware outside ReturningAIMiddleware (so that it compresses "
            "the rewritten page), or have it skip text/html.",
            encoding,
            self.settings.placeholder_tag,
        )

    def refresh_url(self, scope: Scope) -> str:
        root_path: str = scope.get("root_path", "")
        return root_path + (self.settings.refresh_path or "")


class _PageResponder:
    """One response's journey through the middleware.

    A candidate body flows decode -> scan and render -> encode; decode and encode are the
    identity unless an inner middleware compressed the page with gzip or deflate.
    """

    __slots__ = (
        "_auth",
        "_codec",
        "_identity",
        "_info",
        "_middleware",
        "_mode",
        "_scan_failed",
        "_scanner",
        "_scope",
        "_send",
        "_start",
        "_token_used",
        "_widgets",
    )

    # _mode: what to do with the next message.
    _UNDECIDED = 0  # no start yet
    _HOLDING = 1  # candidate; start held until the first body
    _STREAMING = 2  # start sent, body passing through the scanner
    _PASSTHROUGH = 3  # not ours: forward as is
    _DONE = 4  # the last body went out

    def __init__(self, middleware: ReturningAIMiddleware, scope: Scope, send: Send) -> None:
        self._middleware = middleware
        self._scope = scope
        self._send = send
        self._mode = self._UNDECIDED
        self._start: Message | None = None
        self._info: ResponseInfo | None = None
        self._codec: BodyCodec | None = None
        self._scanner: PlaceholderScanner | None = None
        self._scan_failed = False
        self._identity: Identity | None = _UNRESOLVED
        self._auth: WidgetMarkup | None = _UNRESOLVED
        self._widgets = 0
        self._token_used = False

    async def send(self, message: Message) -> None:
        kind = message["type"]
        mode = self._mode
        if kind == "http.response.body":
            if mode == self._STREAMING:
                await self._stream_body(message)
            elif mode == self._HOLDING:
                await self._first_body(message)
            elif mode == self._DONE and self._start is not None:
                # Our stream ended early (a corrupt compressed body); nothing may follow.
                return
            else:
                await self._send(message)
            return
        if kind == "http.response.start" and mode == self._UNDECIDED:
            self._on_start(message)
            if self._mode == self._PASSTHROUGH:
                await self._send(message)
            return
        if mode == self._HOLDING:
            # pathsend, zerocopysend, trailers...: not a body we can read. Let the response
            # go as the app wrote it, start first.
            self._mode = self._PASSTHROUGH
            assert self._start is not None
            await self._send(self._start)
        await self._send(message)

    def _on_start(self, message: Message) -> None:
        headers = message.get("headers")
        if headers is not None and not isinstance(headers, list):
            headers = list(headers)  # a tuple or a generator: read it once, keep it
            message["headers"] = headers
        info = inspect_response(message.get("status", 200), headers or ())
        if not info.candidate:
            self._mode = self._PASSTHROUGH
            if info.skipped_encoding is not None:
                self._middleware.warn_encoding(info.skipped_encoding)
            return
        self._info = info
        self._start = message
        self._mode = self._HOLDING
        if info.content_encoding is not None:
            self._codec = codec_for(info.content_encoding)

    async def finish(self) -> None:
        """After the app returned: release anything a truncated stream left with us."""
        if self._mode == self._STREAMING and self._scanner is not None:
            # The app ended without a final body message; the server will complain, but
            # every byte it gave us goes out first.
            await self._stream_body({"type": "http.response.body", "more_body": True}, flush=True)

    # -- bodies ----------------------------------------------------------------------

    async def _first_body(self, message: Message) -> None:
        start = self._start
        assert start is not None
        more_body = message.get("more_body", False)
        if not more_body:
            await self._whole_body(start, message)
            return
        # A stream: headers must go before we know what later chunks hold.
        self._new_scanner()
        try:
            out = await self._process(message.get("body", b""), final=False, flush=False)
            private = self._token_used or (await self._visitor()) is not None
            headers = rewrite_headers(
                start.get("headers") or [],
                content_length=None,
                private=private,
                rewritten=self._widgets > 0 or self._rewrote_any or private,
            )
        except Exception:
            logger.exception("rewriting the page failed; sending it unchanged")
            self._mode = self._PASSTHROUGH
            await self._send(start)
            await self._send(message)
            return
        self._mode = self._STREAMING
        await self._send({**start, "headers": headers})
        if out:
            await self._send({"type": "http.response.body", "body": out, "more_body": True})

    async def _whole_body(self, start: Message, message: Message) -> None:
        """The whole body in one message: exact Content-Length, original headers if unchanged."""
        self._mode = self._DONE
        new_body: bytes | None = None
        try:
            body = bytes(message.get("body", b""))
            if self._codec is not None:
                body = self._codec.decode(body, final=True)
            if self._middleware._quick_match(body) is not None:
                items = self._new_scanner().feed(body) + self._scanner_close()
                if _has_placeholder(items):
                    new_body = await self._render(items)
                    if self._codec is not None:
                        new_body = self._codec.encode(new_body, final=True)
                    headers = rewrite_headers(
                        start.get("headers") or [],
                        content_length=len(new_body),
                        private=self._token_used,
                        rewritten=True,
                    )
        except Exception:
            logger.exception("rewriting the page failed; sending it unchanged")
            new_body = None
        if new_body is None:
            await self._send(start)
            await self._send(message)
            return
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": new_body})

    async def _stream_body(self, message: Message, *, flush: bool = False) -> None:
        more_body = message.get("more_body", False)
        try:
            out = await self._process(message.get("body", b""), final=not more_body, flush=flush)
        except _CorruptBody:
            self._mode = self._DONE
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if not more_body:
            self._mode = self._DONE
        if out or not more_body:
            await self._send({"type": "http.response.body", "body": out, "more_body": more_body})

    async def _process(self, chunk: bytes, *, final: bool, flush: bool) -> bytes:
        """Decode, scan and render, encode one chunk. Our own failures fail open."""
        codec = self._codec
        data: bytes = chunk
        if codec is not None:
            try:
                data = codec.decode(bytes(chunk), final=final)
            except Exception as exc:  # zlib.error, MemoryError...
                logger.error(
                    "the app's %s body on %s is corrupt (%s); ending the response",
                    codec.name,
                    self._scope.get("path"),
                    exc,
                )
                raise _CorruptBody from None
        if not self._scan_failed:
            data = await self._scan(data, final=final or flush)
        if codec is not None:
            data = codec.encode(data, final=final)
        return data

    async def _scan(self, data: bytes, *, final: bool) -> bytes:
        scanner = self._scanner
        assert scanner is not None
        held = scanner.pending
        items: list[Item] | None = None
        pending = b""
        try:
            items = scanner.feed(data)
            pending = scanner.pending
            if final:
                items = items + self._scanner_close()
                pending = b""
            return await self._render(items)
        except Exception:
            # Fail open: what we could not render goes out exactly as the app wrote it,
            # and the rest of the page passes through unscanned.
            logger.exception("rewriting the page failed; sending the rest unchanged")
            self._scan_failed = True
            if items is None:
                return held + bytes(data)
            return b"".join(_raw(item) for item in items) + pending

    @property
    def _rewrote_any(self) -> bool:
        return self._auth is not _UNRESOLVED or self._widgets > 0

    def _new_scanner(self) -> PlaceholderScanner:
        settings = self._middleware.settings
        self._scanner = PlaceholderScanner(
            settings.placeholder_tag, max_size=settings.max_placeholder_size
        )
        return self._scanner

    def _scanner_close(self) -> list[Item]:
        scanner = self._scanner
        assert scanner is not None
        unfinished = scanner.pending
        items = scanner.close()
        if scanner.oversized:
            logger.warning(
                "%d <%s> element(s) on %s exceeded max_placeholder_size (%d bytes) and were "
                "sent unchanged",
                scanner.oversized,
                self._middleware.settings.placeholder_tag,
                self._scope.get("path"),
                self._middleware.settings.max_placeholder_size,
            )
        if _has_open_tag(unfinished, self._middleware.settings.placeholder_tag):
            logger.warning(
                "an unterminated <%s> on %s was sent unchanged",
                self._middleware.settings.placeholder_tag,
                self._scope.get("path"),
            )
        return items

    # -- rendering -------------------------------------------------------------------

    async def _render(self, items: list[Item]) -> bytes:
        if len(items) == 1 and isinstance(items[0], bytes):
            return items[0]
        parts: list[bytes] = []
        for item in items:
            if isinstance(item, bytes):
                parts.append(item)
            else:
                parts.append(await self._render_placeholder(item))
        return b"".join(parts)

    async def _render_placeholder(self, placeholder: Placeholder) -> bytes:
        info = self._info
        assert info is not None
        settings = self._middleware.settings
        attributes = parse_attributes(placeholder.attributes, info.encoding)
        written, element = widget_attributes(attributes, settings.widgets)
        if element is None or written is None:
            self._log_bad_widget(written)
            return placeholder.inner
        widget = written.strip().lower()
        if settings.mode == "access_key":
            html = await self._render_sdk_widget(element, attributes)
        else:
            html = await self._render_legacy_widget(widget, attributes)
        if html is None:
            return placeholder.inner
        return html.encode(info.encoding, "xmlcharrefreplace")

    async def _render_sdk_widget(self, element: str, attributes: list[Attribute]) -> str | None:
        """Access Key Embed: the SDK's custom element with the token as ``embed-token``."""
        page = await self._page_auth()
        if page is None:
            return None
        self._widgets += 1
        self._token_used = True
        html = render_widget(
            element,
            attributes,
            index=self._widgets,
            token=page.token,
            community_id=page.community_id,
        )
        if self._widgets == 1:
            html += render_scripts(page)
        return html

    async def _render_legacy_widget(self, widget: str, attributes: list[Attribute]) -> str | None:
        """Modes ``iframe`` and ``attributes``: both address a widget by id and path segment."""
        settings = self._middleware.settings
        widget_id = next((value for name, value in attributes if name == "widget-id"), "")
        segment = settings.iframe_segments.get(widget)
        if not widget_id.strip() or segment is None:
            needed = (
                "a widget-id attribute"
                if segment is not None
                else "one of the iframe_segments widgets: " + ", ".join(settings.iframe_segments)
            )
            logger.error(
                "a <%s widget=%r> on %s needs %s in mode=%r; serving its fallback content",
                settings.placeholder_tag,
                widget,
                self._scope.get("path"),
                needed,
                settings.mode,
            )
            return None
        if settings.mode == "attributes":
            identity = await self._visitor()
            if identity is None:
                return None
            self._widgets += 1
            self._token_used = True  # the identity is in the page: keep it out of shared caches
            return render_loader(
                widget=widget,
                widget_id=widget_id.strip(),
                container=container_id(self._widgets),
                attributes=attributes,
                identifiers=identity.identifiers,
                loader_url=settings.loader_url,
                widgets_base_url=settings.widgets_base_url,
                segment=segment,
                nonce=self._nonce(),
            )
        page = await self._page_auth()
        if page is None:
            return None
        self._widgets += 1
        self._token_used = True
        html = render_iframe(settings.widgets_base_url, segment, widget_id.strip(), attributes)
        if self._widgets == 1:
            html += render_iframe_auth(
                IframeAuth(
                    token=page.token,
                    expires_in=page.expires_in,
                    widgets_origin=settings.widgets_origin,
                    refresh_url=page.refresh_url,
                    ticket=page.ticket,
                    nonce=page.nonce,
                )
            )
        return html

    def _log_bad_widget(self, written: str | None) -> None:
        settings = self._middleware.settings
        known = ", ".join(sorted(settings.widgets))
        if written is None:
            logger.error(
                "a <%s> on %s has no widget attribute; expected one of %s. "
                "Serving its fallback content.",
                settings.placeholder_tag,
                self._scope.get("path"),
                known,
            )
        else:
            logger.error(
                "unknown widget %r in a <%s> on %s; expected one of %s. "
                "Serving its fallback content.",
                written,
                settings.placeholder_tag,
                self._scope.get("path"),
                known,
            )

    async def _visitor(self) -> Identity | None:
        if self._identity is _UNRESOLVED:
            self._identity = await self._middleware.identify_visitor(self._scope)
        return self._identity

    def _nonce(self) -> str | None:
        """The CSP nonce for scripts we write: the response's policy, else the scope's."""
        assert self._info is not None
        nonce = csp_nonce(self._info.csp)
        if nonce is None:
            state = self._scope.get("state")
            if isinstance(state, Mapping):
                candidate = state.get("csp_nonce")
                nonce = candidate if isinstance(candidate, str) and candidate else None
        return nonce

    async def _page_auth(self) -> WidgetMarkup | None:
        """Token, ticket and scripts for this page: resolved once, on the first real widget."""
        if self._auth is not _UNRESOLVED:
            return self._auth
        self._auth = None
        identity = await self._visitor()
        if identity is None:
            logger.debug("anonymous visitor on %s: serving fallbacks", self._scope.get("path"))
            return None
        middleware = self._middleware
        try:
            token = await middleware.tokens.get(identity)
        except TokenError:
            # TokenService logged it (once per failure, not once per page).
            return None
        self._auth = WidgetMarkup(
            token=token.value,
            ticket=middleware.tickets.issue(identity.key),
            community_id=middleware.settings.community_id or "",
            sdk_url=middleware.settings.sdk_url,
            refresh_url=middleware.refresh_url(self._scope),
            nonce=self._nonce(),
            expires_in=int(token.remaining(middleware.tokens.now())),
        )
        return self._auth


class _CorruptBody(Exception):
    """The app's compressed body cannot be decoded: the response has to end."""


def _has_placeholder(items: list[Item]) -> bool:
    return any(isinstance(item, Placeholder) for item in items)


def _raw(item: Item) -> bytes:
    return item if isinstance(item, bytes) else item.raw


def _has_open_tag(data: bytes, tag: str) -> bool:
    return (b"<" + tag.encode("ascii")) in data.lower()
