"""What ships: the wheel and the sdist, built by the build backend itself (hatchling, a dev
dependency; about a second), and what the package needs at runtime."""

from __future__ import annotations

import email
import email.message
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("hatchling", reason="pip install -e '.[dev]' (hatchling builds the wheel)")

BUILD = """
import os, sys
from hatchling.build import build_sdist, build_wheel
out = sys.argv[1]
print(build_wheel(out))
print(build_sdist(out))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    wheel, sdist = done.stdout.split()
    yield out / wheel, out / sdist


def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def test_the_wheel_ships_the_license_and_py_typed(built: tuple[Path, Path]) -> None:
    wheel, _ = built
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [license_name] = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        text = archive.read(license_name).decode()
    assert "rai_middleware/py.typed" in names
    assert "rai_middleware/__main__.py" in names
    assert "rai_middleware/django/checks.py" in names
    assert text.startswith("MIT License\n\nCopyright (c) 2026 rai-middleware maintainers\n")
    assert not [n for n in names if n.startswith("tests/")]


def test_the_sdist_ships_the_license(built: tuple[Path, Path]) -> None:
    _, sdist = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "PKG-INFO"} <= names
    assert "rai_middleware/py.typed" in names


def test_runtime_dependencies_are_httpx_itsdangerous_cachetools(built: tuple[Path, Path]) -> None:
    meta = metadata(built[0])
    requires = meta.get_all("Requires-Dist") or []
    runtime = sorted(r.split(">=")[0] for r in requires if "extra ==" not in r)
    assert runtime == ["cachetools", "httpx", "itsdangerous"]
    starlette_extras = sorted(
        r.split("extra == ")[1].strip("'\"") for r in requires if r.startswith("starlette")
    )
    # Only through extras (the flattened self-references of test and dev included).
    assert starlette_extras == ["bench", "demo", "dev", "test", "testing"]
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = meta.get_all("Classifier") or []
    versions = [
        c.rsplit(" ", 1)[1]
        for c in classifiers
        if c.startswith("Programming Language :: Python :: 3.")
    ]
    assert versions == ["3.10", "3.11", "3.12", "3.13"]
    assert "Typing :: Typed" in classifiers
    assert meta["Requires-Python"] == ">=3.10"


def without_starlette(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` where ``import starlette`` fails, as after ``pip install rai-middleware``."""
    prelude = "import sys; sys.modules['starlette'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_middleware_imports_without_starlette() -> None:
    done = without_starlette(
        "import rai_middleware, rai_middleware._check\n"
        "from rai_middleware import ReturningAIMiddleware, ReturningAIWSGIMiddleware\n"
        "print('ok')"
    )
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def test_the_fake_names_the_testing_extra_when_starlette_is_missing() -> None:
    done = without_starlette("import rai_middleware.testing")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "ImportError: rai_middleware.testing (FakeReturningAI) is a Starlette app: install it "
        'with pip install "rai-middleware[testing]"'
    )
