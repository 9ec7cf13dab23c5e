"""An outcome: what became of a job (or of a bulk chunk's recipients), as every reader of outcomes sees it.

Recorded where a job ends (worker/delivery/deliver.py, tasks/runner.py, worker/bulk/chunks.py) and where
news of it comes later (a bounce, a complaint). It names the job and the recipient, never a secret and
never the mail's context (its links and personal data stay in the job).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

SENT = "sent"
DEAD_LETTERED = "dead_lettered"
EXPIRED = "expired"  # a dead letter whose reason is `expired`: the link died before the mail could go
DROPPED = "dropped"
BOUNCED = "bounced"
COMPLAINED = "complained"
BULK_FINISHED = "bulk.finished"
EVENTS = (SENT, DEAD_LETTERED, EXPIRED, DROPPED, BOUNCED, COMPLAINED, BULK_FINISHED)

# The per-realm hourly counters (worker/jobs/stats.py, `mailworker stats`) keep their names.
STAT_NAMES = {SENT: "sent", DEAD_LETTERED: "dead", EXPIRED: "dead", DROPPED: "dropped_cooldown",
              BOUNCED: "bounced", COMPLAINED: "complained"}  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    event: str  # one of EVENTS
    realm: str
    job_id: str  # a bulk chunk's outcomes name the bulk job
    template: str | None = None
    to: str | None = None  # None for a count of a bulk chunk's recipients
    reason: str | None = None  # a dead letter's reason, a drop's (cooldown), a bounce's kind (hard, soft)
    smtp_code: int | None = None
    smtp_reply: str | None = None
    at: float = field(default_factory=time.time)
    count: int = 1  # a bulk chunk records its recipients at once
    bulk: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown outcome {self.event!r}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "details": dict(self.details)}


def dead_letter_event(reason: str) -> str:
    """A dead letter's outcome: `expired` when the job outlived its link, else `dead_lettered`."""
    return EXPIRED if reason == "expired" else DEAD_LETTERED
