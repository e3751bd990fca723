"""The shipped JSON Schema files are exactly what the models generate."""

from __future__ import annotations

import json

from agent import schema
from agent.events import EVENT_MODELS


def test_generated_schema_files_are_fresh() -> None:
    stale = []
    for name, generated in schema.schemas().items():
        path = schema.SCHEMA_DIR / name
        if not path.is_file() or path.read_text(encoding="utf-8") != schema.render(generated):
            stale.append(name)
    assert not stale, f"docs/schema is stale for {stale}: run `python -m agent.schema`"


def test_every_type_has_a_schema_with_its_fields_documented() -> None:
    for name in EVENT_MODELS:
        data = json.loads((schema.SCHEMA_DIR / f"{name}.json").read_text())
        assert data["properties"]["type"]["const"] == name
        assert "schema" in data["properties"]
        for field, spec in data["properties"].items():
            assert "description" in spec, f"{name}.{field} has no description"
