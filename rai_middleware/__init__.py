"""rai-middleware: Returning.AI community widgets for the signed-in users of any Python site.

Mark a spot in a page with ``<rai-placeholder widget="channel" ...>`` and wrap the app::

    from rai_middleware import ReturningAIMiddleware

    app = ReturningAIMiddleware(app, community_id="...", access_id="...", access_key="...")

The middleware finds placeholders in outgoing HTML, mints (or reuses) a short-lived token
for the visitor with the site's server-side credentials, and writes the widget in place.
"""

from __future__ import annotations

from ._asgi import ReturningAIMiddleware
from ._exceptions import (
    ConfigurationError,
    PlaceholderError,
    ReturningAIError,
    StoreError,
    TokenError,
)
from ._metrics import EVENTS, FAILURE_KINDS, Event, Stats
from ._store import SyncTokenStore, TokenStore
from ._version import __version__
from ._wsgi import ReturningAIWSGIMiddleware

__all__ = [
    "EVENTS",
    "FAILURE_KINDS",
    "ConfigurationError",
    "Event",
    "PlaceholderError",
    "ReturningAIError",
    "ReturningAIMiddleware",
    "ReturningAIWSGIMiddleware",
    "Stats",
    "StoreError",
    "SyncTokenStore",
    "TokenError",
    "TokenStore",
    "__version__",
]

# Show the public path in reprs and tracebacks, as httpx does.
for _name in (
    "ConfigurationError",
    "Event",
    "PlaceholderError",
    "ReturningAIError",
    "ReturningAIMiddleware",
    "ReturningAIWSGIMiddleware",
    "Stats",
    "StoreError",
    "SyncTokenStore",
    "TokenError",
    "TokenStore",
):
    globals()[_name].__module__ = "rai_middleware"
del _name
