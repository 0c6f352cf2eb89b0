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

import asyncio
import hashlib
import hmac
import importlib
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

from ._async_tokens import TokenService
from ._clients import is_async_client, is_sync_client
from ._config import ADAPTER_KEYWORDS, KEYWORDS, Settings, Spelling, build_settings
from ._endpoint import Reply, answer, widget_answer
from ._exceptions import ConfigurationError, TokenError
from ._exclude import Excluded, exclusions
from ._http import RawHeaders, csp_nonce, fragment_request, inspect_response
from ._identity import Identity, IdentityKey, resolve_identity, resolve_identity_sync
from ._metrics import Stats
from ._modes import PageContext
from ._modes.proxy import ROUTE
from ._needs import Flow, Grant, Need, PageNeed, TokenNeed
from ._page import WHOLE_PAGE_LIMIT, PageRewrite, quick_matcher
from ._render import ContainerIds, Memo, WidgetSpec, read_placeholder
from ._store import SyncTokenStore, TokenStore
from ._sync_tokens import SyncTokenService
from ._tickets import TicketSigner
from ._tokens import EmbedToken, TokenPolicy

__all__ = [
    "AsyncDriver",
    "AsyncTokens",
    "Core",
    "Stats",
    "SyncDriver",
    "TokensInThreads",
    "async_services",
    "load_callable",
    "needs_threads",
    "sync_services",
]

logger = logging.getLogger("rai_middleware")

T = TypeVar("T")

#: Placeholders remembered (``Core.widget_spec``), and the longest attributes kept: a few
#: MiB at most (each entry is its attribute bytes and what they parse to), whatever pages
#: come.
_SPECS_KEPT = 512
_SPEC_LENGTH_KEPT = 512


class Core:
    """Configuration and the shared services of one middleware instance."""

    def __init__(
        self, settings: Settings, *, compression_advice: str, policy: TokenPolicy | None = None
    ) -> None:
        self.settings = settings
        self.mode = settings.auth
        # Holders, never the revealed string: both are passed down frames a locals-capturing
        # error reporter may print.
        self.tickets = TicketSigner(settings.secret_key, max_age=settings.ticket_max_age)
        self.identity_secret = IdentityKey(_identity_key(settings))
        self.quick_match = quick_matcher(settings.placeholder_tag, settings.runtime_tag)
        #: Container id suffixes, unique across this middleware's responses.
        self.container_ids = ContainerIds()
        # The same placeholders come back on every page: each is read once.
        self._specs: Memo[tuple[bytes, str], WidgetSpec] = Memo(_SPECS_KEPT)
        self.refresh_path = settings.refresh_path
        # Every path the middleware answers holds this (None: it answers none).
        answers = self.refresh_path is not None or self.mode.widget_route
        self._prefix = settings.endpoint_prefix if answers else "\x00"
        #: Mode ``proxy``: the prefix of the widget pages the middleware serves.
        self.widget_route = settings.endpoint_prefix + ROUTE if self.mode.widget_route else None
        #: ``excluded(request, path, root)``, or None when nothing is excluded.
        self.excluded: Excluded | None = exclusions(
            settings.exclude_paths, settings.skip, self.refresh_path, self.widget_route
        )
        self._compression_advice = compression_advice
        # The token policy's counters, which pages are counted in too: one set per
        # middleware, whichever driver serves a request.
        self._policy = policy or TokenPolicy(settings)
        self.metrics = self._policy.metrics
        # Process-wide, not per request: what was warned about already.
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()
        # Once per middleware: the prefix wins over the app's routes at the same path.
        if self.refresh_path is not None:
            logger.info(
                "rai-middleware answers POST %s (before the app: an app route at that path "
                "is never reached)",
                self.refresh_path,
            )
        elif self.widget_route is None:
            logger.info("rai-middleware answers no path of its own in mode=%r", self.mode.name)
        if self.widget_route is not None:
            logger.info(
                "rai-middleware answers GET %s{segment}/{widget_id} (before the app)",
                self.widget_route,
            )

    def __repr__(self) -> str:
        return f"Core(mode={self.mode.name!r}, community_id={self.settings.community_id!r})"

    def stats(self) -> Stats:
        """A snapshot of the counters: what every entrance's ``stats()`` returns."""
        return self.metrics.snapshot(self._policy.breaker_state())

    # -- pages -------------------------------------------------------------------------

    @staticmethod
    def may_rewrite(method: str) -> bool:
        """Can a response to this request method be rewritten at all? (A HEAD response has
        no body, so an entrance may skip the whole machinery for it.)"""
        return method != "HEAD"

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
        request_headers: object = None,
    ) -> PageRewrite | None:
        """The rewrite for a response that may carry placeholders; None: send it as it is.

        ``stream`` says whether the body is streamed (True), in memory (False), or to be
        decided from its ``Content-Length`` (None). ``request_headers`` (ASGI's pairs, a
        WSGI environ or a header mapping) say whether the request asks for a fragment."""
        if not self.may_rewrite(method):
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
            if info.skipped_charset is not None:
                self.warn_once(
                    "charset " + info.skipped_charset.lower(),
                    "an HTML page in charset %r was sent without replacing its <%s> "
                    "placeholders: only charsets Python knows in which ASCII bytes are ASCII "
                    "(UTF-8, Latin-1, Windows-125x, Shift_JIS...) can be rewritten",
                    info.skipped_charset,
                    self.settings.placeholder_tag,
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
            root=script_root,
            fragment=info.turbo_stream or fragment_request(request_headers),
        )
        return PageRewrite(self, headers, info, ctx, whole=not stream)

    def widget_spec(self, attributes: bytes, encoding: str) -> WidgetSpec:
        """What a placeholder with these attribute bytes asks for (``read_placeholder``),
        remembered for the next page (unless unusually long)."""
        widgets = self.settings.widgets
        if len(attributes) > _SPEC_LENGTH_KEPT:
            return read_placeholder(attributes, encoding, widgets)
        return self._specs.get_or_make(
            (attributes, encoding), lambda: read_placeholder(attributes, encoding, widgets)
        )

    # -- the endpoint ------------------------------------------------------------------

    def endpoint_path(self, path: str, root: str = "") -> str | None:
        """The path (under the app's mount ``root``, which ``path`` may start with) of a
        request the middleware answers itself; None: the app's."""
        if self._prefix not in path:  # nearly every request: one substring search
            return None
        for candidate in (path, path.removeprefix(root)) if root else (path,):
            if candidate == self.refresh_path or (
                self.widget_route is not None and candidate.startswith(self.widget_route)
            ):
                return candidate
        return None

    def is_endpoint(self, path: str) -> bool:
        return self.endpoint_path(path) is not None

    def endpoint(
        self,
        method: str,
        headers: Mapping[bytes, bytes],
        scheme: str,
        path: str = "",
        query: str | bytes = "",
    ) -> Flow[Reply]:
        """The answer to a request for ``path`` (from ``endpoint_path``), as a flow."""
        route = self.widget_route
        if route is not None and path.startswith(route):
            return widget_answer(method, path[len(route) :], query, headers, mode=self.mode)
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
            "mode=%r needs %r, and identify gave none for visitor %s on %s: treating the "
            "visitor as anonymous",
            self.mode.name,
            missing,
            identity.tag,
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

    def stream(
        self, rewrite: PageRewrite, head: bytes, chunks: Iterable[bytes], request: object, path: str
    ) -> Iterator[bytes]:
        """A streamed body through ``rewrite``, for frameworks whose response object takes
        an iterable; ``head`` is what deciding the headers produced."""
        if head:
            yield head
        for chunk in chunks:
            step = self.run(rewrite.feed(chunk, more=True), request, path)
            if step.body:
                yield step.body
            if step.end:
                return  # after a corrupt compressed chunk nothing sensible can follow
        step = self.run(rewrite.feed(b"", more=False), request, path)
        if step.body:
            yield step.body

    def _answer(self, need: Need, request: object, path: str) -> object:
        if isinstance(need, TokenNeed):
            try:
                return _grant(self.tokens.get(need.identity), self.tokens.now())
            except TokenError:
                return None  # the token service logged it, once per failure or cool-down
            except Exception:  # a bug, or a user-supplied client that is closed: fail open
                logger.exception("getting a token failed; serving the placeholder fallback")
                return None
        if isinstance(need, PageNeed):
            try:
                return self.tokens.widget_page(need)
            except Exception:  # a bug: the route answers 503
                logger.exception("getting widget page %s failed", need.widget_id)
                return None
        found = resolve_identity_sync(self.identify, request, self.core.identity_secret)
        return self.core.usable(found, path)


class AsyncTokens(Protocol):
    """What ``AsyncDriver`` needs of a token service (``TokenService`` is one)."""

    async def get(self, identity: Identity) -> EmbedToken: ...

    async def widget_page(self, need: PageNeed) -> str | None: ...

    def now(self) -> float: ...


class TokensInThreads:
    """The thread-safe token service, awaited from worker threads (an async entrance given
    a synchronous ``httpx.Client``)."""

    def __init__(self, tokens: SyncTokenService) -> None:
        self._tokens = tokens

    async def get(self, identity: Identity) -> EmbedToken:
        return await asyncio.to_thread(self._tokens.get, identity)

    async def widget_page(self, need: PageNeed) -> str | None:
        return await asyncio.to_thread(self._tokens.widget_page, need)

    def now(self) -> float:
        return self._tokens.now()


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

    async def stream(
        self,
        rewrite: PageRewrite,
        head: bytes,
        chunks: AsyncIterable[bytes],
        request: object,
        path: str,
    ) -> AsyncIterator[bytes]:
        """``SyncDriver.stream`` for async bodies."""
        if head:
            yield head
        async for chunk in chunks:
            step = await self.run(rewrite.feed(chunk, more=True), request, path)
            if step.body:
                yield step.body
            if step.end:
                return
        step = await self.run(rewrite.feed(b"", more=False), request, path)
        if step.body:
            yield step.body

    async def _answer(self, need: Need, request: object, path: str) -> object:
        if isinstance(need, TokenNeed):
            try:
                return _grant(await self.tokens.get(need.identity), self.tokens.now())
            except TokenError:
                return None  # the token service logged it, once per failure or cool-down
            except Exception:  # a bug, or a user-supplied client that is closed: fail open
                logger.exception("getting a token failed; serving the placeholder fallback")
                return None
        if isinstance(need, PageNeed):
            try:
                return await self.tokens.widget_page(need)
            except Exception:  # a bug: the route answers 503
                logger.exception("getting widget page %s failed", need.widget_id)
                return None
        found = await resolve_identity(self.identify, request, self.core.identity_secret)
        return self.core.usable(found, path)


def load_callable(
    value: object, where: str, run_coroutines: Callable[[Any], Any] | None = None
) -> Callable[..., object] | None:
    """A callable option, or its dotted path (``"myapp.auth.identify"`` or
    ``"myapp.auth:identify"``), loaded. With ``run_coroutines`` (a framework's way of
    calling async code from sync code, such as Flask's ``app.ensure_sync``), a coroutine
    function comes back wrapped by it."""
    if isinstance(value, str):
        module, _, name = value.rpartition(":" if ":" in value else ".")
        try:
            value = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigurationError(f"{where}: cannot import {value!r} ({exc})") from None
    if value is not None and not callable(value):
        raise ConfigurationError(
            f"{where} must be a callable taking the request, or its dotted path"
        )
    if run_coroutines is not None and inspect.iscoroutinefunction(value):
        wrapped: Callable[..., object] = run_coroutines(value)
        return wrapped
    return value


def _settings(
    options: dict[str, Any], spelling: Spelling, problems: list[str], *, keep_warm: bool
) -> tuple[Settings, Any]:
    identify = options.get("identify")
    if identify is not None and not callable(identify):
        problems.insert(0, f"{spelling.of('identify')} must be a callable taking the request")
    if options.get("keep_warm") and not keep_warm:
        problems.append(
            f"{spelling.of('keep_warm')} works with the asyncio token service only (it renews "
            "tokens from a background task); leave it at 0 here"
        )
    settings = build_settings(
        {k: v for k, v in options.items() if k not in ADAPTER_KEYWORDS},
        spelling=spelling,
        problems=problems,
    )
    return settings, options.get("clock") or time.monotonic


def _identity_key(settings: Settings) -> bytes:
    """The key of identity hashes, which name visitors in logs and key the shared token
    store: scoped to where tokens come from (mode, token URL, community), so that two sites
    sharing a store and a ``secret_key`` never read each other's tokens."""
    mode, community = settings.auth, settings.community_id or ""
    scope = "\n".join(("rai-middleware/identity/v1", mode.name, mode.token_url or "", community))
    secret = settings.secret_key.reveal().encode()
    return hmac.new(secret, scope.encode(), hashlib.sha256).digest()


def needs_threads(options: Mapping[str, Any]) -> bool:
    """Whether an entrance that could run either token service must run the thread one:
    its ``http_client`` or its ``token_store`` is synchronous."""
    store = options.get("token_store")
    return is_sync_client(options.get("http_client")) or (
        store is not None and not inspect.iscoroutinefunction(getattr(store, "load", None))
    )


def sync_services(
    options: dict[str, Any], *, compression_advice: str, spelling: Spelling = KEYWORDS
) -> tuple[Core, SyncTokenService]:
    """The core and the thread-safe token service, from an adapter's keywords (``http_client``
    a ``SyncHTTPClient``, ``token_store`` a ``SyncTokenStore``). One ``ConfigurationError``
    lists every problem, each spelled as the adapter's users write it."""
    client, store = options.get("http_client"), options.get("token_store")
    problems = []
    if client is not None and not is_sync_client(client):
        problems.append(
            f"{spelling.of('http_client')} must be a synchronous client such as httpx.Client "
            f"or httpx2.Client, got {type(client).__name__}"
        )
    if store is not None and (
        not isinstance(store, SyncTokenStore) or inspect.iscoroutinefunction(store.load)
    ):
        problems.append(
            f"{spelling.of('token_store')} must be a synchronous token store such as "
            "rai_middleware.redis.SyncRedisTokenStore or "
            f"rai_middleware.django.DjangoCacheTokenStore, got {type(store).__name__}"
        )
    settings, clock = _settings(options, spelling, problems, keep_warm=False)
    tokens = SyncTokenService(settings, http_client=client, clock=clock, store=store)
    return Core(settings, compression_advice=compression_advice, policy=tokens.policy), tokens


def async_services(
    options: dict[str, Any], *, compression_advice: str, spelling: Spelling = KEYWORDS
) -> tuple[Core, TokenService]:
    """The core and the asyncio token service, from an adapter's keywords (``http_client``
    an ``AsyncHTTPClient``, ``token_store`` a ``TokenStore``)."""
    client, store = options.get("http_client"), options.get("token_store")
    problems = []
    if client is not None and not is_async_client(client):
        problems.append(
            f"{spelling.of('http_client')} must be an asynchronous client such as "
            f"httpx.AsyncClient or httpx2.AsyncClient, got {type(client).__name__}"
        )
    if store is not None and (
        not isinstance(store, TokenStore) or not inspect.iscoroutinefunction(store.load)
    ):
        problems.append(
            f"{spelling.of('token_store')} must be an asyncio token store such as "
            f"rai_middleware.redis.RedisTokenStore, got {type(store).__name__}"
        )
    settings, clock = _settings(options, spelling, problems, keep_warm=True)
    tokens = TokenService(settings, http_client=client, clock=clock, store=store)
    return Core(settings, compression_advice=compression_advice, policy=tokens.policy), tokens
