"""Django system checks (``manage.py check``, and before ``runserver`` and ``migrate``).

Registered when ``rai_middleware.django`` is in ``INSTALLED_APPS`` (its ``ready()`` imports
this module). Without the app, ``python -m rai_middleware check --settings MODULE`` runs the
same checks, and the middleware still raises one ``ConfigurationError`` listing every
problem when Django builds it.

=========================  ===========================================================
``rai_middleware.E001``    ``settings.RETURNING_AI`` is not a dict
``rai_middleware.E002``    a setting the mode requires (a credential) is missing
``rai_middleware.E003``    a setting has an invalid value
``rai_middleware.E004``    an unknown ``RETURNING_AI`` key (with the key it likely meant)
``rai_middleware.E005``    ``RETURNING_AI['identify']`` cannot be imported or called
``rai_middleware.W001``    the middleware is listed above ``AuthenticationMiddleware``
``rai_middleware.W002``    ``GZipMiddleware`` is listed below the middleware
``rai_middleware.W003``    accepted but unsafe: a plain ``http://`` upstream, a short key
``rai_middleware.W004``    the app is installed but the middleware is not in ``MIDDLEWARE``
=========================  ===========================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.checks import Warning as DjangoWarning

from rai_middleware._config import DJANGO, Review, review_settings
from rai_middleware._core import load_callable
from rai_middleware._exceptions import ConfigurationError

__all__ = ["AUTHENTICATION", "GZIP", "MIDDLEWARE", "TAG", "check_returning_ai", "review"]

MIDDLEWARE = "rai_middleware.django.ReturningAIMiddleware"
AUTHENTICATION = "django.contrib.auth.middleware.AuthenticationMiddleware"
GZIP = "django.middleware.gzip.GZipMiddleware"
#: ``manage.py check --tag rai_middleware`` runs these checks alone.
TAG = "rai_middleware"
_SETTINGS_HINT = "Set it in settings.RETURNING_AI, or in the environment variable named."


def check_returning_ai(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The system check: every problem of ``RETURNING_AI`` and of the middleware order."""
    return review()[1]


register(check_returning_ai, TAG)


def review(environ: Mapping[str, str] | None = None) -> tuple[Review, list[CheckMessage]]:
    """The settings as the middleware would read them, and a message for each problem."""
    configured = getattr(settings, "RETURNING_AI", None)
    if configured is None:
        configured = {}
    if not isinstance(configured, Mapping):
        error = Error(
            "settings.RETURNING_AI must be a dict of options",
            hint='For example RETURNING_AI = {"community_id": "..."}.',
            id="rai_middleware.E001",
        )
        return Review(None), [error]
    found = review_settings(configured, os.environ if environ is None else environ, spelling=DJANGO)
    messages: list[CheckMessage] = [
        *(
            Error(text, hint=_SETTINGS_HINT, id="rai_middleware.E002")
            for text in found.missing_text
        ),
        *(Error(text, id="rai_middleware.E003") for text in found.invalid),
        *(Error(text, id="rai_middleware.E004") for text in found.unknown),
    ]
    try:
        load_callable(configured.get("identify"), "RETURNING_AI['identify']")
    except ConfigurationError as error:
        messages.append(Error(str(error), id="rai_middleware.E005"))
    messages += [DjangoWarning(text, id="rai_middleware.W003") for text in found.warnings]
    messages += _order(custom_identify=configured.get("identify") is not None)
    return found, messages


def _order(*, custom_identify: bool) -> list[CheckMessage]:
    listed = [str(entry) for entry in getattr(settings, "MIDDLEWARE", None) or ()]
    if MIDDLEWARE not in listed:
        return [
            DjangoWarning(
                f"{MIDDLEWARE} is not in MIDDLEWARE: no placeholder is ever replaced",
                hint=f"Add {MIDDLEWARE!r} to MIDDLEWARE, below AuthenticationMiddleware.",
                id="rai_middleware.W004",
            )
        ]
    ours = listed.index(MIDDLEWARE)
    messages: list[CheckMessage] = []
    if AUTHENTICATION in listed and listed.index(AUTHENTICATION) > ours and not custom_identify:
        messages.append(
            DjangoWarning(
                f"{MIDDLEWARE} is listed above AuthenticationMiddleware: request.user is not "
                "set when it runs, so every visitor is anonymous and no widget is signed in",
                hint=f"Move {MIDDLEWARE!r} below {AUTHENTICATION!r} in MIDDLEWARE.",
                id="rai_middleware.W001",
            )
        )
    if GZIP in listed and listed.index(GZIP) > ours:
        messages.append(
            DjangoWarning(
                f"GZipMiddleware is listed below {MIDDLEWARE}: pages reach the middleware "
                "compressed, and each is decompressed and compressed again to be rewritten",
                hint=f"Move {GZIP!r} above {MIDDLEWARE!r} in MIDDLEWARE.",
                id="rai_middleware.W002",
            )
        )
    return messages
