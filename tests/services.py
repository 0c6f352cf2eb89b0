"""The system programs some tests need, found once, for every test to ask the same way.

``require("chromium")`` returns the program's path, or skips the calling test (or fixture)
with one line that names what is missing and how to install it. ``tests/conftest.py`` lists
the skipped groups at the end of the run, turns the coverage gate off when a program is
missing (the gate applies where everything runs: ``.ci/run``), and, with
``RAI_REQUIRE_ALL=1`` (set by ``.ci/run``), turns every skip into a failure.

``RAI_TEST_HIDE=chromium,redis-server`` makes the named programs count as missing, to try
the suite as a machine without them would run it (Debian puts nginx in ``/usr/sbin``, which
a PATH without it would not hide). ``CHROMIUM=/path`` picks another Chromium build.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = [
    "HIDE_ENV",
    "NPM_LIBRARIES",
    "REQUIRE_ALL_ENV",
    "SERVICES",
    "SKIP_PREFIX",
    "Service",
    "find",
    "missing",
    "require",
    "require_all",
]

#: Comma-separated service names that count as missing whatever is installed.
HIDE_ENV = "RAI_TEST_HIDE"
#: ``1``: a skipped test is a failed test (``.ci/run`` sets it: CI runs everything).
REQUIRE_ALL_ENV = "RAI_REQUIRE_ALL"
#: Every skip reason written by ``require`` starts with this, so the summary can group them.
SKIP_PREFIX = "needs "


@dataclass(frozen=True)
class Service:
    name: str
    #: What its tests prove, for the summary line.
    used_for: str
    install: str
    #: Where a distribution installs it off a normal user's PATH.
    also_at: tuple[str, ...] = ()
    #: An environment variable naming another build.
    env: str | None = None


SERVICES: dict[str, Service] = {
    service.name: service
    for service in (
        Service(
            "chromium",
            "the browser tests, tests/test_browser.py",
            "apt-get install chromium",
            also_at=("/usr/bin/chromium",),
            env="CHROMIUM",
        ),
        Service(
            "redis-server",
            "the shared token store tests, tests/test_redis.py",
            "apt-get install redis-server",
        ),
        Service(
            "nginx",
            "the proxy_cache test, tests/test_nginx_cache.py",
            "apt-get install nginx",
            also_at=("/usr/sbin/nginx", "/usr/local/sbin/nginx"),
        ),
        Service(
            "node",
            "the stand-in widget scripts run under node, tests/test_testing.py",
            "apt-get install nodejs",
        ),
        Service("npm", "tests that install npm libraries", "apt-get install npm"),
        Service(
            "npm-libraries",
            "htmx, Turbo and Unpoly in Chromium, tests/test_browser_fragments.py",
            "copy tests/browser_js/package*.json to $RAI_NPM_CACHE "
            "(~/.cache/rai-middleware/npm) and run `npm ci` there, as .ci/run does",
        ),
    )
}

#: The browser libraries the fragment tests load, under the npm cache's node_modules.
NPM_LIBRARIES = {
    "htmx.js": "htmx.org/dist/htmx.min.js",
    "turbo.js": "@hotwired/turbo/dist/turbo.es2017-umd.js",
    "unpoly.js": "unpoly/unpoly.min.js",
}


def npm_cache() -> Path:
    """Where ``.ci/run`` installs the npm libraries: outside the package, never vendored."""
    return Path(os.environ.get("RAI_NPM_CACHE") or Path.home() / ".cache/rai-middleware/npm")


def _hidden() -> frozenset[str]:
    return frozenset(
        name.strip() for name in os.environ.get(HIDE_ENV, "").split(",") if name.strip()
    )


def require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_ENV, "").strip() == "1"


def find(name: str) -> str | None:
    """The path of service ``name``, or None when it is missing (or hidden)."""
    service = SERVICES[name]
    hidden = _hidden()
    if name in hidden or name.split("-")[0] in hidden:  # "redis" hides redis-server
        return None
    if name == "npm-libraries":  # installed files, not a program
        modules = npm_cache() / "node_modules"
        found = all((modules / path).is_file() for path in NPM_LIBRARIES.values())
        return str(modules) if found else None
    candidates = [os.environ.get(service.env, "")] if service.env else []
    candidates += [shutil.which(name) or "", *service.also_at]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def missing() -> list[str]:
    """The services this machine lacks, in ``SERVICES`` order."""
    return [name for name in SERVICES if find(name) is None]


def reason(name: str) -> str:
    """The one-line skip reason for a missing service."""
    service = SERVICES[name]
    return f"{SKIP_PREFIX}{name}, which is not installed: {service.install}"


def require(name: str) -> str:
    """The path of ``name``; skips the test with ``reason(name)`` when it is missing."""
    path = find(name)
    if path is None:
        pytest.skip(reason(name))
    return path
