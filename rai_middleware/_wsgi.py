"""The WSGI adapter: the same options and behaviours as the ASGI middleware, for any WSGI app.

Translation only: the page rewrite is ``PageRewriter``, tokens come from the thread-safe
``SyncTokenService``, the refresh endpoint's decisions are ``_endpoint``'s. Per request,
all state lives in a ``_WSGIResponse``; the middleware object holds configuration and the
shared services.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from ._config import Options, build_settings
from ._endpoint import (
    NOT_SIGNED_IN,
    UNAVAILABLE,
    Reply,
    check_request,
    check_ticket,
    token_reply,
)
from ._exceptions import ConfigurationError, TokenError
from ._http import inspect_response, rewrite_headers, streamed_headers
from ._identity import Identity, resolve_identity_sync
from ._page import CorruptBody, PageAuth, PageRewriter, has_placeholder, quick_matcher
from ._store import SyncTokenStore
from ._sync_tokens import SyncTokenService
from ._tickets import TicketSigner

if TYPE_CHECKING:  # Unpack is in typing from 3.11; annotations are never evaluated here
    from typing_extensions import Unpack

__all__ = [
    "ClosingIterable",
    "ReturningAIWSGIMiddleware",
    "default_wsgi_identify",
    "option_names",
]

logger = logging.getLogger("rai_middleware")

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
WriteCallable = Callable[[bytes], object]
_ENVIRON_MARK = "rai_middleware.tags"


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /
    ) -> WriteCallable: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def option_names() -> frozenset[str]:
    """Every keyword ``ReturningAIWSGIMiddleware`` takes: the shared options and its own
    (``identify``, ``http_client``, ``token_store``, ``clock``). The Django and Flask
    adapters accept exactly these, so a new option works there at once."""
    parameters = inspect.signature(ReturningAIWSGIMiddleware.__init__).parameters
    own = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    return frozenset(own | Options.__optional_keys__)


def default_wsgi_identify(environ: Environ) -> dict[str, str] | None:
    """``REMOTE_USER`` (set by the server or an auth middleware) as ``data-customer-id``."""
    user = environ.get("REMOTE_USER")
    return {"data-customer-id": user} if isinstance(user, str) and user else None


class ReturningAIWSGIMiddleware:
    """Replace placeholder tags in HTML pages with Returning.AI widgets, for WSGI apps.

    Takes the same options as ``ReturningAIMiddleware``; ``identify`` is called with the
    WSGI ``environ`` (a plain function), and ``http_client`` is an ``httpx.Client``.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        identify: Callable[[Any], Mapping[str, str] | None] | None = None,
        http_client: httpx.Client | None = None,
        token_store: SyncTokenStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        **options: Unpack[Options],
    ) -> None:
        if identify is not None and not callable(identify):
            raise ConfigurationError("identify must be a callable taking the WSGI environ")
        if http_client is not None and not isinstance(http_client, httpx.Client):
            raise ConfigurationError("http_client must be an httpx.Client")
        self.app = app
        if options.get("keep_warm"):
            raise ConfigurationError(
                "keep_warm works with the ASGI middleware only (it renews tokens from a "
                "background task); leave it at 0 here"
            )
        self.settings = build_settings(options)
        self.identify = identify or default_wsgi_identify
        if token_store is not None and not isinstance(token_store, SyncTokenStore):
            raise ConfigurationError(
                "token_store must be a synchronous token store such as "
                "rai_middleware.redis.SyncRedisTokenStore"
            )
        self.tokens = SyncTokenService(
            self.settings, http_client=http_client, clock=clock, store=token_store
        )
        self.tickets = TicketSigner(
            self.settings.secret_key.reveal(), max_age=self.settings.ticket_max_age
        )
        self._identity_secret = self.settings.secret_key.reveal().encode()
        self._token_field = "token" if self.settings.mode == "iframe" else "embedToken"
        self._quick_match = quick_matcher(self.settings)
        self._warned: set[str] = set()
        self._warned_lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"ReturningAIWSGIMiddleware(app={self.app!r}, "
            f"community_id={self.settings.community_id!r}, mode={self.settings.mode!r})"
        )

    def close(self) -> None:
        """Close the HTTP client the middleware created (at process shutdown)."""
        self.tokens.close()

    # -- shared with the framework adapters ----------------------------------------------

    def identify_visitor(self, request: object) -> Identity | None:
        identity = resolve_identity_sync(self.identify, request, self._identity_secret)
        if (
            identity is not None
            and self.settings.mode == "iframe"
            and not identity.identifiers.get("data-email")
        ):
            logger.warning(
                "mode='iframe' signs visitors in by email, and identify gave no 'data-email': "
                "treating the visitor as anonymous"
            )
            return None
        return identity

    def page_auth(self, identity: Identity | None) -> PageAuth | None:
        """Who the page is for and, in token modes, the token."""
        if identity is None:
            return None
        if self.settings.mode == "attributes":
            return PageAuth(identity)
        try:
            token = self.tokens.get(identity)
        except TokenError:
            return None  # the service logged it
        except Exception:  # a bug, or a user-supplied client that is closed: fail open
            logger.exception("getting a token failed; serving the placeholder fallback")
            return None
        return PageAuth(
            identity,
            token=token.value,
            ticket=self.tickets.issue(identity.key),
            expires_in=int(token.remaining(self.tokens.now())),
        )

    def refresh_reply(
        self, method: str, headers: Mapping[bytes, bytes], scheme: str, request: object
    ) -> Reply:
        """The refresh endpoint's answer, for any synchronous adapter."""
        reply = check_request(method, headers, scheme)
        if reply is not None:
            return reply
        identity = self.identify_visitor(request)
        reply = check_ticket(identity, headers, self.tickets)
        if reply is not None or identity is None:
            return reply or NOT_SIGNED_IN
        try:
            token = self.tokens.get(identity)
        except TokenError as exc:
            # The token service logged the failure itself, once per failure or cool-down.
            logger.debug("token refresh failed: %s", exc)
            return UNAVAILABLE
        except Exception:
            logger.exception("token refresh failed")
            return UNAVAILABLE
        return token_reply(self._token_field, token, self.tokens.now())

    def warn_once(self, key: str, message: str, *args: object) -> None:
        with self._warned_lock:
            if key in self._warned:
                return
            self._warned.add(key)
        logger.warning(message, *args)

    # -- WSGI ----------------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        settings = self.settings
        path = environ.get("PATH_INFO", "")
        if settings.refresh_path is not None and path == settings.refresh_path:
            return self._endpoint(environ, start_response)
        tag = settings.placeholder_tag
        handled = environ.get(_ENVIRON_MARK)
        if environ.get("REQUEST_METHOD") == "HEAD" or (handled is not None and tag in handled):
            return self.app(environ, start_response)
        environ[_ENVIRON_MARK] = (*(handled or ()), tag)
        response = _WSGIResponse(self, environ, start_response)
        result = self.app(environ, response.start_response)
        return response.wrap(result)

    def _endpoint(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower().encode("latin-1"): str(value).encode("latin-1")
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        reply = self.refresh_reply(
            environ.get("REQUEST_METHOD", "GET"),
            headers,
            environ.get("wsgi.url_scheme", "http"),
            environ,
        )
        body = reply.body()
        start_response(
            f"{reply.status} {_REASONS[reply.status]}",
            [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in reply.headers(body)
            ],
        )
        return [body]

    def refresh_url(self, environ: Environ) -> str:
        return str(environ.get("SCRIPT_NAME", "")) + (self.settings.refresh_path or "")


_REASONS = {
    200: "OK",
    401: "Unauthorized",
    403: "Forbidden",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


class _WSGIResponse:
    """One response: holds the app's start_response call until the body decides the headers."""

    def __init__(
        self, middleware: ReturningAIWSGIMiddleware, environ: Environ, start_response: StartResponse
    ) -> None:
        self._middleware = middleware
        self._environ = environ
        self._start_response = start_response
        self._status: str | None = None
        self._headers: list[tuple[str, str]] = []
        self._rewriter: PageRewriter | None = None
        self._passthrough = False
        self._identity: Identity | None = None
        self._identity_resolved = False
        self._write: WriteCallable | None = None
        self._ended = False

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> WriteCallable:
        if exc_info is not None and self._write is not None:
            raise exc_info[1].with_traceback(exc_info[2])
        raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        try:
            code = int(status.split(None, 1)[0])
        except ValueError:
            code = 0
        info = inspect_response(code, raw)
        if not info.candidate:
            if info.skipped_encoding is not None:
                self._middleware.warn_once(
                    info.skipped_encoding,
                    "an HTML page with Content-Encoding %r was sent without replacing its "
                    "placeholders: only gzip and deflate can be decoded. Put the compression "
                    "middleware outside ReturningAIWSGIMiddleware.",
                    info.skipped_encoding,
                )
            self._passthrough = True
            self._write = self._start_response(status, headers, exc_info)
            return self._write
        middleware = self._middleware
        self._status, self._headers = status, headers
        self._rewriter = PageRewriter(
            middleware.settings,
            info,
            path=str(self._environ.get("PATH_INFO", "")),
            refresh_url=middleware.refresh_url(self._environ),
            state_nonce=_environ_nonce(self._environ),
        )
        return self._write_before_body

    def _write_before_body(self, data: bytes) -> object:
        """The legacy ``write()`` callable: we cannot rewrite what bypasses the iterable, so
        the response goes out as the app writes it, with a warning."""
        self._middleware.warn_once(
            "write()",
            "a WSGI app used the write() callable for an HTML page; such pages are sent "
            "unchanged, without replacing their placeholders",
        )
        write = self._commit_unchanged()
        return write(data)

    def _commit_unchanged(self) -> WriteCallable:
        if self._write is None:
            assert self._status is not None
            self._write = self._start_response(self._status, self._headers)
        self._passthrough = True
        return self._write

    def wrap(self, result: Iterable[bytes]) -> Iterable[bytes]:
        if self._passthrough:
            return result  # decided already: the app's iterable, untouched
        return ClosingIterable(self._rewrite(result), result)

    def _rewrite(self, result: Iterable[bytes]) -> Iterator[bytes]:
        if isinstance(result, (list, tuple)) and not self._passthrough:
            # A sequence: the whole body is known, so the length can be exact.
            if self._rewriter is None:  # start_response not called: the server will complain
                yield from result
                return
            yield self._whole(b"".join(result))
            return
        first = True
        for chunk in result:  # start_response may be called during the first next()
            if self._ended:
                continue  # after a corrupt compressed chunk nothing sensible can follow
            if self._passthrough or self._rewriter is None:
                yield chunk
                continue
            if first:
                first = False
                out = self._first_chunk(chunk)
            else:
                out = self._chunk(chunk, final=False)
            if out:
                yield out
        if not self._passthrough and not self._ended and self._rewriter is not None:
            if first:  # an empty body
                yield self._whole(b"")
                return
            tail = self._chunk(b"", final=True)
            if tail:
                yield tail

    def _visitor(self) -> Identity | None:
        if not self._identity_resolved:
            self._identity = self._middleware.identify_visitor(self._environ)
            self._identity_resolved = True
        return self._identity

    def _process(self, chunk: bytes, *, final: bool) -> bytes:
        rewriter = self._rewriter
        assert rewriter is not None
        return rewriter.process(chunk, final=final, auth=self._page_auth)

    def _page_auth(self) -> PageAuth | None:
        return self._middleware.page_auth(self._visitor())

    def _whole(self, body: bytes) -> bytes:
        rewriter = self._rewriter
        assert rewriter is not None and self._status is not None
        new_body: bytes | None = None
        try:
            decoded = rewriter.decode(body, final=True)
            if self._middleware._quick_match(decoded) is not None:
                items = rewriter.scan(decoded, final=True)
                if has_placeholder(items):
                    if rewriter.needs_auth(items):
                        rewriter.provide_auth(self._middleware.page_auth(self._visitor()))
                    new_body = rewriter.render(items, final=True)
        except Exception:
            logger.exception("rewriting the page failed; sending it unchanged")
            new_body = None
        if new_body is None:
            self._commit_unchanged()
            return body
        headers = rewrite_headers(
            _raw(self._headers),
            content_length=len(new_body),
            private=rewriter.token_used,
            rewritten=True,
        )
        self._write = self._start_response(self._status, _text(headers))
        return new_body

    def _first_chunk(self, chunk: bytes) -> bytes:
        rewriter = self._rewriter
        assert rewriter is not None and self._status is not None
        try:
            out = self._process(chunk, final=False)
            private = rewriter.token_used or self._visitor() is not None
            headers = streamed_headers(_raw(self._headers), private=private)
        except Exception:
            logger.exception("rewriting the page failed; sending it unchanged")
            self._commit_unchanged()
            return chunk
        self._write = self._start_response(self._status, _text(headers))
        return out

    def _chunk(self, chunk: bytes, *, final: bool) -> bytes:
        try:
            return self._process(chunk, final=final)
        except CorruptBody:
            self._ended = True
            return b""


class ClosingIterable:
    """The rewritten body, whose ``close()`` (PEP 3333) also closes the app's iterable, even
    when the server closes it without iterating (a client gone before the first byte)."""

    __slots__ = ("_iterator", "_original")

    def __init__(self, iterator: Iterator[bytes], original: object) -> None:
        self._iterator = iterator
        self._original = original

    def __iter__(self) -> Iterator[bytes]:
        return self._iterator

    def close(self) -> None:
        try:
            close_iterator = getattr(self._iterator, "close", None)
            if close_iterator is not None:
                close_iterator()
        finally:
            close = getattr(self._original, "close", None)
            if close is not None:
                close()


def _environ_nonce(environ: Environ) -> str | None:
    nonce = environ.get("rai_middleware.csp_nonce") or environ.get("csp_nonce")
    return nonce if isinstance(nonce, str) and nonce else None


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _text(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
