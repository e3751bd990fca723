"""One CLI grammar: one-line usage errors, words that agree with their numbers, reading commands that write nothing."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from agent.cli import cli
from agent.cli.broker_arg import BrokerAddress, parse_broker
from agent.cli.errors import CliError
from agent.config import load_site
from agent.outbox import Outbox
from agent.text import plural
from tests.helpers.outbox_writer import make_event

USAGE_MISTAKES = [
    (["--bogus"], "santi: No such option '--bogus'. Did you mean '--verbose'? (see 'santi --help')"),
    (["frob"], "santi: No such command 'frob'. (see 'santi --help')"),
    (["buffer", "export", "--after-seq", "x"],
     "santi: Invalid value for '--after-seq': 'x' is not a valid integer. (see 'santi buffer export --help')"),
    (["hq", "import", "/nonexistent/pi-1.jsonl"],
     ("santi: Invalid value for 'FILE': '/nonexistent/pi-1.jsonl': No such file or directory "
     "(see 'santi hq import --help')")),
    (["run"], "santi: Missing option '--config'. (see 'santi run --help')"),
]


@pytest.mark.parametrize(("args", "line"), USAGE_MISTAKES, ids=[" ".join(a) for a, _ in USAGE_MISTAKES])
def test_a_usage_error_is_one_line_and_exit_2(args: list[str], line: str) -> None:
    result = CliRunner().invoke(cli, args, prog_name="santi")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == line + "\n"


def test_the_installed_entry_point_prints_one_line_too() -> None:
    result = subprocess.run([sys.executable, "-c", "from agent.cli import main; main()", "hq", "gaps", "--json", "x"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "santi: Got unexpected extra argument (x) (see 'santi hq gaps --help')\n"


@given(st.integers(0, 10**7), st.sampled_from(["shopper", "visit", "bad line", "card tap"]))
def test_plural_agrees_with_its_number(count: int, noun: str) -> None:
    text = plural(count, noun)
    number, _, word = text.partition(" ")
    assert int(number.replace(",", "")) == count
    assert word == (noun if count == 1 else noun + "s")


def test_plural_words_in_the_commands(tmp_path: Path) -> None:
    assert plural(1, "shopper") == "1 shopper"
    assert plural(2, "bad line") == "2 bad lines"
    assert plural(1, "visit") == "1 visit"
    assert plural(1204, "line") == "1,204 lines"
    assert plural(3, "person", "people") == "3 people"
    result = CliRunner().invoke(cli, ["sim", "--site", "examples/fishmonger.toml", "--shoppers", "1", "--minutes", "2",
                                      "--out", str(tmp_path / "sim"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("1 shopper over "), result.stdout


@pytest.mark.parametrize("args", [["hq", "profile", "L1"], ["hq", "gaps"], ["hq", "dead-letters"],
                                  ["hq", "consent", "show", "L1"], ["hq", "activations"], ["hq", "erase", "L1", "--yes"]])
def test_reading_commands_do_not_create_a_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   args: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SANTI_HQ_DB", raising=False)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.stderr == ("santi: no HQ database at santi-hq.sqlite: check --db "
                             "(santi hq run or santi hq import creates it)\n")
    assert list(tmp_path.iterdir()) == []


# -- one spelling of the site file, the state folder and the broker ------------------------------------------------

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fishmonger.toml"


def _leaves(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        found.append(((*prefix, name), command))
        if isinstance(command, click.Group):
            found.extend(_leaves(command, (*prefix, name)))
    return found


def test_the_site_file_is_spelled_config_in_every_help() -> None:
    """No command shows --site or a positional SITE; every one that reads a site file offers --config FILE."""
    with_config = set()
    for path, command in _leaves(cli):
        help_text = CliRunner().invoke(cli, [*path, "--help"], prog_name="santi", terminal_width=200).output
        usage = help_text.splitlines()[0]
        assert "SITE" not in usage, usage
        assert "--site" not in help_text, path
        broker = next((p for p in command.params if "--broker" in getattr(p, "opts", [])), None)
        if broker is not None:
            assert broker.metavar == "HOST:PORT", path
        if any("--config" in getattr(p, "opts", []) for p in command.params):
            assert "--config FILE" in help_text or "--config PATH" in help_text or "--config FILE" in usage, path
            with_config.add(" ".join(path))
    assert {"config check", "buffer status", "buffer export", "buffer drain", "map", "nfc test", "firmware render",
            "run", "doctor", "status", "scan", "sim", "locate", "calibrate fit", "demo"} <= with_config


def _state(tmp_path: Path) -> Path:
    site = tmp_path / "site.toml"
    site.write_text(EXAMPLE.read_text().replace('state_dir = "/var/lib/santi"', f'state_dir = "{tmp_path / "state"}"'))
    (tmp_path / "state").mkdir()
    with Outbox.open(tmp_path / "state" / "outbox.sqlite", load_site(site).buffer) as outbox:
        rng = random.Random(1)
        outbox.append_many([make_event(i, rng) for i in range(3)])
    return site


def test_old_spellings_still_work_and_say_the_same(tmp_path: Path) -> None:
    site = _state(tmp_path)
    runner = CliRunner()
    spellings = [["--config", str(site)], ["--site", str(site)], [str(site)], ["--state-dir", str(tmp_path / "state")]]
    outputs = set()
    for spelling in spellings:
        result = runner.invoke(cli, ["buffer", "status", *spelling, "--json"])
        assert result.exit_code == 0, (spelling, result.output)
        outputs.add(result.stdout)
    assert len(outputs) == 1
    assert '"depth": 3' in outputs.pop()
    exports = []
    for spelling in (["--config", str(site), "-"], [str(site), "-"], ["--state-dir", str(tmp_path / "state"), "-"]):
        result = runner.invoke(cli, ["buffer", "export", *spelling])
        assert result.exit_code == 0, (spelling, result.output)
        assert result.stderr == "exported 3 events\n"
        exports.append(result.stdout)
    assert exports[0] == exports[1] == exports[2] != ""
    for spelling in (["--config", str(EXAMPLE)], ["--site", str(EXAMPLE)], [str(EXAMPLE)]):
        assert runner.invoke(cli, ["config", "check", "-q", *spelling]).exit_code == 0


def test_two_different_site_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    result = CliRunner().invoke(cli, ["config", "check", "--config", str(EXAMPLE), str(other)])
    assert result.exit_code == 2
    assert result.stderr == f"santi: two site configs given ({EXAMPLE} and {other}): give one, with --config\n"
    export = CliRunner().invoke(cli, ["buffer", "export", "--config", str(EXAMPLE), str(other), "-"])
    assert (export.exit_code, export.stdout) == (2, "")
    assert export.stderr == f"santi: two site configs given ({EXAMPLE} and {other}): give one, with --config\n"


def test_buffer_drain_takes_a_state_dir(tmp_path: Path) -> None:
    """The state folder of a running agent, not the config's: drain sends from there (no broker: exit 1, says why)."""
    site = _state(tmp_path)
    moved = tmp_path / "elsewhere"
    (tmp_path / "state").rename(moved)
    result = CliRunner().invoke(cli, ["buffer", "drain", "--config", str(site), "--state-dir", str(moved),
                                      "--timeout", "1", "--json"])
    assert result.exit_code == 1, result.output
    assert '"left": 3' in result.stdout


@pytest.mark.parametrize(("text", "host", "port", "tls"), [
    ("127.0.0.1:1883", "127.0.0.1", 1883, False), ("broker.lan:8883", "broker.lan", 8883, False),
    ("[::1]:1884", "::1", 1884, False), ("mqtt://hq.example:1999", "hq.example", 1999, False),
    ("mqtts://hq.example", "hq.example", 8883, True), ("192.168.1.20", "192.168.1.20", 1883, False),
])
def test_broker_is_host_port_and_the_old_forms_still_parse(text: str, host: str, port: int, tls: bool) -> None:
    assert parse_broker(text) == BrokerAddress(host, port, tls)


@pytest.mark.parametrize("text", ["http://x", "host:port", "host:0", "host:70000", ":1883", "a b:1883", "mqtt://"])
def test_a_bad_broker_names_the_form(text: str) -> None:
    with pytest.raises(CliError) as info:
        parse_broker(text)
    assert str(info.value) == f"--broker {text!r}: give HOST:PORT, e.g. 127.0.0.1:1883"


def test_a_bare_host_takes_the_callers_default_port() -> None:
    assert parse_broker("10.0.0.9", default_port=1884) == BrokerAddress("10.0.0.9", 1884)
    assert parse_broker("10.0.0.9:1999", default_port=1884) == BrokerAddress("10.0.0.9", 1999)
    assert parse_broker("mqtt://10.0.0.9", default_port=1884) == BrokerAddress("10.0.0.9", 1883)


@pytest.mark.parametrize("command", [["node", "--source", "replay:x.jsonl"], ["firmware", "render", "--out", "o"]],
                         ids=["node", "firmware render"])
def test_the_node_broker_commands_use_the_one_broker_parser(command: list[str], tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(EXAMPLE.read_text())
    result = CliRunner().invoke(cli, [*command, "--config", str(site), "--broker", "host:port"], prog_name="santi")
    assert result.exit_code == 2
    assert result.stderr == "santi: --broker 'host:port': give HOST:PORT, e.g. 127.0.0.1:1883\n"


# -- tables at 80 columns -----------------------------------------------------------------------------------------


def test_tables_fit_80_columns_and_cut_nothing(tmp_path: Path) -> None:
    """A technician's terminal is 80 columns: every table line fits, and no path or id ends in '…'."""
    site = _state(tmp_path)
    db = f"sqlite:///{tmp_path}/hq.sqlite"
    export = tmp_path / "export.jsonl"
    runner = CliRunner(env={"COLUMNS": "80"})
    assert runner.invoke(cli, ["buffer", "export", "--config", str(site), str(export)]).exit_code == 0
    export.write_text(export.read_text() + '{"schema": "santi.presence/1", "note": "a line HQ cannot use"}\n')
    assert runner.invoke(cli, ["hq", "import", str(export), "--db", db]).exit_code == 1
    commands = [
        ["config", "check", "--config", str(site)],
        ["doctor", "--config", str(site), "--timeout", "1"],
        ["buffer", "status", "--config", str(site)],
        ["hq", "gaps", "--db", db],
        ["hq", "dead-letters", "--db", db],
        ["map", "--config", str(site), "--no-png"],
    ]
    for args in commands:
        result = runner.invoke(cli, args)
        assert result.exit_code in (0, 1), (args, result.output)
        lines = result.stdout.splitlines()
        assert any(line.startswith(("┏", "┌", "╭")) or "│" in line for line in lines) or args[0] == "buffer", args
        assert "…" not in result.stdout, (args, result.stdout)
        assert max(len(line) for line in lines) <= 80, (args, result.stdout)
