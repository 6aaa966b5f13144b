"""Where code lives (docs/design.md §2): imports only go down, and the config schema is one explicit list."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from tiny_run import REPO

PACKAGES = ("utils", "models", "datasets", "runs")
# What each package may import of the project: runs -> models, datasets -> utils; models and datasets never
# import each other; utils imports nothing of the project.
ALLOWED = {"utils": {"utils"}, "models": {"models", "utils"}, "datasets": {"datasets", "utils"},
           "runs": set(PACKAGES)}


def project_imports(path: Path) -> set[str]:
    """Top-level project packages a module imports (anywhere in the file, also inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found.update(n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_only_go_down(package):
    wrong = {str(p.relative_to(REPO)): sorted(project_imports(p) - ALLOWED[package])
             for p in (REPO / package).rglob("*.py")}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_every_config_hook_is_in_the_one_ordered_list():
    from runs.config import CONFIG_HOOKS

    defined = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.FunctionDef) and node.name.startswith("add_") and \
                        node.name.endswith("_config"):
                    defined.add(node.name)
    assert defined == {hook.__name__ for hook in CONFIG_HOOKS}
    assert len(CONFIG_HOOKS) == len(set(CONFIG_HOOKS))
