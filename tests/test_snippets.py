"""Every ```python block of README.md and docs/**/*.md runs, as a test of its own.

The test id names the file and the line of the block's opening fence
(``test_snippet[docs/frameworks/django.md:8]``). The rules, also in docs/contributing.md:

* **Self-contained.** Each block runs in a fresh namespace (a module named ``__snippet__``),
  in a temporary working directory, with ``RAI_COMMUNITY_ID``, ``RAI_ACCESS_ID``,
  ``RAI_ACCESS_KEY``, ``RAI_WIDGET_API_KEY``, ``RAI_SECRET_KEY``, ``SESSION_SECRET`` and
  ``REDIS_URL`` set to test values, and ``RAI_API_BASE_URL`` and ``RAI_WIDGETS_BASE_URL``
  pointing at a closed port on 127.0.0.1. A host name other than a loopback one cannot be
  resolved while a block runs: nothing reaches the network.
* **Parts of a file** (a ``settings.py`` fragment, a module of the reader's project) run as
  plain Python that defines names; ``title="settings.py"`` on the fence says which file.
* **Apps are exercised.** A block that leaves a module-level ``app`` or ``application`` has
  it answer one ``GET /``: an ASGI app between its lifespan startup and shutdown (through
  ``httpx.ASGITransport``), a WSGI app through ``httpx.WSGITransport``. A 5xx, or an
  exception, fails the block.
* **Tests are run by pytest.** A block that defines ``test_*`` functions is written to a file
  and run by pytest in a subprocess (fixtures, ``@pytest.mark.anyio`` and installed plugins
  work there); at least one test must be collected, and all must pass.
* **Warnings are errors**, as everywhere in the suite.
* **Nothing is skipped.** A block that cannot run (a shell session, a server of its own) is
  not ```python: it is ```console, ```bash, ```text or ```html.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import socket
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What the docs site and the README hold.
SOURCES = (ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")))
PYTHON_LANGUAGES = frozenset({"python", "py", "python3"})
#: A closed port: a block that would call Returning.AI fails at once, on this machine.
NOWHERE = "http://127.0.0.1:9"
ENVIRONMENT: Mapping[str, str] = {
    "RAI_COMMUNITY_ID": "snippet-community",
    "RAI_ACCESS_ID": "snippet-access-id",
    "RAI_ACCESS_KEY": "snippet-access-key",
    "RAI_WIDGET_API_KEY": "snippet-widget-api-key",
    "RAI_SECRET_KEY": "snippet-secret-key-of-at-least-32-bytes",
    "RAI_API_BASE_URL": NOWHERE,
    "RAI_WIDGETS_BASE_URL": NOWHERE,
    "SESSION_SECRET": "snippet-session-secret",
    "REDIS_URL": "redis://127.0.0.1:9/0",
}
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost", "testserver"})
_FENCE = re.compile(r"(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts (1-based line of the fence), its info string
    and its code (dedented by the fence's indentation)."""

    path: Path
    line: int
    info: str
    code: str

    @property
    def language(self) -> str:
        words = self.info.strip().split()
        return words[0].lower().lstrip(".{") if words else ""

    @property
    def label(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


def fenced_blocks(path: Path, text: str | None = None) -> Iterator[Block]:
    """The fenced code blocks of a markdown file, in order.

    A fence closes on a line of the same character, at least as long, with nothing after it
    (CommonMark); a block left open is an error, not a block silently dropped.
    """
    lines = (path.read_text(encoding="utf-8") if text is None else text).split("\n")
    index = 0
    while index < len(lines):
        opening = _FENCE.fullmatch(lines[index])
        index += 1
        if opening is None or (opening["fence"][0] == "`" and "`" in opening["info"]):
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        start, body = index, []
        while True:
            if index == len(lines):
                raise ValueError(f"{path.name}:{start}: code block is never closed")
            closing = _FENCE.fullmatch(lines[index])
            index += 1
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            line = lines[index - 1]
            body.append(line[min(indent, len(line) - len(line.lstrip(" \t"))) :])
        yield Block(path, start, opening["info"].strip(), "\n".join(body) + "\n")


def python_blocks() -> list[Block]:
    return [
        block
        for path in SOURCES
        for block in fenced_blocks(path)
        if block.language in PYTHON_LANGUAGES
    ]


BLOCKS = python_blocks()


# -- running a block ------------------------------------------------------------------------


def defines_tests(tree: ast.Module) -> bool:
    return any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
        for node in tree.body
    )


def is_asgi(app: object) -> bool:
    call = app if inspect.isfunction(app) else getattr(app, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(call)


#: Seconds a block's ASGI app has to start, answer ``GET /`` and stop.
SNIPPET_APP_TIMEOUT = 30.0


def exercise(namespace: Mapping[str, Any], label: str) -> list[int]:
    """``GET /`` from each app the block left; the status codes."""
    statuses = []
    for name in ("app", "application"):
        app = namespace.get(name)
        if app is None or not callable(app):
            continue
        if is_asgi(app):
            response = anyio.run(asgi_get_root, app)
        else:
            transport = httpx.WSGITransport(app=app)
            with httpx.Client(transport=transport, base_url="http://testserver") as client:
                response = client.get("/")
        assert response.status_code < 500, f"{label}: {name} answered GET / with {response}"
        statuses.append(response.status_code)
    return statuses


async def asgi_get_root(app: Any) -> httpx.Response:
    """``GET /`` from an ASGI app between its lifespan startup and shutdown, as a server does."""
    to_app, app_receives = anyio.create_memory_object_stream[dict[str, Any]](4)
    app_sends, from_app = anyio.create_memory_object_stream[dict[str, Any]](4)
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    # A block's app that never answers fails its test instead of hanging the suite.
    with anyio.fail_after(SNIPPET_APP_TIMEOUT):
        return await _lifespan_and_get(app, scope, to_app, app_receives, app_sends, from_app)


async def _lifespan_and_get(
    app: Any, scope: dict[str, Any], to_app: Any, app_receives: Any, app_sends: Any, from_app: Any
) -> httpx.Response:
    async with to_app, app_receives, app_sends, from_app, anyio.create_task_group() as tasks:
        tasks.start_soon(app, scope, app_receives.receive, app_sends.send)
        await to_app.send({"type": "lifespan.startup"})
        started = await from_app.receive()
        assert started["type"] == "lifespan.startup.complete", started
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/")
        await to_app.send({"type": "lifespan.shutdown"})
        stopped = await from_app.receive()
        assert stopped["type"] == "lifespan.shutdown.complete", stopped
    return response


def run_tests_block(block: Block, directory: Path) -> subprocess.CompletedProcess[str]:
    test_file = directory / f"test_snippet_line_{block.line}.py"
    test_file.write_text(block.code, encoding="utf-8")
    environ = {**os.environ, **ENVIRONMENT}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
    return subprocess.run(
        [*command, "--rootdir", str(directory), str(test_file)],
        cwd=directory,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def snippet_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Path, pytest.MonkeyPatch]]:
    monkeypatch.chdir(tmp_path)
    for name, value in ENVIRONMENT.items():
        monkeypatch.setenv(name, value)
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and str(host) not in LOOPBACK:
            raise OSError(f"a snippet tried to reach {host!r}: only 127.0.0.1 is allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    yield tmp_path, monkeypatch


def run_block(block: Block, directory: Path, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Run one block by the rules above; the status codes of the apps it left."""
    tree = ast.parse(block.code, filename=block.label)
    if defines_tests(tree):
        result = run_tests_block(block, directory)
        assert result.returncode == 0, f"{block.label}: pytest failed\n{result.stdout}"
        return []
    module = types.ModuleType("__snippet__")
    module.__file__ = str(directory / "snippet.py")
    monkeypatch.setitem(sys.modules, "__snippet__", module)
    exec(compile(tree, block.label, "exec"), module.__dict__)
    return exercise(module.__dict__, block.label)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.label for block in BLOCKS])
def test_snippet(block: Block, snippet_environment: tuple[Path, pytest.MonkeyPatch]) -> None:
    run_block(block, *snippet_environment)


# -- the collector itself -------------------------------------------------------------------


def test_every_page_with_python_has_its_blocks_collected() -> None:
    pages = {block.path for block in BLOCKS}
    assert ROOT / "README.md" in pages
    assert ROOT / "docs" / "frameworks" / "django.md" in pages
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        fences = len(re.findall(r"(?m)^[ \t]*```[ \t]*(?:python|py|python3)\b", text, re.I))
        assert fences == sum(block.path == path for block in BLOCKS), path


def test_fences_with_a_title_indentation_and_nested_fences() -> None:
    text = "\n".join(
        [
            "# Page",
            '```python title="settings.py"',
            "A = 1",
            "```",
            "- item",
            "",
            "  ```Python",
            "  def f():",
            "      return 2",
            "  ```",
            "````markdown",
            "```python",
            "never = run",
            "```",
            "````",
            "~~~py",
            "B = 3",
            "~~~",
        ]
    )
    blocks = list(fenced_blocks(ROOT / "docs" / "x.md", text))
    assert [(b.line, b.language, b.code) for b in blocks] == [
        (2, "python", "A = 1\n"),
        (7, "python", "def f():\n    return 2\n"),
        (11, "markdown", "```python\nnever = run\n```\n"),
        (16, "py", "B = 3\n"),
    ]
    assert blocks[0].info == 'python title="settings.py"'
    assert blocks[0].label == "docs/x.md:2"


def test_a_block_left_open_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"x.md:2: code block is never closed"):
        list(fenced_blocks(ROOT / "x.md", "text\n```python\nA = 1\n"))


def _block(code: str) -> Block:
    return Block(ROOT / "docs" / "x.md", 3, "python", code)


def test_a_failing_block_fails(snippet_environment: tuple[Path, pytest.MonkeyPatch]) -> None:
    with pytest.raises(NameError, match="undefined_name"):
        run_block(_block("undefined_name\n"), *snippet_environment)


def test_blocks_see_the_test_environment_and_a_temporary_directory(
    snippet_environment: tuple[Path, pytest.MonkeyPatch],
) -> None:
    directory, _ = snippet_environment
    code = (
        "import os, pathlib\n"
        f"assert {{k: os.environ[k] for k in {list(ENVIRONMENT)!r}}} == {dict(ENVIRONMENT)!r}\n"
        f"assert pathlib.Path.cwd() == pathlib.Path({str(directory)!r})\n"
        "assert __name__ == '__snippet__'\n"
    )
    assert run_block(_block(code), *snippet_environment) == []


def test_a_block_cannot_reach_the_network(
    snippet_environment: tuple[Path, pytest.MonkeyPatch],
) -> None:
    code = "import socket\nsocket.getaddrinfo('api-v2.returning.ai', 443)\n"
    with pytest.raises(OSError, match=r"tried to reach 'api-v2\.returning\.ai'"):
        run_block(_block(code), *snippet_environment)


def test_asgi_and_wsgi_apps_are_exercised(
    snippet_environment: tuple[Path, pytest.MonkeyPatch],
) -> None:
    asgi = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b""})
"""
    wsgi = """
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""
    assert run_block(_block(asgi), *snippet_environment) == [404]
    assert run_block(_block(wsgi), *snippet_environment) == [200]


def test_an_app_that_answers_500_fails_its_block(
    snippet_environment: tuple[Path, pytest.MonkeyPatch],
) -> None:
    code = """
def application(environ, start_response):
    start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
    return [b"broken"]
"""
    with pytest.raises(AssertionError, match=r"docs/x.md:3: application answered GET / with"):
        run_block(_block(code), *snippet_environment)


def test_blocks_with_tests_are_run_by_pytest(
    snippet_environment: tuple[Path, pytest.MonkeyPatch],
) -> None:
    passing = """
import os

import pytest

from rai_middleware.testing import FakeReturningAI


@pytest.mark.anyio
async def test_fake_answers():
    async with FakeReturningAI().client() as client:
        assert (await client.get("/healthz")).status_code == 200
    assert os.environ["RAI_ACCESS_ID"] == "snippet-access-id"
"""
    assert run_block(_block(passing), *snippet_environment) == []
    with pytest.raises(AssertionError, match=r"docs/x.md:3: pytest failed"):
        run_block(_block("def test_no():\n    assert False\n"), *snippet_environment)
