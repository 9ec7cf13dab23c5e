"""The one error of rendering, shared by the renderer, the message bundles and the sandbox's callers."""

from __future__ import annotations

from config.errors import MailWorkerError


class RenderError(MailWorkerError):
    """A template could not be rendered: names the template, the part, the line and the variable.

    Permanent: rendering is deterministic, so a retry would fail the same way (the job goes to the dead
    letters with reason "template").
    """

    def __init__(self, message: str, *, template: str | None = None, part: str | None = None) -> None:
        super().__init__(message)
        self.template = template
        self.part = part
