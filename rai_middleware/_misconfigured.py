"""What an ASGI middleware built by a framework on its first call does when misconfigured.

Starlette and FastAPI build their middleware stack on their first call, which is the
lifespan's. A ``ConfigurationError`` raised there is swallowed by uvicorn's default
``--lifespan auto`` ("ASGI 'lifespan' protocol appears unsupported"): the server reports a
normal startup, and every route, JSON included, then answers 500. So a middleware built
there (an event loop running, ``build_middleware_stack`` calling) keeps the error instead,
in a ``Misconfigured`` stand-in that fails the lifespan startup
(``lifespan.startup.failed``, which stops every server, "auto" or not) and raises on every
request, with one clear log line. Constructed any other way (the app wrapped at import, a
test), the middleware raises the error at once.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading

from ._exceptions import ConfigurationError
from ._types import Receive, Scope, Send

__all__ = ["Misconfigured", "defer"]

logger = logging.getLogger("rai_middleware")


#: The method that Starlette and FastAPI build their middleware in, on their first call.
_LAZY_BUILDERS = frozenset({"build_middleware_stack"})


def defer(error: ConfigurationError) -> Misconfigured:
    """A stand-in holding ``error`` when the middleware is being built by a framework on its
    first call (a running event loop, and ``build_middleware_stack`` among the callers);
    otherwise ``error`` is raised, as for anyone constructing the middleware directly."""
    if not _built_lazily():
        raise error from None
    return Misconfigured(error)


def _built_lazily() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    # Where frames are not introspectable (currentframe() is None), the error raises.
    frame = inspect.currentframe()
    for _ in range(8):  # defer, __init__, a subclass's __init__ or two, the builder
        if frame is None:
            return False
        if frame.f_code.co_name in _LAZY_BUILDERS:
            return True
        frame = frame.f_back
    return False


class Misconfigured:
    """Fails the lifespan startup and every request with the configuration's problems."""

    def __init__(self, error: ConfigurationError) -> None:
        self.error = error
        self._logged = False
        self._lock = threading.Lock()

    def _log_once(self) -> None:
        with self._lock:
            if self._logged:
                return
            self._logged = True
        logger.error("rai-middleware is misconfigured, so the app cannot serve: %s", self.error)

    def _fresh(self) -> ConfigurationError:
        # A new exception each time: one raised again and again would pile up tracebacks.
        return ConfigurationError(str(self.error), problems=self.error.problems)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._log_once()
        if scope["type"] != "lifespan":
            raise self._fresh()
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send(
                {"type": "lifespan.startup.failed", "message": f"rai-middleware: {self.error}"}
            )
