"""What every entrance shares: the settings, the mode, tickets, the page and endpoint
factories, and the two drivers that do the I/O the core asks for.

``Core`` is protocol-free and holds no per-request state. An adapter builds one ``Core``
and one driver: ``SyncDriver`` (WSGI, Django sync, Flask: plain calls and threads) or
``AsyncDriver`` (ASGI, Django async: awaits). A driver runs a flow (a page rewrite's
``feed``, the endpoint's ``answer``) to its end, answering each need with the visitor's
identity or a token::

    adapter ──start──▶ Core.page() ──▶ PageRewrite
    adapter ──chunk──▶ driver.run(rewrite.feed(chunk)) ──▶ Step (headers, bytes)
                              │ needs: IDENTIFY, TokenNeed
                              ▼
                     identify(request), tokens.get(identity)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from ._config import Settings
from ._endpoint import Reply, answer
from ._exceptions import TokenError
from ._http import RawHeaders, csp_nonce, inspect_response
from ._identity import Identity, resolve_identity, resolve_identity_sync
from ._modes import PageContext
from ._needs import Flow, Grant, Need, TokenNeed
from ._page import WHOLE_PAGE_LIMIT, PageRewrite, quick_matcher
from ._sync_tokens import SyncTokenService
from ._tickets import TicketSigner
from ._tokens import EmbedToken

__all__ = ["AsyncDriver", "AsyncTokens", "Core", "SyncDriver"]

logger = logging.getLogger("rai_middleware")

T = TypeVar("T")


class Core:
    """Configuration and the shared services of one middleware instance."""

    def __init__(self, settings: Settings, *, compression_advice: str) -> None:
        self.settings = settings
        self.mode = settings.auth
        self.tickets = TicketSigner(settings.secret_key.reveal(), max_age=settings.ticket_max_age)
        self.identity_secret = settings.secret_key.reveal().encode()
        self.quick_match = quick_matcher(settings.placeholder_tag)
        self.refresh_path = settings.refresh_path
        self._compression_advice = compression_advice
        # Process-wide, not per request: what was warned about already.
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Core(mode={self.mode.name!r}, community_id={self.settings.community_id!r})"

    # -- pages -------------------------------------------------------------------------

    def page(
        self,
        method: str,
        status: int,
        headers: RawHeaders,
        *,
        path: str,
        script_root: str = "",
        nonce: Callable[[], str | None] | None = None,
        stream: bool | None = None,
    ) -> PageRewrite | None:
        """The rewrite for a response that may carry placeholders; None: send it as it is.

        ``stream`` says whether the body is streamed (True), in memory (False), or to be
        decided from its ``Content-Length`` (None)."""
        if method == "HEAD":
            return None
        info = inspect_response(status, headers)
        if not info.candidate:
            if info.skipped_encoding is not None:
                self.warn_once(
                    info.skipped_encoding,
                    "an HTML page with Content-Encoding %r was sent without replacing its <%s> "
                    "placeholders: only gzip and deflate can be decoded. %s",
                    info.skipped_encoding,
                    self.settings.placeholder_tag,
                    self._compression_advice,
                )
            return None
        if stream is None:
            length = info.content_length
            stream = length is None or length > WHOLE_PAGE_LIMIT
        ctx = PageContext(
            path,
            script_root + (self.refresh_path or ""),
            xhtml=info.xhtml,
            nonce=csp_nonce(info.csp),  # the page's own policy wins
            nonce_source=nonce,
        )
        return PageRewrite(self, headers, info, ctx, whole=not stream)

    # -- the endpoint ------------------------------------------------------------------

    def is_endpoint(self, path: str) -> bool:
        return self.refresh_path is not None and path == self.refresh_path

    def endpoint(self, method: str, headers: Mapping[bytes, bytes], scheme: str) -> Flow[Reply]:
        return answer(method, headers, scheme, tickets=self.tickets, mode=self.mode)

    # -- identities --------------------------------------------------------------------

    def usable(self, identity: Identity | None, path: str) -> Identity | None:
        """``identity`` if this mode can serve it; None (logged) if it lacks what it needs."""
        if identity is None:
            return None
        missing = self.mode.missing_identifier(identity)
        if missing is None:
            return identity
        logger.warning(
            "mode=%r needs %r, and identify gave none for %s: treating the visitor as anonymous",
            self.mode.name,
            missing,
            path,
        )
        return None

    def warn_once(self, key: str, message: str, *args: object) -> None:
        with self._warned_lock:
            if key in self._warned:
                return
            self._warned.add(key)
        logger.warning(message, *args)


def _grant(token: EmbedToken, now: float) -> Grant:
    return Grant(token.value, int(token.remaining(now)))


class SyncDriver:
    """Answers a flow's needs with plain calls: ``identify(request)`` and the thread-safe
    token service."""

    def __init__(
        self, core: Core, identify: Callable[[Any], object], tokens: SyncTokenService
    ) -> None:
        self.core = core
        self.identify = identify
        self.tokens = tokens

    def run(self, flow: Flow[T], request: object, path: str = "") -> T:
        try:
            need = next(flow)
            while True:
                need = flow.send(self._answer(need, request, path))
        except StopIteration as done:
            result: T = done.value
            return result

    def _answer(self, need: Need, request: object, path: str) -> object:
        if isinstance(need, TokenNeed):
            try:
                return _grant(self.tokens.get(need.identity), self.tokens.now())
            except TokenError:
                return None  # the token service logged it, once per failure or cool-down
            except Exception:  # a bug, or a user-supplied client that is closed: fail open
                logger.exception("getting a token failed; serving the placeholder fallback")
                return None
        found = resolve_identity_sync(self.identify, request, self.core.identity_secret)
        return self.core.usable(found, path)


class AsyncTokens(Protocol):
    """What ``AsyncDriver`` needs of a token service (``TokenService`` is one)."""

    async def get(self, identity: Identity) -> EmbedToken: ...

    def now(self) -> float: ...


class AsyncDriver:
    """Answers a flow's needs by awaiting: ``identify(request)`` (sync or async) and the
    asyncio token service."""

    def __init__(self, core: Core, identify: Callable[[Any], object], tokens: AsyncTokens) -> None:
        self.core = core
        self.identify = identify
        self.tokens = tokens

    async def run(self, flow: Flow[T], request: object, path: str = "") -> T:
        try:
            need = next(flow)
            while True:
                need = flow.send(await self._answer(need, request, path))
        except StopIteration as done:
            result: T = done.value
            return result

    async def _answer(self, need: Need, request: object, path: str) -> object:
        if isinstance(need, TokenNeed):
            try:
                return _grant(await self.tokens.get(need.identity), self.tokens.now())
            except TokenError:
                return None  # the token service logged it, once per failure or cool-down
            except Exception:  # a bug, or a user-supplied client that is closed: fail open
                logger.exception("getting a token failed; serving the placeholder fallback")
                return None
        found = await resolve_identity(self.identify, request, self.core.identity_secret)
        return self.core.usable(found, path)
