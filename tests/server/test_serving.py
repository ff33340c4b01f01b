"""``rusty_ws.server.serving``: the old names of the five modules it was split into, and patches that reach the code.

A module that re-exports a setting holds a copy of the name: patching the copy
changes nothing the code reads, and the test that did it passes without testing
what it says. So ``serving`` offers the same objects under the old names, no
knob that tests patch, and every ``monkeypatch.setattr(module, "NAME", ...)`` in
the tests names a module that defines ``NAME`` itself.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

from rusty_ws.server import accept_gate, healthz_watch, hub_server, pacing, request_handler, request_head, serve, serving

TESTS = Path(__file__).resolve().parent.parent
#: The names code and tests imported from ``serving`` before the split, and the module that owns each now.
OLD_NAMES = {
    hub_server: ["HubServer", "make_server", "DRAIN_FROM"],
    accept_gate: ["LOG_EVERY"],
    request_handler: ["HubRequestHandler", "HEAD_ONLY_KEY", "RELEASE_HEAD_KEY"],
    request_head: ["_PlainHeaders"],
    pacing: ["_Pacer", "MIN_PACED_RATE", "MAX_RETRY_AFTER", "TURN_AWAY_COST"],
    serve: ["serve", "stop", "exit_now", "freeze_startup_objects", "FULL_COLLECTION_THRESHOLD"],
}


@pytest.mark.parametrize("owner,name", [(owner, name) for owner, names in OLD_NAMES.items() for name in names],
                         ids=lambda value: getattr(value, "__name__", value))
def test_serving_offers_the_owners_own_objects(owner: object, name: str) -> None:
    assert getattr(serving, name) is getattr(owner, name)


@pytest.mark.parametrize("knob", ["DRAIN_EVERY", "DRAIN_MAX", "ACCEPT_BACKOFF", "PEEK_WAIT", "PEEK_BYTES",
                                  "ANSWER_NOW_TIMEOUT", "RATE_SAMPLES"])
def test_serving_offers_no_knob_so_a_stale_patch_fails(knob: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert any(hasattr(owner, knob) for owner in (hub_server, accept_gate, healthz_watch, pacing))
    with pytest.raises(AttributeError):
        monkeypatch.setattr(serving, knob, 0)


def defined_at_top(module: str) -> set[str]:
    """The names ``module``'s source binds itself at its top level (assignments, functions, classes)."""
    path = Path(importlib.import_module(module).__file__ or "")
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def module_patches(path: Path) -> list[tuple[str, str]]:
    """``(module, NAME)`` of each ``*.setattr(alias, "NAME", ...)`` in a test file whose ``alias`` is a rusty_ws
    module imported by name (``from rusty_ws.server import hub_server``, ``import rusty_ws.x as alias``), at the
    top of the file or in the function that patches."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = _module_aliases(tree.body)
    found = []
    for scope in tree.body:
        if not isinstance(scope, (ast.FunctionDef, ast.ClassDef)):
            continue
        aliases = {**top, **_module_aliases(list(ast.walk(scope)))}
        for node in ast.walk(scope):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "setattr"
                    and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
                found.append((aliases[node.args[0].id], node.args[1].value))
    return found


def _module_aliases(nodes: list[ast.AST]) -> dict[str, str]:
    """Local name -> rusty_ws module, for the imports among ``nodes``."""
    aliases: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rusty_ws") and not node.level:
            for alias in node.names:
                if _is_module(f"{node.module}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("rusty_ws") and alias.asname:
                    aliases[alias.asname] = alias.name
    return aliases


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_every_patch_of_a_module_names_one_it_defines() -> None:
    patches = [(path, module, name) for path in sorted(TESTS.rglob("test_*.py")) if "node_modules" not in path.parts
               for module, name in module_patches(path)]
    assert any(module == "rusty_ws.server.accept_gate" for _, module, _ in patches)  # the checker sees them
    wrong = [f"{path.relative_to(TESTS)}: {module}.{name}" for path, module, name in patches
             if name not in defined_at_top(module)]
    assert not wrong, f"patched where the code does not read it (patch the module that defines it): {wrong}"


def test_the_checker_sees_a_patch_of_a_re_export(tmp_path: Path) -> None:
    stale = tmp_path / "test_stale.py"
    stale.write_text('from rusty_ws.server import serving\n\ndef test(monkeypatch):\n'
                     '    monkeypatch.setattr(serving, "LOG_EVERY", 0)\n', encoding="utf-8")
    assert module_patches(stale) == [("rusty_ws.server.serving", "LOG_EVERY")]
    assert "LOG_EVERY" not in defined_at_top("rusty_ws.server.serving")
