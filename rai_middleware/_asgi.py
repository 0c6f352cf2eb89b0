"""The ASGI adapter: translate messages, and leave every decision to the core.

Per request, one ``_PageResponder`` holds all state (the held start message, the scanner,
the visitor's identity and token); the middleware object itself only holds configuration
and the shared services, so it is safe under any concurrency.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx

from ._config import Options, build_settings
from ._endpoint import RefreshEndpoint
from ._exceptions import ConfigurationError, TokenError
from ._http import ResponseInfo, inspect_response, rewrite_headers, streamed_headers
from ._identity import Identity, default_identify, resolve_identity
from ._page import CorruptBody, PageAuth, PageRewriter, has_placeholder, quick_matcher, state_nonce
from ._store import TokenStore
from ._tickets import TicketSigner
from ._tokens import TokenService
from ._types import IdentifyCallable, Message, Receive, Scope, Send

if TYPE_CHECKING:  # Unpack is in typing from 3.11; annotations are never evaluated here
    from typing_extensions import Unpack

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
        # Any ASGI callable: frameworks type their scopes as TypedDicts (Litestar, Quart),
        # which a MutableMapping signature would refuse under mypy.
        app: Callable[..., Awaitable[None]],
        *,
        identify: IdentifyCallable | None = None,
        http_client: httpx.AsyncClient | None = None,
        token_store: TokenStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        **options: Unpack[Options],
    ) -> None:
        if identify is not None and not callable(identify):
            raise ConfigurationError("identify must be a callable taking the ASGI scope")
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise ConfigurationError("http_client must be an httpx.AsyncClient")
        self.app = app
        self.settings = build_settings(options)
        self.identify: IdentifyCallable = identify or default_identify
        if token_store is not None and not isinstance(token_store, TokenStore):
            raise ConfigurationError(
                "token_store must be a token store such as rai_middleware.redis.RedisTokenStore"
            )
        self.tokens = TokenService(
            self.settings, http_client=http_client, clock=clock, store=token_store
        )
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
        # Precomputed, so that a request that is not ours costs a few comparisons.
        self._refresh_path = self.settings.refresh_path
        self._tag = self.settings.placeholder_tag
        self._mark = (self._tag,)
        # Process-wide, not per request: the encodings already warned about.
        self._warned_encodings: set[str] = set()
        # Precomputed once: the cheap test that decides whether a body needs scanning.
        self._quick_match = quick_matcher(self.settings)

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

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Typed Any for the same reason; inside, a scope is a MutableMapping like any other.
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        refresh_path = self._refresh_path
        if refresh_path is not None and scope["path"].endswith(refresh_path):
            path = scope["path"]
            if path == refresh_path or path == scope.get("root_path", "") + refresh_path:
                await self._endpoint(scope, receive, send)
                return
        handled = scope.get(_SCOPE_MARK)
        if scope["method"] == "HEAD" or (handled is not None and self._tag in handled):
            await self.app(scope, receive, send)
            return
        scope[_SCOPE_MARK] = self._mark if handled is None else (*handled, self._tag)
        extensions = scope.get("extensions")
        if extensions and any(name in extensions for name in _BODYLESS_EXTENSIONS):
            scope = dict(scope)
            scope["extensions"] = {
                key: value for key, value in extensions.items() if key not in _BODYLESS_EXTENSIONS
            }
        responder: _PageResponder | None = None

        async def send_html_to_responder(message: Message) -> None:
            # Decided from the start message alone: anything but a 200 HTML page goes
            # straight through, and costs no more than this check.
            nonlocal responder
            if responder is not None:
                await responder.send(message)
            elif message["type"] == "http.response.start" and _may_be_page(message):
                responder = _PageResponder(self, scope, send)
                await responder.send(message)
            else:
                await send(message)

        await self.app(scope, receive, send_html_to_responder)
        if responder is not None:
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
    """One response's journey through the middleware: ASGI messages in and out, with a
    ``PageRewriter`` doing the work on candidate bodies."""

    __slots__ = (
        "_held",
        "_identity",
        "_info",
        "_middleware",
        "_mode",
        "_rewriter",
        "_scope",
        "_send",
        "_start",
    )

    # _mode: what to do with the next message.
    _UNDECIDED = 0  # no start yet
    _HOLDING = 1  # candidate; start held until the first body
    _STREAMING = 2  # start sent, body passing through the rewriter
    _PASSTHROUGH = 3  # not ours: forward as is
    _DONE = 4  # the last body went out
    _HELD_FIRST = 5  # the first body said more_body: held until the next message

    def __init__(self, middleware: ReturningAIMiddleware, scope: Scope, send: Send) -> None:
        self._middleware = middleware
        self._scope = scope
        self._send = send
        self._mode = self._UNDECIDED
        self._start: Message | None = None
        self._rewriter: PageRewriter | None = None
        self._info: ResponseInfo | None = None
        self._held: Message | None = None
        self._identity: Identity | None = _UNRESOLVED

    async def send(self, message: Message) -> None:
        kind = message["type"]
        mode = self._mode
        if kind == "http.response.body":
            if mode == self._STREAMING:
                await self._stream_body(message)
            elif mode == self._HOLDING:
                await self._first_body(message)
            elif mode == self._HELD_FIRST:
                await self._second_body(message)
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
        elif mode == self._HELD_FIRST:
            await self._start_stream()
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

    def _new_rewriter(self, info: ResponseInfo) -> PageRewriter:
        # Made only for a page that needs it: a whole page without a placeholder never does.
        middleware = self._middleware
        self._rewriter = PageRewriter(
            middleware.settings,
            info,
            path=self._scope.get("path", ""),
            refresh_url=middleware.refresh_url(self._scope),
            state_nonce=state_nonce(self._scope.get("state")),
        )
        return self._rewriter

    async def finish(self) -> None:
        """After the app returned: release anything a truncated stream left with us."""
        if self._mode == self._HELD_FIRST:
            await self._start_stream()
        if self._mode == self._STREAMING:
            # The app ended without a final body message; the server will complain, but
            # every byte it gave us goes out first.
            await self._stream_body({"type": "http.response.body", "more_body": True}, flush=True)

    # -- bodies ----------------------------------------------------------------------

    async def _first_body(self, message: Message) -> None:
        start, info = self._start, self._info
        assert start is not None and info is not None
        if not message.get("more_body", False):
            await self._whole_body(start, info, message.get("body", b""), [message])
            return
        # Django's ASGI handler and Quart send a whole page as its body then an empty last
        # message: hold the first message until the next one tells which it is.
        self._held = message
        self._mode = self._HELD_FIRST

    async def _second_body(self, message: Message) -> None:
        held, start, info = self._held, self._start, self._info
        assert held is not None and start is not None and info is not None
        if not message.get("more_body", False):
            self._held = None
            body = bytes(held.get("body", b"")) + bytes(message.get("body", b""))
            await self._whole_body(start, info, body, [held, message])
            return
        await self._start_stream()
        await self._stream_body(message)

    async def _start_stream(self) -> None:
        """A stream: headers must go before we know what later chunks hold."""
        held, start, info = self._held, self._start, self._info
        assert held is not None and start is not None and info is not None
        self._held = None
        try:
            rewriter = self._new_rewriter(info)
            out = await rewriter.aprocess(held.get("body", b""), final=False, auth=self._page_auth)
            private = rewriter.token_used or (await self._visitor()) is not None
            headers = streamed_headers(start.get("headers") or [], private=private)
        except Exception:
            logger.exception("rewriting the page failed; sending it unchanged")
            self._mode = self._PASSTHROUGH
            await self._send(start)
            await self._send(held)
            return
        self._mode = self._STREAMING
        await self._send({**start, "headers": headers})
        if out:
            await self._send({"type": "http.response.body", "body": out, "more_body": True})

    async def _whole_body(
        self, start: Message, info: ResponseInfo, body: bytes, originals: list[Message]
    ) -> None:
        """The whole body is known: exact Content-Length, and the app's own messages and
        headers when nothing changes."""
        self._mode = self._DONE
        quick_match = self._middleware._quick_match
        if info.content_encoding is None and quick_match(body) is None:
            # The common case, kept to one search: no placeholder, nothing to do.
            await self._send(start)
            for message in originals:
                await self._send(message)
            return
        new_body: bytes | None = None
        try:
            rewriter = self._new_rewriter(info)
            body = rewriter.decode(body, final=True)
            if quick_match(body) is not None:
                items = rewriter.scan(body, final=True)
                if has_placeholder(items):
                    if rewriter.needs_auth(items):
                        rewriter.provide_auth(await self._page_auth())
                    new_body = rewriter.render(items, final=True)
                    headers = rewrite_headers(
                        start.get("headers") or [],
                        content_length=len(new_body),
                        private=rewriter.token_used,
                        rewritten=True,
                    )
        except Exception:  # CorruptBody included: the app's bytes go out as they are
            logger.exception("rewriting the page failed; sending it unchanged")
            new_body = None
        if new_body is None:
            await self._send(start)
            for message in originals:
                await self._send(message)
            return
        await self._send({**start, "headers": headers})
        await self._send({"type": "http.response.body", "body": new_body})

    async def _stream_body(self, message: Message, *, flush: bool = False) -> None:
        rewriter = self._rewriter
        assert rewriter is not None
        more_body = message.get("more_body", False)
        try:
            out = await rewriter.aprocess(
                message.get("body", b""), final=not more_body, auth=self._page_auth, flush=flush
            )
        except CorruptBody:
            self._mode = self._DONE
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if not more_body:
            self._mode = self._DONE
        if out or not more_body:
            await self._send({"type": "http.response.body", "body": out, "more_body": more_body})

    async def _visitor(self) -> Identity | None:
        if self._identity is _UNRESOLVED:
            self._identity = await self._middleware.identify_visitor(self._scope)
        return self._identity

    async def _page_auth(self) -> PageAuth | None:
        """Who the page is for and, in token modes, the token: resolved once per page."""
        identity = await self._visitor()
        if identity is None:
            logger.debug("anonymous visitor on %s: serving fallbacks", self._scope.get("path"))
            return None
        middleware = self._middleware
        if middleware.settings.mode == "attributes":
            return PageAuth(identity)
        try:
            token = await middleware.tokens.get(identity)
        except TokenError:
            return None  # TokenService logged it (once per failure, not once per page)
        except Exception:  # a bug, or a user-supplied client that is closed: fail open
            logger.exception("getting a token failed; serving the placeholder fallback")
            return None
        return PageAuth(
            identity,
            token=token.value,
            ticket=middleware.tickets.issue(identity.key),
            expires_in=int(token.remaining(middleware.tokens.now())),
        )


_PAGE_TYPES = (b"text/html", b"application/xhtml+xml")


def _may_be_page(start: Message) -> bool:
    """A 200 response whose Content-Type starts like HTML; ``inspect_response`` decides."""
    if start.get("status", 200) != 200:
        return False
    headers = start.get("headers")
    if headers is None:
        return False
    if not isinstance(headers, (list, tuple)):
        headers = list(headers)  # a generator: read it once, keep it
        start["headers"] = headers
    for name, value in headers:
        if len(name) == 12 and name.lower() == b"content-type":
            media_type: bytes = value.lstrip()[:21].lower()
            return media_type.startswith(_PAGE_TYPES)
    return False
