"""The middleware Django built in this process, so that a site can read its ``stats()``.

Django builds its middleware chain itself (on the first request, once per handler) and
hands the site no reference to it: ``rai_middleware.django.stats()`` reads the newest one.
A weak reference: a handler that is thrown away (a test client's) takes its middleware
with it.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rai_middleware._metrics import Stats

__all__ = ["remember", "stats"]

_newest: weakref.ref[Any] | None = None


def remember(middleware: Any) -> None:
    """Called by each middleware Django builds."""
    global _newest
    _newest = weakref.ref(middleware)


def stats() -> Stats:
    """The counters (``docs/metrics.md``) of the middleware Django built last in this
    process. ``LookupError`` before Django has built one (it does so at the first request,
    or when ``get_wsgi_application()``/``get_asgi_application()`` loads the middleware)."""
    middleware = _newest() if _newest is not None else None
    if middleware is None:
        raise LookupError(
            "rai_middleware.django.stats(): Django has not built the middleware in this "
            "process yet (it does at its first request); is it listed in MIDDLEWARE?"
        )
    counts: Stats = middleware.stats()
    return counts
