"""The package's layering (SPEC 1): registry ← tasks ← worker, no Celery below worker."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import graftq

PACKAGE = Path(graftq.__file__).parent

# layer → the graftq layers it may import
ALLOWED = {
    "registry": {"registry", "errors"},
    "tasks": {"registry", "tasks", "errors"},
    "worker": {"registry", "tasks", "worker", "errors", "settings"},
}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_downwards(layer: str) -> None:
    for path in sorted((PACKAGE / layer).glob("*.py")):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "graftq" and len(parts) > 1:
                assert parts[1] in ALLOWED[layer], f"{path.name} imports {name}"


@pytest.mark.parametrize("layer", ["registry", "tasks"])
def test_registry_and_tasks_do_not_import_celery(layer: str) -> None:
    for path in sorted((PACKAGE / layer).glob("*.py")):
        imported = _imports(path)
        assert not {n for n in imported if n.split(".")[0] in {"celery", "kombu"}}, path.name
