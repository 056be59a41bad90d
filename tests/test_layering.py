"""The protocol core stays pure: no I/O, concurrency or logging library may creep in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = ["messages.py", "pages.py", "memory_object.py", "cache.py", "errors.py", "wire.py"]
FORBIDDEN = {"trio", "pyfuse3", "sqlite3", "sqlite_utils", "logging", "socket", "os", "asyncio"}
MOFS = Path(__file__).resolve().parent.parent / "mofs"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_no_io(module: str) -> None:
    assert imported_modules(MOFS / module) & FORBIDDEN == set()


def test_the_check_sees_imports() -> None:
    assert "trio" in imported_modules(MOFS / "kernel.py")
