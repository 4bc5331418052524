"""Regenerate the checked-in JSON Schema of contract v1 from the pydantic model."""

from __future__ import annotations

import json
from pathlib import Path

from shared.contract import json_schema

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "shared" / "schemas" / "reset-request.v1.schema.json"


def main() -> None:
    SCHEMA_PATH.write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
