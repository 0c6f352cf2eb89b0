"""Requests the middleware leaves alone: ``exclude_paths`` and ``skip``, decided first.

An excluded request costs a prefix check: the adapter hands it to the app with the server's
own objects (ASGI ``receive`` and ``send``, the WSGI ``start_response``) and the scope or
environ untouched, so extensions such as ``http.response.pathsend`` stay available.

A prefix matches its own path and every path below it, by whole segments: ``/api`` (or
``/api/``) excludes ``/api``, ``/api/`` and ``/api/users``, not ``/apiary``. ``/`` excludes
everything. Paths are matched under the mount point (ASGI ``root_path``, WSGI
``SCRIPT_NAME``), as the app's own routes are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "Excluded",
    "conflicts",
    "exclusions",
    "is_exempt",
    "normalise_prefix",
    "rai_exempt",
]

V = TypeVar("V")
#: The attribute ``rai_exempt`` sets on a view.
EXEMPT = "rai_exempt"

logger = logging.getLogger("rai_middleware")

#: ``excluded(request, path, root)``: whether the middleware leaves this request alone.
#: ``request`` is what ``skip`` is given (the ASGI scope, the WSGI environ, Django's or
#: Flask's request); ``root`` is removed from the front of ``path`` when it is there.
Excluded = Callable[[Any, str, str], bool]


def normalise_prefix(prefix: str) -> str:
    """The prefix without its trailing slashes (``/`` becomes ``""``)."""
    return prefix.rstrip("/")


def conflicts(prefixes: tuple[str, ...], own: list[str]) -> list[str]:
    """Why each prefix that would exclude what the widgets call is refused: ``own`` holds
    the middleware's endpoint(s), a path ending in ``/`` being a route (all paths under it)."""
    problems = []
    for prefix in prefixes:
        for path in own:
            exact = path.rstrip("/")
            if exact == prefix or exact.startswith(prefix + "/"):
                problems.append(
                    f"{prefix or '/'!r} covers the middleware's own endpoint {exact}, which the "
                    "widgets call; exclude narrower paths"
                )
            elif path.endswith("/") and prefix.startswith(path):
                problems.append(
                    f"{prefix!r} is under the middleware's own route {path}, which the widget "
                    "frames call; it cannot be excluded"
                )
    return problems


def exclusions(
    prefixes: tuple[str, ...],
    skip: Callable[[Any], object] | None,
    endpoint: str | None = None,
    route: str | None = None,
) -> Excluded | None:
    """The check for ``prefixes`` (normalised) and ``skip``; None when there is nothing to
    check, so that an adapter pays one attribute test.

    The middleware's own paths (the refresh ``endpoint``, and the paths under the proxy
    widget ``route``) are never excluded and ``skip`` is never asked about them (the
    configuration also refuses a prefix that covers them). ``skip`` raising is a bug in the
    site, not a reason to fail the page: the request is not excluded (the middleware
    handles it as any other) and the exception is logged."""
    if not prefixes and skip is None:
        return None
    below = tuple(prefix + "/" for prefix in prefixes)
    exact = frozenset(prefixes)

    def excluded(request: Any, path: str, root: str) -> bool:
        if root and path.startswith(root):
            path = path[len(root) :]
        if path == endpoint or (route is not None and path.startswith(route)):
            return False  # what the widgets call
        if path.startswith(below) or path in exact:
            return True
        if skip is None:
            return False
        try:
            return bool(skip(request))
        except Exception:
            logger.exception(
                "skip raised for %s; the request is handled by the middleware as usual", path
            )
            return False

    return excluded


def rai_exempt(view: V) -> V:
    """Mark a view (a function, or a class-based view's class) so that the middleware
    leaves its responses alone. Returns the view itself, so it stacks with any decorator."""
    setattr(view, EXEMPT, True)
    return view


def is_exempt(view: object) -> bool:
    """Whether ``view`` (or, for a class-based view's ``as_view()``, its ``view_class``) was
    marked by ``rai_exempt``."""
    return getattr(view, EXEMPT, False) is True or (
        getattr(getattr(view, "view_class", None), EXEMPT, False) is True
    )
