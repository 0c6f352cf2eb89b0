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

Translation only: the response goes to the core's page rewrite and its steps come back
onto the ``HttpResponse``. In async mode ``identify`` is awaited (by default through
``request.auser()``), and so is the asyncio token service.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings as django_settings
from django.http import HttpResponse

from rai_middleware._async_tokens import TokenService
from rai_middleware._config import DJANGO
from rai_middleware._core import (
    AsyncDriver,
    Stats,
    SyncDriver,
    TokensInThreads,
    async_services,
    load_callable,
    needs_threads,
    sync_services,
)
from rai_middleware._endpoint import Reply
from rai_middleware._exceptions import ConfigurationError
from rai_middleware._exclude import is_exempt, rai_exempt
from rai_middleware._identity import identifiers_of
from rai_middleware._page import PageRewrite, Step
from rai_middleware._sync_tokens import SyncTokenService
from rai_middleware.django._built import remember, stats
from rai_middleware.django.cache_store import DjangoCacheTokenStore

__all__ = [
    "DjangoCacheTokenStore",
    "ReturningAIMiddleware",
    "default_identify",
    "rai_exempt",
    "stats",
]

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
_COMPRESSION_ADVICE = (
    "List GZipMiddleware (or your compression middleware) before ReturningAIMiddleware "
    "in MIDDLEWARE."
)

# Django's request and response classes, as this module sees them (Django ships no types).
Request = Any
Response = Any
GetResponse = Callable[[Request], Any]


def default_identify(request: Request) -> dict[str, str] | None:
    """``request.user`` as set by ``AuthenticationMiddleware``: an authenticated user's
    ``pk`` as ``data-customer-id`` and ``email`` as ``data-email``; anyone else is anonymous."""
    return _identifiers(getattr(request, "user", None))


def _identifiers(user: Any) -> dict[str, str] | None:
    return identifiers_of(user, lambda found: getattr(found, "pk", None))


class ReturningAIMiddleware:
    """Replace placeholder tags in Django's HTML responses with Returning.AI widgets.

    Reads ``settings.RETURNING_AI``: the keyword options of
    :class:`rai_middleware.ReturningAIMiddleware` (``community_id``, ``access_id``,
    ``access_key``, ``mode``, ``endpoint_prefix``...), with ``identify`` a callable taking
    the ``HttpRequest`` (a coroutine function is awaited in async mode) or its dotted path,
    and ``http_client`` an ``httpx.Client`` or ``httpx.AsyncClient``.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        options = self._read_settings()
        identify = load_callable(options.pop("identify", None), f"{SETTING}['identify']")
        self.identify: Callable[[Request], object] = identify or self._default_identify
        self.tokens: TokenService | SyncTokenService
        if self.async_mode and not needs_threads(options):
            self.core, tokens = async_services(
                options, compression_advice=_COMPRESSION_ADVICE, spelling=DJANGO
            )
            self.tokens = tokens
            self.adriver = AsyncDriver(self.core, self._aidentify, tokens)
        else:
            self.core, sync_tokens = sync_services(
                options, compression_advice=_COMPRESSION_ADVICE, spelling=DJANGO
            )
            self.tokens = sync_tokens
            self.driver = SyncDriver(self.core, self.identify, sync_tokens)
            # Async mode with a synchronous client: its tokens come from worker threads.
            self.adriver = AsyncDriver(self.core, self._aidentify, TokensInThreads(sync_tokens))
        self.settings = self.core.settings
        self.tickets = self.core.tickets
        self.excluded = self.core.excluded
        remember(self)  # rai_middleware.django.stats(): the site has no reference to us

    @staticmethod
    def _read_settings() -> dict[str, Any]:
        configured = getattr(django_settings, SETTING, None)
        if configured is None:
            configured = {}
        if not isinstance(configured, Mapping):
            raise ConfigurationError(f"settings.{SETTING} must be a dict of options")
        return dict(configured)

    def __repr__(self) -> str:
        return (
            f"rai_middleware.django.ReturningAIMiddleware("
            f"community_id={self.settings.community_id!r}, mode={self.settings.mode!r}, "
            f"async_mode={self.async_mode!r})"
        )

    def close(self) -> None:
        """Close the HTTP client the middleware created (at process shutdown)."""
        if isinstance(self.tokens, SyncTokenService):
            self.tokens.close()

    async def aclose(self) -> None:
        if isinstance(self.tokens, TokenService):
            await self.tokens.aclose()
        else:
            self.tokens.close()

    def stats(self) -> Stats:
        """A snapshot of the counters: cache hits, mints, failures, pages (docs/metrics.md)."""
        return self.core.stats()

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

    async def _aidentify(self, request: Request) -> object:
        identify = self.identify
        if identify == self._default_identify and hasattr(request, "auser"):
            # AuthenticationMiddleware's async accessor (Django 5+): no blocking ORM call.
            return _identifiers(await request.auser())
        if iscoroutinefunction(identify):
            return await identify(request)
        return await sync_to_async(identify)(request)  # it may use the ORM

    # -- the request ---------------------------------------------------------------------

    def __call__(self, request: Request) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        if self.excluded and self.excluded(request, request.path_info, ""):
            return self.get_response(request)
        if self.core.is_endpoint(request.path_info):
            return _reply_response(self.driver.run(self._endpoint(request), request))
        response = self.get_response(request)
        rewrite = self._page(request, response)
        if rewrite is None:
            return response
        if response.streaming:
            headers = self.driver.run(rewrite.headers_now(), request, request.path)
            content = response.streaming_content
            driver: AsyncDriver | SyncDriver = self.adriver if response.is_async else self.driver
            response.streaming_content = driver.stream(
                rewrite, headers.body, content, request, request.path
            )
            _set_headers(response, headers.headers)
            return response
        flow = rewrite.feed(response.content, more=False)
        return _whole(response, self.driver.run(flow, request, request.path))

    async def __acall__(self, request: Request) -> Any:
        if self.excluded and self.excluded(request, request.path_info, ""):
            return await self.get_response(request)
        if self.core.is_endpoint(request.path_info):
            return _reply_response(await self.adriver.run(self._endpoint(request), request))
        response = await self.get_response(request)
        rewrite = self._page(request, response)
        if rewrite is None:
            return response
        if response.streaming:
            headers = await self.adriver.run(rewrite.headers_now(), request, request.path)
            content = response.streaming_content
            chunks = content if response.is_async else _aiter(content)
            response.streaming_content = self.adriver.stream(
                rewrite, headers.body, chunks, request, request.path
            )
            _set_headers(response, headers.headers)
            return response
        flow = rewrite.feed(response.content, more=False)
        return _whole(response, await self.adriver.run(flow, request, request.path))

    def _endpoint(self, request: Request) -> Any:
        headers = {
            str(name).lower().encode("latin-1"): str(value).encode("latin-1")
            for name, value in request.headers.items()
        }
        query = request.META.get("QUERY_STRING", "")
        return self.core.endpoint(request.method, headers, request.scheme, request.path_info, query)

    def _page(self, request: Request, response: Response) -> PageRewrite | None:
        if is_exempt(getattr(getattr(request, "resolver_match", None), "func", None)):
            return None  # a view decorated with rai_exempt
        path: str = request.path
        path_info: str = request.path_info
        return self.core.page(
            request.method,
            response.status_code,
            _response_headers(response),
            path=path,
            script_root=path[: len(path) - len(path_info)] if path.endswith(path_info) else "",
            nonce=self._nonce_source(request, response),
            stream=response.streaming,
            request_headers=request.headers,
        )

    def _nonce_source(self, request: Request, response: Response) -> Callable[[], str | None]:
        if not response.streaming:
            return lambda: self._csp_nonce(request)
        # A stream's widgets are written after the CSP middleware has sent its header: the
        # nonce must be asked for now, for the header to carry it.
        nonce = None if response.has_header("Content-Security-Policy") else self._csp_nonce(request)
        return lambda: nonce

    def _csp_nonce(self, request: Request) -> str | None:
        """The request's CSP nonce: django-csp's ``request.csp_nonce``, or Django 6's
        (``django.middleware.csp.get_nonce(request)``). Asked only when a widget is
        written and the response has no CSP header yet: reading the lazy nonce is what
        makes the CSP middleware (listed before this one, so running after it) put it in
        the header it adds."""
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


async def _aiter(chunks: Any) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _whole(response: Response, step: Step) -> Response:
    if step.changed:
        response.content = step.body
        assert step.headers is not None
        _set_headers(response, step.headers)
    return response


def _response_headers(response: Response) -> list[tuple[bytes, bytes]]:
    return [
        (str(name).encode("latin-1"), str(value).encode("latin-1"))
        for name, value in response.items()
    ]


def _set_headers(response: Response, headers: list[tuple[bytes, bytes]] | None) -> None:
    """Make the response's headers ``headers`` (one value per name, as Django keeps them)."""
    if headers is None:
        return
    wanted = {
        name.decode("latin-1").lower(): (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
    }
    for name in [name for name, _ in response.items() if name.lower() not in wanted]:
        del response.headers[name]
    for name, value in wanted.values():
        response.headers[name] = value


def _reply_response(reply: Reply) -> Response:
    body = reply.body()
    response = HttpResponse(body, status=reply.status)
    for name, value in reply.headers(body):
        response.headers[name.decode("latin-1")] = value.decode("latin-1")
    return response
