"""Generate the JSON Schema of every event type into ``docs/schema/``.

HQ teams validate payloads in their own language against these files, so
they are generated from the models and a test fails when they go stale.
Run ``python -m agent.schema`` after changing ``agent/events.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from agent.events import EVENT_MODELS, Ack, Event
from agent.messages import ConsentUpdate, StaffCard

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schema"


def schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema: one per event type, the union of all, and the other messages (ack, consent, staff card)."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in EVENT_MODELS.items():
        schema = model.model_json_schema(by_alias=True, mode="serialization")
        schema["$id"] = f"https://santi.dev/schema/{name}.json"
        out[f"{name}.json"] = schema
    union = TypeAdapter(Event).json_schema(by_alias=True, mode="serialization")
    union["$id"] = "https://santi.dev/schema/event.json"
    union["title"] = "SantiEvent"
    out["event.json"] = union
    for name, message in (("ack", Ack), ("consent", ConsentUpdate), ("staff-card", StaffCard)):
        schema = message.model_json_schema(by_alias=True, mode="serialization")
        schema["$id"] = f"https://santi.dev/schema/{name}.json"
        out[f"{name}.json"] = schema
    return out


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Files in ``directory`` that differ from what the models generate (or are missing)."""
    out = []
    for name, schema in schemas().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != render(schema):
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.schema",
        description="Write the JSON Schema of every event and message into docs/schema/ from agent/events.py "
                    "and agent/messages.py.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file is stale")
    parser.add_argument("--out", type=Path, default=SCHEMA_DIR, help=f"directory to write (default {SCHEMA_DIR})")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.out)
        for name in names:
            sys.stdout.write(f"stale: {args.out / name}\n")
        return 1 if names else 0
    for path in write(args.out):
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
