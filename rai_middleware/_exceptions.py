"""The package's exceptions.

    ReturningAIError
    ├── ConfigurationError (also a ValueError): bad or missing options, raised at construction
    ├── PlaceholderError (also a ValueError): a template helper was asked for a placeholder
    │   the middleware would not understand (unknown widget, invalid attribute name)
    ├── TokenError: Returning.AI did not give us a usable token
    └── StoreError: the shared token store is unavailable, too slow, or answered nonsense

Messages never contain a credential or a token: they name the option, the environment
variable, the HTTP status or the kind of failure, and nothing that was sent upstream.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigurationError",
    "PlaceholderError",
    "ReturningAIError",
    "StoreError",
    "TokenError",
]


class ReturningAIError(Exception):
    """Base class of every exception raised by rai_middleware."""


class ConfigurationError(ReturningAIError, ValueError):
    """Options are missing or invalid. Raised when the middleware is constructed.

    ``problems`` lists every problem found, each naming what the user writes (the keyword,
    the ``RAI_*`` variable, ``RETURNING_AI["..."]`` or the Flask config key); the message
    is the one problem, or all of them, one a line.
    """

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)

    @classmethod
    def of(cls, problems: Sequence[str]) -> ConfigurationError:
        """One error for every problem (at least one)."""
        if len(problems) == 1:
            return cls(problems[0])
        lines = "".join(f"\n  - {problem}" for problem in problems)
        return cls(f"{len(problems)} configuration problems:{lines}", problems=problems)


class PlaceholderError(ReturningAIError, ValueError):
    """A template helper (``{% rai_widget %}``, Jinja2's ``rai_widget()``) was given a widget
    the middleware does not know, an attribute name it would not copy, or a fallback that
    would break the placeholder. Raised while the template renders."""


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
