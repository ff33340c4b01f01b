"""The layering of the package, as ``ls rusty_ws`` shows it, checked on every import.

- The pure core (the modules at the top) does no I/O: no Flask, sockets, threads,
  WebSocket or Redis libraries, and imports nothing from ``server/``, ``client/``
  or ``brokers/``.
- ``brokers/`` sits on the core only; ``client/`` on the core only (never Flask,
  never ``server/``); ``server/`` on the core and ``brokers/``, never ``client/``.

Two kinds of check: what each file's source imports, at any depth (a lazy
import is still a dependency), and what importing a module loads in a fresh
interpreter (frameworks only: PyJWT, which the core may use, itself loads
``socket`` for its key-fetching client).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rusty_ws"
CORE = ["exceptions", "protocol", "frames", "auth", "config", "backoff"]
#: Entry points at the top that are not core: they wire the layers together.
ENTRY_POINTS = {"rusty_ws", "rusty_ws.cli", "rusty_ws.gunicorn_conf"}
IO_MODULES = {"flask", "flask_sock", "simple_websocket", "websocket", "wsproto", "redis", "werkzeug",
              "socket", "ssl", "threading", "selectors", "asyncio", "http", "urllib"}
FRAMEWORKS = {"flask", "flask_sock", "simple_websocket", "websocket", "wsproto", "redis"}
#: layer -> the layers of rusty_ws it may import.
ALLOWED = {
    "core": {"core"},
    "brokers": {"core", "brokers"},
    "client": {"core", "client"},
    "server": {"core", "brokers", "server"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    """``core``, ``server``, ``client`` or ``brokers`` for a rusty_ws module; None for entry points."""
    if module in ENTRY_POINTS:
        return None
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ("server", "client", "brokers"):
        return parts[1]
    return "core"


def package_modules() -> list[str]:
    return sorted(module_name(path) for path in PACKAGE.rglob("*.py"))


def imports_of(module: str, *, top_level_only: bool = False) -> set[str]:
    """The absolute names ``module``'s source imports (relative imports resolved)."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE.parent / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def rusty_ws_imports(module: str) -> set[str]:
    """The rusty_ws modules ``module`` imports (names imported from a module count as that module)."""
    known = set(package_modules())
    result = set()
    for name in imports_of(module):
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != "rusty_ws" and name != module:
            result.add(name)
    return result


def loaded_by(module: str) -> set[str]:
    code = (
        "import sys, importlib; before = set(sys.modules); "
        f"importlib.import_module({module!r}); "
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=ROOT)
    return {name.split(".")[0] for name in output.stdout.split()}


def test_the_tree_has_the_layers() -> None:
    layers = {layer_of(module) for module in package_modules()}
    assert layers == {None, "core", "server", "client", "brokers"}
    assert {f"rusty_ws.{name}" for name in CORE} <= set(package_modules())


@pytest.mark.parametrize("module", [m for m in package_modules() if layer_of(m) is not None])
def test_each_layer_imports_only_what_lies_below_it(module: str) -> None:
    layer = layer_of(module)
    wrong = {name for name in rusty_ws_imports(module) if layer_of(name) not in ALLOWED[layer]}
    assert not wrong, f"{module} ({layer}) must not import {sorted(wrong)}"


@pytest.mark.parametrize("name", CORE)
def test_core_module_source_imports_no_io(name: str) -> None:
    top = {imported.split(".")[0] for imported in imports_of(f"rusty_ws.{name}", top_level_only=True)}
    assert not top & IO_MODULES


@pytest.mark.parametrize("name", CORE)
def test_core_module_loads_no_framework(name: str) -> None:
    assert not loaded_by(f"rusty_ws.{name}") & FRAMEWORKS


def test_registry_uses_threading_and_nothing_else_of_io() -> None:
    top = {imported.split(".")[0] for imported in imports_of("rusty_ws.server.registry", top_level_only=True)}
    assert top & IO_MODULES == {"threading"}


def test_client_side_never_loads_flask() -> None:
    assert "flask" not in loaded_by("rusty_ws.client")


def test_the_checker_resolves_relative_imports() -> None:
    """The check itself: ``from .server.state import ...`` at the top resolves to the server layer."""
    assert layer_of("rusty_ws.client.client") == "client"
    assert "server" not in ALLOWED["client"]
    assert "rusty_ws.server.state" in rusty_ws_imports("rusty_ws.gunicorn_conf")


def test_public_api_still_imports_from_the_top() -> None:
    code = ("from rusty_ws import WsClient, PubSub, create_app, Delivery, CloseCode, ErrorCode, "
            "RustyWsError, ServerError; from rusty_ws.protocol import close_policy; "
            "import rusty_ws.gunicorn_conf, rusty_ws.cli; print(create_app.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "JWT_SECRET_KEY": "x" * 32})
    assert out.stdout.strip() == "rusty_ws.server.app"
