"""Regenerate the checked-in JSON Schema of contract v1 and the OpenAPI 2.0 connector document."""

from __future__ import annotations

import json
from pathlib import Path

from shared.api.openapi import document
from shared.reset.contract import json_schema

SHARED = Path(__file__).resolve().parent.parent / "shared"
SCHEMA_PATH = SHARED / "reset" / "schemas" / "reset-request.v1.schema.json"
OPENAPI_PATH = SHARED / "api" / "schemas" / "openapi.v2.json"
# The connector file names a placeholder host: replace it with your function app's host on import.
CONNECTOR_HOST = "your-function-app.azurewebsites.net"


def main() -> None:
    SCHEMA_PATH.write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")
    OPENAPI_PATH.write_text(json.dumps(document(CONNECTOR_HOST), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {SCHEMA_PATH} and {OPENAPI_PATH}")


if __name__ == "__main__":
    main()
