"""The pure core imports no I/O: no Flask, sockets, threads, WebSocket or Redis libraries.

Two checks: what each pure module's own source imports (static), and what
importing it loads in a fresh interpreter (frameworks only: PyJWT, which the
core may use, itself loads ``socket`` for its key-fetching client).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PURE = ["exceptions", "protocol", "frames", "auth", "config", "backoff"]
IO_MODULES = {"flask", "flask_sock", "simple_websocket", "websocket", "wsproto", "redis", "werkzeug",
              "socket", "ssl", "threading", "selectors", "asyncio", "http", "urllib"}
FRAMEWORKS = {"flask", "flask_sock", "simple_websocket", "websocket", "wsproto", "redis"}


def top_level_imports(name: str) -> set[str]:
    """Modules a file imports at module level (imports inside functions are deliberate and lazy)."""
    with open(os.path.join(ROOT, "rusty_ws", name + ".py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def loaded_by(module: str) -> set[str]:
    code = (
        "import sys, importlib; before = set(sys.modules); "
        f"importlib.import_module({module!r}); "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return {name.split(".")[0] for name in output.stdout.split()}


def existing(names: list[str]) -> list[str]:
    return [name for name in names if os.path.exists(os.path.join(ROOT, "rusty_ws", name + ".py"))]


@pytest.mark.parametrize("name", existing(PURE))
def test_pure_module_source_imports_no_io(name: str) -> None:
    assert not top_level_imports(name) & IO_MODULES


@pytest.mark.parametrize("name", existing(PURE))
def test_pure_module_loads_no_framework(name: str) -> None:
    assert not loaded_by(f"rusty_ws.{name}") & FRAMEWORKS


def test_registry_uses_threading_and_nothing_else_of_io() -> None:
    assert top_level_imports("registry") & IO_MODULES == {"threading"}


def test_client_side_never_loads_flask() -> None:
    assert "flask" not in loaded_by("rusty_ws.client")
