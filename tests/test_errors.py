"""One error root: every exception class derives from `SantiError`, names are unique, the CLI translates once."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from agent.cli import SantiGroup, cli
from agent.errors import EXIT_BAD_INPUT, EXIT_FAILURE, InputError, SantiError
from agent.localbroker import example_site_for

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "positioning", "simulator", "hq")
BUILTIN_EXCEPTIONS = {name for name, value in vars(builtins).items()
                      if isinstance(value, type) and issubclass(value, BaseException)}


def _project_modules() -> list[str]:
    names: list[str] = []
    for package in PACKAGES:
        names.append(package)
        module = importlib.import_module(package)
        names += [info.name for info in pkgutil.walk_packages(module.__path__, f"{package}.")]
    return names


def _exception_classes() -> list[type[BaseException]]:
    found: dict[int, type[BaseException]] = {}
    for name in _project_modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (inspect.isclass(value) and issubclass(value, BaseException)
                    and value.__module__.split(".")[0] in PACKAGES):
                found[id(value)] = value
    return sorted(found.values(), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def test_every_exception_class_of_the_packages_derives_from_the_root() -> None:
    classes = _exception_classes()
    assert len(classes) >= 20  # the walk found the project's errors, not an empty list
    strays = [f"{c.__module__}.{c.__qualname__}" for c in classes if not issubclass(c, SantiError)]
    assert strays == []


def test_exception_names_are_unique_across_the_project() -> None:
    by_name: dict[str, list[str]] = {}
    for c in _exception_classes():
        by_name.setdefault(c.__name__, []).append(c.__module__)
    assert {name: modules for name, modules in by_name.items() if len(modules) > 1} == {}


def _source_files() -> list[Path]:
    folders = [*PACKAGES, "benchmarks"]
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_no_class_outside_the_root_derives_from_a_builtin_exception() -> None:
    """Read with ast so scripts that are never imported (benchmarks) are covered too."""
    offenders: list[str] = []
    for path in _source_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
                bases |= {b.attr for b in node.bases if isinstance(b, ast.Attribute)
                          and isinstance(b.value, ast.Name) and b.value.id in {"builtins", "sqlite3"}}
                if bases & BUILTIN_EXCEPTIONS and not (path.name == "errors.py" and node.name == "SantiError"):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert offenders == []


def _rewords_a_santi_error(handler: ast.ExceptHandler, namespace: dict[str, object]) -> bool:
    """``except <SantiError subclasses> as exc: raise CliError(str(exc))``: what the root already does."""
    if handler.type is None or len(handler.body) != 1 or not isinstance(handler.body[0], ast.Raise):
        return False
    raised = handler.body[0].exc
    if not (isinstance(raised, ast.Call) and ast.unparse(raised.func) == "CliError"
            and [ast.unparse(a) for a in raised.args] == [f"str({handler.name})"]):
        return False
    caught = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    classes = [namespace.get(ast.unparse(c)) for c in caught]
    return all(inspect.isclass(c) and issubclass(c, SantiError) for c in classes)


def test_the_cli_does_not_reword_santi_errors_by_hand() -> None:
    found: list[str] = []
    for path in sorted((ROOT / "agent" / "cli").glob("*.py")):
        module = importlib.import_module(f"agent.cli.{path.stem}" if path.stem != "__init__" else "agent.cli")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ExceptHandler) and _rewords_a_santi_error(node, vars(module)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def _raiser(error: SantiError) -> click.Command:
    @click.command("fail")
    def fail() -> None:
        raise error
    return fail


@pytest.mark.parametrize(("error", "line", "code"), [
    (SantiError("the broker went away"), "santi: the broker went away", EXIT_FAILURE),
    (InputError("site.toml:3: store.id: missing\n  add it"), "santi: site.toml:3: store.id: missing; add it",
     EXIT_BAD_INPUT),
])
def test_the_root_prints_one_line_and_the_errors_exit_code(error: SantiError, line: str, code: int) -> None:
    result = CliRunner().invoke(SantiGroup(commands=[_raiser(error)]), ["fail"])
    assert (result.exit_code, result.stderr, result.stdout) == (code, line + "\n", "")


def test_a_broken_config_is_one_line_and_exit_2_through_santi(tmp_path: Path) -> None:
    bad = tmp_path / "site.toml"
    bad.write_text('[store]\nid = "x"\nname = 3\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["config", "check", str(bad)])
    assert result.exit_code == EXIT_BAD_INPUT
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"santi: {bad}:")


def test_an_unusable_database_url_is_one_line_and_exit_2_through_santi() -> None:
    result = CliRunner().invoke(cli, ["hq", "gaps", "--db", "oracle://nowhere/x"])
    assert (result.exit_code, result.stderr) == (EXIT_BAD_INPUT, result.stderr.splitlines()[0] + "\n")
    assert result.stderr.startswith("santi: unsupported database URL")


def test_a_radio_failure_is_one_line_and_exit_1_through_santi(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/santi-no-such-bus")
    site = example_site_for(tmp_path, 1)
    result = CliRunner().invoke(cli, ["calibrate", "receiver", "pi-ble", "--config", str(site),
                                      "--beacon", "f7826da6-4fa2-4e98-8024-bc5b71e0893e:100:1"])
    assert result.exit_code == EXIT_FAILURE
    assert result.stderr.splitlines()[-1].startswith("santi: Bluetooth did not start: cannot reach the system D-Bus")
