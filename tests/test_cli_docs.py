"""Every CLI command has help text and an example, and the README names the two commands."""

from __future__ import annotations

from pathlib import Path

import click
from click.testing import CliRunner

from agent.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        path = (*prefix, name)
        found.append((path, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, path))
    return found


def test_every_command_has_help_and_leaf_commands_an_example() -> None:
    runner = CliRunner()
    for path, command in _commands(cli):
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, path
        assert command.help, f"santi {' '.join(path)} has no help"
        if not isinstance(command, click.Group):
            assert "Example" in command.help, f"santi {' '.join(path)} has no example"


def test_every_command_is_listed_and_found() -> None:
    paths = {path for path, _ in _commands(cli)}
    assert {("run",), ("buffer", "drain"), ("calibrate", "receiver"), ("calibrate", "fit"), ("nfc", "test"),
            ("hq", "run"), ("locate",), ("map",)} <= paths
    assert len(paths) >= 30


def test_version() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("santi ")


def test_readme_has_the_two_commands() -> None:
    text = README.read_text()
    assert "./run-demo" in text
    assert "./run-tests" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "./run-tests" in ci
