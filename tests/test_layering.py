"""The package boundaries the design card promises, checked on the source: `meg` (shared
code) imports neither side, the service never imports training, and the engine knows no
HTTP framework."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Modules imported by `path`; with top_level_only, not those inside functions
    (the CLI imports its subcommands lazily)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def _roots(mods: set[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


@pytest.mark.parametrize("package,top_level_only,forbidden", [
    ("meg", True, {"service", "training"}),
    ("service", False, {"training"}),
    ("service/engine", False, {"fastapi", "starlette", "uvicorn", "httpx"}),
], ids=["meg", "service", "engine"])
def test_package_does_not_import(package: str, top_level_only: bool, forbidden: set[str]) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    bad = {str(f.relative_to(ROOT)): sorted(_roots(_imports(f, top_level_only)) & forbidden)
           for f in files}
    assert not {k: v for k, v in bad.items() if v}


def test_engine_errors_have_one_http_status_each() -> None:
    from service.engine import errors as E
    from service.errors import ENGINE_STATUS

    kinds = [c for c in vars(E).values()
             if isinstance(c, type) and issubclass(c, E.EngineError) and c is not E.EngineError]
    assert sorted(c.__name__ for c in kinds) == sorted(c.__name__ for c in ENGINE_STATUS)
