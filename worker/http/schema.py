"""The OpenAPI schema of the HTTP API as a file: `make openapi` writes docs/openapi.json with it.

python -m worker.http.schema > docs/openapi.json
"""

from __future__ import annotations

import json
from typing import Any


def schema() -> dict[str, Any]:
    from worker.http.app import create_app

    document: dict[str, Any] = create_app().openapi()
    return document


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    print(schema_text(), end="")
