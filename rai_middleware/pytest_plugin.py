"""pytest plugin: the ``fake_returning_ai`` fixture, for your site's own tests.

Installed with ``pip install "rai-middleware[testing]"``, pytest loads it by itself (entry point
``pytest11``); elsewhere, add ``-p rai_middleware.pytest_plugin`` or
``pytest_plugins = ["rai_middleware.pytest_plugin"]`` to your ``conftest.py``.

``fake_returning_ai`` is a fresh :class:`rai_middleware.testing.FakeReturningAI` per test
(credentials ``demo-access-id`` / ``demo-access-key``), with

* ``.client()`` / ``.transport()``: an ``httpx.AsyncClient`` / transport for async apps;
* ``.sync_client()`` / ``.sync_transport()``: the same for Django, Flask and WSGI apps;
* ``.calls``, ``.requests``: what the middleware asked for;
* ``.fail_next(...)``, ``.fail_always(...)`` (``status=``, ``mode="hang"``, ``"garbage"``...,
  ``identity=`` for one visitor) and ``.recover()``.

Its sync transports' threads are stopped when the test ends.

At import time this module imports pytest and the ``rai_middleware`` package (its runtime
dependencies), nothing more: the fake, Starlette and the frameworks are imported only when a
test asks for the fixture. Without the ``testing`` extra (Starlette), loading the plugin is
harmless, and the fixture fails with a message that says what to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from rai_middleware.testing import FakeReturningAI

__all__ = ["fake_returning_ai"]


@pytest.fixture
def fake_returning_ai() -> Iterator[FakeReturningAI]:
    """An offline Returning.AI for this test: :class:`rai_middleware.testing.FakeReturningAI`."""
    fake_class = _fake_class()
    if isinstance(fake_class, str):  # the testing extra is not installed
        pytest.fail(
            f"the fake_returning_ai fixture needs {fake_class}: "
            "pip install 'rai-middleware[testing]'",
            pytrace=False,
        )
    fake = fake_class()
    try:
        yield fake
    finally:
        fake.close()


def _fake_class() -> type[FakeReturningAI] | str:
    """The fake's class, or the name of the missing distribution that it needs."""
    try:
        from rai_middleware.testing import FakeReturningAI
    except ImportError as error:
        return (error.name or "starlette").partition(".")[0]
    return FakeReturningAI
