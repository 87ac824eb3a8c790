"""The subpackages import each other one way only (see README, "Code layout").

Every ``import nnsam3d.X`` in the source, including those inside functions, counts as an edge
from the importing subpackage to X.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import nnsam3d

PACKAGE_ROOT = Path(nnsam3d.__file__).parent

ALLOWED = {
    "io": set(),
    "paths": set(),
    "devices": set(),
    "model": set(),
    "schemas": {"io", "model"},
    "evaluation": {"io"},
    "preprocessing": {"io", "paths", "schemas"},
    "planners": {"io", "paths", "devices", "model", "schemas", "preprocessing"},
    "inference": {"io", "paths", "devices", "model", "schemas", "preprocessing"},
    "interactive": {"io", "paths", "devices", "model", "schemas", "preprocessing", "inference"},
    "trainers": {"io", "paths", "devices", "model", "schemas", "preprocessing", "inference", "interactive",
                 "evaluation"},
    "model_sharing": {"io", "paths", "devices", "model", "schemas", "inference"},
    "serving": {"io", "paths", "devices", "model", "schemas", "preprocessing", "inference", "interactive",
                "model_sharing"},
    "model_selection": {"io", "paths", "devices", "inference", "interactive", "evaluation"},
    "reporting": {"io", "paths", "devices", "schemas", "inference", "interactive", "evaluation"},
    "demo": {"io", "paths", "devices", "schemas", "planners", "trainers", "inference", "interactive", "evaluation",
             "reporting"},
}
"""What each part may import; ``commands`` may import anything and nothing imports it."""


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "nnsam3d" and len(parts) > 1 else None


def import_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for source in PACKAGE_ROOT.rglob("*.py"):
        relative = source.relative_to(PACKAGE_ROOT).parts
        if relative == ("__init__.py",):
            continue
        importer = relative[0].removesuffix(".py")
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "nnsam3d":
                    targets = [alias.name for alias in node.names]
                else:
                    targets = [_subpackage(node.module)]
            elif isinstance(node, ast.Import):
                targets = [_subpackage(alias.name) for alias in node.names]
            else:
                continue
            edges[importer].update(t for t in targets if t and t != importer)
    return edges


def test_every_subpackage_imports_only_what_the_layering_allows():
    edges = import_edges()
    assert set(edges) - {"commands"} <= set(ALLOWED), "a new subpackage needs its place in ALLOWED"
    violations = {
        importer: sorted(targets - ALLOWED[importer])
        for importer, targets in edges.items()
        if importer != "commands" and targets - ALLOWED[importer]
    }
    assert not violations, f"imports against the layering: {violations}"
    assert not any("commands" in targets for importer, targets in edges.items() if importer != "commands")


def test_the_allowed_layering_has_no_cycle():
    visiting, done = set(), set()

    def visit(node: str, path: list[str]) -> None:
        assert node not in visiting, f"import cycle: {' -> '.join(path)}"
        if node in done:
            return
        visiting.add(node)
        for target in ALLOWED.get(node, ()):
            visit(target, [*path, target])
        visiting.discard(node)
        done.add(node)

    for node in ALLOWED:
        visit(node, [node])


def test_inference_knows_nothing_of_clicks():
    """The predictor opens no session: the interactive room builds on inference, never the reverse."""
    assert "interactive" not in ALLOWED["inference"]
    assert "interactive" not in import_edges()["inference"]
