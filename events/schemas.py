"""JSON Schemas of the events, generated from the models and checked into ``docs/schemas/``.

OA developers who do not use Python validate against these files; a test
fails when they drift from the models. Regenerate with::

    editflow events schemas --write          # or: python -m editflow.events.schemas
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from editflow.events.models import EVENT_TYPES

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def file_name(event_type: str) -> str:
    """``io.editflow.approval.v1`` -> ``io.editflow.approval.v1.json``."""
    return f"{event_type}.json"


def schema(event_type: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event type, envelope included."""
    model = EVENT_TYPES[event_type]
    doc = model.model_json_schema(mode="validation")
    doc["properties"]["type"] = {"const": event_type, "title": "Type"}
    doc["required"] = sorted({*doc.get("required", []), "id", "type", "specversion"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://editflow.io/schemas/{file_name(event_type)}",
        **doc,
    }


def render(event_type: str) -> str:
    return json.dumps(schema(event_type), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for event_type in EVENT_TYPES:
        path = directory / file_name(event_type)
        path.write_text(render(event_type), encoding="utf-8")
        paths.append(path)
    return paths


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """File names whose content differs from the models (missing files included)."""
    out = []
    for event_type in EVENT_TYPES:
        path = directory / file_name(event_type)
        if not path.exists() or path.read_text(encoding="utf-8") != render(event_type):
            out.append(path.name)
    return out


if __name__ == "__main__":  # pragma: no cover
    for written in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR):
        print(written)
