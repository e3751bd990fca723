"""The shipped JSON Schema files are exactly what the models generate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agent import schema
from agent.events import EVENT_MODELS


def test_generated_schema_files_are_fresh() -> None:
    stale = schema.stale()
    assert not stale, f"docs/schema is stale for {stale}: run `python -m agent.schema`"


def test_help_and_check_write_nothing(tmp_path: Path) -> None:
    for argv in (["--help"], ["--check"]):
        result = subprocess.run([sys.executable, "-m", "agent.schema", *argv, "--out", str(tmp_path)],
                                capture_output=True, text=True, check=False)
        assert list(tmp_path.iterdir()) == [], argv
    assert result.returncode == 1
    assert "stale:" in result.stdout
    assert schema.main(["--out", str(tmp_path)]) == 0
    assert schema.main(["--check", "--out", str(tmp_path)]) == 0


def test_every_type_has_a_schema_with_its_fields_documented() -> None:
    for name in EVENT_MODELS:
        data = json.loads((schema.SCHEMA_DIR / f"{name}.json").read_text())
        assert data["properties"]["type"]["const"] == name
        assert "schema" in data["properties"]
        for field, spec in data["properties"].items():
            assert "description" in spec, f"{name}.{field} has no description"
