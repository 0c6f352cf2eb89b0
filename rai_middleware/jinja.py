"""Jinja2: a ``rai_widget()`` global that writes the placeholder for you.

One line installs it, on any ``jinja2.Environment``::

    from rai_middleware.jinja import install

    install(env)                  # a plain Environment
    install(templates.env)        # Starlette / FastAPI: Jinja2Templates(directory=...)
    install(app.jinja_env)        # Flask

Then, in a template::

    {{ rai_widget("store", theme="dark") }}
    {{ rai_widget("channel", "Sign in to join the chat", channel_id=channel.id) }}

``rai_widget(widget, fallback=None, **attrs)`` returns ``Markup``: keyword ``_`` becomes ``-``
(``channel_id`` -> ``channel-id``), every value is escaped, a plain ``str`` fallback is text
and a ``Markup`` one (e.g. from ``{% set fallback %}...{% endset %}``) is HTML. An unknown
widget or an invalid attribute name raises ``PlaceholderError``. The token is still minted
by the middleware, and only when the page goes out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from markupsafe import Markup

from ._placeholder import PlaceholderWriter

__all__ = ["RaiWidget", "install"]

#: The name of the global in templates.
GLOBAL_NAME = "rai_widget"


class RaiWidget(Protocol):
    def __call__(self, widget: str, fallback: object = None, **attrs: object) -> Markup: ...


def install(
    env: Any,
    *,
    tag: str | None = None,
    widgets: Mapping[str, str] | None = None,
) -> RaiWidget:
    """Add the ``rai_widget`` global to the Jinja2 environment ``env`` and return it.

    ``tag`` and ``widgets`` must match the middleware's ``placeholder_tag`` and ``widgets``
    options if you changed them (None: the defaults, ``rai-placeholder`` and the standard
    widgets). Raises ``ConfigurationError`` for an invalid ``tag`` or ``widgets``, and
    ``TypeError`` if ``env`` is not a Jinja2 environment.
    """
    import jinja2

    if not isinstance(env, jinja2.Environment):
        raise TypeError(
            f"install() takes a jinja2.Environment, got {type(env).__name__}: pass "
            "templates.env for Starlette's Jinja2Templates, app.jinja_env for Flask"
        )
    writer = PlaceholderWriter(tag, widgets)

    def rai_widget(widget: str, fallback: object = None, **attrs: object) -> Markup:
        """The placeholder of ``widget``, as ``Markup``."""
        return Markup(writer.write(widget, attrs.items(), fallback))

    env.globals[GLOBAL_NAME] = rai_widget
    return rai_widget
