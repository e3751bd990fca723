"""One CLI grammar: one-line usage errors, words that agree with their numbers, reading commands that write nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from agent.cli import cli
from agent.text import plural

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
