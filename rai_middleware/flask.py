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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from flask import Flask, Response, current_app, g, request

from ._closing import ClosingIterable
from ._config import FLASK, Settings, check_option_names, env_name
from ._core import Core, Stats, SyncDriver, load_callable, sync_services
from ._endpoint import Reply
from ._exclude import is_exempt, rai_exempt
from ._identity import identifiers_of
from ._sync_tokens import SyncTokenService

__all__ = ["ReturningAI", "config_key", "default_identify"]

logger = logging.getLogger("rai_middleware")

#: Where ``init_app`` keeps an app's state, in ``app.extensions``.
EXTENSION = "rai_middleware"

_COMPRESSION_ADVICE = (
    "Compress after ReturningAI (initialise ReturningAI after Flask-Compress, or compress "
    "in the server)."
)

IdentifyCallable = Callable[[Any], "Mapping[str, str] | None"]


def config_key(option: str) -> str:
    """The ``app.config`` key of an option: ``community_id`` -> ``RAI_COMMUNITY_ID``."""
    return env_name(option)


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
    user = req.environ.get("REMOTE_USER")
    return {"data-customer-id": user} if isinstance(user, str) and user else None


def _login_identify(user: Any) -> dict[str, str] | None:
    def customer_id(found: Any) -> object:
        get_id = getattr(found, "get_id", None)
        return get_id() if callable(get_id) else None

    return identifiers_of(user, customer_id)


@dataclass(frozen=True)
class _State:
    """One app's core, token service and driver."""

    core: Core
    tokens: SyncTokenService
    driver: SyncDriver

    @property
    def settings(self) -> Settings:
        return self.core.settings

    def close(self) -> None:
        """Close the HTTP client the extension created (at process shutdown)."""
        self.tokens.close()


class ReturningAI:
    """Replace placeholder tags in a Flask app's HTML pages with Returning.AI widgets.

    ``ReturningAI(app, **options)`` or ``ext = ReturningAI(**options)`` then
    ``ext.init_app(app)``. ``identify`` is a callable taking the Flask ``request`` (or the
    dotted path of one, in ``RAI_IDENTIFY``), a coroutine function run the way Flask runs
    async views (``flask[async]``); ``http_client`` an httpx or httpx2 ``Client``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        identify: IdentifyCallable | str | None = None,
        **options: Any,
    ) -> None:
        check_option_names(options)
        self._identify = identify
        self._options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION in app.extensions:
            raise RuntimeError("ReturningAI is already initialised for this app")
        # Every RAI_* key: an unknown one is an error (with the key it likely meant).
        options = {
            key.removeprefix("RAI_").lower(): value
            for key, value in app.config.items()
            if key.startswith("RAI_")
        }
        options.update(self._options)
        configured = options.pop("identify", None)  # the keyword wins over RAI_IDENTIFY
        # An async identify runs as Flask runs async views.
        identify = load_callable(self._identify or configured, "RAI_IDENTIFY", app.ensure_sync)
        chosen = identify or default_identify
        core, tokens = sync_services(
            options, compression_advice=_COMPRESSION_ADVICE, spelling=FLASK
        )
        app.extensions[EXTENSION] = _State(core, tokens, SyncDriver(core, chosen, tokens))
        # First, so that no other before_request function (a CSRF check, a login
        # requirement) stands between the page's script and its token.
        app.before_request_funcs.setdefault(None, []).insert(0, self._before_request)
        app.after_request(self._after_request)

    #: ``@ReturningAI.exempt`` (or ``@ext.exempt``): a view whose responses are left alone.
    exempt = staticmethod(rai_exempt)

    @staticmethod
    def core(app: Flask | None = None) -> _State:
        """The app's state: ``settings``, ``core``, ``tokens``, ``close()``."""
        state: _State = (app or current_app).extensions[EXTENSION]
        return state

    def stats(self, app: Flask | None = None) -> Stats:
        """The app's counters (``current_app``'s by default): see docs/metrics.md."""
        return self.core(app).core.stats()

    # -- the refresh endpoint --------------------------------------------------------------

    @staticmethod
    def _before_request() -> Response | None:
        state: _State = current_app.extensions[EXTENSION]
        if not state.core.is_endpoint(request.path):
            return None
        headers = {
            name.lower().encode("latin-1"): value.encode("latin-1")
            for name, value in request.headers.items()
        }
        path, query = request.path, request.query_string
        flow = state.core.endpoint(request.method, headers, request.scheme, path, query)
        return _reply_response(state.driver.run(flow, _request(), request.path))

    # -- pages -----------------------------------------------------------------------------

    @staticmethod
    def _after_request(response: Response) -> Response:
        state: _State = current_app.extensions[EXTENSION]
        if state.core.is_endpoint(request.path):  # our own answer, from _before_request
            return response
        excluded, view = state.core.excluded, current_app.view_functions.get(request.endpoint or "")
        if (excluded and excluded(_request(), request.path, "")) or is_exempt(view):
            return response
        # Read now: a streamed body is rewritten after the request context is gone.
        nonce = _csp_nonce()
        rewrite = state.core.page(
            request.method,
            response.status_code,
            _raw_headers(response),
            path=request.path,
            script_root=request.script_root,
            nonce=lambda: nonce,
            stream=response.is_streamed,
            request_headers=request.headers,
        )
        if rewrite is None:
            return response
        run = state.driver.run
        if response.is_streamed:
            # The visitor is identified now: the request context may be gone by the time
            # the server iterates the body.
            step = run(rewrite.headers_now(), _request(), request.path)
            original = response.response
            chunks = state.driver.stream(
                rewrite, step.body, response.iter_encoded(), None, request.path
            )
            response.response = ClosingIterable(chunks, original)
            response.direct_passthrough = False
        else:
            step = run(rewrite.feed(response.get_data(), more=False), _request(), request.path)
            if not step.changed:
                return response
            response.set_data(step.body)
        assert step.headers is not None
        _set_headers(response, step.headers)
        return response


def _request() -> Any:
    """The request object itself, not the context-local proxy."""
    return cast(Any, request)._get_current_object()


def _csp_nonce() -> str | None:
    """Flask-Talisman's ``request.csp_nonce``, or ``g.csp_nonce`` (if the header added later
    has a nonce, set it there). A CSP header already on the response wins."""
    for nonce in (getattr(request, "csp_nonce", None), g.get("csp_nonce")):
        if isinstance(nonce, str) and nonce:
            return nonce
    return None


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
