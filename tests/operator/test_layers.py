"""The operator's import boundaries, read from the source (issue 21 §4).

The operator image carries no torch: an import of ``editflow.inference`` from any operator
module would fail there. And the layers under the decision function (caches, the work index,
the dispatchers, the outbox) must not depend on it: they share the phases, timestamps and
Pod readings through small modules of their own.
"""

from __future__ import annotations

import ast
from pathlib import Path

OPERATOR = Path(__file__).resolve().parents[2] / "operator"
BELOW_DECIDE = (
    "caches",
    "workindex",
    "warmpool",
    "warmregistry",
    "warmscaler",
    "outbox",
    "dispatch",
    "informer",
    "podstate",
)


def imports(module: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_operator_module_imports_the_worker() -> None:
    offenders = {
        path.name: sorted(m for m in imports(path) if m.startswith("editflow.inference"))
        for path in OPERATOR.glob("*.py")
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_lower_layers_do_not_import_the_decision_module() -> None:
    for name in BELOW_DECIDE:
        path = OPERATOR / f"{name}.py"
        assert "editflow.operator.decide" not in imports(path), name
