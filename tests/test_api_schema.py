"""docs/openapi.json is the schema the app serves (`make openapi` writes it)."""

from __future__ import annotations

import json
from pathlib import Path

from worker.http.schema import schema

DOCS_SCHEMA = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


def test_the_schema_in_docs_is_current() -> None:
    kept = json.loads(DOCS_SCHEMA.read_text(encoding="utf-8"))
    assert kept == schema(), "docs/openapi.json is not current: run `make openapi`"


def test_every_operation_says_what_it_does() -> None:
    for path, operations in schema()["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
