"""Where shared test code lives: tests/helpers/, never another test module; benchmarks import only the project.

A test module importing another one's private helper couples two test files
(and runs the other's module-level setup); a benchmark importing ``tests``
measures through code no user runs. Both are read off the sources with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

TESTS = ROOT / "tests"
BENCHMARKS = ROOT / "benchmarks"
POLL_NAMES = {"until", "_until", "poll", "_poll", "wait", "_wait", "wait_for", "_wait_for", "wait_depth",
              "wait_until", "_wait_status"}
"""Names the hand-rolled poll loops went by; tests.helpers.wait.wait_until is the one left."""


def _imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``; relative imports resolved against its package."""
    package = ".".join(path.relative_to(root).parent.parts)
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found += [(node.lineno, module)]
            if node.module is None:  # from . import test_x
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _is_test_module(module: str) -> bool:
    return module.startswith("tests.") and any(part.startswith("test_") for part in module.split(".")[1:])


def test_no_test_module_imports_another() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in sorted(TESTS.rglob("*.py"))
                 for line, module in _imported_modules(path) if _is_test_module(module)]
    assert offenders == [], "shared test code belongs in tests/helpers/:\n" + "\n".join(offenders)


def test_benchmarks_import_only_the_project() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in sorted(BENCHMARKS.rglob("*.py"))
                 for line, module in _imported_modules(path) if module == "tests" or module.startswith("tests.")]
    assert offenders == [], "benchmarks measure the project, never tests/:\n" + "\n".join(offenders)


def test_one_poll_helper() -> None:
    """Test modules wait with tests.helpers.wait.wait_until, not a poll loop of their own."""
    offenders = [f"{path.relative_to(ROOT)}:{node.lineno} defines {node.name}()"
                 for path in sorted(TESTS.rglob("*.py")) if path != TESTS / "helpers" / "wait.py"
                 for node in ast.parse(path.read_text(encoding="utf-8")).body
                 if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in POLL_NAMES]
    assert offenders == [], "\n".join(offenders)


def test_the_checks_see_what_they_look_for(tmp_path: Path) -> None:
    """The import reader finds absolute, relative and bare-package imports of a test module."""
    probe = tmp_path / "tests" / "helpers" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from tests.test_uplink import fill\nfrom ..test_ack import ack\nfrom .. import test_ack\n"
                     "import tests.test_ack\nfrom tests.helpers.wait import wait_until\n", encoding="utf-8")
    modules = [module for _, module in _imported_modules(probe, tmp_path)]
    assert [m for m in modules if _is_test_module(m)] == ["tests.test_uplink", "tests.test_ack", "tests.test_ack",
                                                          "tests.test_ack"]
