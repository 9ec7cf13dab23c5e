"""config/variables.py: MAILWORKER_* variables that would be ignored silently."""

from __future__ import annotations

import pytest

from config.settings import ServiceSettings
from config.variables import variable_problem


@pytest.mark.parametrize(
    "environ, problem",
    [
        ({}, None),
        ({"MAILWORKER_MAX_ATTEMPTS": "3", "PATH": "/bin"}, None),
        ({"mailworker_max_attempts": "3"}, None),  # pydantic-settings reads names in any case
        ({"MAILWORKER_TEST_SECRET_KEY": "x", "MAILWORKER_DEMO_REDIS_URL": "x"}, None),  # the project's own
        ({"MAILWORKER_SOMETHING_ELSE": "1"}, None),  # far from any setting: not ours to judge
        ({"MAILWORKER_VISIBILITY_TIMEOUT": "100"}, "MAILWORKER_VISIBILITY_TIMEOUT was removed: "),
        ({"MAILWORKER_MAX_ATTEMPT": "3"}, "MAILWORKER_MAX_ATTEMPT is not a setting: did you mean MAILWORKER_MAX_ATTEMPTS?"),
        ({"MAILWORKER_RETRY_MAX_DELY": "3"}, "did you mean MAILWORKER_RETRY_MAX_DELAY?"),
        ({"MAILWORKER_SECRETKEY": "k"}, "did you mean MAILWORKER_SECRET_KEY?"),
    ],
)  # fmt: skip
def test_variable_problem(environ: dict[str, str], problem: str | None) -> None:
    said = variable_problem(environ, ServiceSettings.model_fields)
    if problem is None:
        assert said is None
    else:
        assert said is not None and problem in said
