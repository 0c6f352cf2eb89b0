"""The ASGI adapter: ASGI messages in and out of the core, nothing else.

Per page, the state lives in a ``_Responder`` (the held start message and the
``PageRewrite``); the middleware object only holds configuration and the shared services,
so it is safe under any concurrency.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._clients import AsyncHTTPClient
from ._config import Options
from ._core import AsyncDriver, Stats, async_services
from ._endpoint import first_headers
from ._exceptions import ConfigurationError
from ._http import may_be_page
from ._identity import default_identify
from ._misconfigured import Misconfigured, defer
from ._page import PageRewrite, Step
from ._store import TokenStore
from ._types import IdentifyCallable, Message, Receive, Scope, Send

if TYPE_CHECKING:  # Unpack is in typing from 3.11; annotations are never evaluated here
    from typing_extensions import Unpack

__all__ = ["ReturningAIMiddleware"]

logger = logging.getLogger("rai_middleware")

# Set in the scope by the outermost instance, so that a second instance for the same tag
# further in does not scan again.
_SCOPE_MARK = "rai_middleware.tags"
# Extensions that send a body without ``http.response.body`` messages: hidden from the
# app so that an HTML file is sent as body messages we can read.
_BODYLESS_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopysend")
_COMPRESSION_ADVICE = (
    "Put the compression middleware outside ReturningAIMiddleware (so that it compresses "
    "the rewritten page), or have it skip text/html."
)


class ReturningAIMiddleware:
    """Replace placeholder tags in HTML pages with Returning.AI widgets.

    See docs/options.md for every option. All options are keyword arguments; the three
    credentials fall back to the ``RAI_COMMUNITY_ID``, ``RAI_ACCESS_ID`` and
    ``RAI_ACCESS_KEY`` environment variables. Bad ones raise at once (``_misconfigured``).
    """

    _misconfigured: Misconfigured | None = None

    def __init__(
        self,
        # Any ASGI callable: frameworks type their scopes as TypedDicts (Litestar, Quart),
        # which a MutableMapping signature would refuse under mypy.
        app: Callable[..., Awaitable[None]],
        *,
        identify: IdentifyCallable | None = None,
        http_client: AsyncHTTPClient | None = None,
        token_store: TokenStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        **options: Unpack[Options],
    ) -> None:
        self.app = app
        try:
            self.core, self.tokens = async_services(
                {**options, "identify": identify, "http_client": http_client}
                | {"token_store": token_store, "clock": clock},
                compression_advice=_COMPRESSION_ADVICE,
            )
        except ConfigurationError as error:
            self._misconfigured = defer(error)  # raised unless built inside an event loop
            return
        self.settings = self.core.settings
        self.identify: IdentifyCallable = identify or default_identify
        self.tickets = self.core.tickets
        self._driver = AsyncDriver(self.core, self._identify, self.tokens)
        self._tag = self.settings.placeholder_tag
        self._excluded = self.core.excluded

    def __repr__(self) -> str:
        return (
            f"ReturningAIMiddleware(app={self.app!r}, "
            f"community_id={self.settings.community_id!r}, "
            f"placeholder_tag={self.settings.placeholder_tag!r})"
        )

    async def aclose(self) -> None:
        """Close what the middleware owns (its HTTP client, the token store), for apps
        that do not run the lifespan protocol."""
        await self.tokens.aclose()

    def stats(self) -> Stats:
        """A snapshot of the counters: cache hits, mints, failures, pages (docs/metrics.md)."""
        return self.core.stats()

    def _identify(self, scope: Scope) -> object:
        if self.identify is default_identify and "user" not in scope:
            logger.debug(
                "no scope['user'] for %s: the visitor is anonymous (put ReturningAIMiddleware "
                "inside AuthenticationMiddleware, or pass identify=)",
                scope.get("path"),
            )
        return self.identify(scope)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # Typed Any for the same reason; inside, a scope is a MutableMapping like any other.
        if self._misconfigured is not None:
            return await self._misconfigured(scope, receive, send)
        # Exclusions first: the app gets the server's own receive and send, the scope as is.
        excluded = self._excluded
        if (
            excluded
            and scope["type"] == "http"
            and excluded(scope, scope["path"], scope.get("root_path", ""))
        ):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Any, receive: Receive, send: Send) -> None:
        core = self.core
        local = core.endpoint_path(scope["path"], scope.get("root_path", ""))
        if local is not None:
            await self._endpoint(scope, send, local)
            return
        handled = scope.get(_SCOPE_MARK)
        if not core.may_rewrite(scope["method"]) or (handled is not None and self._tag in handled):
            await self.app(scope, receive, send)
            return
        scope[_SCOPE_MARK] = (*(handled or ()), self._tag)
        extensions = scope.get("extensions")
        if extensions and any(name in extensions for name in _BODYLESS_EXTENSIONS):
            scope = dict(scope)
            scope["extensions"] = {
                key: value for key, value in extensions.items() if key not in _BODYLESS_EXTENSIONS
            }

        responder: _Responder | None = None

        async def send_through_rewrite(message: Message) -> None:
            # Decided from the start message: anything but a page goes straight through.
            nonlocal responder
            if responder is not None:
                await responder.send(message)
                return
            if message["type"] == "http.response.start" and _may_be_page(message):
                rewrite = self._page(scope, message)
                if rewrite is not None:
                    responder = _Responder(self._driver, scope, send, message, rewrite)
                    return
            await send(message)

        await self.app(scope, receive, send_through_rewrite)
        if responder is not None:
            await responder.finish()

    def _page(self, scope: Scope, start: Message) -> PageRewrite | None:
        return self.core.page(
            scope["method"],
            start.get("status", 200),
            start["headers"],
            path=scope.get("path", ""),
            script_root=scope.get("root_path", ""),
            nonce=lambda: _state_nonce(scope.get("state")),
            request_headers=scope.get("headers"),
        )

    async def _endpoint(self, scope: Scope, send: Send, path: str) -> None:
        headers = first_headers(scope.get("headers") or ())
        scheme, query = scope.get("scheme", "http"), scope.get("query_string", b"")
        flow = self.core.endpoint(scope["method"], headers, scheme, path, query)
        reply = await self._driver.run(flow, scope, scope.get("path", ""))
        body = reply.body()
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": reply.headers(body)}
        )
        await send({"type": "http.response.body", "body": body})

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


class _Responder:
    """One page's messages: the start is held until the rewrite decides the headers."""

    __slots__ = ("_driver", "_finished", "_rewrite", "_scope", "_send", "_start")

    def __init__(
        self, driver: AsyncDriver, scope: Scope, send: Send, start: Message, rewrite: PageRewrite
    ) -> None:
        self._driver = driver
        self._scope = scope
        self._send = send
        self._start = start
        self._rewrite = rewrite
        self._finished = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            if self._finished:
                return  # the response was ended (a corrupt compressed stream)
            more = message.get("more_body", False)
            flow = self._rewrite.feed(message.get("body", b""), more=more)
            step = await self._driver.run(flow, self._scope, self._scope.get("path", ""))
            await self._emit(step, more=more)
            return
        # pathsend, zerocopysend, trailers...: not a body we read. What is held goes first.
        if not self._finished:
            await self._emit(self._rewrite.abandon(), more=True)
        await self._send(message)

    async def finish(self) -> None:
        """After the app returned: what a response left without a last body goes out."""
        if not self._finished:
            await self._emit(self._rewrite.finish(), more=True)

    async def _emit(self, step: Step, *, more: bool) -> None:
        if step.headers is not None:
            await self._send({**self._start, "headers": step.headers})
        last = not more or step.end
        if step.body or last:
            await self._send(
                {"type": "http.response.body", "body": step.body, "more_body": not last}
            )
            self._finished = last


def _may_be_page(start: Message) -> bool:
    headers = start.get("headers")
    if headers is None:
        return False
    if not isinstance(headers, list):
        headers = start["headers"] = list(headers)  # a tuple or a generator: read it once
    return may_be_page(start.get("status", 200), headers)


def _state_nonce(state: object) -> str | None:
    """``scope["state"]["csp_nonce"]`` (or a framework's equivalent mapping), if set."""
    if isinstance(state, Mapping):
        nonce = state.get("csp_nonce")
        if isinstance(nonce, str) and nonce:
            return nonce
    return None
