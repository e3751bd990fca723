"""Imports point one way (docs/architecture.md): read every module's imports with ast and check the arrows.

Allowed arrows between Santi's parts:

- ``agent/cli`` (the composition root) → anything;
- ``agent`` outside the CLI → ``agent``, ``positioning``;
- ``simulator`` → the contract layer of ``agent``, ``positioning``, ``simulator``;
- ``hq`` → the contract layer of ``agent``, ``hq``;
- ``positioning`` → ``positioning``, NumPy, SciPy and the standard library only;
- the contract layer → the contract layer and ``positioning`` (so it never drags the daemon in).

Lazy imports inside functions count: they are arrows too. No cycle among the parts.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "positioning", "simulator", "hq")

CONTRACT = frozenset({
    "agent.backoff",           # one retry schedule, the HQ subscriber's included
    "agent.config",            # the site config
    "agent.errors",            # the error root
    "agent.events",            # presence events and HQ's acknowledgement
    "agent.fingerprint_file",  # the sector fingerprint file the calibration writes
    "agent.messages",          # consent and staff cards
    "agent.mqttclient",        # the one MQTT client builder (client, TLS, credentials)
    "agent.npzfile",           # the .npz reading and writing the two files above share
    "agent.observations",      # observations and card taps, the replay records
    "agent.privacy",           # pseudonyms
    "agent.probe_keys",        # anonymous Wi-Fi probe keys
    "agent.radiomap_file",     # the radio map file the calibration writes
    "agent.ratelimit",         # log throttling of the replay reader
    "agent.replayfile",        # the JSON Lines replay format
    "agent.site_arrays",       # a site config as the arrays positioning takes
    "agent.siteedit",          # comment-keeping edits of a site config's text
    "agent.text",              # counts that agree with their nouns, tables that fold instead of cutting
    "agent.tomllines",         # TOML file reading and line numbers for one-line errors
})
"""The part of `agent` that `simulator` and `hq` may import; docs/architecture.md lists it too."""


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports, at top level or inside a function, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in MODULES}
    return found


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(module: str) -> str:
    return "agent.cli" if module == "agent.cli" or module.startswith("agent.cli.") else module.split(".", maxsplit=1)[0]


def _allowed(importer: str, imported: str) -> bool:
    source, target = _part(importer), _part(imported)
    if target not in (*PACKAGES, "agent.cli", "tests", "benchmarks"):
        return True  # the standard library and third parties: checked for positioning below
    if source == "agent.cli":
        return target != "tests" and target != "benchmarks"
    if importer in CONTRACT:
        return imported in CONTRACT or target == "positioning"
    allowed = {
        "agent": {"agent", "positioning"},
        "simulator": {"simulator", "positioning"},
        "hq": {"hq"},
        "positioning": {"positioning"},
    }[source]
    if source in ("simulator", "hq") and target == "agent":
        return imported in CONTRACT
    return target in allowed


def test_the_contract_layer_exists() -> None:
    assert sorted(CONTRACT - set(MODULES)) == []


def test_every_import_follows_an_allowed_arrow() -> None:
    wrong = sorted(f"{importer} -> {imported}" for importer, imported_set in IMPORTS.items()
                   for imported in imported_set if not _allowed(importer, imported))
    assert wrong == []


def test_nothing_in_agent_outside_the_cli_imports_simulator_or_hq() -> None:
    wrong = sorted(f"{m} -> {i}" for m, found in IMPORTS.items() if _part(m) == "agent"
                   for i in found if _part(i) in ("simulator", "hq"))
    assert wrong == []


def test_positioning_imports_only_numpy_scipy_and_the_standard_library() -> None:
    outside = {i.split(".")[0] for m, found in IMPORTS.items() if _part(m) == "positioning" for i in found}
    allowed = {"positioning", "numpy", "scipy", "__future__", *sys.stdlib_module_names}
    assert sorted(outside - allowed) == []


def test_no_cycle_among_the_parts() -> None:
    arrows: dict[str, set[str]] = defaultdict(set)
    for importer, found in IMPORTS.items():
        for imported in found:
            if imported in MODULES and _part(imported) != _part(importer):
                arrows[_part(importer)].add(_part(imported))
    seen: set[str] = set()

    def visit(part: str, path: tuple[str, ...]) -> None:
        assert part not in path, " -> ".join((*path, part))
        if part in seen:
            return
        for nxt in sorted(arrows[part]):
            visit(nxt, (*path, part))
        seen.add(part)

    for part in sorted(arrows):
        visit(part, ())


@pytest.mark.parametrize(("importer", "imported", "allowed"), [
    ("agent.cli.sim_cmd", "simulator.run", True),
    ("agent.calibration_walk", "simulator.calibrate", False),
    ("agent.locator", "hq.store", False),
    ("simulator.run", "agent.config", True),
    ("simulator.run", "agent.service", False),
    ("hq.store", "agent.events", True),
    ("hq.store", "positioning.tracker", False),
    ("positioning.tracker", "agent.config", False),
    ("agent.config", "agent.service", False),
])
def test_the_rules_themselves(importer: str, imported: str, allowed: bool) -> None:
    assert _allowed(importer, imported) is allowed
