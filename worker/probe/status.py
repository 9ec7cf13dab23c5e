"""What Test Connection reports: the stages it went through, the verdict, the failure, the hint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config.smtp import SmtpSettings

STAGE_ORDER = ("resolve", "connect", "ehlo", "tls", "auth", "send")
DEFAULT_DEADLINE_CAP_S = 60.0


def mode_of(settings: SmtpSettings) -> str:
    return "ssl" if settings.ssl else "starttls" if settings.starttls else "plain"


def default_deadline(settings: SmtpSettings, cap: float = DEFAULT_DEADLINE_CAP_S) -> float:
    """The overall limit: one connect (with its handshake) and five commands, at most `cap` seconds."""
    return min(cap, settings.connect_timeout + 5 * settings.timeout)


@dataclass
class Stage:
    name: str
    ok: bool | None  # None: not tested (e.g. XOAUTH2 without a token provider)
    ms: float
    detail: str
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "ms": round(self.ms, 1),
            "detail": self.detail,
            "info": self.info,
        }


@dataclass
class ProbeStatus:
    ok: bool
    host: str
    port: int
    mode: str
    stages: list[Stage]
    failed_stage: str | None = None
    kind: str | None = None  # the failure kind (worker/smtp/failures.py Kind), None when ok
    error: str | None = None  # the failed stage's detail
    smtp_code: int | None = None
    smtp_reply: str | None = None
    hint: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    deadline_s: float = 0.0
    verify_tls: bool = True
    realm: str | None = None
    source: str | None = None  # "draft" | "saved", filled in by the task
    version: int | None = None
    send_to: str | None = None
    message_id: str | None = None

    @property
    def not_tested(self) -> list[str]:
        return [stage.name for stage in self.stages if stage.ok is None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "realm": self.realm,
            "source": self.source,
            "version": self.version,
            "host": self.host,
            "port": self.port,
            "mode": self.mode,
            "verify_tls": self.verify_tls,
            "failed_stage": self.failed_stage,
            "kind": self.kind,
            "error": self.error,
            "smtp_code": self.smtp_code,
            "smtp_reply": self.smtp_reply,
            "hint": self.hint,
            "stages": [stage.to_dict() for stage in self.stages],
            "not_tested": self.not_tested,
            "extensions": dict(self.extensions),
            "send_to": self.send_to,
            "message_id": self.message_id,
            "elapsed_ms": round(self.elapsed_ms, 1),
            "deadline_s": self.deadline_s,
        }
