"""The pytest plugin (rai_middleware.pytest_plugin): run in pytest sessions of their own
(pytester), as a user's test suite would load it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "rai_middleware.pytest_plugin"

TOKEN_TESTS = """
import httpx
import pytest

BODY = {
    "accessId": "demo-access-id",
    "accessKey": "demo-access-key",
    "userIdentifiers": {"data-customer-id": "c-42"},
}
TOKEN = "/v2/api/widget-access-keys/token"


def test_sync_client(fake_returning_ai):
    with fake_returning_ai.sync_client() as client:
        answer = client.post(TOKEN, json=BODY)
    assert answer.status_code == 200
    claims = fake_returning_ai.decode(answer.json()["data"]["embedToken"])
    assert claims["data-customer-id"] == "c-42"
    assert fake_returning_ai.calls == 1
    assert fake_returning_ai.requests == [BODY]


def test_sync_transport_under_a_client_of_yours(fake_returning_ai):
    transport = fake_returning_ai.sync_transport()
    with httpx.Client(transport=transport, base_url="https://anywhere.test") as client:
        assert client.get("/healthz").json() == {"ok": True}


@pytest.mark.anyio
async def test_async_client(fake_returning_ai):
    async with fake_returning_ai.client() as client:
        answer = await client.post(TOKEN, json=BODY)
    assert answer.status_code == 200
    assert fake_returning_ai.calls == 1


def test_a_fresh_fake_per_test(fake_returning_ai):
    assert fake_returning_ai.calls == 0
    assert fake_returning_ai.requests == []


@pytest.fixture
def anyio_backend():
    return "asyncio"
"""


def run_inline(pytester: pytest.Pytester, source: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=source)
    return pytester.runpytest_inprocess("-p", PLUGIN, "-p", "anyio", "-W", "error", "-q")


def test_entry_point_is_the_module_under_its_own_name() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {PLUGIN: PLUGIN}
    assert project["optional-dependencies"]["testing"] == ["starlette>=0.37", "uvicorn>=0.29"]


def test_fixture_gives_the_fake_with_sync_and_async_clients(pytester: pytest.Pytester) -> None:
    result = run_inline(pytester, TOKEN_TESTS)
    result.assert_outcomes(passed=4)


def test_loading_it_twice_is_harmless(pytester: pytest.Pytester) -> None:
    # As with the entry point and a conftest's pytest_plugins both naming it.
    pytester.makeconftest(f"pytest_plugins = [{PLUGIN!r}]")
    pytester.makepyfile(test_user="def test_it(fake_returning_ai):\n    assert fake_returning_ai\n")
    result = pytester.runpytest_inprocess("-p", PLUGIN, "-q")
    result.assert_outcomes(passed=1)


FAILURE_TESTS = """
import httpx
import pytest

TOKEN = "/v2/api/widget-access-keys/token"


def body(customer):
    return {
        "accessId": "demo-access-id",
        "accessKey": "demo-access-key",
        "userIdentifiers": {"data-customer-id": customer, "data-email": customer + "@x.test"},
    }


def statuses(client, *customers):
    return [client.post(TOKEN, json=body(c)).status_code for c in customers]


def test_fail_next_for_one_identity(fake_returning_ai):
    fake_returning_ai.fail_next(2, status=503, identity={"data-customer-id": "bob"})
    with fake_returning_ai.sync_client() as client:
        assert statuses(client, "ann", "bob", "ann", "bob", "bob") == [200, 503, 200, 503, 200]
    assert fake_returning_ai.calls == 5


def test_fail_always_for_one_identity_then_recover_it(fake_returning_ai):
    fake_returning_ai.fail_always(status=403, identity={"data-email": "bob@x.test"})
    fake_returning_ai.fail_always(status=500, identity={"data-customer-id": "cat"})
    with fake_returning_ai.sync_client() as client:
        assert statuses(client, "ann", "bob", "cat", "bob") == [200, 403, 500, 403]
        fake_returning_ai.recover(identity={"data-email": "bob@x.test"})
        assert statuses(client, "bob", "cat") == [200, 500]


def test_fail_always_for_all(fake_returning_ai):
    fake_returning_ai.fail_always(mode="garbage")
    with fake_returning_ai.sync_client() as client:
        answer = client.post(TOKEN, json=body("ann"))
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.text == "<html>not json"


def test_timeout_through_the_sync_client(fake_returning_ai):
    fake_returning_ai.fail_next(mode="hang")
    with fake_returning_ai.sync_client(timeout=0.05) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(TOKEN, json=body("ann"))
        assert client.post(TOKEN, json=body("ann")).status_code == 200


def test_disconnect_through_the_sync_client(fake_returning_ai):
    fake_returning_ai.fail_next(mode="disconnect")
    with fake_returning_ai.sync_client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(TOKEN, json=body("ann"))
"""


def test_failure_helpers_for_one_identity_or_all(pytester: pytest.Pytester) -> None:
    result = run_inline(pytester, FAILURE_TESTS)
    result.assert_outcomes(passed=5)


THREAD_TESTS = """
import threading

import pytest

kept = []


def fake_threads():
    return [t for t in threading.enumerate() if t.name == "FakeReturningAI-sync"]


def test_uses_a_sync_client_and_leaves_it_open(fake_returning_ai):
    client = fake_returning_ai.sync_client()
    assert client.get("/healthz").status_code == 200
    assert len(fake_threads()) == 1
    kept.append(client)


def test_its_thread_was_stopped_at_teardown():
    assert fake_threads() == []
    with pytest.raises(RuntimeError, match="closed"):
        kept[0].get("/healthz")
"""


def test_sync_threads_stop_when_the_test_ends(pytester: pytest.Pytester) -> None:
    result = run_inline(pytester, THREAD_TESTS)
    result.assert_outcomes(passed=2)


def test_without_starlette_only_the_fixture_complains(pytester: pytest.Pytester) -> None:
    # The testing extra missing: loading the plugin is fine, using the fixture says why not.
    # In-process (pytester restores sys.modules afterwards): Starlette made unimportable.
    pytester.makeconftest(
        """
import sys

sys.modules.pop("rai_middleware.testing", None)
for name in [n for n in sys.modules if n == "starlette" or n.startswith("starlette.")]:
    sys.modules[name] = None
sys.modules["starlette"] = None
"""
    )
    pytester.makepyfile(
        test_user="""
def test_unrelated():
    assert True


def test_wants_the_fake(fake_returning_ai):
    raise AssertionError("not reached")
"""
    )
    result = pytester.runpytest_inprocess("-p", PLUGIN, "-q")
    result.assert_outcomes(passed=1, errors=1)
    message = "the fake_returning_ai fixture needs starlette: pip install 'rai-middleware[testing]'"
    assert message in result.stdout.lines
    assert "Traceback" not in result.stdout.str()


def test_importing_the_plugin_imports_nothing_heavy() -> None:
    code = (
        "import sys\n"
        f"import {PLUGIN}\n"
        "heavy = ['starlette', 'rai_middleware.testing', 'django', 'flask', 'jinja2', 'anyio']\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout == "[]\n"
