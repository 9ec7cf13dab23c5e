"""A bulk job's recipients as a chunk run sees them, and their messages (rendered once per locale)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from config.errors import InvalidInput
from config.smtp import SmtpSettings
from worker.bulk.progress import BulkJob
from worker.content.message import OutgoingMessage, build_message
from worker.content.render import RenderedEmail, RenderError, TemplateRenderer
from worker.delivery.deliver import DeliveryFailure


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
