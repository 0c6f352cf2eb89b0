"""The package's exceptions.

    ReturningAIError
    ├── ConfigurationError (also a ValueError): bad or missing options, raised at construction
    ├── TokenError: Returning.AI did not give us a usable token
    └── StoreError: the shared token store is unavailable, too slow, or answered nonsense

Messages never contain a credential or a token: they name the option, the environment
variable, the HTTP status or the kind of failure, and nothing that was sent upstream.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "ReturningAIError", "StoreError", "TokenError"]


class ReturningAIError(Exception):
    """Base class of every exception raised by rai_middleware."""


class ConfigurationError(ReturningAIError, ValueError):
    """An option is missing or invalid. Raised when the middleware is constructed."""


class TokenError(ReturningAIError):
    """Minting a widget token failed: upstream error, timeout, or an unusable answer.

    ``status_code`` is the upstream HTTP status when there was one. The visitor never sees
    this error: the middleware logs it and serves the placeholder's fallback content.
    """

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class StoreError(ReturningAIError):
    """The shared token store is unavailable, too slow, or answered nonsense.

    Stores raise it; the token service catches it, mints per process for a cool-down and
    logs once. Its message names the failure, never a URL with credentials in it.
    """
