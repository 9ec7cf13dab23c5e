"""A bounce or a complaint that reached the receiver: mapped to its job and recorded, or kept for inspection.

Mapping, for the realms whose bounce address the message was sent to:
1. the VERP token in the recipient address (`noreply+<token>@acme.example`, worker/bounces/verp.py);
2. else the returned original's Message-ID, `<job id@sender's domain>` (worker/content/message.py), when
   its domain is the realm's From domain. Weaker (anyone who saw the mail knows its Message-ID), hence
   only the fallback for realms without VERP and for bulk, whose recipients' Message-IDs name them.

Recording a mapped report: the outcome (`bounced` hard|soft, `complained`; counters, totals, the realm's
webhooks), the job's latest status (`bounce:<job>`, read by tasks/status.py), and for a hard bounce or a
complaint the address's suppression. Anything else, a report nothing maps or a message that is no report,
is kept (`bounces-unmapped`, newest first, capped, expiring) and listed by `mailworker bounces --unmapped`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config.keys import Keys
from worker.bounces.arf import Complaint, parse_arf
from worker.bounces.dsn import HARD, Report, parse_dsn
from worker.bounces.suppression import COMPLAINT, HARD_BOUNCE, SuppressionList
from worker.bounces.verp import VerpMap, VerpTarget, split_verp
from worker.outcomes.outcome import BOUNCED, COMPLAINED, Outcome
from worker.outcomes.record import Outcomes

RECORD_TTL = 30 * 86400  # a job's bounce stays readable (status) as long as its VERP token maps
UNMAPPED_TTL = 30 * 86400
UNMAPPED_MAX = 1000  # the newest kept; a flood of junk cannot fill Redis
UNMAPPED_MAX_BYTES = 256 * 1024  # of each message kept; enough for the headers and the report parts
RECORDED, KEPT = "recorded", "kept"
_MESSAGE_ID = re.compile(r"<([^<>@\s]+)@([^<>@\s]+)>")


@dataclass(frozen=True)
class Realms:
    """The realms whose bounce address one message was sent to, and their From domains."""

    names: tuple[str, ...]
    domains: Mapping[str, str]  # realm -> From domain (lower case)


def bounce_addresses(fields_by_realm: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """{bounce address (lower case): realms}: the envelope sender (envelope_from, else from) of each realm."""
    addresses: dict[str, list[str]] = {}
    for realm, fields in sorted(fields_by_realm.items()):
        address = fields.get("envelope_from") or fields.get("from")
        if isinstance(address, str) and "@" in address:
            addresses.setdefault(address.strip().lower(), []).append(realm)
    return addresses


def job_of_message_id(
    message_id: str | None, domains: Mapping[str, str], realms: tuple[str, ...]
) -> VerpTarget | None:
    """The job a returned Message-ID names, when its domain is one realm's From domain (the fallback)."""
    match = _MESSAGE_ID.search(message_id or "")
    if match is None or match.group(1).startswith("h="):  # a hashed key names no job id
        return None
    owners = [realm for realm in realms if domains.get(realm) == match.group(2).lower()]
    return VerpTarget(owners[0], match.group(1), None) if len(owners) == 1 else None


class BounceRecorder:
    def __init__(
        self, redis: Any, keys: Keys, verp: VerpMap, suppressions: SuppressionList, outcomes: Outcomes
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.verp = verp
        self.suppressions = suppressions
        self.outcomes = outcomes

    def handle(self, realms: Realms, rcpt: str, data: bytes) -> str:
        """Record what `data` says, or keep it. Returns RECORDED or KEPT."""
        _, token = split_verp(rcpt)
        complaint = parse_arf(data)
        report = parse_dsn(data) if complaint is None else None
        if complaint is None and report is None:
            return self.keep(realms, rcpt, data, "not a bounce report or complaint")
        target = self._target(
            token, realms, complaint.message_id if complaint else report.message_id if report else None
        )
        if target is None:
            return self.keep(
                realms, rcpt, data, "no job found for it (no valid VERP token, unknown Message-ID)"
            )
        if complaint is not None:
            self._complained(target, complaint)
        elif report is not None:
            self._bounced(target, report)
        return RECORDED

    def _target(self, token: str | None, realms: Realms, message_id: str | None) -> VerpTarget | None:
        if token is not None:
            for realm in realms.names:
                if (target := self.verp.resolve(token, realm)) is not None:
                    return target
            return None  # a token that does not verify is a forgery or long expired: no guessing
        return job_of_message_id(message_id, realms.domains, realms.names)

    def _bounced(self, target: VerpTarget, report: Report) -> None:
        now = time.time()
        for status in report.recipients:
            to = target.to or status.recipient
            details = {"status": status.status, "action": status.action, "recipient": status.recipient}
            self.outcomes.record(Outcome(BOUNCED, target.realm, target.job_id, target.template, to, reason=status.kind,
                                         smtp_code=status.smtp_code, smtp_reply=status.diagnostic, details=details))  # fmt: skip
            if status.kind == HARD:
                self.suppressions.add(target.realm, to, HARD_BOUNCE, job_id=target.job_id, status=status.status,
                                      diagnostic=status.diagnostic, now=now)  # fmt: skip
            self._latest(target.job_id, {"status": BOUNCED, "kind": status.kind, "status_code": status.status,
                                         "diagnostic": status.diagnostic, "smtp_code": status.smtp_code,
                                         "recipient": to, "at": now})  # fmt: skip

    def _complained(self, target: VerpTarget, complaint: Complaint) -> None:
        now = time.time()
        to = target.to or complaint.recipient
        details = {"feedback_type": complaint.feedback_type, "user_agent": complaint.user_agent}
        self.outcomes.record(Outcome(COMPLAINED, target.realm, target.job_id, target.template, to,
                                     reason=complaint.feedback_type, details=details))  # fmt: skip
        if to:
            self.suppressions.add(target.realm, to, COMPLAINT, job_id=target.job_id, now=now)
        self._latest(target.job_id, {"status": COMPLAINED, "feedback_type": complaint.feedback_type,
                                     "recipient": to, "at": now})  # fmt: skip

    def _latest(self, job_id: str, record: dict[str, Any]) -> None:
        self.redis.set(self.keys.bounce(job_id), json.dumps(record), ex=RECORD_TTL)

    def keep(self, realms: Realms, rcpt: str, data: bytes, why: str) -> str:
        entry = {"received_at": time.time(), "realms": list(realms.names), "rcpt": rcpt, "why": why,
                 "size": len(data), "message": data[:UNMAPPED_MAX_BYTES].decode("utf-8", "replace")}  # fmt: skip
        pipe = self.redis.pipeline()
        pipe.lpush(self.keys.unmapped_bounces(), json.dumps(entry))
        pipe.ltrim(self.keys.unmapped_bounces(), 0, UNMAPPED_MAX - 1)
        pipe.expire(self.keys.unmapped_bounces(), UNMAPPED_TTL)
        pipe.execute()
        return KEPT


def kept_messages(redis: Any, keys: Keys, limit: int = 50) -> list[dict[str, Any]]:
    """The kept (unmapped) messages, newest first; needs no secret key."""
    return [json.loads(raw) for raw in redis.lrange(keys.unmapped_bounces(), 0, limit - 1)]
