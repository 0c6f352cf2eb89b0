"""An offline stand-in for the Returning.AI service, for tests, demos and local development.

:class:`FakeReturningAI` is a small ASGI application that answers the same HTTP endpoints the
middleware talks to, mints real (HS256-signed) JWTs, records every request it receives and can be
told to misbehave, so that the whole token flow can be exercised without network access:

* ``POST /v2/api/widget-access-keys/token`` - mint an embed token (the current API);
* ``POST /widget/{community_id}/signin`` - the legacy widget sign-in flow;
* ``GET /sdk/rai-widget.iife.js`` - a tiny stand-in for the widget SDK script, whose custom
  elements show a small card (the widget type, whom their ``embed-token`` was minted for, its
  remaining lifetime counting down, "token renewed" when the page replaces it) and dispatch
  ``rai-error`` once it has expired (re-checked every 500 ms). Run twice in one document it
  throws, as a real bundle does (a second ``customElements.define`` of a name);
  ``window.__fakeRaiSdkRuns`` counts its runs;
* ``GET /{segment}/{widget_id}`` (``/channel-widget/general``, ``/store-widget/1``...: every
  segment of ``DEFAULT_IFRAME_SEGMENTS``) - a stand-in for a widget page, for the ``iframe``,
  ``attributes`` and ``proxy`` modes. It holds ``window.__WIDGET_INIT__ = { token: "" }``:
  served through the ``proxy`` mode's route, the token is in it; otherwise, framed by your
  page, it asks its parent for a token by ``postMessage``. It shows whose token it got (or,
  when the loader passed ``?email=``, that identity) and posts ``WIDGET_HEIGHT_UPDATE``
  (``payload.height``: ``widget_height``) to its parent;
* ``GET /widget-loader.js`` - a stand-in for the Attribute Auth loader script: it frames the
  widget page above, passing the ``data-email`` and ``data-customer-id`` of its script tag;
* ``GET /healthz`` - liveness probe.

The scripts and pages are what a browser test (e.g. Playwright) needs to run the whole flow
offline, with the fake as the third-party origin.

In-process, with httpx (no socket involved)::

    from rai_middleware.testing import FakeReturningAI

    fake = FakeReturningAI()
    async with fake.client() as client:
        answer = await client.post(
            "/v2/api/widget-access-keys/token",
            json={
                "accessId": "demo-access-id",
                "accessKey": "demo-access-key",
                "userIdentifiers": {"data-customer-id": "c-42"},
            },
        )
    token = answer.json()["data"]["embedToken"]
    assert fake.decode(token)["data-customer-id"] == "c-42"
    assert fake.calls == 1

Fault injection, for every visitor or only for one (``identity=``, matched against the
identifiers the middleware sends)::

    fake.fail_next(2, status=503)  # the next two requests answer 503
    fake.fail_next(mode="hang")  # then one request never answers (the client must time out)
    fake.fail_always(mode="garbage")  # afterwards, every request answers HTML instead of JSON
    fake.fail_always(status=403, identity={"data-customer-id": "c-13"})  # only for c-13
    fake.recover()  # back to normal

For synchronous code (Django, Flask, ``ReturningAIWSGIMiddleware``), :meth:`sync_client` and
:meth:`sync_transport` do the same as :meth:`client` and :meth:`transport`: the requests run on
an event loop in a background thread, started on the first request and stopped when the
transport (or client) is closed, or by :meth:`close`::

    with fake.sync_client() as client:
        client.post("/v2/api/widget-access-keys/token", json={...})

Needs ``starlette`` (``pip install "rai-middleware[testing]"``, which brings ``uvicorn`` too).
Over a real socket (needs ``uvicorn``), e.g. for a browser or a subprocess::

    with fake.run_in_thread() as base_url:  # "http://127.0.0.1:54321"
        httpx.get(f"{base_url}/healthz")

State (counters, request logs, injected failures) is only touched by the event loop that runs the
application (a sync transport's own loop, for its requests); read it from tests once the
requests you care about have completed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import math
import re
import secrets
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args

import anyio
import httpx

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route
    from starlette.types import Receive, Scope, Send
except ImportError as missing:  # starlette is no dependency of the middleware itself
    raise ImportError(
        "rai_middleware.testing (FakeReturningAI) is a Starlette app: install it with "
        'pip install "rai-middleware[testing]"'
    ) from missing

from ._config import DEFAULT_IFRAME_SEGMENTS

__all__ = ["FailureMode", "FakeReturningAI", "InjectedDisconnect"]

#: How an injected failure manifests; see :meth:`FakeReturningAI.fail_next`.
FailureMode = Literal["status", "garbage", "missing_token", "hang", "disconnect"]

_FAILURE_MODES: Final[frozenset[str]] = frozenset(get_args(FailureMode))
_TOKEN_PATH: Final = "/v2/api/widget-access-keys/token"
_SIGNIN_PATH: Final = "/widget/{community_id}/signin"
_SDK_PATH: Final = "/sdk/rai-widget.iife.js"
_LOADER_PATH: Final = "/widget-loader.js"
_JWT_HEADER: Final[dict[str, str]] = {"alg": "HS256", "typ": "JWT"}
_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]*\Z")


class InjectedDisconnect(Exception):
    """Raised by :class:`FakeReturningAI` for an injected ``"disconnect"`` failure.

    Through :meth:`FakeReturningAI.transport` (and :meth:`FakeReturningAI.client`) it surfaces as
    :class:`httpx.RemoteProtocolError`, exactly like a dropped connection; through a plain
    :class:`httpx.ASGITransport` it propagates as is.
    """


@dataclass
class _Injection:
    mode: FailureMode
    status: int
    remaining: int = 1
    #: Identifier items a request must all carry for this failure to apply; None: any request.
    identity: frozenset[tuple[str, str]] | None = None

    def applies_to(self, identifiers: Mapping[str, object] | None) -> bool:
        if self.identity is None:
            return True
        return identifiers is not None and all(
            identifiers.get(name) == value for name, value in self.identity
        )


class _DisconnectResponse(Response):
    """Starts a response, then dies: over a real socket, the server drops the connection."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        raise InjectedDisconnect("injected failure: connection dropped")


class _FakeTransport(httpx.ASGITransport):
    """An :class:`httpx.ASGITransport` that behaves a little more like the network.

    * it honours the client's *read* timeout (a plain ``ASGITransport`` ignores timeouts), raising
      :class:`httpx.ReadTimeout`;
    * an injected disconnect surfaces as :class:`httpx.RemoteProtocolError`.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        response: httpx.Response | None = None
        try:
            with anyio.move_on_after(math.inf if read_timeout is None else read_timeout):
                response = await super().handle_async_request(request)
        except InjectedDisconnect as exc:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a complete response.", request=request
            ) from exc
        if response is None:
            raise httpx.ReadTimeout(
                f"FakeReturningAI did not answer within the read timeout ({read_timeout} s)",
                request=request,
            )
        return response


class _SyncFakeTransport(httpx.BaseTransport):
    """A synchronous httpx transport to :class:`FakeReturningAI`: each request runs through
    :class:`_FakeTransport` (read timeout and disconnects included) on an event loop in a
    daemon thread, started on the first request and stopped by :meth:`close`."""

    def __init__(self, app: FakeReturningAI) -> None:
        self._inner = _FakeTransport(app=app)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError("this FakeReturningAI sync transport is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_loop, args=(loop,), name="FakeReturningAI-sync", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # The sync client's body stream may be sync-only: read it here, send it as bytes.
        forwarded = httpx.Request(
            request.method,
            request.url,
            headers=request.headers,
            content=request.read(),
            extensions=request.extensions,
        )
        loop = self._running_loop()  # first: a closed transport creates no coroutine
        future = asyncio.run_coroutine_threadsafe(self._send(forwarded), loop)
        try:
            status, headers, content = future.result()
        except concurrent.futures.CancelledError as exc:  # closed while the request ran
            raise httpx.ReadError("FakeReturningAI transport closed", request=request) from exc
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _send(self, request: httpx.Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await self._inner.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return response.status_code, response.headers.raw, content

    def close(self) -> None:
        with self._lock:
            self._closed = True
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _identity(identity: Mapping[str, str] | None) -> frozenset[tuple[str, str]] | None:
    if identity is None:
        return None
    if (
        not isinstance(identity, Mapping)
        or not identity
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in identity.items())
    ):
        raise ValueError(
            "identity must be a non-empty mapping of identifier name to string value, "
            "such as {'data-customer-id': 'c-42'}"
        )
    return frozenset(identity.items())


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(segment: str) -> dict[str, Any]:
    try:
        raw = base64.b64decode(segment + "=" * (-len(segment) % 4), altchars=b"-_", validate=True)
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"malformed token: undecodable segment ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError("malformed token: segment is not a JSON object")
    return value


def _number(value: float) -> int | float:
    """``900.0`` -> ``900``; ``1.5`` stays ``1.5``."""
    if isinstance(value, int):
        return value
    return int(value) if math.isfinite(value) and value.is_integer() else value


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "message": message}, status_code=status)


class FakeReturningAI:
    """An in-memory Returning.AI, usable as an ASGI application.

    Keyword arguments (all optional):

    ``access_id`` / ``access_key``
        the only credentials the token endpoint accepts;
    ``widget_api_key``
        the ``returningai-api-key`` header the legacy sign-in endpoint requires;
    ``token_lifetime``
        seconds between ``iat`` and ``exp`` of minted tokens, also reported as ``expiresIn``
        (may be changed later through the attribute; a negative value mints expired tokens);
    ``latency``
        seconds to wait before answering the token and sign-in endpoints (attribute too);
    ``signing_key``
        the HS256 key tokens are signed with;
    ``clock``
        wall clock, in seconds since the epoch, used for ``iat`` and ``exp``;
    ``widget_segments``
        the path segments under which fake widget pages are served (``/{segment}/{id}``);
        by default every value of ``DEFAULT_IFRAME_SEGMENTS`` (pass your ``iframe_segments``
        values if you changed them);
    ``widget_height``
        the height (CSS pixels) the widget pages post in their ``WIDGET_HEIGHT_UPDATE``.

    Inspection attributes: :attr:`calls`, :attr:`requests`, :attr:`signin_calls`,
    :attr:`signin_requests`, :attr:`widget_page_requests`. Fault injection: :meth:`fail_next`,
    :meth:`fail_always`, :meth:`fail_widget_pages`, :meth:`recover`. :meth:`reset` forgets
    everything. Clients: :meth:`client` and :meth:`transport` (async), :meth:`sync_client` and
    :meth:`sync_transport` (sync); :meth:`close` stops the threads of the sync transports.
    """

    #: Where :meth:`client` points by default; mirrors the real service.
    base_url: str = "https://api-v2.returning.ai"
    #: How long a ``"hang"`` failure sleeps (it is cancelled by the client's timeout first).
    hang_seconds: float = 3600.0

    def __init__(
        self,
        *,
        access_id: str = "demo-access-id",
        access_key: str = "demo-access-key",
        widget_api_key: str = "demo-widget-api-key",
        token_lifetime: float = 900,
        latency: float = 0.0,
        signing_key: bytes = b"fake-returning-ai-signing-key",
        clock: Callable[[], float] = time.time,
        widget_segments: Iterable[str] | None = None,
        widget_height: int = 480,
    ) -> None:
        if latency < 0:
            raise ValueError("latency must be >= 0")
        if (
            isinstance(widget_height, bool)
            or not isinstance(widget_height, int)
            or widget_height < 1
        ):
            raise ValueError("widget_height must be a positive int")
        self.widget_height = widget_height
        self.access_id = access_id
        self._access_key = access_key
        self._widget_api_key = widget_api_key
        self.token_lifetime = token_lifetime
        self.latency = latency
        self._signing_key = signing_key
        self._clock = clock

        #: Requests received by the token endpoint, failed ones included.
        self.calls = 0
        #: JSON object bodies received by the token endpoint, in order (bodies that are not a
        #: JSON object are counted in :attr:`calls` but not logged here).
        self.requests: list[dict[str, Any]] = []
        #: Requests received by the legacy sign-in endpoint, failed ones included.
        self.signin_calls = 0
        #: ``{"community": ..., "email": ...}`` for each sign-in request, in order (``email`` is
        #: ``""`` when the header is missing).
        self.signin_requests: list[dict[str, str]] = []
        #: ``{"path": ..., "query": ..., "headers": {lower-cased name: value}}`` for each
        #: widget page request, in order.
        self.widget_page_requests: list[dict[str, Any]] = []
        self._page_failure: _Injection | None = None
        self._queued: collections.deque[_Injection] = collections.deque()
        self._always: list[_Injection] = []  # per identity first, then the one for all
        self._sync_transports: weakref.WeakSet[_SyncFakeTransport] = weakref.WeakSet()
        self._hang_epoch = 0  # bumped to release requests stuck in an injected hang

        segments = list(
            DEFAULT_IFRAME_SEGMENTS.values() if widget_segments is None else widget_segments
        )
        for segment in segments:
            if not isinstance(segment, str) or not _SEGMENT.match(segment):
                raise ValueError(f"widget segment {segment!r} is not a plain URL path segment")
        #: The path segments that serve a fake widget page (``/{segment}/{widget_id}``).
        self.widget_segments: tuple[str, ...] = tuple(dict.fromkeys(segments))
        self._app = Starlette(
            routes=[
                Route(_TOKEN_PATH, self._token_endpoint, methods=["POST"]),
                Route(_SIGNIN_PATH, self._signin_endpoint, methods=["POST"]),
                Route(_SDK_PATH, self._sdk_endpoint, methods=["GET"]),
                Route(_LOADER_PATH, self._loader_endpoint, methods=["GET"]),
                Route("/healthz", self._healthz_endpoint, methods=["GET"]),
                *(
                    Route(f"/{segment}/{{widget_id}}", self._widget_page, methods=["GET"])
                    for segment in self.widget_segments
                ),
            ]
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(access_id={self.access_id!r}, calls={self.calls}, "
            f"signin_calls={self.signin_calls})"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    # -- fault injection ------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        *,
        status: int = 500,
        mode: FailureMode = "status",
        identity: Mapping[str, str] | None = None,
    ) -> None:
        """Make the next ``n`` requests to the token or sign-in endpoint fail.

        With ``identity`` (e.g. ``{"data-customer-id": "c-42"}``), only requests whose
        identifiers carry all of its items count and fail; the others pass by. A sign-in
        request's identifiers are ``{"data-email": <its email header>}``.

        Both endpoints consume from the same queue; successive calls queue up in order and are
        consumed before any :meth:`fail_always` failure. Modes:

        ``"status"``
            answer ``status`` with ``{"success": false, "message": "Injected failure"}``;
        ``"garbage"``
            answer 200 with an HTML body (``text/html``) instead of JSON;
        ``"missing_token"``
            answer 200 with well-formed JSON that lacks the token
            (``{"success": true, "data": {}}``, or ``{}`` for sign-in);
        ``"hang"``
            do not answer for :attr:`hang_seconds`: the client's timeout must cut the request
            (:meth:`transport` honours the client's read timeout). The wait is cancellable and
            ends early, with a 504, when the client disconnects, on :meth:`recover`, and when
            :meth:`run_in_thread` stops the server;
        ``"disconnect"``
            raise :class:`InjectedDisconnect` from the application after starting the response.
            Through :meth:`transport` the client sees :class:`httpx.RemoteProtocolError`; over a
            real socket (:meth:`run_in_thread`) the server drops the connection, which the client
            also reports as :class:`httpx.RemoteProtocolError` (and uvicorn logs the exception).

        The request is still counted and logged, and :attr:`latency` still applies first.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        checked = self._checked(mode, status)
        scope = _identity(identity)
        if n:
            self._queued.append(_Injection(*checked, remaining=n, identity=scope))

    def fail_always(
        self,
        *,
        status: int = 500,
        mode: FailureMode = "status",
        identity: Mapping[str, str] | None = None,
    ) -> None:
        """Make every request to the token or sign-in endpoint fail until :meth:`recover`.

        Same modes as :meth:`fail_next`, whose queued failures are consumed first. With
        ``identity``, only that visitor's requests fail (as in :meth:`fail_next`); a failure
        for one identity wins over the one for all. A new call replaces the previous one for
        the same identity (or for all).
        """
        injection = _Injection(*self._checked(mode, status), identity=_identity(identity))
        self._always = [i for i in self._always if i.identity != injection.identity]
        if injection.identity is None:
            self._always.append(injection)
        else:
            self._always.insert(0, injection)

    def fail_widget_pages(self, *, status: int = 500, mode: FailureMode = "status") -> None:
        """Make every widget page request fail until :meth:`recover`: ``"status"`` answers
        ``status``, ``"garbage"`` a JSON body (not HTML), ``"missing_token"`` an HTML page
        without ``window.__WIDGET_INIT__``; ``"hang"`` and ``"disconnect"`` as in
        :meth:`fail_next`."""
        self._page_failure = _Injection(*self._checked(mode, status))

    def recover(self, *, identity: Mapping[str, str] | None = None) -> None:
        """Cancel every injected failure, queued (:meth:`fail_next`), permanent or of the
        widget pages; with ``identity``, only those injected for that same identity.

        Requests currently stuck in a ``"hang"`` are released (they answer 504).
        """
        scope = _identity(identity)
        if scope is None:
            self._queued.clear()
            self._always = []
            self._page_failure = None
        else:
            self._queued = collections.deque(i for i in self._queued if i.identity != scope)
            self._always = [i for i in self._always if i.identity != scope]
        self._hang_epoch += 1

    def reset(self) -> None:
        """Forget counters, request logs and injected failures."""
        self.calls = 0
        self.requests.clear()
        self.signin_calls = 0
        self.signin_requests.clear()
        self.widget_page_requests.clear()
        self.recover()

    @staticmethod
    def _checked(mode: str, status: int) -> tuple[FailureMode, int]:
        if mode not in _FAILURE_MODES:
            raise ValueError(
                f"unknown failure mode {mode!r}; expected one of {sorted(_FAILURE_MODES)}"
            )
        if not 200 <= status <= 599:
            raise ValueError("status must be between 200 and 599")
        return cast(FailureMode, mode), status

    def _take_injection(self, identifiers: Mapping[str, object] | None) -> _Injection | None:
        for injection in self._queued:
            if injection.applies_to(identifiers):
                injection.remaining -= 1
                if injection.remaining <= 0:
                    self._queued.remove(injection)
                return injection
        return next((i for i in self._always if i.applies_to(identifiers)), None)

    async def _injected_response(
        self, request: Request, injection: _Injection, epoch: int, *, signin: bool
    ) -> Response:
        if injection.mode == "status":
            return _error(injection.status, "Injected failure")
        if injection.mode == "garbage":
            return Response(b"<html>not json", media_type="text/html")
        if injection.mode == "missing_token":
            return JSONResponse({} if signin else {"success": True, "data": {}})
        if injection.mode == "hang":
            # Sleep (cancellably) until hang_seconds pass, the client goes away, or the hang is
            # released by recover() or by run_in_thread() shutting down.
            deadline = anyio.current_time() + self.hang_seconds
            while (
                epoch == self._hang_epoch
                and anyio.current_time() < deadline
                and not await request.is_disconnected()
            ):
                await anyio.sleep(min(0.05, max(0.0, deadline - anyio.current_time())))
            return _error(504, "Injected hang ended")
        return _DisconnectResponse()

    # -- tokens ---------------------------------------------------------------------------------

    def encode(self, claims: Mapping[str, Any]) -> str:
        """Sign ``claims`` into a compact HS256 JWT, as the token endpoints do.

        Handy to craft tokens by hand, e.g. already-expired ones.
        """
        header = _b64url_encode(json.dumps(_JWT_HEADER, separators=(",", ":")).encode())
        payload = _b64url_encode(json.dumps(dict(claims), separators=(",", ":")).encode())
        return f"{header}.{payload}.{self._signature(header, payload)}"

    def decode(self, token: str) -> dict[str, Any]:
        """Verify ``token``'s HS256 signature and return its claims.

        Raises :class:`ValueError` when the token is malformed or its signature does not match
        the signing key. Expiry is *not* checked.
        """
        if not isinstance(token, str):
            raise ValueError("malformed token: not a string")
        parts = token.split(".")
        if len(parts) != 3:
            raise ValueError("malformed token: expected three dot-separated segments")
        header_segment, payload_segment, signature = parts
        expected = self._signature(header_segment, payload_segment)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise ValueError("bad token signature")
        header = _json_segment(header_segment)
        if header.get("alg") != "HS256":
            raise ValueError(f"unsupported token algorithm {header.get('alg')!r}")
        return _json_segment(payload_segment)

    def _signature(self, header_segment: str, payload_segment: str) -> str:
        signing_input = f"{header_segment}.{payload_segment}".encode("utf-8", "replace")
        return _b64url_encode(hmac.new(self._signing_key, signing_input, hashlib.sha256).digest())

    def _mint(self, claims: Mapping[str, Any], typ: str) -> str:
        now = self._clock()
        return self.encode(
            {
                **claims,
                "iat": _number(now),
                "exp": _number(now + self.token_lifetime),
                "jti": secrets.token_hex(16),
                **({"aid": self.access_id} if typ == "embed" else {}),
                "typ": typ,
            }
        )

    # -- endpoints ------------------------------------------------------------------------------

    async def _token_endpoint(self, request: Request) -> Response:
        # Read before the call is counted: a caller that waits for the count and then stops
        # the server (bumping the epoch) must release this request, not a later one.
        epoch = self._hang_epoch
        self.calls += 1
        body = await request.body()
        try:
            payload: Any = json.loads(body)
        except ValueError:
            payload = None
        identifiers = None
        if isinstance(payload, dict):
            self.requests.append(payload)
            given = payload.get("userIdentifiers")
            identifiers = given if isinstance(given, dict) else None
        injection = self._take_injection(identifiers)
        if self.latency:
            await anyio.sleep(self.latency)
        if injection is not None:
            return await self._injected_response(request, injection, epoch, signin=False)

        if payload is None:
            return _error(400, "Request body must be valid JSON")
        if not isinstance(payload, dict):
            return _error(400, "Request body must be a JSON object")
        access_id = payload.get("accessId")
        access_key = payload.get("accessKey")
        identifiers = payload.get("userIdentifiers")
        if not isinstance(access_id, str) or not isinstance(access_key, str):
            return _error(400, "accessId and accessKey must be strings")
        if not isinstance(identifiers, dict):
            return _error(400, "userIdentifiers must be an object")
        id_ok = hmac.compare_digest(access_id.encode(), self.access_id.encode())
        key_ok = hmac.compare_digest(access_key.encode(), self._access_key.encode())
        if not (id_ok and key_ok):
            return _error(401, "Invalid access key")
        for name, value in identifiers.items():
            if not name.startswith("data-") or name == "data-":
                return _error(400, f"userIdentifiers key {name!r} must start with 'data-'")
            if not isinstance(value, str):
                return _error(400, f"userIdentifiers value for {name!r} must be a string")

        token = self._mint(identifiers, "embed")
        return JSONResponse(
            {
                "success": True,
                "data": {"embedToken": token, "expiresIn": _number(self.token_lifetime)},
            }
        )

    async def _signin_endpoint(self, request: Request) -> Response:
        epoch = self._hang_epoch
        self.signin_calls += 1
        community: str = request.path_params["community_id"]
        email = request.headers.get("email", "")
        self.signin_requests.append({"community": community, "email": email})
        injection = self._take_injection({"data-email": email})
        if self.latency:
            await anyio.sleep(self.latency)
        if injection is not None:
            return await self._injected_response(request, injection, epoch, signin=True)

        api_key = request.headers.get("returningai-api-key", "")
        if not hmac.compare_digest(api_key.encode(), self._widget_api_key.encode()):
            return JSONResponse({"message": "Unauthorized"}, status_code=401)
        if not email.strip():
            return JSONResponse({"message": "The email header is required"}, status_code=400)
        return JSONResponse(
            {"token": self._mint({"email": email, "community": community}, "widget")}
        )

    async def _sdk_endpoint(self, request: Request) -> Response:
        return Response(
            _SDK_SCRIPT,
            media_type="application/javascript",
            headers={"cache-control": "no-cache"},
        )

    async def _loader_endpoint(self, request: Request) -> Response:
        return Response(
            _LOADER_SCRIPT,
            media_type="application/javascript",
            headers={"cache-control": "no-cache"},
        )

    async def _widget_page(self, request: Request) -> Response:
        # The same static page for every widget: its script reads what it needs from its own
        # URL, so nothing from the request is echoed into the HTML. No Content-Security-Policy
        # and no X-Frame-Options: this is the third-party page that sites frame.
        epoch = self._hang_epoch
        self.widget_page_requests.append(
            {
                "path": request.url.path,
                "query": request.url.query,
                "headers": {name.lower(): value for name, value in request.headers.items()},
            }
        )
        injection = self._page_failure
        if injection is not None:
            if injection.mode == "garbage":
                return JSONResponse({"not": "html"})
            if injection.mode == "missing_token":
                return HTMLResponse("<!doctype html><title>x</title><p>no init object</p>")
            return await self._injected_response(request, injection, epoch, signin=True)
        page = _WIDGET_PAGE.replace("__HEIGHT__", str(self.widget_height))
        return HTMLResponse(page, headers={"cache-control": "no-cache"})

    async def _healthz_endpoint(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    # -- clients and servers --------------------------------------------------------------------

    def transport(self) -> httpx.ASGITransport:
        """An httpx transport that calls this application in-process.

        Unlike a plain :class:`httpx.ASGITransport`, it honours the client's read timeout
        (:class:`httpx.ReadTimeout`) and reports injected disconnects as
        :class:`httpx.RemoteProtocolError`, like a real network would.
        """
        return _FakeTransport(app=self)

    def client(self, *, base_url: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An :class:`httpx.AsyncClient` wired to :meth:`transport`.

        ``base_url`` defaults to :attr:`base_url`; other keyword arguments go to the client. Close
        it (``async with fake.client() as client: ...``).
        """
        return httpx.AsyncClient(
            transport=self.transport(),
            base_url=self.base_url if base_url is None else base_url,
            **kwargs,
        )

    def sync_transport(self) -> httpx.BaseTransport:
        """A synchronous httpx transport that calls this application in-process, for an
        :class:`httpx.Client` (Django, Flask, WSGI): the same behaviour as :meth:`transport`.

        Its requests run on an event loop in a daemon thread, started on the first request and
        stopped when the transport is closed (closing its client does it) or by :meth:`close`.
        """
        transport = _SyncFakeTransport(self)
        self._sync_transports.add(transport)
        return transport

    def sync_client(self, *, base_url: str | None = None, **kwargs: Any) -> httpx.Client:
        """An :class:`httpx.Client` wired to :meth:`sync_transport` (``base_url`` as for
        :meth:`client`). Close it, or let :meth:`close` stop its thread."""
        return httpx.Client(
            transport=self.sync_transport(),
            base_url=self.base_url if base_url is None else base_url,
            **kwargs,
        )

    def close(self) -> None:
        """Stop the threads of every :meth:`sync_transport` (and :meth:`sync_client`) made so
        far; they refuse requests afterwards. Async transports hold nothing to close."""
        for transport in list(self._sync_transports):
            transport.close()

    @contextlib.contextmanager
    def run_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve this application with uvicorn in a background thread.

        Yields the base URL (e.g. ``"http://127.0.0.1:54321"``; ``port=0`` picks a free port) once
        the server accepts connections, and stops the server when the block exits. Requires
        ``uvicorn`` (``pip install "rai-middleware[testing]"``).
        """
        try:
            import uvicorn
        except ImportError as exc:
            raise RuntimeError(
                "FakeReturningAI.run_in_thread() needs uvicorn: pip install uvicorn"
            ) from exc

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        bound_port: int = sock.getsockname()[1]
        config = uvicorn.Config(
            app=self, host=host, port=bound_port, log_level="warning", lifespan="off"
        )
        server = uvicorn.Server(config)
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # reported to the caller below
                errors.append(exc)

        thread = threading.Thread(target=serve, name=f"FakeReturningAI:{bound_port}", daemon=True)
        try:
            thread.start()
            deadline = time.monotonic() + 10
            while not server.started:
                if errors or not thread.is_alive():
                    raise RuntimeError("FakeReturningAI server failed to start") from (
                        errors[0] if errors else None
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError("FakeReturningAI server did not start within 10 s")
                time.sleep(0.01)
            url_host = f"[{host}]" if family == socket.AF_INET6 else host
            yield f"http://{url_host}:{bound_port}"
        finally:
            self._hang_epoch += 1  # let requests stuck in an injected hang finish
            server.should_exit = True
            thread.join(timeout=5)
            if thread.is_alive():  # e.g. a request stuck in an injected hang
                server.force_exit = True
                thread.join(timeout=10)
            sock.close()


_SDK_SCRIPT: Final = """\
/* Fake Returning.AI widget SDK, served by rai_middleware.testing.FakeReturningAI. */
(function () {
  "use strict";
  if (typeof window === "undefined" || !window.customElements) return;
  var TAGS = ["rai-store-widget", "rai-channel-widget", "rai-milestone-widget",
    "rai-social-widget", "rai-currency-widget", "rai-referral-widget", "rai-custom-widget"];

  function claimsOf(token) {
    var part = String(token || "").split(".")[1];
    if (!part) return null;
    try {
      var b64 = part.replace(/-/g, "+").replace(/_/g, "/");
      while (b64.length % 4) b64 += "=";
      var bin = atob(b64);
      var bytes = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      var claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" ? claims : null;
    } catch (e) {
      return null;
    }
  }

  /* rai-error, at most once per token value: the page's refresh script answers it by setting a
     new embed-token, and a token that stays bad must not make the widget nag forever. */
  function fail(el, token, reason) {
    if (el._fakeRaiFailed === token) return;
    el._fakeRaiFailed = token;
    el.dispatchEvent(new CustomEvent("rai-error",
      {bubbles: true, composed: true, detail: {reason: reason}}));
  }

  function expired(claims) {
    return typeof claims.exp === "number" && claims.exp * 1000 <= Date.now();
  }

  /* -- How a stand-in widget looks: presentation only. A card in the element's shadow root
     (so that the site's CSS and the card's cannot meet): the widget type, whom the token was
     minted for, its remaining lifetime counting down, and "token renewed" when the page's
     refresh script gives it a new one. The light DOM keeps a one-line text summary. */
  var LOOK_CSS = ":host{display:block;margin:.25rem 0}" +
    ".card{font:14px/1.45 system-ui,sans-serif;color:#1f2328;background:#fff;" +
    "border:1px solid #d0d7de;border-radius:12px;padding:14px 16px;" +
    "box-shadow:0 1px 3px rgba(31,35,40,.08);overflow-wrap:anywhere}" +
    ".head{display:flex;justify-content:space-between;align-items:center;gap:8px;" +
    "font-weight:600;font-size:15px}" +
    ".chip{font-weight:500;font-size:11px;color:#57606a;border:1px solid #d0d7de;" +
    "border-radius:999px;padding:1px 8px}" +
    ".who{margin:8px 0 2px;font-size:15px}.id{color:#57606a;font-size:12px}" +
    ".life{margin-top:10px;font-variant-numeric:tabular-nums}" +
    ".bar{height:6px;border-radius:3px;background:#eaeef2;margin-top:4px;overflow:hidden}" +
    ".fill{height:100%;background:#2da44e;transition:width .5s linear}" +
    ".low .fill{background:#bf8700}.gone .fill{background:#cf222e}" +
    ".renewed{margin-top:10px;color:#1a7f37;font-weight:600;border-radius:6px;padding:2px 6px}" +
    ".renewed[hidden]{display:none}.flash{animation:flash 2.5s ease-out}" +
    "@keyframes flash{0%{background:#aceebb}100%{background:transparent}}" +
    ".bad .who{color:#cf222e}";
  var lookSheet = null;

  function kindOf(tag) {
    var kind = tag.replace(/^rai-/, "").replace(/-widget$/, "");
    return kind.charAt(0).toUpperCase() + kind.slice(1) + " widget";
  }

  function clock(seconds) {
    var s = Math.max(0, Math.ceil(seconds));
    var m = Math.floor(s / 60);
    return m + ":" + String(s % 60).replace(/^(\\d)$/, "0$1");
  }

  function cardOf(el) {
    if (el._fakeRaiCard !== undefined) return el._fakeRaiCard;
    el._fakeRaiCard = null;
    if (typeof el.attachShadow !== "function" || typeof document.createElement !== "function") {
      return null; /* no DOM to draw in: the text summary is all there is */
    }
    var root = el.shadowRoot || el.attachShadow({mode: "open"});
    try { /* a constructed sheet: allowed by any Content-Security-Policy */
      lookSheet = lookSheet || new CSSStyleSheet();
      lookSheet.replaceSync(LOOK_CSS);
      root.adoptedStyleSheets = [lookSheet];
    } catch (e) {
      var style = document.createElement("style");
      style.textContent = LOOK_CSS;
      root.appendChild(style);
    }
    function add(parent, tag, cls, text) {
      var node = document.createElement(tag);
      node.className = cls;
      if (text) node.textContent = text;
      parent.appendChild(node);
      return node;
    }
    var card = {box: add(root, "div", "card", "")};
    var head = add(card.box, "div", "head", "");
    add(head, "span", "kind", kindOf(el.tagName.toLowerCase()));
    add(head, "span", "chip", "offline stand-in");
    card.who = add(card.box, "div", "who", "");
    card.id = add(card.box, "div", "id", "");
    card.life = add(card.box, "div", "life", "");
    card.left = add(card.life, "div", "left", "");
    card.fill = add(add(card.life, "div", "bar", ""), "div", "fill", "");
    card.renewed = add(card.box, "div", "renewed", "");
    card.renewed.hidden = true;
    el._fakeRaiCard = card;
    return card;
  }

  /* Count a renewal when a valid token replaces another one (not on reload()). */
  function noteRenewal(el, token) {
    var renewed = el._fakeRaiShown !== undefined && el._fakeRaiShown !== token;
    el._fakeRaiShown = token;
    if (!renewed) return false;
    el._fakeRaiRenewals = (el._fakeRaiRenewals || 0) + 1;
    el.setAttribute("data-fake-renewals", String(el._fakeRaiRenewals));
    return true;
  }

  function paint(el, state, claims) {
    var kind = kindOf(el.tagName.toLowerCase());
    var who = claims ? String(claims["data-email"] || claims.email ||
      claims["data-customer-id"] || "an unnamed visitor") : "";
    var renewed = state === "ok" && noteRenewal(el, el.getAttribute("embed-token"));
    el.textContent = state === "ok" ? kind + ": signed in as " + who :
      state === "expired" ? kind + ": token expired" : kind + ": missing or invalid token";
    el._fakeRaiClaims = claims;
    var card = cardOf(el);
    if (!card) return;
    card.box.className = "card" + (state === "ok" ? "" : " bad");
    card.who.textContent = state === "ok" ? "Signed in as " + who :
      state === "expired" ? "Token expired: asking the page for a new one" :
      "No valid token";
    var customer = claims && claims["data-customer-id"];
    card.id.textContent = customer && customer !== who ? "customer " + customer : "";
    if (renewed) {
      card.renewed.hidden = false;
      card.renewed.textContent = "\\u2713 Token renewed at " +
        new Date().toLocaleTimeString() + ", without a reload";
      card.renewed.classList.remove("flash");
      void card.renewed.offsetWidth; /* restart the animation */
      card.renewed.classList.add("flash");
    }
    tick(el);
  }

  /* The countdown, every 500 ms (from the expiry check below) and on each paint. */
  function tick(el) {
    var card = el._fakeRaiCard, claims = el._fakeRaiClaims;
    if (!card) return;
    if (!claims || typeof claims.exp !== "number") {
      card.left.textContent = claims ? "Token without an expiry" : "";
      card.fill.style.width = "0";
      return;
    }
    var left = claims.exp - Date.now() / 1000;
    var life = typeof claims.iat === "number" ? claims.exp - claims.iat : 900;
    card.left.textContent = left > 0 ? "Token expires in " + clock(left) : "Token expired";
    card.fill.style.width = Math.max(0, Math.min(100, 100 * left / life)) + "%";
    card.life.className = "life" + (left <= 0 ? " gone" : left < life / 4 ? " low" : "");
  }

  function render(el) {
    var token = el.getAttribute("embed-token");
    var claims = claimsOf(token);
    if (!claims) {
      el.setAttribute("data-fake-state", "invalid");
      paint(el, "invalid", null);
      fail(el, token, "invalid_token");
    } else if (expired(claims)) {
      el.setAttribute("data-fake-state", "expired");
      paint(el, "expired", claims);
      fail(el, token, "token_expired");
    } else {
      el.setAttribute("data-fake-state", "ok");
      paint(el, "ok", claims);
    }
  }

  /* Runs counted for tests. Like a real bundle, a second run in one document throws: the
     second customElements.define of a name is a NotSupportedError in every browser. */
  window.__fakeRaiSdkRuns = (window.__fakeRaiSdkRuns || 0) + 1;
  TAGS.forEach(function (tag) {
    customElements.define(tag, class extends HTMLElement {
      static get observedAttributes() { return ["embed-token"]; }
      connectedCallback() { render(this); }
      attributeChangedCallback() { if (this.isConnected) render(this); }
    });
  });

  if (!window.ReturningAIWidget) {
    var all = function () { return document.querySelectorAll(TAGS.join(",")); };
    window.ReturningAIWidget = {
      reload: function () {
        var els = all();
        for (var i = 0; i < els.length; i++) render(els[i]);
      }
    };
    /* Like the real SDK, notice on its own when a shown token runs out. */
    setInterval(function () {
      var els = all();
      for (var i = 0; i < els.length; i++) {
        var claims = claimsOf(els[i].getAttribute("embed-token"));
        if (els[i].getAttribute("data-fake-state") === "ok" && claims && expired(claims)) {
          render(els[i]);
        }
        tick(els[i]);
      }
    }, 500);
  }
})();
"""

_LOADER_SCRIPT: Final = """\
/* Fake Returning.AI widget loader (Attribute Auth), served by FakeReturningAI. Like the real
   one, it reads its own script tag's data-* attributes and frames the widget page inside the
   data-container element, passing the visitor's identity in the frame's URL. */
(function (script) {
  "use strict";
  if (!script) return;
  var d = script.dataset;
  var container = document.getElementById(d.container || "");
  var base = String(d.widgetUrl || "");
  if (!container || !/^https?:\\/\\//i.test(base) || !d.widgetId) {
    script.setAttribute("data-fake-state", "misconfigured");
    return;
  }
  var query = new URLSearchParams();
  if (d.email) query.set("email", d.email);
  if (d.customerId) query.set("customerId", d.customerId);
  var frame = document.createElement("iframe");
  frame.src = base.replace(/\\/+$/, "") + "/" + encodeURIComponent(d.widgetId) +
    (String(query) ? "?" + query : "");
  frame.title = "Fake Returning.AI " + (d.widgetType || "") + " widget";
  frame.setAttribute("allow", "clipboard-write");
  frame.setAttribute("data-widget-type", d.widgetType || "");
  container.appendChild(frame);
  script.setAttribute("data-fake-state", "loaded");
})(document.currentScript);
"""

_WIDGET_PAGE: Final = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Fake Returning.AI widget</title>
<style>
/* How the stand-in looks: a card with the widget type, whom it was given a token for, the
   token's remaining lifetime and a "token renewed" moment (presentation only). */
body { font: 14px/1.45 system-ui, sans-serif; color: #1f2328; margin: 0; padding: 4px; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 12px; padding: 14px 16px;
        box-shadow: 0 1px 3px rgba(31, 35, 40, .08); overflow-wrap: anywhere; }
.head { display: flex; justify-content: space-between; align-items: center; gap: 8px;
        font-weight: 600; font-size: 15px; }
.chip { font-weight: 500; font-size: 11px; color: #57606a; border: 1px solid #d0d7de;
        border-radius: 999px; padding: 1px 8px; }
#status { margin: 8px 0 2px; font-size: 15px; }
#detail { color: #57606a; font-size: 12px; }
#life { margin-top: 10px; font-variant-numeric: tabular-nums; }
.bar { height: 6px; border-radius: 3px; background: #eaeef2; margin-top: 4px; overflow: hidden; }
#fill { height: 100%; width: 0; background: #2da44e; transition: width .5s linear; }
#life.low #fill { background: #bf8700; } #life.gone #fill { background: #cf222e; }
#renewed { margin-top: 10px; color: #1a7f37; font-weight: 600; border-radius: 6px;
           padding: 2px 6px; }
.flash { animation: flash 2.5s ease-out; }
@keyframes flash { 0% { background: #aceebb; } 100% { background: transparent; } }
body[data-state="expired"] #status, body[data-state="invalid"] #status { color: #cf222e; }
[hidden] { display: none !important; }
</style>
</head>
<body data-state="waiting" data-token="" data-email="" data-requests="0" data-received="0">
<div class="card">
<div class="head"><span id="kind">Widget</span><span class="chip">offline stand-in</span></div>
<p id="status">Waiting for a token from the page</p>
<div id="detail"></div>
<div id="life" hidden><div id="left"></div><div class="bar"><div id="fill"></div></div></div>
<div id="renewed" hidden></div>
</div>
<script>window.__WIDGET_INIT__ = { token: "", color: "light" };</script>
<script>
/* A stand-in for a Returning.AI widget page (FakeReturningAI). State for tests is on
   document.body.dataset: state (waiting, ok, expired, invalid, identified, standalone), source
   (init: the token came in window.__WIDGET_INIT__, served by the proxy mode's route; message:
   from the parent page), token, email, customerId, exp, iat, requests (token requests sent),
   received (tokens received), renewals (valid tokens that replaced another one) and posted
   (the height last posted to the parent). */
(function () {
  "use strict";
  var params = new URLSearchParams(location.search);
  var body = document.body, status = document.getElementById("status");
  var parts = location.pathname.split("/");
  var init = window.__WIDGET_INIT__ || {};
  body.dataset.widget = decodeURIComponent(parts[parts.length - 2] || "") + "/" +
    decodeURIComponent(parts[parts.length - 1] || "");
  function postHeight() {
    /* The height is no secret, and the widget cannot know its embedder's origin. */
    if (window.parent === window) return;
    body.dataset.posted = "__HEIGHT__";
    window.parent.postMessage({type: "WIDGET_HEIGHT_UPDATE", payload: {height: __HEIGHT__}}, "*");
  }
  function show(state, text) {
    body.dataset.state = state;
    status.textContent = text;
    paint();
    postHeight();
  }
  /* -- presentation: the card around the status line ------------------------------------ */
  var kindText = body.dataset.widget.split("/")[0].replace(/-widget$/, "").split("-")[0];
  document.getElementById("kind").textContent =
    kindText.charAt(0).toUpperCase() + kindText.slice(1) + " widget";
  function paint() {
    var detail = document.getElementById("detail");
    var state = body.dataset.state;
    detail.textContent = state === "identified" ?
      "identity from the loader's data-* attributes; no token in this mode" :
      state !== "ok" ? "" : body.dataset.source === "init" ?
      "token served inside the page by the site's own server" :
      "token from the page, by postMessage";
    tick();
  }
  function tick() {
    var life = document.getElementById("life");
    var exp = Number(body.dataset.exp), iat = Number(body.dataset.iat);
    if (!body.dataset.exp || !isFinite(exp)) { life.hidden = true; return; }
    var left = exp - Date.now() / 1000, span = isFinite(iat) && iat < exp ? exp - iat : 900;
    var s = Math.max(0, Math.ceil(left));
    life.hidden = false;
    document.getElementById("left").textContent = left > 0 ?
      "Token expires in " + Math.floor(s / 60) + ":" + String(s % 60).replace(/^(\\d)$/, "0$1") :
      "Token expired";
    document.getElementById("fill").style.width =
      Math.max(0, Math.min(100, 100 * left / span)) + "%";
    life.className = left <= 0 ? "gone" : left < span / 4 ? "low" : "";
  }
  function renewed() {
    var note = document.getElementById("renewed");
    body.dataset.renewals = String(Number(body.dataset.renewals || 0) + 1);
    note.hidden = false;
    note.textContent = "\\u2713 Token renewed at " + new Date().toLocaleTimeString() +
      ", without a reload";
    note.className = "";
    void note.offsetWidth; /* restart the animation */
    note.className = "flash";
  }
  if (params.has("email") || params.has("customerId")) {
    /* Attribute Auth: the loader passed the identity in our URL; no token involved. */
    body.dataset.email = params.get("email") || "";
    body.dataset.customerId = params.get("customerId") || "";
    show("identified", "Signed in as " + body.dataset.email);
    return;
  }
  var exp = null; /* the current token's expiry in ms; null until one arrives */
  function take(token) {
    body.dataset.received = String(Number(body.dataset.received) + 1);
    var claims = claimsOf(token);
    if (!claims) {
      exp = 0;
      show("invalid", "Invalid token");
      return;
    }
    var email = String(claims.email || claims["data-email"] || "");
    exp = typeof claims.exp === "number" ? claims.exp * 1000 : Infinity;
    var previous = body.dataset.token;
    body.dataset.token = token;
    body.dataset.email = email;
    body.dataset.exp = String(claims.exp);
    body.dataset.iat = String(claims.iat);
    if (exp <= Date.now()) show("expired", "Token expired");
    else show("ok", "Signed in as " + email);
    if (exp > Date.now() && previous && previous !== token) renewed();
  }
  if (typeof init.token === "string" && init.token) {
    /* Server Proxy: the site's server put the token into the page. */
    body.dataset.source = "init";
    take(init.token);
    setInterval(tick, 1000);
    return;
  }
  if (window.parent === window) {
    show("standalone", "Not framed, so nobody to ask for a token");
    return;
  }
  /* ?legacy=1: ask with the older message type, which the same page script must answer. */
  var REQUEST = params.get("legacy") === "1" ?
    "RETURNINGAI_WIDGET_TOKEN" : "RETURNINGAI_WIDGET_REQUEST_TOKEN";
  function claimsOf(token) {
    try {
      var b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (b64.length % 4) b64 += "=";
      var bin = atob(b64), bytes = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      var claims = JSON.parse(new TextDecoder().decode(bytes));
      return claims && typeof claims === "object" ? claims : null;
    } catch (e) {
      return null;
    }
  }
  function ask() {
    body.dataset.requests = String(Number(body.dataset.requests) + 1);
    /* Target origin "*" is fine for the request, and only for it: it carries no secret, and
       the widget cannot know its embedder's origin (the referrer may be stripped). The secret
       travels the other way, and the page answers with targetOrigin = this widget's origin. */
    window.parent.postMessage({type: REQUEST}, "*");
  }
  window.addEventListener("message", function (event) {
    if (event.source !== window.parent) return;
    var m = event.data;
    if (!m || typeof m !== "object" || m.type !== "RETURNINGAI_WIDGET_TOKEN") return;
    if (typeof m.value !== "string") return; /* e.g. a sibling's legacy-style request */
    body.dataset.source = "message";
    take(m.value);
  });
  ask();
  /* Every second: no token yet, or the token ran out? Ask (again). */
  setInterval(function () {
    tick();
    if (exp !== null && exp > Date.now()) return;
    if (exp !== null) show("expired", "Token expired: asking the page for a new one");
    ask();
  }, 1000);
})();
</script>
</body>
</html>
"""
