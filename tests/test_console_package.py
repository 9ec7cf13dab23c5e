"""An installed wheel carries the console's pages, stylesheet and script: pyproject's package-data names
every file under worker/http/console/templates and static (a new file that it misses fails here)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_package_data_names_every_console_file() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "worker"
    ]
    console = ROOT / "worker" / "http" / "console"
    files = [p for folder in ("templates", "static") for p in (console / folder).rglob("*") if p.is_file()]
    assert files
    missed = [str(p.relative_to(ROOT)) for p in files
              if not any(fnmatch.fnmatch(str(p.relative_to(ROOT / "worker")), pattern) for pattern in patterns)]  # fmt: skip
    assert not missed, f"pyproject.toml [tool.setuptools.package-data] worker lacks {missed}"
