"""Flask: the ``ReturningAI`` extension (``ReturningAI(app)`` or ``init_app(app)``).

Configuration comes from ``app.config``: one ``RAI_*`` key per option of the ASGI and WSGI
middlewares (``RAI_COMMUNITY_ID``, ``RAI_ACCESS_ID``, ``RAI_ACCESS_KEY``, ``RAI_MODE``,
``RAI_ENDPOINT_PREFIX``...), keyword arguments of ``ReturningAI(...)`` winning over them; the
credentials still fall back to the environment variables of the same names.

Pages are rewritten in an ``after_request`` function, while the request context is alive, so
that ``identify`` can read ``flask_login.current_user``, the session or ``g``. For a streamed
response the visitor is identified there and then, and the body is rewritten as the server
sends it (tokens need no request context). The refresh endpoint is answered by a
``before_request`` function that runs first, so the app needs no route for it.

Translation only, as in ``_wsgi.py``: ``PageRewriter`` rewrites, and identity, tokens and the
refresh endpoint's answers are the WSGI middleware's core (``identify_visitor``,
``page_auth``, ``refresh_reply``, its thread-safe ``SyncTokenService``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from flask import Flask, Response, current_app, g, request
from werkzeug.utils import import_string

from ._endpoint import Reply
from ._exceptions import ConfigurationError
from ._http import ResponseInfo, inspect_response, rewrite_headers, streamed_headers
from ._identity import Identity
from ._page import CorruptBody, PageAuth, PageRewriter, has_placeholder, quick_matcher
from ._wsgi import (
    ClosingIterable,
    Environ,
    ReturningAIWSGIMiddleware,
    default_wsgi_identify,
    option_names,
)

__all__ = ["ReturningAI", "config_key", "default_identify"]

logger = logging.getLogger("rai_middleware")

#: Where ``init_app`` keeps an app's state, in ``app.extensions``.
EXTENSION = "rai_middleware"


#: Every option, by keyword; each is also an ``app.config`` key (see :func:`config_key`).
OPTION_NAMES = option_names()

IdentifyCallable = Callable[[Any], "Mapping[str, str] | None"]


def config_key(option: str) -> str:
    """The ``app.config`` key of an option: ``community_id`` -> ``RAI_COMMUNITY_ID``."""
    return "RAI_" + option.upper()


def default_identify(req: Any) -> dict[str, str] | None:
    """Flask-Login's ``current_user`` when the app uses Flask-Login (``get_id()`` as
    ``data-customer-id``, ``email`` as ``data-email``); otherwise ``REMOTE_USER``."""
    if getattr(current_app, "login_manager", None) is not None:
        try:
            from flask_login import current_user
        except ImportError:  # pragma: no cover - login_manager set by something else
            pass
        else:
            return _login_identify(current_user)
    return default_wsgi_identify(req.environ)


def _login_identify(user: Any) -> dict[str, str] | None:
    if user is None or getattr(user, "is_authenticated", False) is not True:
        return None
    identifiers: dict[str, str] = {}
    get_id = getattr(user, "get_id", None)
    customer = get_id() if callable(get_id) else None
    if customer is not None and str(customer) != "":
        identifiers["data-customer-id"] = str(customer)
    email = getattr(user, "email", None)
    if isinstance(email, str) and email:
        identifiers["data-email"] = email
    return identifiers or None


def _no_app(environ: Environ, start_response: object) -> list[bytes]:  # pragma: no cover
    raise RuntimeError("the Flask adapter uses the WSGI middleware's core, never its app")


@dataclass(frozen=True)
class _State:
    """One app's middleware core (configuration and the shared services)."""

    core: ReturningAIWSGIMiddleware
    quick_match: Callable[[bytes], object]


class ReturningAI:
    """Replace placeholder tags in a Flask app's HTML pages with Returning.AI widgets.

    ``ReturningAI(app, **options)`` or ``ext = ReturningAI(**options)`` then
    ``ext.init_app(app)``. ``identify`` is a callable taking the Flask ``request`` (or the
    dotted path of one, in ``RAI_IDENTIFY``); ``http_client`` an ``httpx.Client``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        identify: IdentifyCallable | str | None = None,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            raise ConfigurationError(
                f"ReturningAI: unknown option {unknown[0]!r}; the options are: "
                + ", ".join(sorted(OPTION_NAMES))
            )
        self._identify = identify
        self._options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION in app.extensions:
            raise RuntimeError("ReturningAI is already initialised for this app")
        options = {
            name: app.config[config_key(name)]
            for name in OPTION_NAMES
            if config_key(name) in app.config
        }
        known = {config_key(name) for name in OPTION_NAMES}
        for key in sorted(app.config):
            if key.startswith("RAI_") and key not in known:
                logger.warning("app.config[%r] is not a rai-middleware option; ignored", key)
        options.update(self._options)
        identify: object = options.pop("identify", None)
        if self._identify is not None:
            identify = self._identify
        if isinstance(identify, str):
            try:
                identify = import_string(identify)
            except ImportError as exc:
                raise ConfigurationError(f"RAI_IDENTIFY: cannot import it ({exc})") from None
        if identify is not None and not callable(identify):
            raise ConfigurationError(
                "identify (RAI_IDENTIFY) must be a callable taking the request, or its dotted path"
            )
        chosen = identify if identify is not None else default_identify
        core = ReturningAIWSGIMiddleware(
            _no_app,
            identify=cast(Callable[[Environ], "Mapping[str, str] | None"], chosen),
            **options,
        )
        app.extensions[EXTENSION] = _State(core=core, quick_match=quick_matcher(core.settings))
        # First, so that no other before_request function (a CSRF check, a login
        # requirement) stands between the page's script and its token.
        app.before_request_funcs.setdefault(None, []).insert(0, self._before_request)
        app.after_request(self._after_request)

    @staticmethod
    def core(app: Flask | None = None) -> ReturningAIWSGIMiddleware:
        """The app's middleware core (``settings``, ``tokens``, ``close()``...)."""
        state: _State = (app or current_app).extensions[EXTENSION]
        return state.core

    # -- the refresh endpoint --------------------------------------------------------------

    @staticmethod
    def _before_request() -> Response | None:
        state: _State = current_app.extensions[EXTENSION]
        refresh_path = state.core.settings.refresh_path
        if refresh_path is None or request.path != refresh_path:
            return None
        headers = {
            name.lower().encode("latin-1"): value.encode("latin-1")
            for name, value in request.headers.items()
        }
        reply = state.core.refresh_reply(request.method, headers, request.scheme, _request())
        return _reply_response(reply)

    # -- pages -----------------------------------------------------------------------------

    @staticmethod
    def _after_request(response: Response) -> Response:
        if request.method == "HEAD":
            return response
        state: _State = current_app.extensions[EXTENSION]
        core = state.core
        info = inspect_response(response.status_code, _raw_headers(response))
        if info.skipped_encoding is not None:
            core.warn_once(
                info.skipped_encoding,
                "an HTML page with Content-Encoding %r was sent without replacing its "
                "placeholders: only gzip and deflate can be decoded. Compress after "
                "ReturningAI (initialise ReturningAI after Flask-Compress, or compress in "
                "the server).",
                info.skipped_encoding,
            )
        if not info.candidate:
            return response
        try:
            if response.is_streamed:
                _stream(state, response, info)
            else:
                _whole(state, response, info)
        except Exception:
            logger.exception("rewriting the page failed; sending it unchanged")
        return response


def _request() -> Any:
    """The request object itself, not the context-local proxy."""
    return cast(Any, request)._get_current_object()


def _rewriter(state: _State, response: Response, info: ResponseInfo) -> PageRewriter:
    settings = state.core.settings
    return PageRewriter(
        settings,
        info,
        path=request.path,
        refresh_url=request.script_root + (settings.refresh_path or ""),
        state_nonce=_csp_nonce(),
    )


def _csp_nonce() -> str | None:
    """Flask-Talisman's ``request.csp_nonce``, or ``g.csp_nonce`` (if the header added later
    has a nonce, set it there). A CSP header already on the response wins (PageRewriter)."""
    for nonce in (getattr(request, "csp_nonce", None), g.get("csp_nonce")):
        if isinstance(nonce, str) and nonce:
            return nonce
    return None


def _whole(state: _State, response: Response, info: ResponseInfo) -> None:
    """A body in memory: rewritten at once, with an exact Content-Length."""
    core = state.core
    body = response.get_data()
    if info.content_encoding is None and state.quick_match(body) is None:
        return
    rewriter = _rewriter(state, response, info)
    decoded = rewriter.decode(body, final=True)
    if state.quick_match(decoded) is None:
        return
    items = rewriter.scan(decoded, final=True)
    if not has_placeholder(items):
        return
    if rewriter.needs_auth(items):
        rewriter.provide_auth(core.page_auth(core.identify_visitor(_request())))
    new_body = rewriter.render(items, final=True)
    headers = rewrite_headers(
        _raw_headers(response),
        content_length=len(new_body),
        private=rewriter.token_used,
        rewritten=True,
    )
    response.set_data(new_body)
    _set_headers(response, headers)


def _stream(state: _State, response: Response, info: ResponseInfo) -> None:
    """A streamed body: the visitor is identified now (the request context may be gone by
    the time the server iterates), and the chunks are rewritten as they are sent."""
    core = state.core
    identity = core.identify_visitor(_request())
    rewriter = _rewriter(state, response, info)
    private = identity is not None
    headers = streamed_headers(_raw_headers(response), private=private)
    original = response.response
    response.response = _rewrite_stream(core, rewriter, identity, response.iter_encoded(), original)
    response.direct_passthrough = False
    _set_headers(response, headers)


def _rewrite_stream(
    core: ReturningAIWSGIMiddleware,
    rewriter: PageRewriter,
    identity: Identity | None,
    chunks: Iterable[bytes],
    original: object,
) -> Iterable[bytes]:
    def auth() -> PageAuth | None:
        return core.page_auth(identity)

    def rewritten() -> Iterator[bytes]:
        try:
            for chunk in chunks:
                out = rewriter.process(chunk, final=False, auth=auth)
                if out:
                    yield out
            out = rewriter.process(b"", final=True, auth=auth)
            if out:
                yield out
        except CorruptBody:
            return  # after a corrupt compressed chunk nothing sensible can follow

    # Closed by the server even if never iterated: the app's body is closed then too.
    return ClosingIterable(rewritten(), original)


def _raw_headers(response: Response) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers]


def _set_headers(response: Response, headers: list[tuple[bytes, bytes]]) -> None:
    response.headers.clear()
    for name, value in headers:
        response.headers.add(name.decode("latin-1"), value.decode("latin-1"))


def _reply_response(reply: Reply) -> Response:
    body = reply.body()
    response = Response(body, status=reply.status)
    response.headers.clear()
    for name, value in reply.headers(body):
        response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
    return response
