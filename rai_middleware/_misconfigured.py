"""What an ASGI middleware built by a framework on its first call does when misconfigured.

Starlette and FastAPI build their middleware stack on their first call, which is the
lifespan's. A ``ConfigurationError`` raised there is swallowed by uvicorn's default
``--lifespan auto`` ("ASGI 'lifespan' protocol appears unsupported"): the server reports a
normal startup, and every route, JSON included, then answers 500. So a middleware
constructed while an event loop runs keeps the error instead, in a ``Misconfigured``
stand-in that fails the lifespan startup (``lifespan.startup.failed``, which makes every
server stop, "auto" or not) and raises on every request, with one clear log line. Built
outside an event loop (the app wrapped at import), the error raises at once as before.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from ._exceptions import ConfigurationError
from ._types import Receive, Scope, Send

__all__ = ["Misconfigured", "defer"]

logger = logging.getLogger("rai_middleware")


def defer(error: ConfigurationError) -> Misconfigured:
    """A stand-in holding ``error`` when an event loop is running; otherwise ``error``
    is raised."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise error from None
    return Misconfigured(error)


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
