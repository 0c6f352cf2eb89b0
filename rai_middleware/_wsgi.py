"""The WSGI adapter: ``start_response`` and the body iterable in and out of the core.

Per request, all state lives in a ``_Response``; the middleware object holds configuration
and the shared services.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ._clients import SyncHTTPClient
from ._closing import ClosingIterable
from ._config import Options
from ._core import Stats, SyncDriver, sync_services
from ._endpoint import REASONS
from ._page import PageRewrite, Step
from ._store import SyncTokenStore
from ._types import Environ, ExcInfo, StartResponse, WriteCallable, WSGIApp

if TYPE_CHECKING:  # Unpack is in typing from 3.11; annotations are never evaluated here
    from typing_extensions import Unpack

__all__ = ["ReturningAIWSGIMiddleware", "default_wsgi_identify"]

logger = logging.getLogger("rai_middleware")

_ENVIRON_MARK = "rai_middleware.tags"
_COMPRESSION_ADVICE = "Put the compression middleware outside ReturningAIWSGIMiddleware."


def default_wsgi_identify(environ: Environ) -> dict[str, str] | None:
    """``REMOTE_USER`` (set by the server or an auth middleware) as ``data-customer-id``."""
    user = environ.get("REMOTE_USER")
    return {"data-customer-id": user} if isinstance(user, str) and user else None


class ReturningAIWSGIMiddleware:
    """Replace placeholder tags in HTML pages with Returning.AI widgets, for WSGI apps.

    Takes the same options as ``ReturningAIMiddleware``; ``identify`` is called with the
    WSGI ``environ`` (a plain function), and ``http_client`` an ``httpx.Client`` or an
    ``httpx2.Client``.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        identify: Callable[[Any], Mapping[str, str] | None] | None = None,
        http_client: SyncHTTPClient | None = None,
        token_store: SyncTokenStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        **options: Unpack[Options],
    ) -> None:
        self.app = app
        self.core, self.tokens = sync_services(
            {**options, "identify": identify, "http_client": http_client}
            | {"token_store": token_store, "clock": clock},
            compression_advice=_COMPRESSION_ADVICE,
        )
        self.settings = self.core.settings
        self.identify = identify or default_wsgi_identify
        self.tickets = self.core.tickets
        self.driver = SyncDriver(self.core, self.identify, self.tokens)
        self.excluded = self.core.excluded

    def __repr__(self) -> str:
        return (
            f"ReturningAIWSGIMiddleware(app={self.app!r}, "
            f"community_id={self.settings.community_id!r}, mode={self.settings.mode!r})"
        )

    def close(self) -> None:
        """Close the HTTP client the middleware created (at process shutdown)."""
        self.tokens.close()

    def stats(self) -> Stats:
        """A snapshot of the counters: cache hits, mints, failures, pages (docs/metrics.md)."""
        return self.core.stats()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if self.excluded and self.excluded(environ, path, ""):  # first: the app as it is
            return self.app(environ, start_response)
        if self.core.is_endpoint(path):
            return self._endpoint(environ, start_response)
        tag = self.settings.placeholder_tag
        handled = environ.get(_ENVIRON_MARK)
        method = environ.get("REQUEST_METHOD", "GET")
        if not self.core.may_rewrite(method) or (handled is not None and tag in handled):
            return self.app(environ, start_response)
        environ[_ENVIRON_MARK] = (*(handled or ()), tag)
        response = _Response(self, environ, start_response)
        result = self.app(environ, response.start_response)
        return response.wrap(result)

    def _endpoint(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").lower().encode("latin-1"): str(value).encode("latin-1")
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
        scheme, query = environ.get("wsgi.url_scheme", "http"), environ.get("QUERY_STRING", "")
        flow = self.core.endpoint(method, headers, scheme, path, query)
        reply = self.driver.run(flow, environ, environ.get("PATH_INFO", ""))
        body = reply.body()
        start_response(f"{reply.status} {REASONS[reply.status]}", _text(reply.headers(body)))
        return [body]


class _Response:
    """One response: holds the app's ``start_response`` call until the body decides the
    headers."""

    def __init__(
        self, middleware: ReturningAIWSGIMiddleware, environ: Environ, start_response: StartResponse
    ) -> None:
        self._middleware = middleware
        self._environ = environ
        self._start_response = start_response
        self._status = ""
        self._rewrite: PageRewrite | None = None
        self._write: WriteCallable | None = None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> WriteCallable:
        if exc_info is not None and self._write is not None:
            raise exc_info[1].with_traceback(exc_info[2])
        try:
            code = int(status.split(None, 1)[0])
        except ValueError:
            code = 0
        environ = self._environ
        self._rewrite = self._middleware.core.page(
            environ.get("REQUEST_METHOD", "GET"),
            code,
            _raw(headers),
            path=str(environ.get("PATH_INFO", "")),
            script_root=str(environ.get("SCRIPT_NAME", "")),
            nonce=lambda: _environ_nonce(environ),
            request_headers=environ,
        )
        if self._rewrite is None:
            self._write = self._start_response(status, headers, exc_info)
            return self._write
        self._status = status
        return self._write_before_body

    def _write_before_body(self, data: bytes) -> object:
        """The legacy ``write()`` callable: what bypasses the iterable cannot be rewritten,
        so the response goes out as the app writes it, with a warning."""
        rewrite = self._rewrite
        assert rewrite is not None
        self._middleware.core.warn_once(
            "write()",
            "a WSGI app used the write() callable for an HTML page; such pages are sent "
            "unchanged, without replacing their placeholders",
        )
        held = rewrite.abandon()
        self._start_if_headers(held)
        assert self._write is not None
        if held.body:
            self._write(held.body)
        return self._write(data)

    def wrap(self, result: Iterable[bytes]) -> Iterable[bytes]:
        if self._write is not None:
            return result  # decided already: the app's iterable, untouched
        return ClosingIterable(self._rewritten(result), result)

    def _rewritten(self, result: Iterable[bytes]) -> Iterator[bytes]:
        if isinstance(result, (list, tuple)) and self._rewrite is not None:
            # A sequence: the whole body is known, so the length can be exact.
            step = self._run(self._rewrite, b"".join(result), more=False)
            if step.body:
                yield step.body
            return
        ended = False
        for chunk in result:  # start_response may be called during the first next()
            rewrite = self._rewrite
            if rewrite is None:  # start_response not called: the server will complain
                yield chunk
                continue
            if ended:
                continue  # after a corrupt compressed chunk nothing sensible can follow
            step = self._run(rewrite, chunk, more=True)
            ended = step.end
            if step.body:
                yield step.body
        if self._rewrite is not None and not ended:
            step = self._run(self._rewrite, b"", more=False)
            if step.body:
                yield step.body

    def _run(self, rewrite: PageRewrite, chunk: bytes, *, more: bool) -> Step:
        step = self._middleware.driver.run(
            rewrite.feed(chunk, more=more), self._environ, str(self._environ.get("PATH_INFO", ""))
        )
        self._start_if_headers(step)
        return step

    def _start_if_headers(self, step: Step) -> None:
        if step.headers is not None:
            self._write = self._start_response(self._status, _text(step.headers))


def _environ_nonce(environ: Environ) -> str | None:
    nonce = environ.get("rai_middleware.csp_nonce") or environ.get("csp_nonce")
    return nonce if isinstance(nonce, str) and nonce else None


def _raw(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _text(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
