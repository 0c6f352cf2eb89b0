"""Django: ``ReturningAIMiddleware`` for ``settings.MIDDLEWARE``, sync and async.

Configure it with a ``RETURNING_AI`` dict in the settings (the options of the ASGI and WSGI
middlewares, by the same names; the credentials still fall back to the ``RAI_*`` environment
variables) and list it after ``SessionMiddleware``, ``AuthenticationMiddleware``, the CSP
middleware and ``GZipMiddleware``::

    MIDDLEWARE = [
        "django.middleware.gzip.GZipMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "rai_middleware.django.ReturningAIMiddleware",
    ]
    RETURNING_AI = {"community_id": "...", "access_id": "...", "access_key": "..."}

Translation only, as in ``_wsgi.py``: the page rewrite is ``PageRewriter``, the identity,
token and refresh-endpoint decisions are those of the WSGI middleware's core
(``identify_visitor``, ``page_auth``, ``refresh_reply``), tokens come from its thread-safe
``SyncTokenService``. In async mode the blocking parts (``identify``, which may touch the
ORM, and token requests) run in threads through ``asgiref.sync.sync_to_async``: one token
service serves both modes. The middleware object holds configuration and the shared services
only; all per-response state lives in local variables and in the iterators it builds.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings as django_settings
from django.http import HttpResponse
from django.utils.module_loading import import_string

from ._endpoint import Reply
from ._exceptions import ConfigurationError
from ._http import ResponseInfo, inspect_response, rewrite_headers, streamed_headers
from ._identity import Identity
from ._page import CorruptBody, PageAuth, PageRewriter, has_placeholder, quick_matcher
from ._scanner import Item
from ._wsgi import Environ, ReturningAIWSGIMiddleware, option_names

__all__ = ["ReturningAIMiddleware", "default_identify"]

logger = logging.getLogger("rai_middleware")


def _django_get_nonce() -> Callable[[Any], Any] | None:
    """Django 6's ``django.middleware.csp.get_nonce`` (the request's lazy nonce), if any."""
    try:
        module = importlib.import_module("django.middleware.csp")
    except ImportError:  # Django < 6
        return None
    found: Callable[[Any], Any] | None = getattr(module, "get_nonce", None)
    return found


django_csp_nonce = _django_get_nonce()

#: The settings dict the middleware reads.
SETTING = "RETURNING_AI"

# Django's request and response classes, as this module sees them (Django ships no types).
Request = Any
Response = Any
GetResponse = Callable[[Request], Any]
_IdentifyFn = Callable[[Environ], "Mapping[str, str] | None"]


#: The keys ``RETURNING_AI`` may have.
OPTION_NAMES = option_names()


def default_identify(request: Request) -> dict[str, str] | None:
    """``request.user`` as set by ``AuthenticationMiddleware``: an authenticated user's
    ``pk`` as ``data-customer-id`` and ``email`` as ``data-email``; anyone else is anonymous."""
    user = getattr(request, "user", None)
    if user is None or getattr(user, "is_authenticated", False) is not True:
        return None
    identifiers: dict[str, str] = {}
    pk = getattr(user, "pk", None)
    if pk is not None and str(pk) != "":
        identifiers["data-customer-id"] = str(pk)
    email = getattr(user, "email", None)
    if isinstance(email, str) and email:
        identifiers["data-email"] = email
    return identifiers or None


def _no_app(environ: Environ, start_response: object) -> list[bytes]:  # pragma: no cover
    raise RuntimeError("the Django adapter uses the WSGI middleware's core, never its app")


class ReturningAIMiddleware:
    """Replace placeholder tags in Django's HTML responses with Returning.AI widgets.

    Reads ``settings.RETURNING_AI``: the keyword options of
    :class:`rai_middleware.ReturningAIMiddleware` (``community_id``, ``access_id``,
    ``access_key``, ``mode``, ``endpoint_prefix``...), with ``identify`` a callable taking
    the ``HttpRequest`` or its dotted path, and ``http_client`` an ``httpx.Client``.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        options = self._read_settings()
        identify = options.pop("identify", None)
        if isinstance(identify, str):
            try:
                identify = import_string(identify)
            except ImportError as exc:
                raise ConfigurationError(
                    f"{SETTING}['identify']: cannot import {identify!r} ({exc})"
                ) from None
        if identify is not None and not callable(identify):
            raise ConfigurationError(
                f"{SETTING}['identify'] must be a callable taking the request, or its dotted path"
            )
        self.identify: Callable[[Request], object] = identify or self._default_identify
        #: The shared core: identity checks, tokens, tickets, the refresh endpoint's answers.
        self.core = ReturningAIWSGIMiddleware(
            _no_app, identify=cast(_IdentifyFn, self.identify), **options
        )
        self.settings = self.core.settings
        self._quick_match = quick_matcher(self.settings)

    @staticmethod
    def _read_settings() -> dict[str, Any]:
        configured = getattr(django_settings, SETTING, None)
        if configured is None:
            configured = {}
        if not isinstance(configured, Mapping):
            raise ConfigurationError(f"settings.{SETTING} must be a dict of options")
        known = OPTION_NAMES
        unknown = sorted(str(key) for key in configured if key not in known)
        if unknown:
            raise ConfigurationError(
                f"settings.{SETTING} has unknown option(s) {', '.join(map(repr, unknown))}; "
                f"the options are {', '.join(sorted(known))}"
            )
        return dict(configured)

    def __repr__(self) -> str:
        return (
            f"rai_middleware.django.ReturningAIMiddleware("
            f"community_id={self.settings.community_id!r}, mode={self.settings.mode!r}, "
            f"async_mode={self.async_mode!r})"
        )

    def close(self) -> None:
        """Close the HTTP client the middleware created (at process shutdown)."""
        self.core.close()

    def _default_identify(self, request: Request) -> dict[str, str] | None:
        if not hasattr(request, "user"):
            self.core.warn_once(
                "no request.user",
                "request.user is not set, so every visitor is anonymous: list "
                "ReturningAIMiddleware after AuthenticationMiddleware in MIDDLEWARE, or set "
                "%s['identify']",
                SETTING,
            )
        return default_identify(request)

    # -- the request ---------------------------------------------------------------------

    def __call__(self, request: Request) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if self._is_refresh(request):
            reply = self.core.refresh_reply(
                request.method, _request_headers(request), request.scheme, request
            )
            return _reply_response(reply)
        response = self.get_response(request)
        info = self._candidate(request, response)
        if info is None:
            return response
        if response.streaming:
            self._stream(request, response, info, self.core.identify_visitor(request))
            return response
        try:
            found = self._scan_whole(request, response, info)
            if found is None:
                return response
            rewriter, items = found
            if rewriter.needs_auth(items):
                rewriter.provide_auth(self.core.page_auth(self.core.identify_visitor(request)))
            body = rewriter.render(items, final=True)
        except Exception:
            logger.exception("rewriting the page failed; sending it unchanged")
            return response
        _set_body(response, rewriter, body)
        return response

    async def __acall__(self, request: Request) -> Any:
        if self._is_refresh(request):
            # Not in Django's shared sync thread: a slow mint must not hold up every sync
            # view. identify runs in a worker thread here (it may still use the ORM).
            reply = await sync_to_async(self.core.refresh_reply, thread_sensitive=False)(
                request.method, _request_headers(request), request.scheme, request
            )
            return _reply_response(reply)
        response = await self.get_response(request)
        info = self._candidate(request, response)
        if info is None:
            return response
        if response.streaming:
            identity = await sync_to_async(self.core.identify_visitor)(request)
            self._stream(request, response, info, identity)
            return response
        try:
            found = self._scan_whole(request, response, info)
            if found is None:
                return response
            rewriter, items = found
            if rewriter.needs_auth(items):
                identity = await sync_to_async(self.core.identify_visitor)(request)
                rewriter.provide_auth(await self._apage_auth(identity))
            body = rewriter.render(items, final=True)
        except Exception:
            logger.exception("rewriting the page failed; sending it unchanged")
            return response
        _set_body(response, rewriter, body)
        return response

    async def _apage_auth(self, identity: Identity | None) -> PageAuth | None:
        if identity is None:
            return None
        # Tokens need no Django state: any thread, not the one sync views run in.
        return await sync_to_async(self.core.page_auth, thread_sensitive=False)(identity)

    def _is_refresh(self, request: Request) -> bool:
        path = self.settings.refresh_path
        return path is not None and request.path_info == path

    def _refresh_url(self, request: Request) -> str:
        path: str = request.path
        path_info: str = request.path_info
        script = path[: len(path) - len(path_info)] if path.endswith(path_info) else ""
        return script + (self.settings.refresh_path or "")

    def _candidate(self, request: Request, response: Response) -> ResponseInfo | None:
        if request.method == "HEAD":
            return None
        info = inspect_response(response.status_code, _response_headers(response))
        if info.skipped_encoding is not None:
            self.core.warn_once(
                info.skipped_encoding,
                "an HTML page with Content-Encoding %r was sent without replacing its "
                "placeholders: only gzip and deflate can be decoded. List GZipMiddleware "
                "(or your compression middleware) before ReturningAIMiddleware in MIDDLEWARE.",
                info.skipped_encoding,
            )
        return info if info.candidate else None

    def _rewriter(self, request: Request, response: Response, info: ResponseInfo) -> PageRewriter:
        return PageRewriter(
            self.settings,
            info,
            path=request.path,
            refresh_url=self._refresh_url(request),
            state_nonce=self._csp_nonce(request, response),
        )

    def _csp_nonce(self, request: Request, response: Response) -> str | None:
        """The request's CSP nonce: django-csp's ``request.csp_nonce``, or Django 6's
        (``django.middleware.csp.get_nonce(request)``).

        Only asked for when the page will be rewritten and has no CSP header yet: with a
        header, ``PageRewriter`` uses the header's own nonce. Reading the lazy nonce is what
        makes the CSP middleware (listed before this one, so running after it) put it in the
        header it adds.
        """
        if response.has_header("Content-Security-Policy"):
            return None
        nonce = getattr(request, "csp_nonce", None)  # django-csp
        if nonce is None and django_csp_nonce is not None:
            nonce = django_csp_nonce(request)  # Django 6's ContentSecurityPolicyMiddleware
        if nonce is None:
            return None
        try:
            value = str(nonce)
        except Exception as exc:  # django-csp raises once its header is written
            self.core.warn_once(
                "csp_nonce",
                "the CSP nonce cannot be read (%s): list ReturningAIMiddleware after the "
                "CSP middleware in MIDDLEWARE. Scripts are injected without a nonce.",
                exc,
            )
            return None
        return value or None

    # -- HttpResponse ----------------------------------------------------------------------

    def _scan_whole(
        self, request: Request, response: Response, info: ResponseInfo
    ) -> tuple[PageRewriter, list[Item]] | None:
        """The page's items, or None when it has no placeholder (then it goes out as is)."""
        body: bytes = response.content
        if info.content_encoding is None and self._quick_match(body) is None:
            return None  # the common case: no rewriter, no nonce asked for
        rewriter = self._rewriter(request, response, info)
        decoded = rewriter.decode(body, final=True)
        if self._quick_match(decoded) is None:
            return None
        items = rewriter.scan(decoded, final=True)
        return (rewriter, items) if has_placeholder(items) else None

    # -- StreamingHttpResponse -------------------------------------------------------------

    def _stream(
        self,
        request: Request,
        response: Response,
        info: ResponseInfo,
        identity: Identity | None,
    ) -> None:
        """Rewrite ``streaming_content`` as it is sent. The headers go out before the body,
        so they are decided now, from whether the visitor is known (as the core does)."""
        try:
            rewriter = self._rewriter(request, response, info)
            private = identity is not None
            headers = streamed_headers(_response_headers(response), private=private)
        except Exception:
            logger.exception("rewriting the page failed; sending it unchanged")
            return
        content = response.streaming_content
        if response.is_async:
            response.streaming_content = self._arewrite(rewriter, content, identity)
        else:
            response.streaming_content = self._rewrite(rewriter, content, identity)
        _set_headers(response, headers)

    def _rewrite(
        self, rewriter: PageRewriter, content: Iterator[bytes], identity: Identity | None
    ) -> Iterator[bytes]:
        def auth() -> PageAuth | None:
            return self.core.page_auth(identity)

        try:
            for chunk in content:
                out = rewriter.process(chunk, final=False, auth=auth)
                if out:
                    yield out
            out = rewriter.process(b"", final=True, auth=auth)
        except CorruptBody:
            return  # after a corrupt compressed chunk nothing sensible can follow
        if out:
            yield out

    async def _arewrite(
        self, rewriter: PageRewriter, content: AsyncIterator[bytes], identity: Identity | None
    ) -> AsyncIterator[bytes]:
        async def auth() -> PageAuth | None:
            return await self._apage_auth(identity)

        try:
            async for chunk in content:
                out = await rewriter.aprocess(chunk, final=False, auth=auth)
                if out:
                    yield out
            out = await rewriter.aprocess(b"", final=True, auth=auth)
        except CorruptBody:
            return
        if out:
            yield out


def _request_headers(request: Request) -> dict[bytes, bytes]:
    return {
        str(name).lower().encode("latin-1"): str(value).encode("latin-1")
        for name, value in request.headers.items()
    }


def _response_headers(response: Response) -> list[tuple[bytes, bytes]]:
    return [
        (str(name).encode("latin-1"), str(value).encode("latin-1"))
        for name, value in response.items()
    ]


def _set_headers(response: Response, headers: list[tuple[bytes, bytes]]) -> None:
    """Make the response's headers ``headers`` (one value per name, as Django keeps them)."""
    wanted = {
        name.decode("latin-1").lower(): (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
    }
    for name in [name for name, _ in response.items() if name.lower() not in wanted]:
        del response.headers[name]
    for name, value in wanted.values():
        response.headers[name] = value


def _set_body(response: Response, rewriter: PageRewriter, body: bytes) -> None:
    headers = rewrite_headers(
        _response_headers(response),
        content_length=len(body),
        private=rewriter.token_used,
        rewritten=True,
    )
    response.content = body
    _set_headers(response, headers)


def _reply_response(reply: Reply) -> Response:
    body = reply.body()
    response = HttpResponse(body, status=reply.status)
    for name, value in reply.headers(body):
        response.headers[name.decode("latin-1")] = value.decode("latin-1")
    return response
