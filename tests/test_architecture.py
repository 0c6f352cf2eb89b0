"""The shape the code promises: one core, thin entrances that never lean on each other."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import rai_middleware

PACKAGE = Path(rai_middleware.__file__).parent
ADAPTERS = {"_asgi", "_wsgi", "django", "flask"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rai_middleware"):
            names.update(part for part in (node.module or "").split(".")[1:2])
    return names


def test_no_adapter_imports_another_adapter() -> None:
    for adapter in ADAPTERS:
        others = imported_modules(PACKAGE / f"{adapter}.py") & (ADAPTERS - {adapter})
        assert not others, f"{adapter}.py imports {others}"


def test_the_core_imports_no_adapter() -> None:
    for path in PACKAGE.rglob("*.py"):
        if path.stem not in ADAPTERS | {"__init__", "testing", "redis"}:
            assert not imported_modules(path) & ADAPTERS, path.name


def test_the_adapters_together_stay_small() -> None:
    lines = sum(len((PACKAGE / f"{name}.py").read_text().splitlines()) for name in ADAPTERS)
    assert lines < 1000


def test_only_the_configuration_looks_at_the_mode_name() -> None:
    names = r"""["'](?:access_key|iframe|attributes)["']"""
    compares = re.compile(
        rf"(?:==|!=|\bin)\s*\(?{names}|{names}\s*(?:==|!=)|settings\.mode\s*(?:==|!=|in\b)"
    )
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_config.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not compares.search(line), f"{path.name}:{number}: {line.strip()}"
