"""Fixtures of the fault scenarios: a cluster (private Redis + worker processes) and SMTP sinks.

The slow scenarios are marked `reliability` (`make reliability`); the fast ones are not, so `make test`
runs them too. See docs/reliability.md for what each proves and its figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import Cluster
from tests.reliability.sink import Sink


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster.start(tmp_path) as found:
        yield found


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as found:
        yield found
