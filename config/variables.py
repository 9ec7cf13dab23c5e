"""MAILWORKER_* variables that are not settings: a removed one, or a typo, is refused rather than ignored.

pydantic-settings ignores a variable it does not know, so `MAILWORKER_MAX_ATTEMPT=3` (no S) or a setting
an upgrade removed would change nothing, silently, on the machine of whoever set it. A variable close to a
setting's name, or one that was removed, is one line naming it; any other MAILWORKER_* variable is left
alone (the compose file, the demo and the tests use some of their own).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

PREFIX = "MAILWORKER_"

# Settings that were removed, and what replaces them.
REMOVED = {
    "MAILWORKER_VISIBILITY_TIMEOUT": (
        "was removed: a dead worker's jobs now return one lease after its death, however long tasks run "
        "(MAILWORKER_WORKER_LEASE, docs/delivery.md); remove it"
    ),
}
# Variables of the project that are not service settings.
OTHERS = frozenset({
    "MAILWORKER_CONCURRENCY", "MAILWORKER_BULK_CONCURRENCY", "MAILWORKER_REDIS_PORT",  # docker-compose.yml
    "MAILWORKER_FLOWER_BASIC_AUTH",  # Flower's entry point
    "MAILWORKER_DEMO_REDIS_URL",  # worker/demo.py
    "MAILWORKER_TEST_REDIS_URL", "MAILWORKER_TEST_SECRET_KEY",  # tests/
    "MAILWORKER_SCREENSHOTS", "MAILWORKER_REQUIRE_BROWSER",  # tests/support/browser.py, .ci/run
})  # fmt: skip
# How close a name must be to a setting's to be taken for a typo of it (difflib's ratio).
TYPO_CUTOFF = 0.85


def variable_problem(environ: Mapping[str, str], settings: Iterable[str]) -> str | None:
    """One line for the first removed or misspelled MAILWORKER_* variable in `environ`, else None.
    `settings`: the field names of ServiceSettings."""
    known = {PREFIX + name.upper() for name in settings}
    for name in sorted(n for n in environ if n.upper().startswith(PREFIX)):
        upper = name.upper()
        if upper in known or upper in OTHERS:
            continue
        if upper in REMOVED:
            return f"{name} {REMOVED[upper]}"
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=TYPO_CUTOFF)
        if close:
            return f"{name} is not a setting: did you mean {close[0]}? (docs/operations.md#service-configuration)"
    return None
