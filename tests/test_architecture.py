"""The shape the code promises: one core, thin entrances that never lean on each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import rai_middleware

PACKAGE = Path(rai_middleware.__file__).parent
ADAPTERS = {"_asgi", "_wsgi", "django", "flask"}


def top_module(path: Path) -> str:
    """The name under ``rai_middleware`` that ``path`` belongs to (``django`` for django/*)."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def adapter_files(adapter: str) -> list[Path]:
    package = PACKAGE / adapter
    return sorted(package.rglob("*.py")) if package.is_dir() else [PACKAGE / f"{adapter}.py"]


def imported_modules(path: Path) -> set[str]:
    """The top-level ``rai_middleware`` modules that ``path`` imports, relatively or not."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for rai_middleware/x.py
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            if node.level == depth + 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level <= depth:  # inside its own subpackage
                names.add(path.relative_to(PACKAGE).parts[0])
        elif (node.module or "").startswith("rai_middleware."):
            names.add((node.module or "").split(".")[1])
    return names


def test_no_adapter_imports_another_adapter() -> None:
    for adapter in ADAPTERS:
        for path in adapter_files(adapter):
            others = imported_modules(path) & (ADAPTERS - {adapter})
            assert not others, f"{path.relative_to(PACKAGE)} imports {others}"


def test_the_core_imports_no_adapter() -> None:
    for path in PACKAGE.rglob("*.py"):
        # _check reads each framework's configuration, as testing and redis sit on top of them.
        if top_module(path) not in ADAPTERS | {"__init__", "testing", "redis", "_check"}:
            assert not imported_modules(path) & ADAPTERS, path.name


def test_the_adapters_together_stay_small() -> None:
    """The middleware proper of each adapter (not its template tags or checks) stays thin."""
    entrances = [PACKAGE / "_asgi.py", PACKAGE / "_wsgi.py", PACKAGE / "django" / "__init__.py"]
    entrances.append(PACKAGE / "flask.py")
    # Under 1000 before issue 15; since then each entrance delegates stats() to the core (and
    # Django remembers the instance it built, for rai_middleware.django.stats()), checks
    # exclusions first, inline, as the cheapest path for an excluded request (15), and hands
    # the core the request headers for fragment detection (13).
    assert sum(len(path.read_text().splitlines()) for path in entrances) < 1060


def test_only_the_configuration_looks_at_the_mode_name() -> None:
    names = r"""["'](?:access_key|iframe|attributes|proxy)["']"""
    compares = re.compile(
        rf"(?:==|!=|\bin)\s*\(?{names}|{names}\s*(?:==|!=)|settings\.mode\s*(?:==|!=|in\b)"
    )
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_config.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not compares.search(line), f"{path.name}:{number}: {line.strip()}"
