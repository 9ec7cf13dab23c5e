"""A bulk job's recipients as a chunk run sees them, their messages (rendered once per locale), and the
groups they are sent in."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config.errors import InvalidInput
from config.smtp import SmtpSettings
from worker.bounces.suppression import SKIP, SuppressionList, decide
from worker.bulk.progress import BulkJob, BulkJobs
from worker.content.message import OutgoingMessage, build_message
from worker.content.render import RenderedEmail, RenderError, TemplateRenderer
from worker.delivery.deliver import DeliveryFailure

# Messages per group: one rate-limit reservation, one pipelined SMTP burst, one Redis commit.
MAX_GROUP = 20
# A reserved group leaves in a burst; at most this share of a second's rate per group keeps any window
# within the limit plus a few messages (at 200/s: groups of 4, where 5% of a 2-second window is 20).
GROUP_SHARE_OF_RATE = 0.02
# Accepted recipients are committed at least this often while a group is sent (see EarlyCommit).
COMMIT_EVERY_S = 0.05


@dataclass(frozen=True, slots=True)
class Recipient:
    index: int  # position in the job (the bit in the done bitmap)
    to: str
    name: str | None = None
    locale: str | None = None
    context: dict[str, Any] | None = None


def chunk_recipients(first_index: int, stored: list[dict[str, Any]]) -> list[Recipient]:
    return [
        Recipient(first_index + offset, item["to"], item.get("name"), item.get("locale"), item.get("context"))
        for offset, item in enumerate(stored)
    ]


def without_suppressed(
    suppressions: SuppressionList, realm: str, recipients: list[Recipient]
) -> tuple[list[Recipient], list[Recipient]]:
    """(to send, suppressed): one round trip for the whole chunk, the hot path stays cheap."""
    flags = suppressions.suppressed(realm, [r.to for r in recipients])
    kept: list[Recipient] = []
    skipped: list[Recipient] = []
    for recipient, suppressed in zip(recipients, flags, strict=True):
        (skipped if decide(suppressed, identity=False) == SKIP else kept).append(recipient)
    return kept, skipped


class MessageFactory:
    """Messages of one job: each (locale, per-recipient context) is rendered once, only To differs."""

    def __init__(self, renderer: TemplateRenderer, settings: SmtpSettings, job: BulkJob) -> None:
        self.renderer = renderer
        self.settings = settings
        self.job = job
        self._rendered: dict[tuple[str | None, str | None], RenderedEmail | DeliveryFailure] = {}
        self.renders = 0

    def context_for(self, recipient: Recipient) -> dict[str, Any]:
        return {**self.job.context, **recipient.context} if recipient.context else self.job.context

    def build(self, recipient: Recipient) -> OutgoingMessage:
        """The recipient's message, or DeliveryFailure ('template' or 'invalid', both permanent)."""
        locale = recipient.locale or self.job.locale
        key = (locale, json.dumps(recipient.context, sort_keys=True) if recipient.context else None)
        rendered = self._rendered.get(key)
        if rendered is None:
            try:
                self.renders += 1
                rendered = self.renderer.render(self.job.realm, self.job.template, locale,
                                                self.context_for(recipient))  # fmt: skip
            except RenderError as error:
                rendered = DeliveryFailure("template", str(error))
            if len(self._rendered) > 1000:  # every recipient with a context of its own: no reuse anyway
                self._rendered.clear()
            self._rendered[key] = rendered
        if isinstance(rendered, DeliveryFailure):
            raise rendered
        try:
            # The recipient's Message-ID is the same on every attempt (an ambiguous one may have arrived).
            return build_message(self.settings, rendered, recipient.to, to_name=recipient.name,
                                 message_key=f"{self.job.id}-{recipient.index}")  # fmt: skip
        except (InvalidInput, ValueError) as error:
            raise DeliveryFailure("invalid", str(error)) from None


def group_size(per_second: float | None) -> int:
    if not per_second:
        return MAX_GROUP
    return max(1, min(MAX_GROUP, int(per_second * GROUP_SHARE_OF_RATE)))


class EarlyCommit:
    """Records accepted recipients while a group is still on the wire, when the server is slow.

    A group is committed after its last reply; against a server that takes 100 ms per message that is
    two seconds of accepted mail a killed worker would send again. Here, as soon as COMMIT_EVERY_S passed
    since the last commit, what was accepted so far is committed (a done bit set twice counts once).
    Against a fast server no group lasts that long: no extra Redis call.
    """

    def __init__(
        self, jobs: BulkJobs, job_id: str, recipients: list[Recipient], clock: Callable[[], float]
    ) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.recipients = recipients
        self.clock = clock
        self.accepted: list[int] = []
        self.last = clock()

    def __call__(self, position: int) -> None:
        self.accepted.append(self.recipients[position].index)
        now = self.clock()
        if now - self.last >= COMMIT_EVERY_S:
            self.jobs.commit(self.job_id, sent=self.accepted)  # the group's own commit follows
            self.accepted, self.last = [], now
