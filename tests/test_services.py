"""tests/services.py and the conftest hooks around it: how a machine without Chromium,
redis-server, nginx or node runs the suite, and how CI refuses to skip."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests import services

ROOT = Path(__file__).resolve().parent.parent


def test_hide_makes_a_service_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    program = tmp_path / "redis-server"
    program.write_text("#!/bin/sh\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(services.HIDE_ENV, raising=False)
    assert services.find("redis-server") == str(program)
    monkeypatch.setenv(services.HIDE_ENV, "node, redis-server")
    assert services.find("redis-server") is None
    monkeypatch.setenv(services.HIDE_ENV, "redis")
    assert services.find("redis-server") is None
    monkeypatch.setenv(services.HIDE_ENV, "node, redis-server")
    assert "redis-server" in services.missing()
    assert "node" in services.missing()


def test_an_environment_variable_names_another_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    build = tmp_path / "chromium-browser"
    build.write_text("#!/bin/sh\n")
    build.chmod(build.stat().st_mode | stat.S_IXUSR)
    monkeypatch.delenv(services.HIDE_ENV, raising=False)
    monkeypatch.setenv("CHROMIUM", str(build))
    assert services.find("chromium") == str(build)


def test_require_skips_with_one_line_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(services.HIDE_ENV, "nginx")
    with pytest.raises(pytest.skip.Exception) as skipped:
        services.require("nginx")
    assert str(skipped.value) == "needs nginx, which is not installed: apt-get install nginx"


def pytest_run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RAI_")}
    # Only the plugins these runs need: an installed plugin of another checkout (an entry
    # point naming a module this tree lacks) must not break them.
    clean["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    plugins = ["-p", "pytest_cov.plugin", "-p", "anyio.pytest_plugin"]
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_missing_service_skips_its_tests_lists_them_and_lowers_the_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(services.HIDE_ENV, "nginx")
    missing = ", ".join(services.missing())  # nginx, and whatever this machine lacks
    done = pytest_run(
        "tests/test_nginx_cache.py",
        RAI_TEST_HIDE="nginx",
        COVERAGE_FILE=str(tmp_path / "coverage"),
    )
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert (
        f"rai-middleware: {missing} missing: their tests skip and the coverage gate is off "
        "(.ci/run installs every service and applies the gate)"
    ) in lines
    assert (
        "nginx: 1 skipped (the proxy_cache test, tests/test_nginx_cache.py); install it: "
        "apt-get install nginx"
    ) in lines
    assert (
        "the coverage gate was off for this run; .ci/run installs every service and applies it"
    ) in lines


def test_require_all_turns_a_skip_into_a_failure() -> None:
    done = pytest_run(
        "--no-cov", "tests/test_nginx_cache.py", RAI_TEST_HIDE="nginx", RAI_REQUIRE_ALL="1"
    )
    assert done.returncode == 1, done.stdout
    assert (
        "needs nginx, which is not installed: apt-get install nginx "
        "(RAI_REQUIRE_ALL=1: no test may skip)"
    ) in done.stdout.splitlines()
