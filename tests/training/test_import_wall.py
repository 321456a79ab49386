"""The wall between trainer and pipeline: every module under training/ imports `pipeline.contract` (and its
submodules) and no other part of `pipeline` - at the top, inside functions, or through importlib."""
from __future__ import annotations

import ast
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[2] / "training"
ALLOWED = "pipeline.contract"


def _allowed(module: str) -> bool:
    return module == ALLOWED or module.startswith(ALLOWED + ".")


def pipeline_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every `pipeline` import in a module's syntax tree, at any depth."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pipeline":   # from pipeline import contract, stages
                found += [(node.lineno, f"pipeline.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return [(line, name) for line, name in found if name == "pipeline" or name.startswith("pipeline.")]


def test_training_imports_only_the_contract_of_pipeline():
    modules = sorted(TRAINING.rglob("*.py"))
    assert len(modules) > 20, modules    # the walk found the trainer
    offending = []
    for path in modules:
        tree = ast.parse(path.read_text(), filename=str(path))
        offending += [f"{path.relative_to(TRAINING.parent)}:{line}: {name}"
                      for line, name in pipeline_imports(tree) if not _allowed(name)]
    assert not offending, "training/ may import pipeline.contract only:\n" + "\n".join(offending)


def test_the_walk_sees_function_level_and_importlib_imports():
    source = ("import pipeline\nfrom pipeline import contract, stages\nfrom pipeline.contract.errors import X\n"
              "def f():\n    from pipeline.store.fingerprint import fingerprint\n"
              "    importlib.import_module('pipeline.knn')\n")
    names = [name for _, name in pipeline_imports(ast.parse(source))]
    assert names == ["pipeline", "pipeline.contract", "pipeline.stages", "pipeline.contract.errors",
                     "pipeline.store.fingerprint", "pipeline.knn"]
    assert [n for n in names if not _allowed(n)] == ["pipeline", "pipeline.stages", "pipeline.store.fingerprint",
                                                     "pipeline.knn"]
