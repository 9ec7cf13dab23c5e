"""Errors a person can act on: one line, the field or variable, the rule, the fix.

One tree, named for what the caller must do:

    MailWorkerError          one line for a person (the CLI prints it without a traceback)
      InvalidInput           fix the input: names the field and the rule
      NotFound               name something that exists (UnusableSettings: enter the secret again)
      ConflictError          re-read, apply the change again
      ConfigError            the operator fixes the service's configuration (environment, key, URL)
      Unavailable            retry later: a part the service needs is not there now
        StoreUnavailable     the config store is unreachable, or wiped and not restored yet
        WorkerUnavailable    no live worker serves the queue (start one)
        NoAnswer             a worker took the task and did not answer in time (tasks/connection.py)

Failures inside the worker (SmtpFailure, RenderError, TokenError, DeliveryFailure) are in the tree too;
worker/policy.py decides what each leads to.
"""

from __future__ import annotations


class MailWorkerError(Exception):
    """Base of every error the service reports to a user as one line (no traceback)."""


class ConfigError(MailWorkerError):
    """The service's own configuration (environment, secret key, Redis URL) is wrong or unreachable."""


class InvalidInput(MailWorkerError):
    """Input broke a rule. `problems` lists (field, rule) pairs; str() joins them on one line."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{field}: {rule}" if field else rule for field, rule in problems))

    @classmethod
    def one(cls, field: str, rule: str) -> InvalidInput:
        return cls([(field, rule)])


class NotFound(MailWorkerError):
    """A realm, settings version, job or dead letter that does not exist."""


class ConflictError(MailWorkerError):
    """Somebody else saved in between: the edit started from an older version."""


class Unavailable(MailWorkerError):
    """Retry later: the request was fine, a part the service needs is not there now."""


class WorkerUnavailable(Unavailable):
    """No live worker consumes the queue a caller waits on: waiting longer would only wait in silence."""


class StoreUnavailable(Unavailable):
    """The config store cannot be used right now (unreachable, or wiped and not restored yet).

    Retryable, unlike InvalidInput: a producer should keep the request and try again later.
    """
